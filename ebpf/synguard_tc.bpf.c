/* SPDX-License-Identifier: GPL-2.0 */
/*
 * synguard tc ingress program: the ACK side of the one-round-trip cookie
 * (ebpf/COOKIE.md). The XDP program (synguard.bpf.c) answered a SYN with a
 * SYN-ACK whose seq is our cookie; the client's ACK comes here. If the cookie
 * is valid we find the listener and hand the kernel the options the cookie
 * carries with bpf_sk_assign_tcp_reqsk() (Linux >= 6.9); the kernel then
 * creates the connection as if it had made the request socket itself.
 *
 * Contract:
 *  - Compiled by clang (-O2 -g -target bpf) and loaded by libbpf
 *    (synguard/tcprog.py), not BCC: BCC cannot emit kfunc calls.
 *  - Its maps ARE the XDP program's: the loader passes their fds with
 *    bpf_map__reuse_fd() before load. The declarations below must keep the
 *    type, key, value and max_entries of the BCC declarations.
 *  - Verdict: never change the packet. Every packet leaves with
 *    TC_ACT_UNSPEC ("not decided here": the next tc filter on the hook, if
 *    any, still runs, and without one the packet goes up the stack as with
 *    TC_ACT_OK), except an out-of-state segment (synguard_scope.h) to a
 *    protected port of this host while they are dropped (protect mode; auto
 *    mode after an ack-flood): TC_ACT_SHOT, counted by kind, never answered.
 *    The kernel decides what a cookie ACK becomes (the kfunc only attaches a
 *    request socket to the skb).
 *  - Scope: only segments for this host (sg_config.local_only, sg_local_addrs).
 *  - One socket lookup per segment to a protected port (bpf_skc_lookup_tcp):
 *    a socket of the 4-tuple other than a listener owns it and nothing more is
 *    done; else one SipHash per ACK (our cookie), then the kernel's cookie.
 *  - Assumes a little-endian host: the hash words are read as SipHash reads
 *    the message bytes (little-endian u64), which on x86/arm64 is a plain load.
 */
#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "synguard_abi.h"
#include "synguard_siphash.h"
#include "synguard_parse.h"
#include "synguard_scope.h"

char LICENSE[] SEC("license") = "GPL"; /* kfuncs are GPL-only */

#define SG_TC_PASS TC_ACT_UNSPEC
#define SG_TC_DROP TC_ACT_SHOT

#define SG_TCP_SYN 0x02
#define SG_TCP_RST 0x04
#define SG_TCP_ACK 0x10

/* TCP option kinds (include/net/tcp.h is not UAPI). */
#define SG_TCPOPT_EOL 0
#define SG_TCPOPT_NOP 1
#define SG_TCPOPT_TS 8
#define SG_TCPOLEN_TS 10

/* ---- Kernel types we need, declared here (no vmlinux.h). --------------- */

/* include/net/tcp.h (6.9+). Checked against this kernel's BTF by
 * tests/test_tc.py::test_req_attrs_layout_matches_kernel_btf. */
struct bpf_tcp_req_attrs {
	__u32 rcv_tsval;
	__u32 rcv_tsecr;
	__u16 mss;
	__u8 rcv_wscale;
	__u8 snd_wscale;
	__u8 ecn_ok;
	__u8 wscale_ok;
	__u8 sack_ok;
	__u8 tstamp_ok;
	__u8 usec_ts_ok;
	__u8 reserved[3];
};

/* Opaque here. libbpf matches the kfunc's prototype by type kind, so this must
 * be a struct (a bare forward declaration is a different kind). */
struct sock {
	int __opaque;
};

extern int bpf_sk_assign_tcp_reqsk(struct __sk_buff *skb, struct sock *sk, struct bpf_tcp_req_attrs *attrs,
				   int attrs__sz) __ksym;

/* ---- Maps: the XDP program's (reused by fd), same shapes as in BCC. ---- */

