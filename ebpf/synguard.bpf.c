/* SPDX-License-Identifier: GPL-2.0 */
/*
 * synguard XDP program: SYN accounting and the SYN side of the one-round-trip
 * SYN cookie (ebpf/COOKIE.md). Compiled and loaded by BCC (synguard/datapath.py)
 * with -I ebpf/. The ACK side is the tc program (synguard_tc.bpf.c).
 *
 * Contract (see README.md "How it works" and ebpf/COOKIE.md):
 *  - Entry: xdp_synguard(). parse -> classify -> verdict -> count. A SYN to
 *    answer whose options are not a fast-path layout (none, Linux, Windows,
 *    Apple) is finished by xdp_synguard_optscan(), tail-called through
 *    sg_progs (the loader fills it; left empty, such SYNs pass).
 *  - sg_config.method picks the answer: SG_METHOD_KFUNC_COOKIE (below: our
 *    cookie, the tc program completes the ACK) or SG_METHOD_KERNEL_COOKIE (for
 *    kernels without bpf_sk_assign_tcp_reqsk: xdp_synguard_kcookie(), also
 *    tail-called, answers with the kernel's own cookie, or passes the SYN when
 *    the kernel makes none; the kernel completes the ACK).
 *  - observe mode: every frame passes; SYNs are counted.
 *  - protect/auto mode, SYN (SYN set, ACK and RST clear):
 *      deny CIDR -> DROP; port not protected -> PASS; allow CIDR -> PASS;
 *      otherwise the frame is rewritten into a real SYN-ACK (ack = ISN + 1,
 *      seq = cookie, 20 bytes of options answering the SYN's MSS / SACK /
 *      timestamps / window scale / ECN within sg_config.tcp_opts) and sent back
 *      with XDP_TX. No state is kept; the client's ACK goes to the kernel,
 *      where the tc program turns a valid cookie into a connection.
 *  - The SYN's options are read like the kernel's tcp_parse_options(): a
 *    broken option ends the list (what was read so far counts), so options
 *    never change the verdict.
 *  - Everything else (ACKs, RSTs, data, non-TCP, fragments, malformed) -> PASS:
 *    the kernel owns it, so switching modes never touches established connections.
 *  - XDP_ABORTED only for the impossible (a map lookup on a fixed index failing,
 *    a frame shorter after a resize than it said). A SYN whose reply does not
 *    fit (bpf_xdp_adjust_head/_tail refused) passes to the kernel.
 *  - No clock is read: sg_config.now_s and sg_config.slot come from the
 *    control plane every second; the key is sg_secrets[slot & 1].
 * XXX: hash message words are built from raw loads assuming a little-endian
 * host (x86_64, arm64 LE); a big-endian host would hash other bytes.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>
#include <uapi/linux/tcp.h>

#include "synguard_abi.h"
#include "synguard_siphash.h"
#include "synguard_parse.h"
#include "synguard_scope.h"

/* TCP flags: byte 13 of the header (CWR ECE URG ACK PSH RST SYN FIN). */
#define SG_TCP_FIN 0x01
#define SG_TCP_SYN 0x02
#define SG_TCP_RST 0x04
#define SG_TCP_ACK 0x10
#define SG_TCP_ECE 0x40
#define SG_TCP_CWR 0x80

/* ---- Maps: all of them, each bounded. ---------------------------------- */

/* SG_KEPT maps hold state that must survive a daemon crash: the loader pins
 * them, and a restarted daemon copies their content into its own (the list is
 * these declarations: synguard/datapath/pins.py kept_map_names, adopt_state
 * checks each pin's layout first), so counters keep counting. (BCC's BPF_TABLE_PINNED
 * would reuse the objects directly, but it needs CAP_SYS_ADMIN to open a pin,
 * which the systemd unit does not grant.) */
#define SG_KEPT(type, key, leaf, name, size) BPF_TABLE(type, key, leaf, name, size)

/* Event counters, per-port SYNs and HLL registers, per CPU and per interface slot. */
SG_KEPT("percpu_array", int, struct sg_counter_block, sg_counters, SG_IFACE_SLOTS);
/* Interface slot of an ifindex (0: not mapped), set by the control plane on attach. */
BPF_ARRAY(sg_ifaces, __u32, SG_IFINDEX_MAX);
/* Runtime settings, one entry, written by the control plane. */
BPF_ARRAY(sg_config, struct sg_config, 1);
/* SipHash keys: [slot & 1] is the key of cookie slot `slot`. */
BPF_ARRAY(sg_secrets, struct sg_secret, 2);
/* SipHash state after an IPv6 destination, per CPU (synguard_siphash.h); shared with
 * the tc program. */
BPF_TABLE("percpu_array", int, struct sg_sip_cache_entry, sg_sip_cache, SG_SIP_CACHE);
/* Per destination port (host order): protected?, watch slot, auto-mode deadline. */
BPF_ARRAY(sg_ports, struct sg_port, SG_PORTS);
/* Sampled SYN counts per source address, for top-K (synguard top). */
SG_KEPT("lru_hash", struct sg_addr, struct sg_src_stat, sg_src_syns, SG_SRC_SIZE);
/* Doorkeeper of sg_src_syns (synguard_abi.h struct sg_src_door). */
BPF_TABLE("percpu_array", int, struct sg_src_door, sg_src_door, 1);
/* Programs xdp_synguard tail-calls, filled by the loader: [SG_PROG_OPTSCAN] answers
 * a SYN whose options need the bounded scan, [SG_PROG_KCOOKIE] a SYN to answer
 * with the kernel-cookie method. */
BPF_PROG_ARRAY(sg_progs, 3);
#define SG_PROG_OPTSCAN 0
#define SG_PROG_KCOOKIE 1 /* answers a SYN with the kernel's cookie (method kernel-cookie) */
#define SG_PROG_OOS 2     /* out-of-state check of a non-SYN segment (method kernel-cookie) */
/* Static allow list: SYNs pass unchallenged. */
BPF_LPM_TRIE(sg_allow_cidrs, struct sg_cidr_key, __u8, SG_CIDR_SIZE);
/* Static deny list: SYNs dropped (protect mode). */
BPF_LPM_TRIE(sg_deny_cidrs, struct sg_cidr_key, __u8, SG_CIDR_SIZE);
/* This netns's own unicast addresses (synguard_scope.h), kept by the daemon from
 * netlink; shared with the tc program. */
BPF_TABLE("hash", struct sg_addr, __u8, sg_local_addrs, SG_LOCAL_ADDRS);

/* ---- Counting ------------------------------------------------------------ */

/* The packet's counter block: one lookup per packet, then plain increments. */
static __always_inline struct sg_counter_block *counters_for(struct xdp_md *ctx)
{
	__u32 ifindex = ctx->ingress_ifindex, slot = 0;
	__u32 *mapped = sg_ifaces.lookup(&ifindex);

	if (mapped && *mapped < SG_IFACE_SLOTS)
		slot = *mapped;
	return sg_counters.lookup(&slot);
}

/* Bumps a counter; returns its new per-CPU value. */
static __always_inline __u64 count(struct sg_counter_block *blk, __u32 idx)
{
	if (idx >= SG_CNT_MAX)
		return 0;
	return ++blk->cnt[idx];
}

/* ---- Parsing: synguard_parse.h (shared with the tc program) ------------- */

static __always_inline enum sg_parse_result sg_parse(struct xdp_md *ctx, struct sg_pkt *pkt)
{
	return sg_parse_frame((void *)(long)ctx->data, (void *)(long)ctx->data_end, pkt);
}

/* ---- The SYN, read before the frame is rewritten ------------------------- */

/* What the cookie and the SYN-ACK need from a client SYN. Raw fields are as
 * loaded from the frame (network byte order in memory). */
