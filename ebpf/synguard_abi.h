/* SPDX-License-Identifier: GPL-2.0 */
/*
 * synguard ABI: the one header shared by the XDP program (synguard.bpf.c) and
 * mirrored, name for name, by synguard/abi.py. tests/test_abi.py parses this
 * file and the compiled program's map types and fails on any drift.
 *
 * Contract:
 *  - enum sg_counter indexes struct sg_counter_block, one per CPU and per
 *    interface slot (sg_ifaces maps ifindex -> slot); user space sums CPUs.
 *    Append new counters before SG_CNT_MAX; never renumber (metrics and
 *    dashboards key on the names, pinned maps on the numbers).
 *  - struct sg_config is written whole by the control plane (one writer); each
 *    field is independent, so a reader seeing half an update is harmless.
 *  - Map sizes are compile-time limits, overridable with -D cflags.
 *  - Addresses are stored as 16-byte IPv6; IPv4 is mapped to ::ffff:a.b.c.d.
 */
#ifndef SYNGUARD_ABI_H
#define SYNGUARD_ABI_H

#define SG_ABI_VERSION 3

/* Compile-time limits (override with -DNAME=value). */
#ifndef SG_CIDR_SIZE
#define SG_CIDR_SIZE 4096 /* entries per static allow/deny trie */
#endif
#ifndef SG_SRC_SIZE
#define SG_SRC_SIZE 65536 /* sources kept in sg_src_syns (LRU) */
#endif
#ifndef SG_SRC_SAMPLE
#define SG_SRC_SAMPLE 16 /* sg_src_syns sees one SYN in 16 per CPU, counted as 16 */
#endif
#ifndef SG_SRC_DOOR
#define SG_SRC_DOOR 4096 /* slots of sg_src_door per CPU (a power of two) */
#endif
#ifndef SG_SLOT_SHIFT
#define SG_SLOT_SHIFT 4 /* cookie slot = wall-clock seconds >> 4 (16 s); current + previous accepted */
#endif
#define SG_PORTS 65536
#define SG_PORT_SLOTS 64 /* watched ports with their own SYN counters; slot 0 = every unwatched port together */
#define SG_ACK_GRACE_S (2 << SG_SLOT_SHIFT) /* auto mode: tc checks cookie ACKs this long after a port is disarmed
					      * (a cookie's lifetime: the current and the previous slot) */
#define SG_HLL_BITS 10 /* HyperLogLog: 1024 one-byte registers per bank */
#define SG_HLL_REGS (1 << SG_HLL_BITS)
#define SG_IFACE_SLOTS 16 /* counter blocks: slot 0 = unmapped ifindex, 1.. = attached interfaces */
#define SG_IFINDEX_MAX 4096 /* sg_ifaces covers ifindex 0..4095; larger ones count in slot 0 */ /* sg_ports is indexed by the host-order TCP port */
#define SG_IPV6_EXT_MAX 4 /* IPv6 extension headers skipped before giving up */
#define SG_VLAN_MAX 2 /* 802.1Q / 802.1ad tags parsed */
#define SG_SIP_CACHE 16 /* sg_sip_cache entries per CPU (a power of 2): a server has few addresses */
#ifndef SG_LOCAL_ADDRS
#define SG_LOCAL_ADDRS 1024 /* sg_local_addrs: this netns's own addresses (the daemon keeps it from netlink) */
#endif

/* Per-CPU counters, bumped by the XDP program (SYN side) and the tc program
 * (ACK side) in the same blocks. Names are the metric names' stems (see
 * synguard/abi.py). ABI 2 renumbered them (the RST challenge is gone). */
enum sg_counter {
	SG_CNT_PACKETS = 0,          /* XDP: every frame the program saw */
	SG_CNT_TCP = 1,              /* XDP: IPv4/IPv6 TCP segments parsed */
	SG_CNT_SYN_RECEIVED = 2,     /* XDP: SYN without ACK */
	SG_CNT_CHALLENGE_SENT = 3,   /* XDP: SYN answered with a cookie SYN-ACK (XDP_TX) */
	SG_CNT_COOKIE_VALIDATED = 4, /* tc: ACK carried a valid cookie; the kernel made the connection */
	SG_CNT_COOKIE_REFUSED = 5,   /* tc: valid cookie, but bpf_sk_assign_tcp_reqsk() refused it */
	SG_CNT_SYN_PASSED = 6,       /* XDP: SYN handed to the kernel (any reason) */
	SG_CNT_SYN_ALLOW_CIDR = 7,   /* XDP: SYN passed because of the static allow list */
	SG_CNT_SYN_DROPPED_DENY = 8, /* XDP: SYN dropped by the static deny list */
	SG_CNT_MALFORMED = 9,        /* XDP: truncated or inconsistent headers: passed */
	SG_CNT_FRAGMENT = 10,        /* XDP: IP fragments: passed, never answered */
	SG_CNT_IPV6_EXT_LIMIT = 11,  /* XDP: more IPv6 extension headers than parsed: passed */
	SG_CNT_FAST_TRIGGER = 12,    /* XDP: auto mode: a port crossed the per-second SYN ceiling */
	SG_CNT_ACK_CHECKED = 13,     /* tc: ACKs to protected ports whose cookie was checked */
	SG_CNT_COOKIE_NO_LISTENER = 14, /* tc: valid cookie but no listening socket: passed */
	/* XDP, method SG_METHOD_KERNEL_COOKIE only (each also counts SYN_PASSED): */
	SG_CNT_SYN_NO_LISTENER = 15, /* no listening socket for the SYN: passed (the kernel resets it) */
	SG_CNT_SYN_QUEUE_ROOM = 16,  /* bpf_tcp_gen_syncookie() said -ENOENT: the listener's SYN queue
				      * has room (tcp_syncookies is 1), or tcp_syncookies is 0, or its
				      * accept queue is full: passed, the kernel handles the SYN */
	SG_CNT_SYN_COOKIE_ERROR = 17, /* bpf_tcp_gen_syncookie() refused otherwise (the socket found is no
				       * listener, e.g. TIME_WAIT; SYN+FIN; IPv4 to a v6-only listener): passed */
	/* Scope (XDP and tc), when sg_config.local_only: */
	SG_CNT_NOT_LOCAL = 18,       /* TCP segment the program would act on, but not for this host (a
				      * destination address not in sg_local_addrs, or a multicast/broadcast
				      * frame: forwarded, macvlan, bridge, another netns): passed untouched */
	/* Out-of-state segments: to a protected port of this host, owned by no socket
	 * (established, TIME_WAIT, request) and carrying no valid cookie (ours or the
	 * kernel's). Counted by kind, whether dropped or not (auto mode before an
	 * ack-flood); tc (method kfunc) or XDP (method kernel-cookie): */
	SG_CNT_OOS_ACK = 19,         /* pure ACK (no payload, no FIN, no RST) */
	SG_CNT_OOS_RST = 20,         /* RST set */
	SG_CNT_OOS_FIN = 21,         /* FIN set (no RST) */
	SG_CNT_OOS_DATA = 22,        /* payload, no FIN or RST */
	SG_CNT_OOS_DROPPED = 23,     /* of those, dropped before the TCP stack (never answered) */
	SG_CNT_KERNEL_COOKIE_ACK = 24, /* ACK to a listener carrying a valid kernel cookie: passed */
	SG_CNT_MAX = 25,
};

enum sg_mode {
	SG_MODE_OBSERVE = 0, /* count only, every frame passes */
	SG_MODE_PROTECT = 1, /* deny list, allow list, cookies on protected ports */
	SG_MODE_AUTO = 2,    /* as protect, but SYNs get cookies only on ports whose auto_until_s
			      * is in the future (ACKs are checked on every listed port) */
};

/* How SYN cookies are made and completed, sg_config.method (DESIGN.md, "The defense"). */
enum sg_method {
	SG_METHOD_KFUNC_COOKIE = 0,  /* our SipHash cookie SYN-ACK with options; the tc program
				      * completes ACKs with bpf_sk_assign_tcp_reqsk() (Linux >= 6.9) */
	SG_METHOD_KERNEL_COOKIE = 1, /* the kernel's own cookie from bpf_tcp_gen_syncookie() (5.3+),
				      * MSS only; the kernel completes ACKs itself (no tc program) */
};

/* TCP options the server's own stack accepts (its sysctls), sg_config.tcp_opts:
 * the SYN-ACK must never offer what the kernel would refuse when it builds the
 * connection (bpf_sk_assign_tcp_reqsk() returns -EINVAL, the client gets a RST). */
#define SG_OPT_TS     0x1 /* net.ipv4.tcp_timestamps */
#define SG_OPT_SACK   0x2 /* net.ipv4.tcp_sack */
#define SG_OPT_WSCALE 0x4 /* net.ipv4.tcp_window_scaling */
#define SG_OPT_ECN    0x8 /* net.ipv4.tcp_ecn == 1 (accept ECN on incoming connections) */
#define SG_OPT_TS_NO_OFFSET 0x10 /* net.ipv4.tcp_timestamps == 2: the kernel adds no secret
				  * per-connection offset to TSval, so the kernel-cookie method can
				  * send the kernel's own TS cookie encoding (wscale, SACK, ECN) */

/* Cookie option bits (the 9-bit opt word of the cookie message):
 * opt = mss_class | wscale << 2 | sack << 6 | ecn << 7 | ts << 8; wscale 0xf = none. */
#define SG_COOKIE_WSCALE_NONE 0xf
/* Runtime settings: sg_config[0]. */
struct sg_config {
	__u32 mode;          /* enum sg_mode */
	__u32 all_ports;     /* 1: every port is protected (empty port list) */
	__u32 now_s;         /* control-plane clock, CLOCK_MONOTONIC seconds, set every tick */
	__u32 slot;          /* cookie slot: CLOCK_REALTIME seconds >> SG_SLOT_SHIFT, set every
			      * tick after sg_secrets[slot & 1] holds that slot's key */
	__u32 allow_cidrs;   /* entries in sg_allow_cidrs (0: skip the lookup) */
	__u32 deny_cidrs;    /* entries in sg_deny_cidrs (0: skip the lookup) */
	__u32 fast_trigger_syns; /* auto mode: SYNs per second per CPU on one port that switch
				  * protection on in-kernel (0: off) */
	__u32 fast_hold_s;   /* how long the fast trigger protects a port */
	__u16 synack_mss4;   /* MSS our SYN-ACK advertises over IPv4 (interface MTU - 40) */
	__u16 synack_mss6;   /* ... over IPv6 (interface MTU - 60) */
	__u8 synack_wscale;  /* our window scale: the kernel's own choice,
			      * ilog2(max(tcp_rmem[2], rmem_max)) - 15, clamped to 0..14 */
	__u8 tcp_opts;       /* SG_OPT_* */
	__u8 method;         /* enum sg_method */
	__u8 local_only;     /* 1: act only on segments to an address in sg_local_addrs (the daemon
			      * fills it before it attaches); 0: on any destination (tests, benchmarks) */
	__u32 all_until_s;   /* auto mode: every protected port (all_ports or listed) is challenged
			      * while now_s < all_until_s: the detector's "protect all", one switch */
	__u32 oos_until_s;   /* auto mode: drop out-of-state segments while now_s < oos_until_s
			      * (protect mode: always) */
};

/* Value of sg_ports, indexed by the host-order port. */
struct sg_port {
	__u8 protect;        /* 1: listed in protect.ports */
	__u8 watch_slot;     /* 0: unwatched, else index into sg_port_syns */
	__u16 reserved;
	__u32 auto_until_s;  /* auto mode: challenge while now_s < auto_until_s */
};

/* SYNs of one watched port (in struct sg_counter_block, per CPU). */
struct sg_port_syns {
	__u64 syns;          /* total */
	__u32 window_s;      /* now_s of the current one-second window */
	__u32 window_syns;   /* SYNs in that window (fast trigger) */
};

/* HyperLogLog registers of SYN source addresses. The program clears a bank
 * when it first writes to it in a new second (hll_window tags the second);
 * user space reads the bank of the previous second if its tag says so, and
 * merges CPUs and interfaces by max. User space never writes the block.
 * Register = leading zeros + 1 of the hash bits after the SG_HLL_BITS index
 * bits (hash: splitmix64 of the folded address). */
struct sg_hll {
	__u8 reg[SG_HLL_REGS];
};

/* Value of sg_counters, one per CPU and per interface slot: everything the
 * program counts for a packet, found with one lookup per packet. */
struct sg_counter_block {
	__u64 cnt[SG_CNT_MAX];                   /* indexed by enum sg_counter */
	struct sg_port_syns ports[SG_PORT_SLOTS]; /* by watch slot; [0] unused */
	__u32 hll_window[2];                     /* now_s each bank holds */
	struct sg_hll hll[2];                    /* bank = now_s & 1 */
};

/* SipHash-2-4 key of one cookie slot: sg_secrets[slot & 1]; k0/k1 = the 16
 * key bytes read as two little-endian u64. */
struct sg_secret {
	__u64 k0;
	__u64 k1;
};

/* SipHash-2-4 state (synguard_siphash.h). */
struct sg_sip {
	__u64 v0;
	__u64 v1;
	__u64 v2;
	__u64 v3;
};

/* Value of sg_sip_cache (per CPU, SG_SIP_CACHE entries, index sip_cache_idx()): the
 * state after a key and an IPv6 destination, the message's first 16 bytes. Written
 * and read by the XDP and tc programs only. */
struct sg_sip_cache_entry {
	__u64 daddr[2];      /* raw */
	__u64 k0;            /* the key it was made with */
	__u64 k1;
	__u64 filled;        /* 0 in a fresh entry: an all-zero key and address must not match it */
	struct sg_sip state;
};

/* Key of sg_src_syns. */
struct sg_addr {
	__u32 addr[4]; /* network byte order; IPv4 as ::ffff:a.b.c.d */
};

/* Value of sg_src_syns: sampled SYNs per source (for `synguard top`). */
struct sg_src_stat {
	__u64 syns;       /* estimated SYNs: samples x SG_SRC_SAMPLE */
	__u32 last_seen_s; /* sg_config.now_s of the last sample */
	__u16 last_dport; /* host byte order */
	__u16 reserved;
};

/* Value of sg_src_door (per CPU, the XDP program's own): the doorkeeper of
 * sg_src_syns. A sampled source enters the table on its second sample on a CPU
 * (counted as both), so a flood of random sources, each sampled once, costs one
 * array slot per sample instead of an LRU insert (~0.7 us). Slot and fingerprint
 * come from the source's HyperLogLog hash; 0: empty. */
struct sg_src_door {
	__u32 fp[SG_SRC_DOOR];
};

/* Key of sg_allow_cidrs / sg_deny_cidrs (LPM trie). */
struct sg_cidr_key {
	__u32 prefixlen; /* over the 128-bit mapped address: IPv4 /n is 96 + n */
	__u8 addr[16];
};

#endif /* SYNGUARD_ABI_H */
