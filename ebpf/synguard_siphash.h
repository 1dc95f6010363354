/* SPDX-License-Identifier: GPL-2.0 */
/*
 * SipHash-2-4 (Aumasson & Bernstein) over whole little-endian 8-byte words, shared
 * by the XDP program (the SYN-ACK's cookie) and the tc program (the ACK's check):
 * one definition, so the two can never hash differently. synguard/cookie.py is the
 * bit-exact Python reference (ebpf/COOKIE.md). Needs struct sg_secret
 * (synguard_abi.h) and __u64. The verifier accepts it fully unrolled.
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

struct sg_sip {
	__u64 v0, v1, v2, v3;
};

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

/* Finish a message of exactly len bytes (a multiple of 8): 4 final rounds. */
static __always_inline __u64 sip_final(struct sg_sip *s, __u64 len)
{
	__u64 v0 = s->v0, v1 = s->v1, v2 = s->v2, v3 = s->v3;
	__u64 b = len << 56;

	v3 ^= b;
	SG_SIPROUND;
	SG_SIPROUND;
	v0 ^= b;
	v2 ^= 0xff;
	SG_SIPROUND;
	SG_SIPROUND;
	SG_SIPROUND;
	SG_SIPROUND;
	return v0 ^ v1 ^ v2 ^ v3;
}

#endif /* SYNGUARD_SIPHASH_H */