struct sg_syn {
	__u64 saddr[2]; /* raw; IPv4 uses the low 32 bits of [0] */
	__u64 daddr[2];
	__u32 isn;      /* raw: the SYN's sequence number */
	__u32 tsval;    /* raw: the SYN's TSval, our TSecr */
	__u16 sport;    /* raw */
	__u16 dport;    /* raw */
	__u16 mss;      /* MSS option, host order; 0: none (an MSS of 0 is ignored, as by the kernel) */
	__u8 wscale;    /* window-scale option, clamped to 14; SG_WSCALE_ABSENT: none */
	__u8 sack;      /* SACK-permitted option */
	__u8 ts;        /* Timestamps option */
	__u8 ecn;       /* ECE and CWR both set (RFC 3168 ECN setup SYN) */
	__u8 ipv6;
};

#define SG_WSCALE_ABSENT 0xff

static __always_inline void syn_load(const struct sg_pkt *pkt, struct sg_syn *syn)
{
	struct tcphdr *th = pkt->tcp;

	if (pkt->ipv6) {
		struct ipv6hdr *ip6h = pkt->l3;

		/* Two 8-byte loads per address: these are SipHash's message words. */
		syn->saddr[0] = ((__u64 *)&ip6h->saddr)[0];
		syn->saddr[1] = ((__u64 *)&ip6h->saddr)[1];
		syn->daddr[0] = ((__u64 *)&ip6h->daddr)[0];
		syn->daddr[1] = ((__u64 *)&ip6h->daddr)[1];
		syn->ipv6 = 1;
	} else {
		struct iphdr *iph = pkt->l3;

		syn->saddr[0] = iph->saddr;
		syn->daddr[0] = iph->daddr;
	}
	syn->sport = th->source;
	syn->dport = th->dest;
	syn->isn = th->seq;
	syn->ecn = (((__u8 *)th)[13] & (SG_TCP_ECE | SG_TCP_CWR)) == (SG_TCP_ECE | SG_TCP_CWR);
}

/* ---- TCP options of the SYN ------------------------------------------------ */

/* Slow path: any layout, read like the kernel's tcp_parse_options(). The
 * options (<= 40 bytes) are copied to a zeroed stack buffer and scanned at a
 * capped offset from its fixed base (an offset advancing a packet pointer in a
 * loop never converges in the verifier; bpf_loop would need a callback
 * address, which BCC 0.26 cannot relocate). Bytes past the options read as
 * EOL. */
#define SG_OPTS_MAX 40
struct sg_optscan {
	__u8 buf[64 + 16]; /* read at (offset & 63) + up to 9: the verifier's bound, not the data's */
	__u32 off;
	__u32 len;
	__u32 tsval; /* raw */
	__u16 mss;
	__u8 wscale;
	__u8 sack;
	__u8 ts;
};

/* One option; returns 1 at the end of the list. */
static __always_inline int opt_scan_step(struct sg_optscan *o)
{
	__u64 off = o->off, len = o->len, kind, size;

	if (off >= len || off >= SG_OPTS_MAX)
		return 1;
	/* A no-op (off < 40) clang cannot drop: the verifier sees the bound in the
	 * register that indexes the buffer. */
	asm volatile("%0 &= 63" : "+r"(off));
	kind = o->buf[off];
	if (kind == 0) /* EOL */
		return 1;
	if (kind == 1) { /* NOP */
		o->off = off + 1;
		return 0;
	}
	size = o->buf[off + 1]; /* reads 0 (stop) past the options */
	if (size < 2 || size > len - off)
		return 1; /* a broken length ends the list, as in the kernel */
	if (kind == 2 && size == 4) {
		__u16 mss = o->buf[off + 2] << 8 | o->buf[off + 3];

		if (mss)
			o->mss = mss;
	} else if (kind == 3 && size == 3) {
		__u8 w = o->buf[off + 2];

		o->wscale = w > 14 ? 14 : w; /* clamped here: 0xff means "none" */
	} else if (kind == 4 && size == 2) {
		o->sack = 1;
	} else if (kind == 8 && size == 10) {
		o->ts = 1;
		o->tsval = o->buf[off + 2] | o->buf[off + 3] << 8 | o->buf[off + 4] << 16 |
			   (__u32)o->buf[off + 5] << 24; /* raw: bytes in frame order */
	}
	o->off = off + size;
	return 0;
}

/* A zero the verifier cannot see through (u - u of an unknown u). The scan's
 * state starts from it, so every path's state looks alike to the verifier
 * (unknown values, offset ranges) and prunes, instead of one state per
 * combination of options found. */
static __always_inline __u64 sg_opaque_zero(__u64 u)
{
	__u64 z;

	asm volatile("%0 = %1\n\t%0 -= %1" : "=&r"(z) : "r"(u));
	return z;
}

static __always_inline int synopts_scan(struct xdp_md *ctx, __u32 off, __u32 optlen,
						  struct sg_syn *syn)
{
	struct sg_optscan o = {};
	__u64 n = optlen, z = sg_opaque_zero(syn->isn);

	if (n == 0 || n > SG_OPTS_MAX)
		return 0;
	/* The length passed to the helper is n - 1 masked, plus 1: [1, 64] in the very
	 * register the helper gets (a no-op for n in [1, 40]). A plain range test is
	 * not enough for verifiers before ~6.13: clang merges it into one test on a
	 * copy of n, and 6.1 then sees a possibly zero-sized read. */
	n -= 1;
	asm volatile("%0 &= 63" : "+r"(n));
	n += 1;
	if (bpf_xdp_load_bytes(ctx, off, o.buf, n))
		return 0;
	o.len = n;
	o.off = z;
	o.mss = z;
	o.wscale = z | SG_WSCALE_ABSENT;
	o.sack = z;
	o.ts = z;
	o.tsval = z;
#pragma clang loop unroll(disable)
	for (int i = 0; i < SG_OPTS_MAX; i++)
		if (opt_scan_step(&o))
			break;
	syn->mss = o.mss;
	syn->wscale = o.wscale;
	syn->sack = o.sack;
	syn->ts = o.ts;
	syn->tsval = o.tsval;
	return 0;
}

/* Fast path: no options, or a common layout. Each starts with the MSS and is
 * read as 32-bit words (raw, network order; SG_OW) at fixed offsets:
 *    4  MSS only                        (flood tools, some stacks and middleboxes)
 *    8  MSS, NOP WS | NOP NOP SACK | SACK NOP NOP
 *   12  MSS, NOP WS, NOP NOP SACK       (Windows)
 *       MSS, NOP NOP SACK, NOP WS       (Linux without timestamps)
 *   16  MSS, SACK TS | NOP NOP TS       (no window scaling)
 *   20  MSS, SACK TS | NOP NOP TS, NOP WS   (Linux v4/v6, Android; TS without SACK)
 *       MSS, NOP WS, SACK TS | NOP NOP TS   (FreeBSD)
 *   24  MSS, NOP WS, NOP NOP TS, SACK EOL EOL | NOP NOP SACK   (macOS, iOS)
 * ("TS" = kind 8, length 10, then TSval and TSecr: 3 words.) Returns 0 for any
 * other layout: the caller tail-calls xdp_synguard_optscan, which reads the same
 * values from these (tests/test_xdp.py checks both agree). */
#define SG_OW(x) bpf_htonl(x)

/* NOP, window scale (any shift). */
static __always_inline int sg_ow_ws(__u32 w)
{
	return (w & SG_OW(0xffffff00)) == SG_OW(0x01030300);
}

/* SACK-permitted padded to a word (SACK EOL EOL only as the last word: sg_ow_sack_last). */
static __always_inline int sg_ow_sack(__u32 w)
{
	return w == SG_OW(0x01010402) || w == SG_OW(0x04020101);
}

static __always_inline int sg_ow_sack_last(__u32 w)
{
	return sg_ow_sack(w) || w == SG_OW(0x04020000);
}

