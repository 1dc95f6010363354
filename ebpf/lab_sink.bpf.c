/* SPDX-License-Identifier: GPL-2.0 */
/* Lab only (synguard_lab/floodbench.py): the attacker-side sink that counts and
 * drops what synguard sends to spoofed sources, passing ARP. Never installed. */
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>
#include <uapi/linux/tcp.h>

BPF_PERCPU_ARRAY(sink_cnt, u64, 2);   /* 0: SYN-ACKs, 1: other TCP */

static __always_inline int sink_count(struct tcphdr *th)
{
    u32 k = (th->syn && th->ack) ? 0 : 1;
    u64 *v = sink_cnt.lookup(&k);
    if (v)
        *v += 1;
    return XDP_DROP;
}

int xdp_sink(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > end)
        return XDP_PASS;
    if (eth->h_proto == bpf_htons(ETH_P_IP)) {
        struct iphdr *ip = (void *)(eth + 1);
        if ((void *)(ip + 1) > end || ip->protocol != IPPROTO_TCP)
            return XDP_PASS;
        struct tcphdr *th = (void *)ip + ip->ihl * 4;
        if ((void *)(th + 1) > end)
            return XDP_PASS;
        return sink_count(th);
    }
    if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
        struct ipv6hdr *ip6 = (void *)(eth + 1);
        if ((void *)(ip6 + 1) > end || ip6->nexthdr != IPPROTO_TCP)
            return XDP_PASS;
        struct tcphdr *th = (void *)(ip6 + 1);
        if ((void *)(th + 1) > end)
            return XDP_PASS;
        return sink_count(th);
    }
    return XDP_PASS;
}

/* floodbench's reflector run (on s1): the most any answering XDP program can do on
 * this path. Swaps the MACs and sends every frame back with XDP_TX; reads nothing else. */
int xdp_reflect(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
    __u16 *m = data;
    __u16 t0, t1, t2;

    if ((void *)(m + 6) > end)
        return XDP_PASS;
    t0 = m[0]; t1 = m[1]; t2 = m[2];
    m[0] = m[3]; m[1] = m[4]; m[2] = m[5];
    m[3] = t0; m[4] = t1; m[5] = t2;
    return XDP_TX;
}