/* Event counters, per CPU and per interface slot (shared with XDP). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, int);
	__type(value, struct sg_counter_block);
	__uint(max_entries, SG_IFACE_SLOTS);
} sg_counters SEC(".maps");

/* Interface slot of an ifindex (0: not mapped). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, int);
	__type(value, __u32);
	__uint(max_entries, SG_IFINDEX_MAX);
} sg_ifaces SEC(".maps");

/* Runtime settings, one entry. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, int);
	__type(value, struct sg_config);
	__uint(max_entries, 1);
} sg_config SEC(".maps");

/* SipHash keys: [slot & 1]. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, int);
	__type(value, struct sg_secret);
	__uint(max_entries, 2);
} sg_secrets SEC(".maps");

/* Per destination port (host order): protected? */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, int);
	__type(value, struct sg_port);
	__uint(max_entries, SG_PORTS);
} sg_ports SEC(".maps");

/* This netns's own unicast addresses (synguard_scope.h), the XDP program's map. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct sg_addr);
	__type(value, __u8);
	__uint(max_entries, SG_LOCAL_ADDRS);
} sg_local_addrs SEC(".maps");

/* ---- Counting ------------------------------------------------------------ */

static __always_inline struct sg_counter_block *counters_for(struct __sk_buff *skb)
{
	__u32 ifindex = skb->ingress_ifindex, slot = 0;
	__u32 *mapped = bpf_map_lookup_elem(&sg_ifaces, &ifindex);

	if (mapped && *mapped < SG_IFACE_SLOTS)
		slot = *mapped;
	return bpf_map_lookup_elem(&sg_counters, &slot);
}

static __always_inline void count(struct sg_counter_block *blk, __u32 idx)
{
	if (blk && idx < SG_CNT_MAX)
		blk->cnt[idx]++;
}

/* ---- Parsing: synguard_parse.h (shared with the XDP program) ----------- */

/* What the cookie check needs from an ACK, copied out of the packet so that no
 * packet pointer has to survive the v4/v6 branch. */
struct sg_ack {
	__u32 saddr[4]; /* network byte order; IPv4 in [0] */
	__u32 daddr[4]; /* network byte order; IPv4 in [0] */
	__u32 seq;      /* host byte order */
	__u32 ack;      /* host byte order */
	__u32 tsval;    /* host byte order (ts only) */
	__u32 tsecr;    /* host byte order (ts only) */
	__u16 sport;    /* network byte order */
	__u16 dport;    /* network byte order */
	__u8 ipv6;
	__u8 ts;        /* the ACK carries a Timestamps option */
	__u32 tcp_off;  /* bytes from data to the TCP header, kept as a number (see sg_parse_ts) */
	__u32 l4_len;   /* TCP header + payload (from the IP length) */
	__u8 flags;     /* byte 13 of the TCP header */
	__u8 unicast;   /* the destination MAC's group bit is clear */
	__u8 doff;      /* TCP header length in 4-byte words */
};

/* The segment we check: SYN clear (ACKs, RSTs, FINs, data), parsed by
 * synguard_parse.h like the XDP program's SYNs (IPv6 extension headers skipped).
 * Returns the TCP header (its doff * 4 bytes in bounds) or NULL for anything else. */
