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

#include "synguard_abi.h"
#include "synguard_siphash.h"

/* The key of the reference programs below: a map value, so clang cannot fold it. */
BPF_ARRAY(sg_bench_key, struct sg_secret, 1);

/* References: the cookie's SipHash-2-4 and nothing else, over the message words of
 * an Ethernet + IPv4 (xdp_bench_sip4: 14 bytes, 8 rounds) or IPv6 frame
 * (xdp_bench_sip6: 38 bytes, 14 rounds, no destination cache) read from the
 * frame: what the PRF alone costs next to the empty program. */
int xdp_bench_sip4(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
	__u32 zero = 0;
	struct sg_secret *key = sg_bench_key.lookup(&zero);
	struct sg_sip s;

	if (!key || data + 38 > end)
		return XDP_ABORTED;
	sip_init(&s, key);
	sip_word(&s, *(__u64 *)(data + 26)); /* saddr, daddr */
	return sip_final(&s, sg_cookie_tail(*(__u16 *)(data + 34), *(__u16 *)(data + 36), 0x15f,
					    SG_COOKIE_MSG4)) == 1 ? XDP_DROP : XDP_PASS;
}

int xdp_bench_sip6(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
	__u32 zero = 0;
	struct sg_secret *key = sg_bench_key.lookup(&zero);
	struct sg_sip s;

	if (!key || data + 58 > end)
		return XDP_ABORTED;
	sip_init(&s, key);
	sip_word(&s, *(__u64 *)(data + 22)); /* the two addresses */
	sip_word(&s, *(__u64 *)(data + 30));
	sip_word(&s, *(__u64 *)(data + 38));
	sip_word(&s, *(__u64 *)(data + 46));
	return sip_final(&s, sg_cookie_tail(*(__u16 *)(data + 54), *(__u16 *)(data + 56), 0x15f,
					    SG_COOKIE_MSG6)) == 1 ? XDP_DROP : XDP_PASS;
}

/* The floor: the cheapest possible XDP program. */
int xdp_bench_empty(struct xdp_md *ctx)
{
	return XDP_PASS;
}

/* Put the template frame back (length and bytes); 0 on success. */
static __always_inline int bench_restore(struct xdp_md *ctx, struct sg_bench_frame *t)
{
	__u32 len = t->len & (SG_BENCH_FRAME_MAX - 1); /* the verifier needs a bound */
	int delta;

	if (len < 14)
		return -1;
	/* The program under test grows frames at the head (bpf_xdp_adjust_head) and
	 * shrinks them at the tail: undo a growth at the head, or the headroom would
	 * run out after a dozen repetitions; restore any other length at the tail.
	 * (On a grown frame this costs the run one adjust_head the empty-program
	 * baseline does not pay.) */
	delta = (int)len - (int)(ctx->data_end - ctx->data);
	if (delta < 0 && bpf_xdp_adjust_head(ctx, -delta) == 0)
		delta = 0;
	if (delta && bpf_xdp_adjust_tail(ctx, delta))
		return -1;
	return bpf_xdp_store_bytes(ctx, 0, t->data, len) ? -1 : 0;
}

int xdp_bench_rearm(struct xdp_md *ctx)
{
	__u32 zero = 0;
	struct sg_bench_frame *t = sg_bench_template.lookup(&zero);

	if (!t || bench_restore(ctx, t))
		return XDP_ABORTED;
	sg_bench_jump.call(ctx, 0);
	return XDP_ABORTED;
}

/*
 * xdp_bench_random: as xdp_bench_rearm, then overwrite the fields listed in
 * sg_bench_rand_cfg with pseudo-random values before the tail call, so one
 * BPF_PROG_TEST_RUN with a large repeat count sends millions of *different*
 * frames (random sources, ports, sequence numbers) through the program.
 *
 * Generator: xorshift64* (Vigna 2016), state in sg_bench_rand_state, one per
 * CPU (a CPU runs one XDP program at a time, so read-modify-write is safe
 * without atomics; seed every CPU differently, and pin the test_run caller to
 * one CPU when the exact sequence matters). Each field consumes one step:
 *   x ^= x >> 12; x ^= x << 25; x ^= x >> 27; r = (x * 0x2545F4914F6CDD1D) >> 32
 *   value = (r & mask) | set, its low `len` bytes written big-endian at `off`.
 * Checksums are left as they are: the program under test does not verify them.
 * A zero state (unseeded: zero is xorshift's fixed point) or a field outside
 * the frame returns XDP_ABORTED without the tail call.
 */
#define SG_BENCH_RAND_FIELDS 8

struct sg_bench_rand_field {
	__u16 off;  /* byte offset in the frame */
	__u16 len;  /* 1..4 bytes; 0 ends the list */
	__u32 mask; /* value = (random & mask) | set */
	__u32 set;
};

struct sg_bench_rand_cfg {
	struct sg_bench_rand_field f[SG_BENCH_RAND_FIELDS];
};

BPF_ARRAY(sg_bench_rand_cfg, struct sg_bench_rand_cfg, 1);
BPF_PERCPU_ARRAY(sg_bench_rand_state, __u64, 1);

int xdp_bench_random(struct xdp_md *ctx)
{
	__u32 zero = 0;
	struct sg_bench_frame *t = sg_bench_template.lookup(&zero);
	struct sg_bench_rand_cfg *cfg = sg_bench_rand_cfg.lookup(&zero);
	__u64 *state = sg_bench_rand_state.lookup(&zero);
	__u64 x;

	if (!t || !cfg || !state)
		return XDP_ABORTED;
	x = *state;
	if (!x || bench_restore(ctx, t))
		return XDP_ABORTED;

	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;

#pragma unroll
	for (int i = 0; i < SG_BENCH_RAND_FIELDS; i++) {
		__u32 flen = cfg->f[i].len, v;
		__u8 *p = data + (cfg->f[i].off & (SG_BENCH_FRAME_MAX - 1));

		if (!flen)
			break;
		x ^= x >> 12;
		x ^= x << 25;
		x ^= x >> 27;
		v = (__u32)((x * 0x2545F4914F6CDD1DULL) >> 32);
		v = (v & cfg->f[i].mask) | cfg->f[i].set;
		if (flen == 4) {
			if ((void *)(p + 4) > data_end)
				return XDP_ABORTED;
			p[0] = v >> 24;
			p[1] = v >> 16;
			p[2] = v >> 8;
			p[3] = v;
		} else if (flen == 2) {
			if ((void *)(p + 2) > data_end)
				return XDP_ABORTED;
			p[0] = v >> 8;
			p[1] = v;
		} else if (flen == 1) {
			if ((void *)(p + 1) > data_end)
				return XDP_ABORTED;
			p[0] = v;
		} else if (flen == 3) {
			if ((void *)(p + 3) > data_end)
				return XDP_ABORTED;
			p[0] = v >> 16;
			p[1] = v >> 8;
			p[2] = v;
		} else {
			return XDP_ABORTED;
		}
	}
	*state = x;
	sg_bench_jump.call(ctx, 0);
	return XDP_ABORTED;
}