/* Timestamps' first word: 2 = SACK-permitted + TS, 1 = NOP NOP TS, 0 = neither. */
static __always_inline __u32 sg_ow_ts(__u32 w)
{
	return w == SG_OW(0x0402080a) ? 2 : w == SG_OW(0x0101080a);
}

static __always_inline int synopts_fast(struct xdp_md *ctx, const struct sg_pkt *pkt, struct sg_syn *syn)
{
	struct tcphdr *th = pkt->tcp;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 optlen = th->doff * 4 - sizeof(*th); /* parse_tcphdr checked doff >= 5 */
	__u32 *w = (void *)(th + 1);
	__u32 ws = 0, ts = 0, sack = 0, tsval = 0; /* ws: the NOP WS word, 0: none; ts: sg_ow_ts() */
	__u32 mss = 0, wscale = SG_WSCALE_ABSENT;
	__u64 z;

	if (optlen == 0)
		goto found;
	/* The frame holds doff * 4 bytes (parse_tcphdr); each check below is the
	 * verifier's, with a constant. */
	if ((void *)(w + 1) > data_end || (w[0] & SG_OW(0xffff0000)) != SG_OW(0x02040000))
		return 0; /* every fast layout starts with the MSS */
	mss = bpf_ntohl(w[0]) & 0xffff; /* 0: none, as in the kernel */
	/* Linux's (and Android's) first: the most common, and the one to beat. */
	if (optlen == 20 && (void *)(w + 5) <= data_end && w[1] == SG_OW(0x0402080a) && sg_ow_ws(w[4])) {
		ts = 2;
		tsval = w[2];
		ws = w[4];
		goto found;
	}
	switch (optlen) {
	case 4:
		break;
	case 8:
		if ((void *)(w + 2) > data_end)
			return 0;
		if (sg_ow_ws(w[1]))
			ws = w[1];
		else if (sg_ow_sack_last(w[1]))
			sack = 1;
		else
			return 0;
		break;
	case 12:
		if ((void *)(w + 3) > data_end)
			return 0;
		if (sg_ow_ws(w[1]) && sg_ow_sack_last(w[2]))
			ws = w[1];
		else if (sg_ow_sack(w[1]) && sg_ow_ws(w[2]))
			ws = w[2];
		else
			return 0;
		sack = 1;
		break;
	case 16:
		if ((void *)(w + 4) > data_end)
			return 0;
		ts = sg_ow_ts(w[1]);
		tsval = w[2];
		break;
	case 20:
		if ((void *)(w + 5) > data_end)
			return 0;
		ts = sg_ow_ts(w[1]);
		if (ts) { /* Linux, Android: MSS, [SACK] TS, NOP WS */
			tsval = w[2];
			ws = w[4];
		} else { /* FreeBSD: MSS, NOP WS, [SACK] TS */
			ws = w[1];
			ts = sg_ow_ts(w[2]);
			tsval = w[3];
		}
		if (!sg_ow_ws(ws))
			return 0;
		break;
	case 24: /* Apple */
		if ((void *)(w + 6) > data_end)
			return 0;
		if (!sg_ow_ws(w[1]) || w[2] != SG_OW(0x0101080a) || !sg_ow_sack_last(w[5]))
			return 0;
		ws = w[1];
		ts = 1;
		sack = 1;
		tsval = w[3];
		break;
	default:
		return 0;
	}
	if (optlen >= 16 && !ts)
		return 0;
found:
	if (ws) {
		__u32 shift = bpf_ntohl(ws) & 0xff;

		wscale = shift > 14 ? 14 : shift; /* RFC 7323 limit; 0xff means "none" */
	}
	/* Through a zero the verifier cannot see (as the scan's state): every layout
	 * leaves it the same unknown values, so what follows is verified once, not once
	 * per combination of options found (190k -> 96k verified instructions on 6.18). */
	z = sg_opaque_zero(tsval);
	syn->mss = mss | z;
	syn->ts = (ts != 0) | z;
	syn->tsval = tsval | z;
	syn->sack = (sack | ts >> 1) | z;
	syn->wscale = wscale | z;
	return 1;
}

/* ---- The cookie (COOKIE.md) ------------------------------------------------ */

/* The options the cookie carries: the SYN's, within what the server accepts. */
struct sg_neg {
	__u32 opt;    /* mss_class | wscale << 2 | sack << 6 | ecn << 7 | ts << 8 */
	__u32 mss_class;
	__u32 wscale; /* 0..14, or SG_COOKIE_WSCALE_NONE */
	__u32 sack, ecn, ts;
};

static __always_inline void negotiate(const struct sg_syn *syn, __u32 tcp_opts, struct sg_neg *n)
{
	__u32 m = syn->mss, c;

	/* The kernel's syncookie tables (COOKIE.md); no option: class 0. */
	if (syn->ipv6)
		c = m >= 8940 ? 3 : m >= 1440 ? 2 : m >= 1420 ? 1 : 0;
	else
		c = m >= 1460 ? 3 : m >= 1440 ? 2 : m >= 1300 ? 1 : 0;
	n->mss_class = c;
	n->ts = syn->ts && (tcp_opts & SG_OPT_TS);
	n->wscale = SG_COOKIE_WSCALE_NONE;
	if (syn->wscale != SG_WSCALE_ABSENT && (tcp_opts & SG_OPT_WSCALE) && n->ts)
		n->wscale = syn->wscale; /* clamped to 14 when read */
	n->sack = syn->sack && (tcp_opts & SG_OPT_SACK) && n->ts;
	n->ecn = syn->ecn && (tcp_opts & SG_OPT_ECN) && n->ts;
	n->opt = c | n->wscale << 2 | n->sack << 6 | n->ecn << 7 | n->ts << 8;
}

/* h = SipHash-2-4(key, daddr | saddr | dport | sport | opt (LE u16)): 8 rounds for
 * IPv4 (14 bytes), 14 for IPv6 (38), 4 of them cached per destination. */
static __always_inline __u64 cookie_hash(const struct sg_syn *syn, const struct sg_secret *key, __u32 opt)
{
	struct sg_sip s;

	if (syn->ipv6) {
		__u32 idx = sip_cache_idx(syn->daddr[0], syn->daddr[1]);

		sip_after_daddr6(&s, key, syn->daddr[0], syn->daddr[1], sg_sip_cache.lookup(&idx));
		sip_word(&s, syn->saddr[0]);
		sip_word(&s, syn->saddr[1]);
		return sip_final(&s, sg_cookie_tail(syn->dport, syn->sport, opt, SG_COOKIE_MSG6));
	}
	sip_init(&s, key);
	sip_word(&s, (__u32)syn->daddr[0] | syn->saddr[0] << 32);
	return sip_final(&s, sg_cookie_tail(syn->dport, syn->sport, opt, SG_COOKIE_MSG4));
}

/* ---- Source addresses as map keys ---------------------------------------- */

static __always_inline void addr_from_syn(const struct sg_syn *syn, struct sg_addr *a)
{
	if (syn->ipv6) {
		__builtin_memcpy(a->addr, syn->saddr, 16);
	} else {
		a->addr[0] = 0;
		a->addr[1] = 0;
		a->addr[2] = bpf_htonl(0xffff);
		a->addr[3] = (__u32)syn->saddr[0];
	}
}

/* BCC rewrites map.lookup() per map, so each trie gets its own helper. */
static __always_inline void cidr_key(const struct sg_addr *a, struct sg_cidr_key *key)
{
	key->prefixlen = 128;
	__builtin_memcpy(key->addr, a->addr, 16);
}

static __always_inline int cidr_allowed(const struct sg_addr *a)
{
	struct sg_cidr_key key;

	cidr_key(a, &key);
	return sg_allow_cidrs.lookup(&key) != NULL;
}

static __always_inline int cidr_denied(const struct sg_addr *a)
{
	struct sg_cidr_key key;

	cidr_key(a, &key);
	return sg_deny_cidrs.lookup(&key) != NULL;
}