static __always_inline struct tcphdr *parse_ack(struct __sk_buff *skb, struct sg_ack *a)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct sg_pkt pkt = {};
	struct tcphdr *tcp;
	__u8 flags;

	if (sg_parse_frame(data, data_end, &pkt) != SG_PARSE_TCP)
		return NULL;
	tcp = pkt.tcp;
	if ((void *)(tcp + 1) > data_end) /* re-checked: clang may re-derive the pointer */
		return NULL;
	flags = ((__u8 *)tcp)[13];
	if (flags & SG_TCP_SYN)
		return NULL;
	a->flags = flags;
	a->l4_len = pkt.l4_len;
	a->doff = tcp->doff;
	a->unicast = !(((__u8 *)data)[0] & 1); /* data + 14 <= data_end: parsed */
	__builtin_memset(a->saddr, 0, sizeof(a->saddr)); /* defined, never read for IPv4 */
	__builtin_memset(a->daddr, 0, sizeof(a->daddr));
	if (pkt.ipv6) {
		struct ipv6hdr *ip6 = pkt.l3;

		if ((void *)(ip6 + 1) > data_end)
			return NULL;
		__builtin_memcpy(a->saddr, &ip6->saddr, 16);
		__builtin_memcpy(a->daddr, &ip6->daddr, 16);
	} else {
		struct iphdr *ip = pkt.l3;

		if ((void *)(ip + 1) > data_end)
			return NULL;
		a->saddr[0] = ip->saddr;
		a->daddr[0] = ip->daddr;
	}
	a->ipv6 = pkt.ipv6;
	a->tcp_off = (void *)tcp - data;
	a->sport = tcp->source;
	a->dport = tcp->dest;
	a->seq = bpf_ntohl(tcp->seq);
	a->ack = bpf_ntohl(tcp->ack_seq);
	a->tsval = 0; /* defined even without TS: clang may otherwise move any register, */
	a->tsecr = 0; /* even a packet pointer, into them, which the verifier refuses */
	return tcp;
}

/* Timestamps option of the TCP header at tcp_off: 1 and ts filled (host
 * order), or 0. Fast path: Linux's layout NOP, NOP, TS first. Else a bounded
 * walk over the option bytes from a fixed base with a masked offset (the
 * verifier cannot follow a pointer that advances by a variable length).
 * A global function: the verifier checks it once, on its own, instead of once
 * per state of the caller (inlined, the walk cost ~170k verifier steps). */
struct sg_ts {
	__u32 tsval;
	__u32 tsecr;
};

__noinline int sg_parse_ts(struct __sk_buff *skb, __u32 tcp_off, struct sg_ts *ts)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct tcphdr *tcp;
	__u32 optlen, off = 0;
	__u8 *opt;

	if (!ts)
		return 0;
	tcp = data + (tcp_off & 0xff); /* <= 14 + 8 + 60: the mask only bounds it for the verifier */
	if ((void *)(tcp + 1) > data_end)
		return 0;
	opt = (__u8 *)(tcp + 1);
	optlen = tcp->doff * 4;
	if (optlen <= sizeof(*tcp))
		return 0;
	optlen -= sizeof(*tcp);
	if (optlen >= 12 && (void *)(opt + 12) <= data_end && *(__u32 *)opt == bpf_htonl(0x0101080a)) {
		ts->tsval = bpf_ntohl(*(__u32 *)(opt + 4));
		ts->tsecr = bpf_ntohl(*(__u32 *)(opt + 8));
		return 1;
	}
	for (int i = 0; i < 40; i++) { /* each step advances >= 1 byte of <= 40 */
		__u8 *p, kind, len;

		off &= 0x3f;
		if (off >= optlen)
			return 0;
		p = opt + off;
		if ((void *)(p + 1) > data_end)
			return 0;
		kind = p[0];
		if (kind == SG_TCPOPT_EOL)
			return 0;
		if (kind == SG_TCPOPT_NOP) {
			off++;
			continue;
		}
		if ((void *)(p + 2) > data_end)
			return 0;
		len = p[1];
		if (len < 2 || off + len > optlen)
			return 0;
		if (kind == SG_TCPOPT_TS && len == SG_TCPOLEN_TS) {
			if ((void *)(p + 10) > data_end)
				return 0;
			ts->tsval = ((__u32)p[2] << 24) | ((__u32)p[3] << 16) | ((__u32)p[4] << 8) | p[5];
			ts->tsecr = ((__u32)p[6] << 24) | ((__u32)p[7] << 16) | ((__u32)p[8] << 8) | p[9];
			return 1;
		}
		off += len;
	}
	return 0;
}

/* Linux's layout, NOP, NOP, TS first, read in place: 1 and a->tsval/tsecr set, or 0.
 * (The global sg_parse_ts() costs a BPF-to-BPF call, ~14 ns measured; this is most ACKs.) */
