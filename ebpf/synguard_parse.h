/* SPDX-License-Identifier: GPL-2.0 */
/*
 * synguard frame parser: Ethernet (+ up to SG_VLAN_MAX tags), IPv4 (with options)
 * or IPv6 (skipping up to SG_IPV6_EXT_MAX extension headers), TCP. One copy for
 * both programs: the XDP program (BCC, synguard.bpf.c) and the tc program (clang +
 * libbpf, synguard_tc.bpf.c) include it after their own kernel UAPI headers
 * (ethhdr, iphdr, ipv6hdr, ipv6_opt_hdr, tcphdr) and synguard_abi.h.
 *
 * Contract: sg_parse_frame(data, data_end, pkt) fills pkt->l3 / l3_off / ipv6 /
 * tcp and returns SG_PARSE_TCP when the frame is a whole TCP segment: the IP
 * length covers the IP headers, fits in the frame, and the TCP header (doff * 4
 * bytes) lies inside both. Anything else gets the reason it is not ours to parse
 * further; the frame is never written.
 *
 * Written for the oldest verifier we load on (Linux 6.1): a length read from the
 * frame through a byte swap (tot_len, payload_len) has no range on verifiers
 * before ~6.13, so it is only ever compared with a distance (data_end - ptr), a
 * plain number, and never added to a packet pointer.
 */
#ifndef SYNGUARD_PARSE_H
#define SYNGUARD_PARSE_H

struct sg_vlanhdr {
	__be16 tci;
	__be16 encap_proto;
};

/* Where a parsed frame's headers are. */
struct sg_pkt {
	struct sg_counter_block *cnt; /* the caller's: this CPU's counters for the ingress interface */
	void *l3;             /* IPv4 or IPv6 header */
	struct tcphdr *tcp;
	__u32 l3_off;         /* bytes from data to l3 (Ethernet + VLAN tags) */
	__u32 ipv6;           /* 1: IPv6 */
	__u32 l4_len;         /* TCP header + payload bytes, from the IP length (host order) */
};

enum sg_parse_result {
	SG_PARSE_TCP = 0,   /* pkt->tcp is valid */
	SG_PARSE_NOT_OURS,  /* not TCP over IP: pass, no counter */
	SG_PARSE_MALFORMED,
	SG_PARSE_FRAGMENT,
	SG_PARSE_EXT_LIMIT,
};

/* Returns the EtherType after up to SG_VLAN_MAX tags (network byte order),
 * or -1 when the frame is too short. (At tc ingress the kernel has usually
 * taken the outer tag off already; an inner one is still in the data.) */
static __always_inline int parse_ethhdr(void **pos, void *data_end)
{
	struct ethhdr *eth = *pos;
	struct sg_vlanhdr *vlan;
	__be16 proto;

	if ((void *)(eth + 1) > data_end)
		return -1;
	proto = eth->h_proto;
	*pos = eth + 1;
#pragma unroll
	for (int i = 0; i < SG_VLAN_MAX; i++) {
		if (proto != bpf_htons(ETH_P_8021Q) && proto != bpf_htons(ETH_P_8021AD))
			break;
		vlan = *pos;
		if ((void *)(vlan + 1) > data_end)
			return -1;
		proto = vlan->encap_proto;
		*pos = vlan + 1;
	}
	return proto; /* network byte order */
}

/* IPv4 with options. Returns SG_PARSE_TCP (pos at the TCP header, l3_len set,
 * host order) or the reason the frame is not ours to parse further. */
static __always_inline enum sg_parse_result parse_iphdr(void **pos, void *data_end, __u32 *l3_len)
{
	struct iphdr *iph = *pos;
	__u32 hdrlen;

	if ((void *)(iph + 1) > data_end)
		return SG_PARSE_MALFORMED;
	hdrlen = iph->ihl * 4; /* <= 60: a 4-bit field, bounded for every verifier */
	if (iph->version != 4 || hdrlen < sizeof(*iph))
		return SG_PARSE_MALFORMED;
	if (*pos + hdrlen > data_end)
		return SG_PARSE_MALFORMED;
	if (iph->protocol != IPPROTO_TCP)
		return SG_PARSE_NOT_OURS;
	/* frag_off is network byte order; MF or a non-zero offset = fragment. */
	if (iph->frag_off & bpf_htons(0x3fff))
		return SG_PARSE_FRAGMENT;
	*l3_len = bpf_ntohs(iph->tot_len); /* host order; unbounded for the verifier */
	*pos += hdrlen;
	return SG_PARSE_TCP;
}