/* A sampled SYN of source a (z: its HyperLogLog hash). A source not in the
 * table enters it only on its second sample on this CPU (struct sg_src_door). */
static __always_inline void src_sample(const struct sg_addr *a, __u64 z, __u32 now_s, __u16 dport)
{
	__u32 zero = 0, fp = z >> 32, *slot;
	struct sg_src_door *door = sg_src_door.lookup(&zero);
	struct sg_src_stat *st;
	struct sg_src_stat fresh = { .syns = 2 * SG_SRC_SAMPLE, .last_seen_s = now_s, .last_dport = dport };

	if (!door)
		return;
	slot = &door->fp[z & (SG_SRC_DOOR - 1)];
	if (*slot != fp) { /* first sample (or the slot's last was another source) */
		*slot = fp;
		return;
	}
	st = sg_src_syns.lookup((struct sg_addr *)a);
	if (st) {
		__sync_fetch_and_add(&st->syns, SG_SRC_SAMPLE);
		st->last_seen_s = now_s;
		st->last_dport = dport;
		return;
	}
	sg_src_syns.update((struct sg_addr *)a, &fresh);
}

/* ---- Checksums (computed in full: SYNs on veth carry partial sums) -------- */

/* One's complement sums are taken over 32-bit words as stored in the frame
 * (raw, network order), accumulated in 64 bits and folded once: the result is
 * byte-order neutral (RFC 1071), and computing from registers instead of
 * reading the frame back keeps the verifier's packet-range tracking simple. */
static __always_inline __u16 sg_fold64(__u64 sum)
{
	sum = (sum & 0xffffffff) + (sum >> 32);
	sum = (sum & 0xffffffff) + (sum >> 32);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return ~sum;
}

/* ---- The reply: rewrite the SYN into the cookie SYN-ACK --------------------- */

#define SG_SYNACK_TCP_LEN 40       /* 20 + 20 bytes of options: doff 10 */
#define SG_SYNACK_TCP_LEN_SHORT 24 /* 20 + MSS only: doff 6 (no timestamps negotiated) */
#define SG_NOP4 0x01010101         /* four NOPs (byte-order neutral) */
#define SG_SYNACK_PAD_MAX 16       /* NOP bytes that may end the options instead of a shrink */

/* The SYN-ACK's options, in Linux's order (COOKIE.md): 20 bytes, or the MSS
 * alone (tcp_len SG_SYNACK_TCP_LEN_SHORT; w[1..4] are 0 then, which the
 * checksum's sum ignores). */
struct sg_synack_opts {
	__u32 w[5]; /* raw */
	__u32 tcp_len; /* SG_SYNACK_TCP_LEN or SG_SYNACK_TCP_LEN_SHORT */
};

static __always_inline void synack_opts(const struct sg_config *cfg, const struct sg_syn *syn,
					const struct sg_neg *n, __u64 h, struct sg_synack_opts *o)
{
	__u32 mss = syn->ipv6 ? cfg->synack_mss6 : cfg->synack_mss4;

	o->w[0] = bpf_htonl(0x02040000 | mss);
	if (n->ts) {
		__u32 tsval = ((__u32)(h >> 32) & 0xffffffc0) | n->wscale | n->sack << 4 | n->ecn << 5;

		o->w[1] = bpf_htonl((n->sack ? 0x04020000 : 0x01010000) | 0x080a);
		o->w[2] = bpf_htonl(tsval);
		o->w[3] = syn->tsval;
		o->w[4] = n->wscale != SG_COOKIE_WSCALE_NONE ? bpf_htonl(0x01030300 | cfg->synack_wscale) : SG_NOP4;
		o->tcp_len = SG_SYNACK_TCP_LEN;
	} else {
		/* SACK, window scaling and ECN ride on timestamps (negotiate()): MSS only. */
		o->w[1] = 0;
		o->w[2] = 0;
		o->w[3] = 0;
		o->w[4] = 0;
		o->tcp_len = SG_SYNACK_TCP_LEN_SHORT;
	}
}

/* Writes the SYN-ACK at l3_off (after the Ethernet header and any VLAN tags,
 * which stay), sizing the frame to it when the SYN's length differs (options
 * other than 20 bytes, IP options, IPv6 extension headers, Ethernet padding).
 * A longer reply grows the frame at the head (bpf_xdp_adjust_head): drivers
 * and veth guarantee XDP_PACKET_HEADROOM, while tailroom depends on the skb
 * (measured on veth: an AF_PACKET-sent 54-byte SYN often has < 20 bytes of it,
 * and bpf_xdp_adjust_tail fails). A shorter one shrinks at the tail, which
 * needs no room. Returns XDP_TX, or XDP_PASS when the frame cannot be resized. */