static __always_inline int parse_ts_fast(struct tcphdr *tcp, void *data_end, struct sg_ack *a)
{
	__u8 *opt = (__u8 *)(tcp + 1);

	if ((void *)(opt + 12) > data_end || tcp->doff < 8) /* pointer re-checked: clang may re-derive tcp */
		return 0;
	if (*(__u32 *)opt != bpf_htonl(0x0101080a))
		return 0;
	a->tsval = bpf_ntohl(*(__u32 *)(opt + 4));
	a->tsecr = bpf_ntohl(*(__u32 *)(opt + 8));
	return 1;
}

/* SipHash state after an IPv6 destination, per CPU (synguard_siphash.h): the XDP
 * program's map (SHARED_MAPS). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct sg_sip_cache_entry);
	__uint(max_entries, SG_SIP_CACHE);
} sg_sip_cache SEC(".maps");

/* ---- The cookie (ebpf/COOKIE.md, "Validation") --------------------------- */

/* MSS of a class: the kernel's own syncookie tables (a switch, not a table:
 * clang-14 would put a small const table in .rodata.cst8, which libbpf 1.1
 * rejects). */
static __always_inline __u16 sg_mss(__u32 ipv6, __u32 c)
{
	if (ipv6) {
		switch (c & 3) {
		case 0: return 1220;
		case 1: return 1420;
		case 2: return 1440;
		default: return 8940;
		}
	}
	switch (c & 3) {
	case 0: return 536;
	case 1: return 1300;
	case 2: return 1440;
	default: return 1460;
	}
}

/* 1 and attrs filled when the ACK carries our cookie, else 0. */
static __always_inline int sg_cookie_check(const struct sg_config *cfg, const struct sg_ack *a,
					   struct bpf_tcp_req_attrs *attrs)
{
	__u32 cookie = a->ack - 1;
	__u32 isn = a->seq - 1;
	__u32 c = cookie & 3, w = SG_COOKIE_WSCALE_NONE, sack = 0, ecn = 0, ts = a->ts;
	/* The key of the cookie's slot: the current one or the previous one, told
	 * apart by parity (each slot has its own key, so the slot needs no hashing). */
	__u32 parity = cookie >> 2 & 1, opt;
	const struct sg_secret *key;
	struct sg_sip sip;
	__u64 h;

	key = bpf_map_lookup_elem(&sg_secrets, &parity);
	if (!key)
		return 0;
	if (ts) {
		w = a->tsecr & 0xf;
		sack = a->tsecr >> 4 & 1;
		ecn = a->tsecr >> 5 & 1;
	}
	opt = c | w << 2 | sack << 6 | ecn << 7 | ts << 8;
	if (a->ipv6) {
		__u64 d0 = a->daddr[0] | (__u64)a->daddr[1] << 32, d1 = a->daddr[2] | (__u64)a->daddr[3] << 32;
		__u32 idx = sip_cache_idx(d0, d1);

		sip_after_daddr6(&sip, key, d0, d1, bpf_map_lookup_elem(&sg_sip_cache, &idx));
		sip_word(&sip, a->saddr[0] | (__u64)a->saddr[1] << 32);
		sip_word(&sip, a->saddr[2] | (__u64)a->saddr[3] << 32);
		h = sip_final(&sip, sg_cookie_tail(a->dport, a->sport, opt, SG_COOKIE_MSG6));
	} else {
		sip_init(&sip, key);
		sip_word(&sip, a->daddr[0] | (__u64)a->saddr[0] << 32);
		h = sip_final(&sip, sg_cookie_tail(a->dport, a->sport, opt, SG_COOKIE_MSG4));
	}
	if ((((__u32)h + isn) ^ cookie) & 0xFFFFFFF8) /* the hash plus the client's ISN */
		return 0;
	if (ts && (((__u32)(h >> 32) ^ a->tsecr) & 0xFFFFFFC0))
		return 0;

