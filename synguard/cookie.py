"""Bit-exact Python reference of the synguard SYN cookie (ebpf/COOKIE.md, ABI 3).

The XDP program (SYN -> SYN-ACK), the tc program (ACK -> connection) and this
module implement exactly ebpf/COOKIE.md; tests compare the kernel with this file.

SipHash-2-4 (Aumasson & Bernstein, 2012) is implemented here by hand on purpose:
it is the specification the kernel side is tested against, so it must not depend
on a library that could share a bug with it. tests/test_cookie.py checks it
against the paper's test vectors, then against the kernel.

Summary of COOKIE.md:
    opt  = mss_class | wscale << 2 | sack << 6 | ecn << 7 | ts << 8   (wscale 0xf = none)
    msg  = daddr | saddr | dport | sport   (wire order)  | opt (LE u16)     (14 or 38 bytes)
    h    = SipHash-2-4(sg_secrets[slot & 1], msg)       (the key is the slot's own)
    seq  = ((h + isn) & 0xFFFFFFF8) | (slot & 1) << 2 | mss_class   (our ISN; isn: the client's)
    TSval= ((h >> 32) & 0xFFFFFFC0) | wscale | sack << 4 | ecn << 5
"""

from __future__ import annotations

import ipaddress
import struct
from typing import NamedTuple

from synguard import abi
from synguard.secret import SECRET_LEN, secret_words  # noqa: F401  (re-exported for the tests)

_MASK = 0xFFFFFFFFFFFFFFFF
_U32 = 0xFFFFFFFF
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# The kernel's own syncookie MSS tables (net/ipv4/syncookies.c, net/ipv6/syncookies.c).
MSS_TABLE4 = (536, 1300, 1440, 1460)
MSS_TABLE6 = (1220, 1420, 1440, 8940)
WSCALE_NONE = abi.COOKIE_WSCALE_NONE  # 0xf
WSCALE_MAX = 14  # RFC 7323
SEQ_HASH_MASK = 0xFFFFFFF8  # hash bits of the cookie (seq / ack - 1)
TS_HASH_MASK = 0xFFFFFFC0  # hash bits of our TSval (the ACK's TSecr)

# TCP option kinds
OPT_EOL, OPT_NOP, OPT_MSS, OPT_WSCALE, OPT_SACK_PERM, OPT_TS = 0, 1, 2, 3, 4, 8


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


def slot_of(realtime_s: int) -> int:
    """Cookie slot (sg_config.slot) of a CLOCK_REALTIME reading in seconds."""
    return (int(realtime_s) & _U32) >> abi.SLOT_SHIFT


# ---- Negotiation ------------------------------------------------------------


class SynOptions(NamedTuple):
    """What a SYN's TCP options say, as the XDP program reads them."""

    mss: int | None = None  # MSS option value (None: absent, or 0 which the kernel ignores)
    wscale: int | None = None  # window-scale shift as sent (None: absent)
    sack: bool = False  # SACK-permitted
    tsval: int | None = None  # Timestamps option's TSval (None: absent)


class Negotiated(NamedTuple):
    """The options a cookie carries (COOKIE.md, "Negotiated options")."""

    mss_class: int  # index into MSS_TABLE4/6
    wscale: int  # the client's shift 0..14, or WSCALE_NONE
    sack: bool
    ecn: bool
    ts: bool
    opt: int  # the cookie message's option word

    def mss(self, ipv6: bool) -> int:
        """struct bpf_tcp_req_attrs.mss: the table entry of mss_class."""
        return (MSS_TABLE6 if ipv6 else MSS_TABLE4)[self.mss_class]


def opt_word(mss_class: int, wscale: int, sack: bool, ecn: bool, ts: bool) -> int:
    return mss_class | wscale << 2 | int(sack) << 6 | int(ecn) << 7 | int(ts) << 8


def mss_class_of(ipv6: bool, client_mss: int | None) -> int:
    """Largest table entry <= the client's MSS (no option: the RFC default, class 0).

    A client MSS below the smallest entry also gets class 0, as in the kernel."""
    table = MSS_TABLE6 if ipv6 else MSS_TABLE4
    if client_mss is None:
        return 0
    c = 0
    for i, m in enumerate(table):
        if m <= client_mss:
            c = i
    return c


def negotiate(ipv6: bool, client_mss: int | None, client_wscale: int | None, sack: bool, ts: bool,
              ecn: bool, tcp_opts: int) -> Negotiated:
    """COOKIE.md negotiation: the client's SYN options (ecn = SYN had ECE and CWR)
    against sg_config.tcp_opts (SG_OPT_*)."""
    c = mss_class_of(ipv6, client_mss)
    ts = bool(ts) and bool(tcp_opts & abi.OPT_TS)
    if client_wscale is not None and tcp_opts & abi.OPT_WSCALE and ts:
        w = min(client_wscale, WSCALE_MAX)
    else:
        w = WSCALE_NONE
    sack = bool(sack) and bool(tcp_opts & abi.OPT_SACK) and ts
    ecn = bool(ecn) and bool(tcp_opts & abi.OPT_ECN) and ts
    return Negotiated(c, w, sack, ecn, ts, opt_word(c, w, sack, ecn, ts))