/* IPv6, skipping up to SG_IPV6_EXT_MAX extension headers (each <= 2 KiB: a u8 length). */
static __always_inline enum sg_parse_result parse_ip6hdr(void **pos, void *data_end, __u32 *l3_len)
{
	struct ipv6hdr *ip6h = *pos;
	struct ipv6_opt_hdr *ext;
	__u8 nexthdr;

	if ((void *)(ip6h + 1) > data_end)
		return SG_PARSE_MALFORMED;
	if (ip6h->version != 6)
		return SG_PARSE_MALFORMED;
	nexthdr = ip6h->nexthdr;
	*l3_len = sizeof(*ip6h) + bpf_ntohs(ip6h->payload_len); /* host order; unbounded for the verifier */
	*pos = ip6h + 1;
#pragma unroll
	for (int i = 0; i < SG_IPV6_EXT_MAX; i++) {
		switch (nexthdr) {
		case IPPROTO_TCP:
			return SG_PARSE_TCP;
		case IPPROTO_FRAGMENT:
			return SG_PARSE_FRAGMENT;
		case IPPROTO_HOPOPTS:
		case IPPROTO_ROUTING:
		case IPPROTO_DSTOPTS:
		case IPPROTO_AH:
			ext = *pos;
			if ((void *)(ext + 1) > data_end)
				return SG_PARSE_MALFORMED;
			/* AH counts 4-byte words minus 2, the others 8-byte words minus 1. */
			if (nexthdr == IPPROTO_AH)
				*pos += (ext->hdrlen + 2) * 4;
			else
				*pos += (ext->hdrlen + 1) * 8;
			nexthdr = ext->nexthdr;
			break;
		default:
			return SG_PARSE_NOT_OURS;
		}
	}
	if (nexthdr == IPPROTO_TCP)
		return SG_PARSE_TCP;
	return SG_PARSE_EXT_LIMIT;
}

/* The TCP header at *pos: its doff * 4 bytes within l4_len and the frame. */
static __always_inline enum sg_parse_result parse_tcphdr(void **pos, void *data_end, __u32 l4_len,
							 struct tcphdr **tcph)
{
	struct tcphdr *th = *pos;
	__u32 hdrlen;

	if ((void *)(th + 1) > data_end)
		return SG_PARSE_MALFORMED;
	hdrlen = th->doff * 4; /* <= 60 */
	if (hdrlen < sizeof(*th) || hdrlen > l4_len)
		return SG_PARSE_MALFORMED;
	if (*pos + hdrlen > data_end)
		return SG_PARSE_MALFORMED;
	*tcph = th;
	return SG_PARSE_TCP;
}

/* The whole frame: see the contract at the top. */
static __always_inline enum sg_parse_result sg_parse_frame(void *data, void *data_end, struct sg_pkt *pkt)
{
	void *pos = data;
	__u32 l3_len = 0, l3_hdr, l3_room;
	int proto;
	enum sg_parse_result ret;

	proto = parse_ethhdr(&pos, data_end);
	if (proto < 0)
		return SG_PARSE_MALFORMED;
	pkt->l3 = pos;
	pkt->l3_off = pos - data;
	if (proto == bpf_htons(ETH_P_IP)) {
		ret = parse_iphdr(&pos, data_end, &l3_len);
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		pkt->ipv6 = 1;
		ret = parse_ip6hdr(&pos, data_end, &l3_len);
	} else {
		return SG_PARSE_NOT_OURS;
	}
	if (ret != SG_PARSE_TCP)
		return ret;
	/* The IP length must cover the headers and fit in the frame (Ethernet
	 * padding may follow it). Numbers only: see the contract. */
	l3_hdr = pos - pkt->l3;
	l3_room = data_end - pkt->l3;
	if (l3_len < l3_hdr || l3_len > l3_room)
		return SG_PARSE_MALFORMED;
	pkt->l4_len = l3_len - l3_hdr;
	return parse_tcphdr(&pos, data_end, l3_len - l3_hdr, &pkt->tcp);
}

#endif /* SYNGUARD_PARSE_H */