static __always_inline int synack_send(struct xdp_md *ctx, __u32 l3_off, const struct sg_syn *syn,
				       __u32 seq, __u8 flags, const struct sg_synack_opts *o)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 tcp_len = o->tcp_len == SG_SYNACK_TCP_LEN ? SG_SYNACK_TCP_LEN : SG_SYNACK_TCP_LEN_SHORT;
	__u32 l3_len = (syn->ipv6 ? sizeof(struct ipv6hdr) : sizeof(struct iphdr)) + tcp_len;
	__u64 l2[3]; /* Ethernet header + up to 2 VLAN tags (22 bytes), read as 3 words */
	int delta;
	__u32 len = tcp_len; /* the TCP header on the wire: + NOP padding */
	__u64 nops = 0;      /* the padding's sum */

	/* The parsed SYN has >= 54 bytes, so 24 can always be read. Explicit word
	 * loads and stores here and below: memcpy to or from the packet (alignment
	 * unknown to clang) becomes byte moves; the x86/arm64 JITs take unaligned
	 * words, and the verifier checks packet alignment only in strict mode. */
	if (data + sizeof(l2) > data_end)
		return XDP_ABORTED;
	l2[0] = ((__u64 *)data)[0];
	l2[1] = ((__u64 *)data)[1];
	l2[2] = ((__u64 *)data)[2];
	l3_off &= 0x1f; /* bounded for the verifier: Ethernet + 2 tags = 22 */
	delta = (int)(l3_off + l3_len) - (int)(data_end - data);
	if (delta > 0) {
		if (bpf_xdp_adjust_head(ctx, -delta))
			return XDP_PASS;
	} else if (delta < 0) {
		/* A SYN longer than the reply by whole words, up to SG_SYNACK_PAD_MAX bytes
		 * (its options were: MSS+WS, MSS+SACK, Windows, macOS), keeps its length:
		 * the reply's options end with that many NOPs instead of a shrink. */
		if (delta >= -SG_SYNACK_PAD_MAX && !(delta & 3)) {
			len += -delta;
			nops = (__u64)(-delta / 4) * SG_NOP4;
			delta = 0;
		} else if (bpf_xdp_adjust_tail(ctx, delta)) {
			return XDP_PASS;
		}
	}
	if (delta) {
		data = (void *)(long)ctx->data; /* every packet pointer is void after either */
		data_end = (void *)(long)ctx->data_end;
	}

	/* L2: MACs swapped, tags and EtherType as they were (bytes past l3_off are
	 * overwritten by the L3 header below). */
	__u8 *eth = data;
	if ((void *)(eth + sizeof(l2)) > data_end)
		return XDP_ABORTED;
	/* Little-endian words: l2[0] holds bytes 0-7, l2[1] bytes 8-15. */
	*(__u32 *)(eth + 0) = (__u32)(l2[0] >> 48 | l2[1] << 16); /* dst = old src, bytes 6-9 */
	*(__u16 *)(eth + 4) = (__u16)(l2[1] >> 16);               /* ... 10-11 */
	*(__u32 *)(eth + 6) = (__u32)l2[0];                       /* src = old dst, bytes 0-3 */
	*(__u16 *)(eth + 10) = (__u16)(l2[0] >> 32);              /* ... 4-5 */
	*(__u32 *)(eth + 12) = (__u32)(l2[1] >> 32);              /* EtherType / tags as they were */
	*(__u64 *)(eth + 16) = l2[2];

	void *l3 = data + l3_off;
	__u32 *th;
	__u64 sum;

	if (syn->ipv6) {
		struct ipv6hdr *ip6h = l3;

		if ((void *)ip6h + sizeof(*ip6h) + SG_SYNACK_TCP_LEN_SHORT > data_end)
			return XDP_ABORTED;
		th = (void *)(ip6h + 1);
		*(__be32 *)ip6h = bpf_htonl(0x60000000); /* version 6, no class/flow */
		ip6h->payload_len = bpf_htons(len);
		ip6h->nexthdr = IPPROTO_TCP;
		ip6h->hop_limit = 64;
		((__u64 *)&ip6h->saddr)[0] = syn->daddr[0];
		((__u64 *)&ip6h->saddr)[1] = syn->daddr[1];
		((__u64 *)&ip6h->daddr)[0] = syn->saddr[0];
		((__u64 *)&ip6h->daddr)[1] = syn->saddr[1];
		sum = (syn->saddr[0] & 0xffffffff) + (syn->saddr[0] >> 32) + (syn->saddr[1] & 0xffffffff) +
		      (syn->saddr[1] >> 32) + (syn->daddr[0] & 0xffffffff) + (syn->daddr[0] >> 32) +
		      (syn->daddr[1] & 0xffffffff) + (syn->daddr[1] >> 32);
	} else {
		struct iphdr *iph = l3;
		__u32 w0 = bpf_htonl(0x45000000 | (sizeof(*iph) + len));                /* v4, ihl 5, tos 0, length */
		__u32 w1 = bpf_htonl(0x00004000);                                      /* id 0, DF */
		__u32 w2 = bpf_htonl(64 << 24 | IPPROTO_TCP << 16);                     /* ttl, protocol */

		if ((void *)iph + sizeof(*iph) + SG_SYNACK_TCP_LEN_SHORT > data_end)
			return XDP_ABORTED;
		th = (void *)(iph + 1);
		sum = (__u64)(__u32)syn->saddr[0] + (__u32)syn->daddr[0];
		((__u32 *)iph)[0] = w0;
		((__u32 *)iph)[1] = w1;
		((__u32 *)iph)[2] = w2 | (__u32)sg_fold64(sum + w0 + w1 + w2) << 16; /* the checksum: bytes 10-11 */
		iph->saddr = (__u32)syn->daddr[0];
		iph->daddr = (__u32)syn->saddr[0];
	}

	/* TCP header as 32-bit words: ports, seq, ack, doff/flags/window, checksum/urg, options. */
	__u32 ports = (__u32)syn->dport | (__u32)syn->sport << 16;
	__u32 seq_raw = bpf_htonl(seq);
	__u32 ack_raw = bpf_htonl(bpf_ntohl(syn->isn) + 1);
	__u32 w3 = bpf_htonl((len / 4) << 28 | (__u32)flags << 16 | 65535);

	th[0] = ports;
	th[1] = seq_raw;
	th[2] = ack_raw;
	th[3] = w3;
	th[5] = o->w[0];
	if (tcp_len == SG_SYNACK_TCP_LEN) {
		if ((void *)(th + SG_SYNACK_TCP_LEN / 4) > data_end)
			return XDP_ABORTED;
		th[6] = o->w[1];
		th[7] = o->w[2];
		th[8] = o->w[3];
		th[9] = o->w[4];
	}
	if (len != tcp_len) {
		__u32 *p = th + (tcp_len == SG_SYNACK_TCP_LEN ? SG_SYNACK_TCP_LEN / 4 : SG_SYNACK_TCP_LEN_SHORT / 4);

#pragma unroll
		for (int k = 0; k < SG_SYNACK_PAD_MAX / 4; k++) {
			if (k * 4 >= len - tcp_len)
				break;
			if ((void *)(p + k + 1) > data_end)
				return XDP_ABORTED;
			p[k] = SG_NOP4;
		}
	}
	/* Pseudo-header (addresses above, protocol, length) + header + options
	 * (w[1..4] are 0 in a short reply) + the NOP words. */
	sum += (__u64)bpf_htons(IPPROTO_TCP) + bpf_htons(len) + ports + seq_raw + ack_raw + w3 +
	       o->w[0] + o->w[1] + o->w[2] + o->w[3] + o->w[4] + nops; /* 64-bit adds: no carry lost */
	th[4] = sg_fold64(sum); /* checksum, urgent pointer 0 */
	return XDP_TX;
}

/* ---- Classification ------------------------------------------------------ */

static __always_inline struct sg_port *port_lookup(__be16 dport)
{
	__u32 port = bpf_ntohs(dport); /* sg_ports is indexed in host order */

	return sg_ports.lookup(&port);
}

/* Is this port protected now? protect: listed (or all); auto: also armed, the port
 * itself (detector or fast trigger) or every port at once (sg_config.all_until_s). */
static __always_inline int port_protected(const struct sg_config *cfg, const struct sg_port *p)
{
	if (!p || !(cfg->all_ports || p->protect))
		return 0;
	if (cfg->mode == SG_MODE_PROTECT)
		return 1;
	return cfg->mode == SG_MODE_AUTO && ((__s32)(p->auto_until_s - cfg->now_s) > 0 ||
					     (__s32)(cfg->all_until_s - cfg->now_s) > 0);
}