def parse_syn_options(opts: bytes) -> SynOptions:
    """Read a SYN's option bytes like the kernel's tcp_parse_options() does and the
    XDP program mirrors: EOL ends the list; NOP is one byte; any other kind needs a
    length byte >= 2 that stays inside the option area, else parsing stops and what
    was read so far counts; a known kind with the wrong length is skipped; a later
    duplicate wins; an MSS of 0 is ignored."""
    mss = wscale = tsval = None
    sack = False
    i, n = 0, len(opts)
    while i < n:
        kind = opts[i]
        if kind == OPT_EOL:
            break
        if kind == OPT_NOP:
            i += 1
            continue
        if i + 1 >= n:
            break
        size = opts[i + 1]
        if size < 2 or size > n - i:
            break
        if kind == OPT_MSS and size == 4:
            v = struct.unpack_from("!H", opts, i + 2)[0]
            if v:
                mss = v
        elif kind == OPT_WSCALE and size == 3:
            wscale = opts[i + 2]
        elif kind == OPT_SACK_PERM and size == 2:
            sack = True
        elif kind == OPT_TS and size == 10:
            tsval = struct.unpack_from("!I", opts, i + 2)[0]
        i += size
    return SynOptions(mss, wscale, sack, tsval)


def negotiate_syn(ipv6: bool, opts: SynOptions, ecn: bool, tcp_opts: int) -> Negotiated:
    return negotiate(ipv6, opts.mss, opts.wscale, opts.sack, opts.tsval is not None, ecn, tcp_opts)


# ---- Hash ---------------------------------------------------------------------


def _addr(a) -> Address:
    return a if isinstance(a, (ipaddress.IPv4Address, ipaddress.IPv6Address)) else ipaddress.ip_address(a)


def cookie_message(saddr, daddr, sport: int, dport: int, opt: int) -> bytes:
    """COOKIE.md message: 14 bytes (IPv4) or 38 (IPv6)."""
    saddr, daddr = _addr(saddr), _addr(daddr)
    if saddr.version != daddr.version:
        raise ValueError("saddr and daddr must be the same family")
    return daddr.packed + saddr.packed + struct.pack("!HH", dport, sport) + struct.pack("<H", opt)


def cookie_hash(key: bytes, saddr, daddr, sport: int, dport: int, opt: int) -> int:
    """h: the 64-bit SipHash of the message under the slot's key (sg_secrets[slot & 1])."""
    return siphash24(key, cookie_message(saddr, daddr, sport, dport, opt))


def seq_of(h: int, isn: int, slot: int, mss_class: int) -> int:
    """Our ISN: the hash plus the client's ISN, the slot's parity and the MSS class."""
    return ((h + isn) & SEQ_HASH_MASK) | (slot & 1) << 2 | mss_class


def tsval_of(h: int, neg: Negotiated) -> int:
    return ((h >> 32) & TS_HASH_MASK) | neg.wscale | int(neg.sack) << 4 | int(neg.ecn) << 5


def synack_fields(key: bytes, saddr, daddr, sport: int, dport: int, isn: int, slot: int,
                  neg: Negotiated) -> tuple[int, int | None]:
    """(seq, TSval or None) of our SYN-ACK to a client SYN saddr:sport -> daddr:dport
    whose sequence number is isn."""
    h = cookie_hash(key, saddr, daddr, sport, dport, neg.opt)
    return seq_of(h, isn, slot, neg.mss_class), (tsval_of(h, neg) if neg.ts else None)


def synack_options(neg: Negotiated, synack_mss: int, synack_wscale: int, tsval: int | None,
                   tsecr: int | None) -> bytes:
    """The SYN-ACK's option bytes (COOKIE.md, "SYN-ACK"): 20 with timestamps, else the
    MSS alone (4: window scaling, SACK and ECN ride on timestamps)."""
    out = struct.pack("!BBH", OPT_MSS, 4, synack_mss)
    if not neg.ts:
        return out
    out += bytes([OPT_SACK_PERM, 2]) if neg.sack else bytes([OPT_NOP, OPT_NOP])
    out += struct.pack("!BBII", OPT_TS, 10, tsval & _U32, (tsecr or 0) & _U32)
    if neg.wscale != WSCALE_NONE:
        out += bytes([OPT_NOP, OPT_WSCALE, 3, synack_wscale])
    else:
        out += bytes([OPT_NOP]) * 4
    return out


# ---- Validation (the tc program's side) ----------------------------------------


def check_ack(keys_by_parity, saddr, daddr, sport: int, dport: int, seq: int, ack: int,
              tsecr: int | None) -> Negotiated | None:
    """COOKIE.md validation of a client ACK (saddr:sport -> daddr:dport) with its seq,
    ack and, if it carried Timestamps, TSecr. keys_by_parity[i] = sg_secrets[i]: the
    keys of the current slot and the previous one, the cookie's parity bit says which.
    Returns the decoded options, or None when the cookie is not ours."""
    cookie = (ack - 1) & _U32
    isn = (seq - 1) & _U32
    c = cookie & 3
    if tsecr is not None:
        ts, w, sack, ecn = True, tsecr & 0xF, bool(tsecr >> 4 & 1), bool(tsecr >> 5 & 1)
    else:
        ts, w, sack, ecn = False, WSCALE_NONE, False, False
    opt = opt_word(c, w, sack, ecn, ts)
    h = cookie_hash(keys_by_parity[cookie >> 2 & 1], saddr, daddr, sport, dport, opt)
    if (h + isn ^ cookie) & SEQ_HASH_MASK:
        return None
    if ts and ((h >> 32) ^ tsecr) & TS_HASH_MASK:
        return None
    return Negotiated(c, w, sack, ecn, ts, opt)
