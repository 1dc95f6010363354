"""Bit-exact Python reference of the XDP program's SYN cookie.

SipHash-2-4 (Aumasson & Bernstein, 2012) is implemented here by hand on purpose:
it is the specification the kernel side is tested against, so it must not depend
on a library that could share a bug with it. tests/test_cookie.py checks it
against the paper's test vectors, then against the kernel.

Message layout (ebpf/synguard.bpf.c, "Cookie"):
    daddr | saddr | dport | sport   network byte order (4+4+2+2 or 16+16+2+2 bytes)
    (destination first: the kernel caches the SipHash state after an IPv6 destination)
    slot                            little-endian u32
    cookie = (h & ~3) | (gen & 1) << 1 | (slot & 1), h = low 32 bits of SipHash
"""

from __future__ import annotations

import ipaddress
import struct

from synguard import abi
from synguard.secret import SECRET_LEN, secret_words  # noqa: F401  (re-exported for the tests)

_MASK = 0xFFFFFFFFFFFFFFFF
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _rotl(x: int, b: int) -> int:
    return ((x << b) | (x >> (64 - b))) & _MASK


def _sipround(v0: int, v1: int, v2: int, v3: int) -> tuple[int, int, int, int]:
    v0 = (v0 + v1) & _MASK
    v1 = _rotl(v1, 13) ^ v0
    v0 = _rotl(v0, 32)
    v2 = (v2 + v3) & _MASK
    v3 = _rotl(v3, 16) ^ v2
    v0 = (v0 + v3) & _MASK
    v3 = _rotl(v3, 21) ^ v0
    v2 = (v2 + v1) & _MASK
    v1 = _rotl(v1, 17) ^ v2
    v2 = _rotl(v2, 32)
    return v0, v1, v2, v3


def siphash24(key: bytes, msg: bytes) -> int:
    """SipHash-2-4 of msg under a 16-byte key, as an unsigned 64-bit integer."""
    if len(key) != SECRET_LEN:
        raise ValueError(f"SipHash key must be {SECRET_LEN} bytes, got {len(key)}")
    k0, k1 = struct.unpack("<QQ", key)
    v0 = k0 ^ 0x736F6D6570736575
    v1 = k1 ^ 0x646F72616E646F6D
    v2 = k0 ^ 0x6C7967656E657261
    v3 = k1 ^ 0x7465646279746573
    tail_len = len(msg) % 8
    whole = len(msg) - tail_len
    for (m,) in struct.iter_unpack("<Q", msg[:whole]):
        v3 ^= m
        v0, v1, v2, v3 = _sipround(v0, v1, v2, v3)
        v0, v1, v2, v3 = _sipround(v0, v1, v2, v3)
        v0 ^= m
    b = ((len(msg) & 0xFF) << 56) | int.from_bytes(msg[whole:], "little")
    v3 ^= b
    v0, v1, v2, v3 = _sipround(v0, v1, v2, v3)
    v0, v1, v2, v3 = _sipround(v0, v1, v2, v3)
    v0 ^= b
    v2 ^= 0xFF
    for _ in range(4):
        v0, v1, v2, v3 = _sipround(v0, v1, v2, v3)
    return v0 ^ v1 ^ v2 ^ v3


def slot_of(now_s: int) -> int:
    """Cookie time slot of a control-plane clock reading (sg_config.now_s)."""
    return (now_s & 0xFFFFFFFF) >> abi.SLOT_SHIFT


def cookie_message(saddr: Address, daddr: Address, sport: int, dport: int, slot: int) -> bytes:
    if saddr.version != daddr.version:
        raise ValueError("saddr and daddr must be the same family")
    return daddr.packed + saddr.packed + struct.pack("!HH", dport, sport) + struct.pack("<I", slot & 0xFFFFFFFF)


def cookie_hash(secret: bytes, saddr: Address, daddr: Address, sport: int, dport: int, slot: int) -> int:
    return siphash24(secret, cookie_message(saddr, daddr, sport, dport, slot))


def cookie(secret: bytes, saddr, daddr, sport: int, dport: int, slot: int, gen: int) -> int:
    """The ack number of the challenge SYN-ACK for a client->server 4-tuple."""
    saddr, daddr = ipaddress.ip_address(saddr), ipaddress.ip_address(daddr)
    h = cookie_hash(secret, saddr, daddr, sport, dport, slot)
    return (h & 0xFFFFFFFC) | (gen & 1) << 1 | (slot & 1)


def challenge_isn(secret: bytes, saddr, daddr, sport: int, dport: int, slot: int) -> int:
    """The SYN-ACK's own sequence number: the upper half of the same hash."""
    saddr, daddr = ipaddress.ip_address(saddr), ipaddress.ip_address(daddr)
    return cookie_hash(secret, saddr, daddr, sport, dport, slot) >> 32