/* splitmix64 finaliser: HyperLogLog needs well-mixed bits. */
static __always_inline __u64 sg_mix64(__u64 z)
{
	z ^= z >> 30;
	z *= 0xbf58476d1ce4e5b9ULL;
	z ^= z >> 27;
	z *= 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

/* 1 when the top `bits` bits of x are all zero, else 0, without a branch (BPF
 * has no setcc: a comparison is a jump, mispredicted about once a SYN under a
 * random flood): (x >> (64 - bits)) - 1 wraps to all ones only from 0. */
#define SG_TOP_ZERO(x, bits) ((((x) >> (64 - (bits))) - 1) >> 63)

/* Leading zeros of a non-zero u64, branch-free (BPF has no clz instruction):
 * binary search with the steps computed as shifts. */
static __always_inline __u32 sg_clz64(__u64 x)
{
	__u64 n, s;

	n = SG_TOP_ZERO(x, 32) << 5; x <<= n;
	s = SG_TOP_ZERO(x, 16) << 4; x <<= s; n += s;
	s = SG_TOP_ZERO(x, 8) << 3; x <<= s; n += s;
	s = SG_TOP_ZERO(x, 4) << 2; x <<= s; n += s;
	s = SG_TOP_ZERO(x, 2) << 1; x <<= s; n += s;
	return n + SG_TOP_ZERO(x, 1);
}

/* The source's hash: HyperLogLog's, and the sample doorkeeper's. */
static __always_inline __u64 src_hash(const struct sg_addr *a)
{
	return sg_mix64((__u64)(a->addr[0] ^ a->addr[2]) << 32 | (a->addr[1] ^ a->addr[3]));
}

static __always_inline void hll_add(struct sg_counter_block *cnt, __u64 z, __u32 now_s)
{
	__u32 bank = now_s & 1;
	struct sg_hll *hll = &cnt->hll[bank];
	__u32 idx = z >> (64 - SG_HLL_BITS);
	/* The rank of the bits after the index: leading zeros + 1, at most
	 * 64 - SG_HLL_BITS + 1 (all zero), which the guard bit gives without a branch. */
	__u64 rest = z << SG_HLL_BITS | 1ULL << (SG_HLL_BITS - 1);
	__u8 rho = sg_clz64(rest) + 1;

	if (cnt->hll_window[bank] != now_s) {
		/* First SYN of a new second on this CPU: start the bank afresh. */
		__u64 *w = (__u64 *)hll->reg;
#pragma unroll
		for (int i = 0; i < SG_HLL_REGS / 8; i++)
			w[i] = 0;
		cnt->hll_window[bank] = now_s;
	}
	if (rho > hll->reg[idx & (SG_HLL_REGS - 1)])
		hll->reg[idx & (SG_HLL_REGS - 1)] = rho;
}

/* Per-port SYN count; in auto mode, the in-kernel fast trigger: a watched
 * port crossing fast_trigger_syns in one second on one CPU is armed for
 * fast_hold_s at once, before the control plane's next tick. Unwatched ports
 * count together in slot 0: the SYN that takes them across arms its own port
 * (a flood to one unwatched port arms that port). */
static __always_inline void port_count(const struct sg_config *cfg, struct sg_port *p,
				       struct sg_counter_block *cnt)
{
	struct sg_port_syns *ps;

	if (!p)
		return;
	ps = &cnt->ports[p->watch_slot & (SG_PORT_SLOTS - 1)];
	ps->syns += 1;
	if (ps->window_s != cfg->now_s) {
		ps->window_s = cfg->now_s;
		ps->window_syns = 0;
	}
	ps->window_syns += 1;
	if (cfg->mode == SG_MODE_AUTO && cfg->fast_trigger_syns && ps->window_syns == cfg->fast_trigger_syns &&
	    (__s32)(p->auto_until_s - cfg->now_s) < (__s32)(cfg->fast_hold_s >> 1)) {
		p->auto_until_s = cfg->now_s + cfg->fast_hold_s;
		count(cnt, SG_CNT_FAST_TRIGGER);
	}
}

/* The socket the kernel would give this SYN (a listener, or a TIME_WAIT/request
 * socket of the same 4-tuple), looked up in the ingress device's namespace.
 * NULL: none. The caller releases it. */
static __always_inline struct bpf_sock *syn_sk_lookup(struct xdp_md *ctx, const struct sg_syn *syn)
{
	struct bpf_sock_tuple t = {};

	if (syn->ipv6) {
		__builtin_memcpy(t.ipv6.saddr, syn->saddr, 16);
		__builtin_memcpy(t.ipv6.daddr, syn->daddr, 16);
		t.ipv6.sport = syn->sport;
		t.ipv6.dport = syn->dport;
		return bpf_skc_lookup_tcp(ctx, &t, sizeof(t.ipv6), BPF_F_CURRENT_NETNS, 0);
	}
	t.ipv4.saddr = (__u32)syn->saddr[0];
	t.ipv4.daddr = (__u32)syn->daddr[0];
	t.ipv4.sport = syn->sport;
	t.ipv4.dport = syn->dport;
	return bpf_skc_lookup_tcp(ctx, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
}

/* 1 when the kernel already holds this SYN's 4-tuple in a TIME_WAIT socket (the
 * server closed first and the client's port came round again) or a connection.
 * Such a SYN is the kernel's: it reuses a TIME_WAIT socket for a newer SYN.
 * Answered with our cookie instead, the client's ACK would meet the TIME_WAIT
 * socket (the tc program's bpf_sk_lookup_tcp() finds no listener for a TIME_WAIT
 * 4-tuple): the client believes it is connected and its data is lost.
 * A request socket (a SYN the kernel took before the port was armed) is not
 * "held": a cookie ACK for its 4-tuple still finds the listener, and a flood that
 * repeats its 4-tuples would otherwise reach the kernel through its SYN queue. */
static __always_inline int syn_tuple_held(struct xdp_md *ctx, const struct sg_syn *syn)
{
	struct bpf_sock *sk = syn_sk_lookup(ctx, syn);
	int held;

	if (!sk)
		return 0;
	held = sk->state != BPF_TCP_LISTEN && sk->state != BPF_TCP_NEW_SYN_RECV;
	bpf_sk_release(sk);
	return held;
}

/* The answer to a SYN whose options are read: negotiate, hash, rewrite, count. */
static __always_inline int synack_reply(struct xdp_md *ctx, const struct sg_config *cfg,
					struct sg_counter_block *cnt, __u32 l3_off, struct sg_syn *syn)
{
	struct sg_secret *key;
	struct sg_neg neg;
	struct sg_synack_opts opts;
	__u32 parity = cfg->slot & 1, seq;
	__u64 h;
	int verdict;

	if (syn_tuple_held(ctx, syn)) {
		count(cnt, SG_CNT_SYN_PASSED);
		return XDP_PASS;
	}
	negotiate(syn, cfg->tcp_opts, &neg);
	key = sg_secrets.lookup(&parity);
	if (!key)
		return XDP_ABORTED;
	h = cookie_hash(syn, key, neg.opt);
	seq = (((__u32)h + bpf_ntohl(syn->isn)) & 0xfffffff8) | parity << 2 | neg.mss_class;
	synack_opts(cfg, syn, &neg, h, &opts);
	verdict = synack_send(ctx, l3_off, syn, seq, SG_TCP_SYN | SG_TCP_ACK | (neg.ecn ? SG_TCP_ECE : 0), &opts);
	if (verdict != XDP_PASS) {
		count(cnt, SG_CNT_CHALLENGE_SENT);
		return verdict;
	}
	count(cnt, SG_CNT_SYN_PASSED);
	return XDP_PASS;
}

/* ---- Method SG_METHOD_KERNEL_COOKIE: the kernel's own cookie ------------------
 * For kernels without bpf_sk_assign_tcp_reqsk() (Debian 12's 6.1, Ubuntu 22.04 /
 * 24.04). bpf_tcp_gen_syncookie() (5.3+) makes the cookie the kernel itself would
 * send, and arms the listener's "recent SYN queue overflow" flag, so the kernel
 * accepts the client's ACK by itself (cookie_v4_check / cookie_v6_check): no tc
 * program. The helper answers -ENOENT unless tcp_syncookies=2 or the listener's
 * SYN queue is full: the SYN then goes to the kernel, which queues it. So the
 * daemon sets tcp_syncookies=2 while it protects with this method
 * (synguard/kernel.py SyncookiesHold) and XDP answers from the first SYN; only
 * the in-kernel fast trigger's first second (before the daemon's tick) passes.
 * Options: the kernel's cookie keeps the client's MSS class (536/1300/1440/1460;
 * IPv6 1220/1420/1440/8940). With tcp_timestamps=2 (no secret TS offset) a SYN
 * with timestamps also keeps window scaling, SACK and ECN, carried in our TSval
 * exactly as the kernel encodes them (kcookie_ts()); with tcp_timestamps=1 the
 * kernel would subtract a per-connection secret from the echo, so we send MSS
 * only: no window scaling, SACK, timestamps or ECN on those connections. */

/* bpf_tcp_gen_syncookie() wants th_len == doff * 4 as a size the verifier can
 * bound against the packet: one constant-size check and call per doff value. */
#define SG_KCOOKIE_DOFF(n)                                                        \
	case n:                                                                   \
		if ((void *)th + (n) * 4 > data_end)                              \
			return -1;                                                \
		return bpf_tcp_gen_syncookie(sk, l3, l3_len, th, (n) * 4)

/* The kernel's cookie for the SYN (low 32 bits) and the MSS it encodes (bits
 * 32-47), or a negative errno. */
static __always_inline __s64 kcookie_gen(struct xdp_md *ctx, struct bpf_sock *sk, const struct sg_pkt *pkt)
{
	void *data_end = (void *)(long)ctx->data_end;
	struct tcphdr *th = pkt->tcp;
	void *l3 = pkt->l3;
	__u32 l3_len = pkt->ipv6 ? sizeof(struct ipv6hdr) : sizeof(struct iphdr);

	/* One check covers both families: an IPv4 TCP segment has >= 40 bytes from l3 too. */
	if (l3 + sizeof(struct ipv6hdr) > data_end)
		return -1;
	switch (th->doff) {
	SG_KCOOKIE_DOFF(5);
	SG_KCOOKIE_DOFF(6);
	SG_KCOOKIE_DOFF(7);
	SG_KCOOKIE_DOFF(8);
	SG_KCOOKIE_DOFF(9);
	SG_KCOOKIE_DOFF(10);
	SG_KCOOKIE_DOFF(11);
	SG_KCOOKIE_DOFF(12);
	SG_KCOOKIE_DOFF(13);
	SG_KCOOKIE_DOFF(14);
	SG_KCOOKIE_DOFF(15);
	}
	return -1; /* doff < 5: parse_tcphdr refused it already */
}

#define SG_ENOENT 2

/* The kernel's timestamp cookie (cookie_init_timestamp(), 4.x-6.x): TSval = the TCP
 * clock in ms (CLOCK_MONOTONIC, as bpf_ktime_get_ns()) with its low 6 bits replaced by
 * the options (wscale, or 0xf for none; SACK << 4; ECN << 5), stepped back 64 ms when
 * that lies ahead of the clock, so the connection's later TSvals never go backwards.
 * The kernel decodes the options from the client's TSecr when it completes the ACK
 * (cookie_timestamp_decode()); only with tcp_timestamps=2 does it subtract no secret
 * per-connection offset first (SG_OPT_TS_NO_OFFSET). Returns the TSval in the high
 * 32 bits, where synack_opts() takes the hash's, which then adds the same option bits. */
static __always_inline __u64 kcookie_ts(const struct sg_neg *n)
{
	__u64 now = bpf_ktime_get_ns() / 1000000;
	__u32 options = n->wscale | n->sack << 4 | n->ecn << 5;
	__u32 ts = ((__u32)now & 0xffffffc0) | options;

	if (ts > (__u32)now) /* the kernel compares u64 ms; a 32-bit wrap every 49.7 days is rare enough */
		ts -= 64;
	return (__u64)ts << 32;
}

/* Answer a SYN with the kernel's cookie, or pass it to the kernel (counted why). */
static __always_inline int kcookie_reply(struct xdp_md *ctx, const struct sg_config *cfg, struct sg_pkt *pkt,
					 struct sg_syn *syn)
{
	struct sg_synack_opts opts;
	struct sg_neg neg = {};
	struct bpf_sock *sk;
	__u32 mss, ours;
	__u8 flags = SG_TCP_SYN | SG_TCP_ACK;
	__s64 ret;
	int verdict;

	/* With tcp_timestamps=2 a SYN with timestamps (in a fast-path layout) keeps window
	 * scaling, SACK and ECN through the kernel's TS encoding; else MSS only. */
	syn->ts = 0;
	if ((cfg->tcp_opts & SG_OPT_TS_NO_OFFSET) && synopts_fast(ctx, pkt, syn) && syn->ts)
		negotiate(syn, cfg->tcp_opts, &neg);
	sk = syn_sk_lookup(ctx, syn);
	if (!sk) {
		count(pkt->cnt, SG_CNT_SYN_NO_LISTENER);
		goto pass;
	}
	ret = kcookie_gen(ctx, (struct bpf_sock *)sk, pkt);
	bpf_sk_release(sk);
	if (ret < 0) {
		count(pkt->cnt, ret == -SG_ENOENT ? SG_CNT_SYN_QUEUE_ROOM : SG_CNT_SYN_COOKIE_ERROR);
		goto pass;
	}
	/* MSS option: the client's MSS class the cookie encodes, never more than our
	 * own link takes (what the kernel's SYN-ACK would offer). No other option. */
	mss = (__u32)(ret >> 32) & 0xffff;
	ours = syn->ipv6 ? cfg->synack_mss6 : cfg->synack_mss4;
	if (ours && ours < mss)
		mss = ours;
	if (neg.ts) {
		synack_opts(cfg, syn, &neg, kcookie_ts(&neg), &opts);
		if (neg.ecn)
			flags |= SG_TCP_ECE;
	} else {
		opts.w[1] = 0; /* MSS only: a short SYN-ACK */
		opts.w[2] = 0;
		opts.w[3] = 0;
		opts.w[4] = 0;
		opts.tcp_len = SG_SYNACK_TCP_LEN_SHORT;
	}
	opts.w[0] = bpf_htonl(0x02040000 | mss);
	verdict = synack_send(ctx, pkt->l3_off, syn, (__u32)ret, flags, &opts);
	if (verdict != XDP_PASS) {
		count(pkt->cnt, SG_CNT_CHALLENGE_SENT);
		return verdict;
	}
pass:
	count(pkt->cnt, SG_CNT_SYN_PASSED);
	return XDP_PASS;
}

/* ---- Scope and out-of-state segments (synguard_scope.h) -------------------- */

/* Is this segment for this host (sg_config.local_only: a unicast frame to one of our
 * addresses)? Counts SG_CNT_NOT_LOCAL when not. */
static __always_inline int for_this_host(struct xdp_md *ctx, const struct sg_config *cfg, struct sg_pkt *pkt)
{
	struct sg_addr a;

	if (!cfg->local_only)
		return 1;
	if (sg_dest_key((void *)(long)ctx->data, (void *)(long)ctx->data_end, pkt, &a) && sg_local_addrs.lookup(&a))
		return 1;
	count(pkt->cnt, SG_CNT_NOT_LOCAL);
	return 0;
}

/* Is the port's traffic ours to check (protect.ports, or every port)? Auto mode
 * checks listed ports whether armed or not: cookie ACKs and out-of-state counts. */
static __always_inline int port_listed(const struct sg_config *cfg, const struct sg_port *p)
{
	return cfg->all_ports || (p && p->protect);
}

/* The out-of-state rule for a non-SYN segment (method kernel-cookie): the socket of
 * its 4-tuple, else a valid kernel cookie, else out of state. */
static __always_inline int oos_check(struct xdp_md *ctx, const struct sg_config *cfg, struct sg_pkt *pkt)
{
	void *data_end = (void *)(long)ctx->data_end;
	struct tcphdr *th = pkt->tcp;
	struct bpf_sock_tuple t = {};
	struct bpf_sock *sk;
	__u32 kind, doff;
	__u8 flags;

	if ((void *)(th + 1) > data_end)
		return XDP_ABORTED; /* impossible: parsed */
	flags = ((__u8 *)th)[13];
	doff = th->doff;
	if (pkt->ipv6) {
		struct ipv6hdr *ip6 = pkt->l3;

		if ((void *)(ip6 + 1) > data_end)
			return XDP_ABORTED;
		__builtin_memcpy(t.ipv6.saddr, &ip6->saddr, 16);
		__builtin_memcpy(t.ipv6.daddr, &ip6->daddr, 16);
		t.ipv6.sport = th->source;
		t.ipv6.dport = th->dest;
		sk = bpf_skc_lookup_tcp(ctx, &t, sizeof(t.ipv6), BPF_F_CURRENT_NETNS, 0);
	} else {
		struct iphdr *ip = pkt->l3;

		if ((void *)(ip + 1) > data_end)
			return XDP_ABORTED;
		t.ipv4.saddr = ip->saddr;
		t.ipv4.daddr = ip->daddr;
		t.ipv4.sport = th->source;
		t.ipv4.dport = th->dest;
		sk = bpf_skc_lookup_tcp(ctx, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
	}
	if (sk) {
		if (sk->state != BPF_TCP_LISTEN) { /* established, closing, TIME_WAIT, request */
			bpf_sk_release(sk);
			return XDP_PASS;
		}
		if ((flags & SG_TCP_ACK) && sg_kernel_cookie_check(sk, pkt->l3, pkt->ipv6, th, data_end) == 0) {
			bpf_sk_release(sk);
			count(pkt->cnt, SG_CNT_KERNEL_COOKIE_ACK);
			return XDP_PASS;
		}
		bpf_sk_release(sk);
	}
	kind = sg_oos_kind(flags, doff, pkt->l4_len);
	count(pkt->cnt, kind);
	if (!sg_oos_drop(cfg))
		return XDP_PASS;
	count(pkt->cnt, SG_CNT_OOS_DROPPED);
	return XDP_DROP;
}

static __always_inline int handle_syn(struct xdp_md *ctx, const struct sg_config *cfg,
				      struct sg_pkt *pkt)
{
	struct sg_syn syn = {};
	struct sg_addr src;
	struct sg_port *port;
	__u64 z;

	syn_load(pkt, &syn);
	addr_from_syn(&syn, &src);
	port = port_lookup(syn.dport);
	/* Detection signals: distinct sources (HLL), SYNs per watched port, and
	 * every SG_SRC_SAMPLE-th SYN per CPU into the per-source table (a hash
	 * update on every SYN would cost more than the whole SYN-ACK). */
	z = src_hash(&src);
	hll_add(pkt->cnt, z, cfg->now_s);
	port_count(cfg, port, pkt->cnt);
	if ((count(pkt->cnt, SG_CNT_SYN_RECEIVED) & (SG_SRC_SAMPLE - 1)) == 0)
		src_sample(&src, z, cfg->now_s, bpf_ntohs(syn.dport));
	if (cfg->mode == SG_MODE_OBSERVE)
		goto pass;
	if (cfg->deny_cidrs && cidr_denied(&src)) {
		count(pkt->cnt, SG_CNT_SYN_DROPPED_DENY);
		return XDP_DROP;
	}
	if (!port_protected(cfg, port))
		goto pass;
	if (cfg->allow_cidrs && cidr_allowed(&src)) {
		count(pkt->cnt, SG_CNT_SYN_ALLOW_CIDR);
		goto pass;
	}
	if (cfg->method == SG_METHOD_KERNEL_COOKIE) {
		/* A program of its own: the kfunc path's code stays as it was. */
		sg_progs.call(ctx, SG_PROG_KCOOKIE);
		goto pass; /* not reached unless the loader left the slot empty */
	}

	if (!synopts_fast(ctx, pkt, &syn)) {
		sg_progs.call(ctx, SG_PROG_OPTSCAN);
		goto pass; /* not reached unless the loader left the slot empty */
	}
	return synack_reply(ctx, cfg, pkt->cnt, pkt->l3_off, &syn);
pass:
	count(pkt->cnt, SG_CNT_SYN_PASSED);
	return XDP_PASS;
}

/* ---- Entry ----------------------------------------------------------------- */

int xdp_synguard(struct xdp_md *ctx)
{
	struct sg_pkt pkt = {};
	struct sg_config *cfg;
	__u32 zero = 0;
	__u8 flags;

	pkt.cnt = counters_for(ctx);
	if (!pkt.cnt)
		return XDP_ABORTED; /* impossible: slot < SG_IFACE_SLOTS */
	count(pkt.cnt, SG_CNT_PACKETS);
	switch (sg_parse(ctx, &pkt)) {
	case SG_PARSE_TCP:
		break;
	case SG_PARSE_MALFORMED:
		count(pkt.cnt, SG_CNT_MALFORMED);
		return XDP_PASS; /* the kernel drops what it cannot use */
	case SG_PARSE_FRAGMENT:
		count(pkt.cnt, SG_CNT_FRAGMENT);
		return XDP_PASS;
	case SG_PARSE_EXT_LIMIT:
		count(pkt.cnt, SG_CNT_IPV6_EXT_LIMIT);
		return XDP_PASS;
	default:
		return XDP_PASS;
	}
	count(pkt.cnt, SG_CNT_TCP);

	cfg = sg_config.lookup(&zero);
	if (!cfg)
		return XDP_ABORTED;
	flags = ((__u8 *)pkt.tcp)[13];
	/* A SYN (no ACK, no RST) is ours; the tc program sees the ACKs (method kfunc). */
	if ((flags & (SG_TCP_SYN | SG_TCP_ACK | SG_TCP_RST)) == SG_TCP_SYN) {
		if (!for_this_host(ctx, cfg, &pkt))
			return XDP_PASS;
		return handle_syn(ctx, cfg, &pkt);
	}
	/* Method kernel-cookie has no tc program: the out-of-state check is here. */
	if (cfg->method == SG_METHOD_KERNEL_COOKIE && !(flags & SG_TCP_SYN) && cfg->mode != SG_MODE_OBSERVE &&
	    port_listed(cfg, port_lookup(pkt.tcp->dest)) && for_this_host(ctx, cfg, &pkt))
		sg_progs.call(ctx, SG_PROG_OOS);
	return XDP_PASS;
}

/* Tail-called by xdp_synguard (sg_progs[SG_PROG_OPTSCAN]) for a SYN it parsed,
 * counted and classified as one to answer, whose options are not a fast-path
 * layout. A program of its own: the scan's loop and buffer stay out of the
 * main program's registers and verification. */
int xdp_synguard_optscan(struct xdp_md *ctx)
{
	struct sg_pkt pkt = {};
	struct sg_syn syn = {};
	struct sg_config *cfg;
	__u32 zero = 0, off, optlen;

	pkt.cnt = counters_for(ctx);
	cfg = sg_config.lookup(&zero);
	if (!pkt.cnt || !cfg || sg_parse(ctx, &pkt) != SG_PARSE_TCP)
		return XDP_ABORTED; /* impossible: xdp_synguard parsed this frame */
	syn_load(&pkt, &syn);
	off = (void *)(pkt.tcp + 1) - (void *)(long)ctx->data;
	optlen = pkt.tcp->doff * 4 - sizeof(struct tcphdr);
	syn.wscale = SG_WSCALE_ABSENT;
	synopts_scan(ctx, off, optlen, &syn);
	return synack_reply(ctx, cfg, pkt.cnt, pkt.l3_off, &syn);
}

/* Tail-called by xdp_synguard (sg_progs[SG_PROG_KCOOKIE]) for a SYN it parsed,
 * counted and classified as one to answer, when sg_config.method is
 * SG_METHOD_KERNEL_COOKIE: the socket lookup and bpf_tcp_gen_syncookie() stay out
 * of the main program, whose kfunc-method path is unchanged by them. */
int xdp_synguard_kcookie(struct xdp_md *ctx)
{
	struct sg_pkt pkt = {};
	struct sg_syn syn = {};
	struct sg_config *cfg;
	__u32 zero = 0;

	pkt.cnt = counters_for(ctx);
	cfg = sg_config.lookup(&zero);
	if (!pkt.cnt || !cfg || sg_parse(ctx, &pkt) != SG_PARSE_TCP)
		return XDP_ABORTED; /* impossible: xdp_synguard parsed this frame */
	syn_load(&pkt, &syn);
	return kcookie_reply(ctx, cfg, &pkt, &syn);
}

/* Tail-called by xdp_synguard (sg_progs[SG_PROG_OOS]) for a non-SYN segment to a
 * listed port of this host when sg_config.method is SG_METHOD_KERNEL_COOKIE (no tc
 * program on such kernels): the out-of-state rule (synguard_scope.h), in a program
 * of its own so the SYN path's code and verification stay as they were. */
int xdp_synguard_oos(struct xdp_md *ctx)
{
	struct sg_pkt pkt = {};
	struct sg_config *cfg;
	__u32 zero = 0;

	pkt.cnt = counters_for(ctx);
	cfg = sg_config.lookup(&zero);
	if (!pkt.cnt || !cfg || sg_parse(ctx, &pkt) != SG_PARSE_TCP)
		return XDP_ABORTED; /* impossible: xdp_synguard parsed this frame */
	return oos_check(ctx, cfg, &pkt);
}
