/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Benchmark harness programs (synguard bench), never attached to an interface.
 *
 * BPF_PROG_TEST_RUN does not restore the frame between repetitions, so a path
 * that rewrites it (the challenge turns the SYN into a SYN-ACK) would be
 * measured once and then as the pass path. xdp_bench_rearm restores the frame
 * from sg_bench_template and tail-calls slot 0 of sg_bench_jump: either
 * xdp_synguard or xdp_bench_empty. The cost of a path is then
 *   T(rearm -> xdp_synguard) - T(rearm -> xdp_bench_empty) + T(xdp_bench_empty)
 * which removes the harness's own cost exactly (same code up to the tail call).
 */
#include <uapi/linux/bpf.h>

#define SG_BENCH_FRAME_MAX 256

struct sg_bench_frame {
	__u32 len;
	__u8 data[SG_BENCH_FRAME_MAX];
};

/* The frame to restore before every run. */
BPF_ARRAY(sg_bench_template, struct sg_bench_frame, 1);
/* Slot 0: the program under test. */
BPF_PROG_ARRAY(sg_bench_jump, 1);

/* The floor: the cheapest possible XDP program. */
int xdp_bench_empty(struct xdp_md *ctx)
{
	return XDP_PASS;
}

int xdp_bench_rearm(struct xdp_md *ctx)
{
	__u32 zero = 0, len;
	struct sg_bench_frame *t = sg_bench_template.lookup(&zero);
	int delta;

	if (!t)
		return XDP_ABORTED;
	len = t->len & (SG_BENCH_FRAME_MAX - 1); /* the verifier needs a bound */
	if (len < 14)
		return XDP_ABORTED;
	delta = (int)len - (int)(ctx->data_end - ctx->data);
	if (delta && bpf_xdp_adjust_tail(ctx, delta))
		return XDP_ABORTED;
	if (bpf_xdp_store_bytes(ctx, 0, t->data, len))
		return XDP_ABORTED;
	sg_bench_jump.call(ctx, 0);
	return XDP_ABORTED;
}