	__builtin_memset(attrs, 0, sizeof(*attrs));
	attrs->mss = sg_mss(a->ipv6, c);
	attrs->tstamp_ok = ts;
	if (ts) {
		attrs->rcv_tsval = a->tsval;
		attrs->rcv_tsecr = a->tsecr;
	}
	if (w != SG_COOKIE_WSCALE_NONE) {
		attrs->wscale_ok = 1;
		attrs->snd_wscale = w;
		attrs->rcv_wscale = cfg->synack_wscale;
	}
	attrs->sack_ok = sack;
	attrs->ecn_ok = ecn;
	return 1;
}

/* Find the listener and let the kernel build the connection. Returns the
 * counter to bump, or SG_CNT_MAX for "an established socket: not ours". */
static __always_inline __u32 sg_assign(struct __sk_buff *skb, const struct sg_ack *a,
				       struct bpf_tcp_req_attrs *attrs)
{
	struct bpf_sock_tuple t = {};
	struct bpf_sock *sk;
	__u32 size;
	int ret;

	if (a->ipv6) {
		__builtin_memcpy(t.ipv6.saddr, a->saddr, 16);
		__builtin_memcpy(t.ipv6.daddr, a->daddr, 16);
		t.ipv6.sport = a->sport;
		t.ipv6.dport = a->dport;
		size = sizeof(t.ipv6);
	} else {
		t.ipv4.saddr = a->saddr[0];
		t.ipv4.daddr = a->daddr[0];
		t.ipv4.sport = a->sport;
		t.ipv4.dport = a->dport;
		size = sizeof(t.ipv4);
	}
	sk = bpf_sk_lookup_tcp(skb, &t, size, BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return SG_CNT_COOKIE_NO_LISTENER;
	if (sk->state != BPF_TCP_LISTEN) {
		/* The 4-tuple already has a socket and this ACK happens to match a
		 * cookie (data ACKs within ~8 bytes of the handshake): not ours. */
		bpf_sk_release(sk);
		return SG_CNT_MAX;
	}
	ret = bpf_sk_assign_tcp_reqsk(skb, (struct sock *)sk, attrs, sizeof(*attrs));
	bpf_sk_release(sk);
	return ret == 0 ? SG_CNT_COOKIE_VALIDATED : SG_CNT_COOKIE_REFUSED;
}

/* Was a deadline (auto_until_s, all_until_s; 0: never armed) in force at most
 * SG_ACK_GRACE_S ago? */
static __always_inline int sg_armed_lately(__u32 until_s, __u32 now_s)
{
	return until_s && (__s32)(until_s + SG_ACK_GRACE_S - now_s) > 0;
}

/* ---- Scope and out-of-state segments (synguard_scope.h) ------------------ */

/* Is the segment for this host (a unicast frame to an address in sg_local_addrs)? */
static __always_inline int seg_for_this_host(const struct sg_config *cfg, const struct sg_ack *a)
{
	struct sg_addr key;

	if (!cfg->local_only)
		return 1;
	if (!a->unicast)
		return 0;
	if (a->ipv6) {
		__builtin_memcpy(key.addr, a->daddr, 16);
	} else {
		key.addr[0] = 0;
		key.addr[1] = 0;
		key.addr[2] = bpf_htonl(0xffff);
		key.addr[3] = a->daddr[0];
	}
	return bpf_map_lookup_elem(&sg_local_addrs, &key) != NULL;
}

/* The socket of the segment's 4-tuple in the device's netns: established, closing,
 * TIME_WAIT, a request socket or a listener; NULL: none. The caller releases it. */
static __always_inline struct bpf_sock *seg_lookup(struct __sk_buff *skb, const struct sg_ack *a)
{
	struct bpf_sock_tuple t = {};

	if (a->ipv6) {
		__builtin_memcpy(t.ipv6.saddr, a->saddr, 16);
		__builtin_memcpy(t.ipv6.daddr, a->daddr, 16);
		t.ipv6.sport = a->sport;
		t.ipv6.dport = a->dport;
		return bpf_skc_lookup_tcp(skb, &t, sizeof(t.ipv6), BPF_F_CURRENT_NETNS, 0);
	}
	t.ipv4.saddr = a->saddr[0];
	t.ipv4.daddr = a->daddr[0];
	t.ipv4.sport = a->sport;
	t.ipv4.dport = a->dport;
	return bpf_skc_lookup_tcp(skb, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
}

/* 0 when the ACK carries a valid kernel cookie for listener sk (the frame parsed
 * again: no packet pointer survives the caller's v4/v6 branch). */
static __always_inline long seg_kernel_cookie(struct __sk_buff *skb, struct bpf_sock *sk)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct sg_pkt pkt = {};

	if (sg_parse_frame(data, data_end, &pkt) != SG_PARSE_TCP)
		return -1;
	return sg_kernel_cookie_check(sk, pkt.l3, pkt.ipv6, pkt.tcp, data_end);
}

/* ---- Entry: parse -> classify -> check -> assign -> count ---------------- */

SEC("tc")
int tc_synguard(struct __sk_buff *skb)
{
	struct bpf_tcp_req_attrs attrs;
	struct sg_counter_block *blk;
	const struct sg_config *cfg;
	const struct sg_port *port;
	struct sg_ack a;
	struct tcphdr *tcp;
	struct sg_ts ts;
	struct bpf_sock *sk;
	__u32 zero = 0, dport, cookies;

	tcp = parse_ack(skb, &a);
	if (!tcp)
		return SG_TC_PASS;
	cfg = bpf_map_lookup_elem(&sg_config, &zero);
	if (!cfg || cfg->mode == SG_MODE_OBSERVE)
		return SG_TC_PASS;
	dport = bpf_ntohs(a.dport);
	port = bpf_map_lookup_elem(&sg_ports, &dport);
	if (!port || !(cfg->all_ports || port->protect))
		return SG_TC_PASS;
	/* Auto mode: cookies are checked only while XDP issues them for the port (armed,
	 * itself or all ports), and SG_ACK_GRACE_S after (the cookies it sent stay valid
	 * that long). Otherwise every ACK to a configured port would be a blind guess at a
	 * cookie. Out-of-state segments are still counted (the detector's ack-flood signal). */
	cookies = cfg->mode != SG_MODE_AUTO || sg_armed_lately(port->auto_until_s, cfg->now_s) ||
		  sg_armed_lately(cfg->all_until_s, cfg->now_s);
	blk = counters_for(skb);
	if (!seg_for_this_host(cfg, &a)) {
		count(blk, SG_CNT_NOT_LOCAL);
		return SG_TC_PASS;
	}
	sk = seg_lookup(skb, &a);
	if (sk && sk->state != BPF_TCP_LISTEN) { /* established, closing, TIME_WAIT, request */
		bpf_sk_release(sk);
		return SG_TC_PASS;
	}
	if (a.flags & SG_TCP_ACK) {
		if (cookies) {
			count(blk, SG_CNT_ACK_CHECKED);
			a.ts = parse_ts_fast(tcp, (void *)(long)skb->data_end, &a);
			if (!a.ts && tcp->doff > 5) {
				ts.tsval = ts.tsecr = 0;
				a.ts = sg_parse_ts(skb, a.tcp_off, &ts);
				a.tsval = ts.tsval;
				a.tsecr = ts.tsecr;
			}
			if (sg_cookie_check(cfg, &a, &attrs)) {
				if (sk)
					bpf_sk_release(sk);
				count(blk, sg_assign(skb, &a, &attrs));
				return SG_TC_PASS;
			}
		}
		if (sk && seg_kernel_cookie(skb, sk) == 0) {
			bpf_sk_release(sk);
			count(blk, SG_CNT_KERNEL_COOKIE_ACK);
			return SG_TC_PASS;
		}
	}
	if (sk)
		bpf_sk_release(sk);
	count(blk, sg_oos_kind(a.flags, a.doff, a.l4_len));
	if (!sg_oos_drop(cfg))
		return SG_TC_PASS;
	count(blk, SG_CNT_OOS_DROPPED);
	return SG_TC_DROP;
}
