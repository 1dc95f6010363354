/* SPDX-License-Identifier: GPL-2.0 */
/*
 * SipHash-2-4 (Aumasson & Bernstein) over little-endian 8-byte words, shared
 * by the XDP program (the SYN-ACK's cookie) and the tc program (the ACK's check):
 * one definition, so the two can never hash differently. synguard/cookie.py is the
 * bit-exact Python reference (ebpf/COOKIE.md). Needs synguard_abi.h (struct
 * sg_secret, struct sg_sip, struct sg_sip_cache_entry) and __u64. The verifier accepts it fully unrolled.
 */
#ifndef SYNGUARD_SIPHASH_H
#define SYNGUARD_SIPHASH_H

#define SG_ROTL(x, b) (((x) << (b)) | ((x) >> (64 - (b))))
#define SG_SIPROUND                                                          \
	do {                                                                 \
		v0 += v1; v1 = SG_ROTL(v1, 13); v1 ^= v0; v0 = SG_ROTL(v0, 32); \
		v2 += v3; v3 = SG_ROTL(v3, 16); v3 ^= v2;                    \
		v0 += v3; v3 = SG_ROTL(v3, 21); v3 ^= v0;                    \
		v2 += v1; v1 = SG_ROTL(v1, 17); v1 ^= v2; v2 = SG_ROTL(v2, 32); \
	} while (0)

static __always_inline void sip_init(struct sg_sip *s, const struct sg_secret *key)
{
	s->v0 = key->k0 ^ 0x736f6d6570736575ULL;
	s->v1 = key->k1 ^ 0x646f72616e646f6dULL;
	s->v2 = key->k0 ^ 0x6c7967656e657261ULL;
	s->v3 = key->k1 ^ 0x7465646279746573ULL;
}

/* Absorb one little-endian 8-byte message word (2 compression rounds). */
static __always_inline void sip_word(struct sg_sip *s, __u64 m)
{
	__u64 v0 = s->v0, v1 = s->v1, v2 = s->v2, v3 = s->v3;

	v3 ^= m;
	SG_SIPROUND;
	SG_SIPROUND;
	v0 ^= m;
	s->v0 = v0; s->v1 = v1; s->v2 = v2; s->v3 = v3;
}

/* Finish a message: last = its final 0-7 bytes as a little-endian word, with the
 * message length (mod 256) in the top byte (SipHash's padding). 2 + 4 rounds. */
static __always_inline __u64 sip_final(struct sg_sip *s, __u64 last)
{
	__u64 v0, v1, v2, v3;

	sip_word(s, last);
	v0 = s->v0, v1 = s->v1, v2 = s->v2 ^ 0xff, v3 = s->v3;
	SG_SIPROUND;
	SG_SIPROUND;
	SG_SIPROUND;
	SG_SIPROUND;
	return v0 ^ v1 ^ v2 ^ v3;
}

/* The state after the key and an IPv6 destination (the message's first 16 bytes),
 * cached per CPU in sg_sip_cache, a map both programs share: the destination is one
 * of the server's few addresses, so 4 of the 14 rounds are the same for every SYN
 * and ACK to it. Tagged with the key: a new secret never meets a stale state.
 * (struct sg_sip_cache_entry: synguard_abi.h.) */
/* The sg_sip_cache index of a destination. */
static __always_inline __u32 sip_cache_idx(__u64 d0, __u64 d1)
{
	return (__u32)(((d0 ^ d1) * 0x9E3779B97F4A7C15ULL) >> 60) & (SG_SIP_CACHE - 1);
}

/* s = SipHash state after key and d0, d1; e = sg_sip_cache[sip_cache_idx(d0, d1)]
 * on this CPU (NULL: no cache). */
static __always_inline void sip_after_daddr6(struct sg_sip *s, const struct sg_secret *key, __u64 d0, __u64 d1,
					     struct sg_sip_cache_entry *e)
{
	if (e && e->filled && e->daddr[0] == d0 && e->daddr[1] == d1 && e->k0 == key->k0 && e->k1 == key->k1) {
		*s = e->state;
		return;
	}
	sip_init(s, key);
	sip_word(s, d0);
	sip_word(s, d1);
	if (e) {
		e->daddr[0] = d0;
		e->daddr[1] = d1;
		e->k0 = key->k0;
		e->k1 = key->k1;
		e->filled = 1;
		e->state = *s;
	}
}

/* Message lengths (COOKIE.md): daddr, saddr, dport, sport, opt (2 bytes). */
#define SG_COOKIE_MSG4 14
#define SG_COOKIE_MSG6 38

/* The message's final word: dport | sport | opt (LE u16) | length. Ports raw. */
static __always_inline __u64 sg_cookie_tail(__u16 dport, __u16 sport, __u32 opt, __u64 len)
{
	return (__u64)dport | (__u64)sport << 16 | (__u64)opt << 32 | len << 56;
}

#endif /* SYNGUARD_SIPHASH_H */
