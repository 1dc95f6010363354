/* SPDX-License-Identifier: GPL-2.0 */
/*
 * synguard scope and out-of-state rules, shared by the XDP program (BCC,
 * synguard.bpf.c) and the tc program (clang + libbpf, synguard_tc.bpf.c); each
 * includes it after synguard_parse.h and does its own map lookups (BCC and libbpf
 * spell them differently).
 *
 * Scope: the programs act (answer, check, drop) only on segments for this host:
 * a unicast frame (the destination MAC's group bit clear) to one of this netns's
 * own addresses (sg_local_addrs, kept by the daemon from netlink, synguard/localaddrs.py).
 * Everything else -- forwarded traffic, frames for a macvlan/ipvlan/VLAN/bridge port
 * in another netns, multicast, broadcast -- passes untouched.
 * XXX: a unicast frame to another MAC but to one of our addresses (promiscuous
 * interface) counts as ours; the kernel drops it anyway (PACKET_OTHERHOST), so at
 * worst a SYN-ACK answers a frame the kernel would have ignored. AnyIP routes
 * ("ip route add local 10.0.0.0/8 dev lo") are not addresses: such destinations
 * pass unprotected.
 *
 * Out of state: a non-SYN segment to a protected port of this host is the
 * kernel's own business when a socket owns its 4-tuple (established, any closing
 * state, TIME_WAIT, a request socket), or when it is an ACK carrying a valid
 * cookie (ours: tc program; the kernel's: bpf_tcp_check_syncookie(), the kernel's
 * own cookie_v4_check()/cookie_v6_check() including its recent-overflow rule).
 * Anything else the kernel would answer with a RST (ACK, data) or discard (RST,
 * bare FIN): the program drops it, never answers it, and counts it by kind.
 */
#ifndef SYNGUARD_SCOPE_H
#define SYNGUARD_SCOPE_H

/* The sg_local_addrs key of the frame's destination; 0 when the frame is multicast
 * or broadcast (group bit of the destination MAC): not for this host alone. */
static __always_inline int sg_dest_key(void *data, void *data_end, const struct sg_pkt *pkt, struct sg_addr *a)
{
	__u8 *dmac = data;

	if ((void *)(dmac + 1) > data_end || (dmac[0] & 1))
		return 0;
	if (pkt->ipv6) {
		struct ipv6hdr *ip6 = pkt->l3;

		if ((void *)(ip6 + 1) > data_end)
			return 0;
		__builtin_memcpy(a->addr, &ip6->daddr, 16);
	} else {
		struct iphdr *ip = pkt->l3;

		if ((void *)(ip + 1) > data_end)
			return 0;
		a->addr[0] = 0;
		a->addr[1] = 0;
		a->addr[2] = bpf_htonl(0xffff);
		a->addr[3] = ip->daddr;
	}
	return 1;
}

/* Are out-of-state segments dropped now? protect: always; auto: after an ack-flood
 * was detected, until sg_config.oos_until_s. (Counted in both cases.) */
static __always_inline int sg_oos_drop(const struct sg_config *cfg)
{
	if (cfg->mode == SG_MODE_PROTECT)
		return 1;
	return cfg->mode == SG_MODE_AUTO && (__s32)(cfg->oos_until_s - cfg->now_s) > 0;
}

/* The counter of an out-of-state segment's kind. flags: byte 13 of the TCP header;
 * l4_len: TCP header + payload (from the IP length: Ethernet padding is no payload). */
static __always_inline __u32 sg_oos_kind(__u8 flags, __u32 doff, __u32 l4_len)
{
	if (flags & 0x04) /* RST */
		return SG_CNT_OOS_RST;
	if (flags & 0x01) /* FIN */
		return SG_CNT_OOS_FIN;
	if (l4_len > doff * 4)
		return SG_CNT_OOS_DATA;
	return SG_CNT_OOS_ACK;
}

/* 0 when the segment (an ACK) carries a valid kernel SYN cookie for listener sk: what
 * the kernel itself would accept (bpf_tcp_check_syncookie(), Linux 5.2+: tcp_syncookies
 * on, a recent SYN queue overflow on that listener, the cookie's hash and age). l3..th
 * in bounds of the frame. */
static __always_inline long sg_kernel_cookie_check(struct bpf_sock *sk, void *l3, __u32 ipv6, struct tcphdr *th,
						   void *data_end)
{
	__u32 l3_len = ipv6 ? sizeof(struct ipv6hdr) : sizeof(struct iphdr);

	/* One check covers both families: an IPv4 TCP segment has >= 40 bytes from l3 too. */
	if (l3 + sizeof(struct ipv6hdr) > data_end || (void *)(th + 1) > data_end)
		return -1;
	return bpf_tcp_check_syncookie(sk, l3, l3_len, th, sizeof(*th));
}

#endif /* SYNGUARD_SCOPE_H */
