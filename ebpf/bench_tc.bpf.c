/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The floor for the tc program's cost (synguard/tcbench.py): the cheapest
 * possible sched_cls program, measured with BPF_PROG_TEST_RUN in the same run.
 * Never attached to an interface.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

SEC("tc")
int tc_bench_empty(struct __sk_buff *skb)
{
	return TC_ACT_UNSPEC;
}

char LICENSE[] SEC("license") = "GPL";
