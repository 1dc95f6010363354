"""Differential fuzzing: the real XDP program (BPF_PROG_TEST_RUN) against synguard_lab.model.

A seeded generator makes frames: random bytes, valid SYN/RST/ACK/... frames for
IPv4 and IPv6 (VLAN tags, IP options, IPv6 extension headers, TCP options of
every common layout and random ones, Ethernet padding), mutations of those
(bytes overwritten, truncations, extensions, flags, ports, addresses, length
fields, VLAN insertion), and the clients' ACKs to the program's own SYN-ACKs.
The control plane moves on meanwhile (clock, cookie slot and key, SYN-ACK
settings, arming). Every frame goes through the program and the model
(synguard_lab.model, written from the README verdict table): the verdicts
must be equal, an XDP_TX output must equal the model's frame byte for byte, and
any other verdict must leave the frame untouched. Counters are compared per
batch (reading per-CPU maps per frame would dominate the run): the program's
counter delta over a batch must equal the sum of the model's deltas exactly.

The fast trigger and the model's per-port windows are per CPU, so the runs pin
the process to one CPU (BPF_PROG_TEST_RUN runs the program on the caller's CPU).

Reproduce a run with SYNGUARD_FUZZ_SEED=<seed> (printed in the summary line);
add SYNGUARD_FUZZ_DIAG=1 to compare counters after every frame, which names the
frame behind a counter mismatch (slow: combine with SYNGUARD_FUZZ_FRAMES=<n>).
"""

from __future__ import annotations

import collections
import ctypes as ct
import ipaddress
import os
import random
import socket
import struct
import time
from dataclasses import dataclass, field

import pytest

from synguard import abi
from synguard.abi import Counter as C, Mode
from synguard_lab.model import XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX, Model, parse

from helpers import ones_sum

VERDICT_NAMES = {XDP_ABORTED: "ABORTED", XDP_DROP: "DROP", XDP_PASS: "PASS", XDP_TX: "TX"}

CLIENT_MAC = bytes.fromhex("020000000001")
SERVER_MAC = bytes.fromhex("020000000002")

# ---- hand-built frames (checked against scapy in test_builders_match_scapy) ----

SYN_OPTIONS = bytes.fromhex("020405b4" "0402" "080a0000000100000000" "01" "030307")  # MSS SAckOK TS NOP WScale
SYN_LAYOUTS = [
    bytes.fromhex("020405b4" "01030308" "0101" "0402"),                           # Windows
    bytes.fromhex("020405b4" "01030306" "0101" "080a0000007b00000000" "0402" "0000"),  # macOS
    bytes.fromhex("020405b4"),                                                   # MSS only
    bytes.fromhex("0204218c" "0402" "080a0000000100000000" "01" "03030e"),      # jumbo MSS, wscale 14
    bytes.fromhex("020405b4" "0402" "080a0000000100000000" "01" "0303ff"),      # wscale 255
]
OPTION_PARTS = [bytes.fromhex(h) for h in ("020405b4", "02040578", "02040000", "0204", "0402", "0403",
                                           "080a0000000100000002", "0808000000010000", "030307", "030300", "0303ff",
                                           "0302", "01", "00", "fe03aa", "fe00", "fe01")]
ETH_P_IP, ETH_P_IPV6 = 0x0800, 0x86DD
FIN, SYN, RST, PSH, ACK, URG, ECE, CWR = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80


def inet_csum(data: bytes) -> int:
    return ~ones_sum(data) & 0xFFFF


def ether(ethertype: int, l3: bytes, vlans=(), dst=SERVER_MAC, src=CLIENT_MAC) -> bytes:
    hdr = dst + src
    for tpid, tci in vlans:
        hdr += struct.pack("!HH", tpid, tci)
    return hdr + struct.pack("!H", ethertype) + l3


def tcp(src: bytes, dst: bytes, sport: int, dport: int, seq: int, flags: int, *, ack: int = 0, window: int = 8192,
        options: bytes = b"", payload: bytes = b"") -> bytes:
    """A TCP segment with a correct checksum over the IPv4 or IPv6 pseudo-header."""
    options += b"\0" * (-len(options) % 4)
    hdr = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, (20 + len(options)) // 4 << 4,
                      flags, window, 0, 0) + options
    seg = hdr + payload
    if len(src) == 4:
        pseudo = src + dst + struct.pack("!BBH", 0, 6, len(seg))
    else:
        pseudo = src + dst + struct.pack("!I3xB", len(seg), 6)
    check = inet_csum(pseudo + seg)
    return seg[:16] + struct.pack("!H", check) + seg[18:]


def ipv4(src: bytes, dst: bytes, payload: bytes, *, proto: int = 6, options: bytes = b"", ident: int = 1,
         frag: int = 0, ttl: int = 64, tot_len: int | None = None) -> bytes:
    options += b"\0" * (-len(options) % 4)
    ihl = 5 + len(options) // 4
    tot = 20 + len(options) + len(payload) if tot_len is None else tot_len
    hdr = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, tot, ident, frag, ttl, proto, 0, src, dst) + options
    return hdr[:10] + struct.pack("!H", inet_csum(hdr)) + hdr[12:] + payload


def ext_header(kind: int, nexthdr: int, hdrlen: int) -> bytes:
    """An IPv6 extension header of kind 0/43/60 ((hdrlen+1)*8 bytes), 51 ((hdrlen+2)*4) or 44 (8)."""
    if kind == 44:
        return struct.pack("!BBHI", nexthdr, 0, hdrlen, 0x1234)  # hdrlen here: offset/flags word
    size = (hdrlen + 2) * 4 if kind == 51 else (hdrlen + 1) * 8
    body = bytes(size - 2)
    if kind in (0, 60):
        body = b"\x01" + bytes([size - 4]) + bytes(size - 4)  # one PadN option
    return bytes([nexthdr, hdrlen]) + body


def ipv6(src: bytes, dst: bytes, payload: bytes, *, nexthdr: int = 6, ext=(), hlim: int = 64,
         plen: int | None = None) -> bytes:
    """ext: [(kind, hdrlen)], chained in order before payload (whose protocol is nexthdr)."""
    chain = b""
    kinds = [k for k, _ in ext] + [nexthdr]
    for i, (kind, hdrlen) in enumerate(ext):
        chain += ext_header(kind, kinds[i + 1], hdrlen)
    body = chain + payload
    return struct.pack("!IHBB", 0x60000000, len(body) if plen is None else plen, kinds[0], hlim) + src + dst + body


def tcp_frame(src: bytes, dst: bytes, sport: int, dport: int, seq: int, flags: int, *, ack: int = 0,
              window: int = 8192, options: bytes = b"", payload: bytes = b"", vlans=(), ip_options: bytes = b"",
              ext=(), frag: int = 0, padding: bytes = b"") -> bytes:
    seg = tcp(src, dst, sport, dport, seq, flags, ack=ack, window=window, options=options, payload=payload)
    if len(src) == 4:
        return ether(ETH_P_IP, ipv4(src, dst, seg, options=ip_options, frag=frag), vlans) + padding
    return ether(ETH_P_IPV6, ipv6(src, dst, seg, ext=ext), vlans) + padding


def ip(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


# ---- the program's configuration in the runs ----------------------------------

ALLOW_CIDRS = ["192.0.2.0/28", "2001:db8:a11::/48"]
DENY_CIDRS = ["198.18.0.0/24", "203.0.113.99/32", "2001:db8:bad::/64"]

SOURCES4 = ([ip(f"192.0.2.{i}") for i in range(1, 31)]                 # .1-.15 in the allow CIDR
            + [ip(f"198.18.0.{i}") for i in range(1, 6)]               # denied
            + [ip(f"203.0.113.{i}") for i in range(95, 105)]           # .99 denied
            + [ip(f"100.64.{i}.{i * 7 % 250 + 1}") for i in range(30)])
SOURCES6 = ([ip(f"2001:db8:a11::{i:x}") for i in range(1, 6)]          # allow CIDR
            + [ip(f"2001:db8:bad::{i:x}") for i in range(1, 4)]        # denied
            + [ip(f"2001:db8:c::{i:x}") for i in range(1, 40)]
            # IPv4-mapped sources in IPv6 frames: the same keys as the IPv4 ones.
            + [ip("::ffff:192.0.2.5"), ip("::ffff:192.0.2.20"), ip("::ffff:198.18.0.3")])
SERVERS4 = [ip("198.51.100.1"), ip("198.51.100.2")]
SERVERS6 = [ip("2001:db8:1::1"), ip("2001:db8:1::2"), ip("2001:db8:1::3")]
PORTS = [80, 80, 80, 443, 443, 8080, 22, 22, 0, 65535]


@dataclass
class Scenario:
    name: str
    mode: Mode
    ports: tuple = ()
    allow: tuple = tuple(ALLOW_CIDRS)
    deny: tuple = tuple(DENY_CIDRS)
    arm: dict = field(default_factory=dict)  # port -> seconds from the start (auto mode)
    watched: tuple = ()
    fast_trigger: tuple = (0, 0)  # (SYNs per CPU second, hold seconds)
    arm_all: int | None = None  # "protect all" (sg_config.all_until_s), seconds from the start
    now_s: int = 1_000_000
    slot: int = 5_000
    tcp_opts: int = 0xF


SCENARIOS = [
    Scenario("observe", Mode.OBSERVE, ports=(80, 443), watched=(80, 443)),
    Scenario("protect-ports", Mode.PROTECT, ports=(80, 443, 8080)),
    Scenario("protect-all", Mode.PROTECT, ports=(), tcp_opts=0x5),  # a server without SACK and ECN
    # The clock and the slot cross 2^32 (serial-number arithmetic for deadlines; slot parity).
    Scenario("protect-wrap", Mode.PROTECT, ports=(80, 22), now_s=2**32 - 400, slot=2**32 - 3),
    Scenario("auto-armed", Mode.AUTO, ports=(80, 443), arm={80: 150, 22: 10_000}),
    # Deadlines and the fast trigger's arming across the 2^32 wrap too.
    Scenario("auto-fast-trigger", Mode.AUTO, ports=(), arm={8080: 40, 80: 5}, watched=(80, 443, 22),
             fast_trigger=(6, 20), now_s=2**32 - 300),
    # "Protect all" (one switch) covers listed ports, watched or not, until it expires mid-run.
    Scenario("auto-all", Mode.AUTO, ports=(80, 443, 8080), watched=(80,), arm_all=60),
]


# ---- the generator ---------------------------------------------------------------


class FrameGen:
    """Seeded frames."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.challenges: collections.deque = collections.deque(maxlen=64)  # TX outputs to answer

    # -- pieces -------------------------------------------------------------

    def _src(self, v6: bool) -> bytes:
        r = self.rng
        if r.random() < 0.2:
            return r.randbytes(16 if v6 else 4)
        return r.choice(SOURCES6 if v6 else SOURCES4)

    def _dst(self, v6: bool) -> bytes:
        r = self.rng
        if r.random() < 0.1:
            return r.randbytes(16 if v6 else 4)
        return r.choice(SERVERS6 if v6 else SERVERS4)

    def _dport(self) -> int:
        return self.rng.choice(PORTS) if self.rng.random() < 0.85 else self.rng.randrange(65536)

    def _sport(self) -> int:
        return self.rng.randrange(1024, 65536) if self.rng.random() < 0.9 else self.rng.randrange(65536)

    def _vlans(self):
        r = self.rng.random()
        n = 0 if r < 0.82 else 1 if r < 0.93 else 2 if r < 0.98 else 3
        return [(self.rng.choice((0x8100, 0x88A8)), self.rng.randrange(65536)) for _ in range(n)]

    def _flags(self) -> int:
        r = self.rng.random()
        if r < 0.45:
            return SYN | self.rng.choice((0, 0, 0, 0, FIN, ECE | CWR, PSH, URG))
        if r < 0.65:
            return RST | self.rng.choice((0, 0, 0, FIN, PSH, URG))
        if r < 0.9:
            return self.rng.choice((ACK, ACK | PSH, SYN | ACK, RST | ACK, FIN | ACK, SYN | RST, 0, FIN))
        return self.rng.randrange(256)

    def _tcp_options(self, flags: int) -> bytes:
        r = self.rng
        x = r.random()
        if not flags & SYN:
            return b"\x01\x01\x08\x0a" + r.randbytes(8) if x < 0.45 else b""
        if x < 0.35:
            return SYN_OPTIONS
        if x < 0.50:
            return b""
        if x < 0.75:
            return r.choice(SYN_LAYOUTS)
        if x < 0.92:  # known options in any order, right and wrong lengths
            parts = [r.choice(OPTION_PARTS) for _ in range(r.randrange(1, 10))]
            return b"".join(parts)[:40]
        return r.randbytes(4 * r.randrange(1, 11))

    def _ext(self):
        r = self.rng.random()
        if r < 0.7:
            return []
        n = self.rng.randrange(1, 6)
        ext = [(self.rng.choice((0, 60, 43, 51)), self.rng.choice((0, 0, 1, 2))) for _ in range(n)]
        if self.rng.random() < 0.15:
            ext.insert(self.rng.randrange(len(ext) + 1), (44, self.rng.choice((0, 1, 8))))
        return ext

    # -- frames ---------------------------------------------------------------

    def valid(self, flags: int | None = None, v6: bool | None = None, **kw):
        """A well-formed frame and its layout: (bytearray, l3 offset, l4 offset, ipv6)."""
        r = self.rng
        v6 = r.random() < 0.4 if v6 is None else v6
        flags = self._flags() if flags is None else flags
        src, dst = kw.pop("src", None) or self._src(v6), kw.pop("dst", None) or self._dst(v6)
        sport, dport = kw.pop("sport", None) or self._sport(), kw.pop("dport", None)
        dport = self._dport() if dport is None else dport
        seq = kw.pop("seq", None)
        seq = r.getrandbits(32) if seq is None else seq
        vlans = kw.pop("vlans", None)
        vlans = self._vlans() if vlans is None else vlans
        options = self._tcp_options(flags)
        payload = r.randbytes(r.randrange(1, 41)) if r.random() < 0.15 else b""
        padding = r.randbytes(r.randrange(1, 31)) if r.random() < 0.1 else b""
        ip_options = b""
        ext = []
        frag = 0
        if v6:
            ext = self._ext()
        else:
            if r.random() < 0.15:
                ip_options = r.choice((b"\x01\x01\x01\x00", b"\x94\x04\x00\x00", r.randbytes(4 * r.randrange(1, 11))))
            if r.random() < 0.04:
                frag = r.choice((0x2000, 0x0001, 0x2005, 0x1FFF))
            elif r.random() < 0.5:
                frag = 0x4000  # DF is not a fragment
        ack = r.getrandbits(32) if flags & ACK else 0
        frame = tcp_frame(src, dst, sport, dport, seq, flags, ack=ack, options=options, payload=payload,
                          vlans=vlans, ip_options=ip_options, ext=ext, frag=frag, padding=padding)
        l3 = 14 + 4 * len(vlans)
        if v6:
            l4 = l3 + 40 + sum(8 if k == 44 else (h + 2) * 4 if k == 51 else (h + 1) * 8 for k, h in ext)
        else:
            l4 = l3 + 20 + len(ip_options) + (-len(ip_options) % 4)
        return bytearray(frame), l3, l4, v6

    def not_tcp(self) -> bytes:
        r = self.rng
        v6 = r.random() < 0.4
        src, dst = self._src(v6), self._dst(v6)
        proto = r.choice((17, 1, 58, 132, 47))
        payload = r.randbytes(r.randrange(8, 60))
        if v6:
            return ether(ETH_P_IPV6, ipv6(src, dst, payload, nexthdr=proto, ext=self._ext()), self._vlans())
        if r.random() < 0.2:  # ARP and other EtherTypes
            return ether(r.choice((0x0806, 0x88CC, 0x8847, 0x0842)), r.randbytes(r.randrange(28, 60)))
        return ether(ETH_P_IP, ipv4(src, dst, payload, proto=proto), self._vlans())

    def garbage(self) -> bytes:
        r = self.rng
        data = bytearray(r.randbytes(r.randrange(14, 201)))
        if r.random() < 0.5 and len(data) >= 15:  # an IP EtherType and version: deeper paths
            v6 = r.random() < 0.5
            data[12:14] = struct.pack("!H", ETH_P_IPV6 if v6 else ETH_P_IP)
            data[14] = (0x60 | data[14] & 0x0F) if v6 else (0x45 if r.random() < 0.7 else 0x40 | data[14] & 0x0F)
            if v6 and len(data) > 20 and r.random() < 0.7:
                data[20] = r.choice((6, 0, 43, 60, 51, 44))
            elif not v6 and len(data) > 23 and r.random() < 0.7:
                data[23] = 6
        return bytes(data)

    def mutate(self, frame: bytearray, l3: int, l4: int, v6: bool) -> bytes:
        r = self.rng
        for _ in range(r.choice((1, 1, 1, 2, 2, 3, 4))):
            m = r.randrange(12)
            n = len(frame)
            if m == 0:  # overwrite bytes, mostly in the headers
                for _ in range(r.randrange(1, 5)):
                    pos = r.randrange(min(n, l4 + 24)) if r.random() < 0.8 else r.randrange(n)
                    frame[pos] = r.randrange(256)
            elif m == 1 and n > 14:  # truncate
                del frame[r.randrange(14, n):]
            elif m == 2:  # extend
                frame += r.randbytes(r.randrange(1, 65))
            elif m == 3 and l4 + 13 < n:  # TCP flags
                frame[l4 + 13] = r.randrange(256) if r.random() < 0.3 else frame[l4 + 13] ^ (1 << r.randrange(8))
            elif m == 4 and l4 + 4 <= n:  # ports
                off = l4 + r.choice((0, 2))
                frame[off:off + 2] = struct.pack("!H", r.choice(PORTS + [r.randrange(65536)]))
            elif m == 5:  # addresses
                alen = 16 if v6 else 4
                off = l3 + (8 if v6 else 12) + r.choice((0, alen))
                if off + alen <= n:
                    frame[off:off + alen] = self._src(v6) if r.random() < 0.7 else r.randbytes(alen)
            elif m == 6:  # insert a VLAN tag
                frame[12:12] = struct.pack("!HH", r.choice((0x8100, 0x88A8)), r.randrange(65536))
                l3, l4 = l3 + 4, l4 + 4
            elif m == 7 and l3 + 6 <= n:  # IP length field
                off = l3 + (4 if v6 else 2)
                old = frame[off] << 8 | frame[off + 1]
                new = (old + r.choice((-41, -20, -8, -4, -1, 1, 2, 4, 8, 20, 40))) if r.random() < 0.7 else r.randrange(65536)
                frame[off:off + 2] = struct.pack("!H", new & 0xFFFF)
            elif m == 8 and l4 + 12 < n:  # TCP data offset
                frame[l4 + 12] = r.randrange(16) << 4 | frame[l4 + 12] & 0x0F
            elif m == 9 and l3 < n:  # version / IHL / traffic class nibble
                frame[l3] = r.randrange(256) if r.random() < 0.5 else (frame[l3] & 0xF0) | r.randrange(16)
            elif m == 10 and l3 + 10 <= n:  # protocol / next header, fragment field
                if v6:
                    frame[l3 + 6] = r.choice((6, 0, 43, 60, 51, 44, 17, 59, r.randrange(256)))
                elif r.random() < 0.5:
                    frame[l3 + 9] = r.choice((6, 17, 1, r.randrange(256)))
                else:
                    frame[l3 + 6:l3 + 8] = struct.pack("!H", r.choice((0x2000, 0x0001, 0x4000, 0x8000, 0xC000,
                                                                       r.randrange(65536))))
            elif m == 11 and l4 + 8 <= n:  # sequence number
                frame[l4 + 4:l4 + 8] = r.randbytes(4)
        if len(frame) < 14:
            frame += bytes(14 - len(frame))
        return bytes(frame)

    def answer(self) -> bytes | None:
        """The client's ACK to one of the program's own SYN-ACKs: the tc program's, so XDP passes it."""
        if not self.challenges:
            return None
        out, l3, v6 = self.challenges[self.rng.randrange(len(self.challenges))]
        if v6:
            srv, cli = out[l3 + 8:l3 + 24], out[l3 + 24:l3 + 40]
            th = l3 + 40
        else:
            srv, cli = out[l3 + 12:l3 + 16], out[l3 + 16:l3 + 20]
            th = l3 + 20
        sport_srv, dport_cli, seq, ack = struct.unpack("!HHII", out[th:th + 12])
        return tcp_frame(cli, srv, dport_cli, sport_srv, ack, ACK, ack=seq + 1,
                         vlans=self._vlans() if self.rng.random() < 0.1 else ())

    def frame(self) -> bytes:
        r = self.rng.random()
        if r < 0.08:
            return self.garbage()
        if r < 0.12:
            return self.not_tcp()
        if r < 0.18:
            ans = self.answer()
            if ans is not None:
                return ans
        frame, l3, l4, v6 = self.valid()
        if r < 0.62:
            return bytes(frame)
        return self.mutate(frame, l3, l4, v6)


# ---- the comparison -------------------------------------------------------------------


@dataclass
class Stats:
    frames: int = 0
    verdicts: collections.Counter = field(default_factory=collections.Counter)
    counters: collections.Counter = field(default_factory=collections.Counter)
    mismatches: list = field(default_factory=list)  # descriptions (the first few kept)
    mismatch_count: int = 0
    kinds: collections.Counter = field(default_factory=collections.Counter)  # verdict/output/frame/counters/state
    elapsed: float = 0.0

    def add(self, other: "Stats") -> None:
        self.frames += other.frames
        self.verdicts.update(other.verdicts)
        self.counters.update(other.counters)
        self.mismatch_count += other.mismatch_count
        self.kinds.update(other.kinds)
        self.mismatches += other.mismatches[: max(0, 10 - len(self.mismatches))]
        self.elapsed += other.elapsed

    def verdict_text(self) -> str:
        return " ".join(f"{VERDICT_NAMES[v]}={self.verdicts.get(v, 0)}" for v in (XDP_PASS, XDP_DROP, XDP_TX, XDP_ABORTED))

    def mismatch_text(self) -> str:
        kinds = " ".join(f"{k}={n}" for k, n in sorted(self.kinds.items()))
        return f"mismatches={self.mismatch_count}" + (f" ({kinds})" if kinds else "")

    def mismatch(self, text: str, kind: str) -> None:
        self.mismatch_count += 1
        self.kinds[kind] += 1
        if len(self.mismatches) < 10:
            self.mismatches.append(text)


class Pair:
    """The program and the model, configured alike."""

    def __init__(self, dp, model: Model):
        self.dp, self.model = dp, model

    def __call__(self, name: str, *args):
        result = getattr(self.dp, name)(*args)
        getattr(self.model, name)(*args)
        return result

    def check_state(self, stats: Stats, where: str) -> None:
        """Config and sg_ports of the program equal the model's."""
        if self.dp.config() != self.model.config():
            stats.mismatch(f"{where}: sg_config {self.dp.config()} != model {self.model.config()}", "state")
        table = self.dp.map("sg_ports")
        kernel = {int(k.value): (int(v.protect), int(v.watch_slot), int(v.auto_until_s))
                  for k, v in table.items() if v.protect or v.watch_slot or v.auto_until_s}
        if kernel != self.model.port_table():
            stats.mismatch(f"{where}: sg_ports {kernel} != model {self.model.port_table()}", "state")


def _describe(frame: bytes, got, want_verdict: int, want_out) -> str:
    text = f"frame {frame.hex()}: program {VERDICT_NAMES.get(got.retval, got.retval)}, model {VERDICT_NAMES[want_verdict]}"
    if got.retval == want_verdict:
        expect = want_out if want_out is not None else frame
        if len(got.data) != len(expect):
            text += f"; output length {len(got.data)} != {len(expect)}"
        else:
            first = next(i for i, (a, b) in enumerate(zip(got.data, expect)) if a != b)
            text += f"; output differs from byte {first}: program {got.data.hex()}, model {expect.hex()}"
    return text


def load_port_windows(dp, model: Model) -> None:
    """Give the model this CPU's per-watch-slot SYN windows, as the program holds them.

    BPF_PROG_TEST_RUN runs on the caller's (pinned) CPU with the loopback device as
    the ingress interface, so the frames count in the block of lo's counter slot."""
    cpu = os.sched_getaffinity(0)
    assert len(cpu) == 1, "pin the process to one CPU first"
    lo = socket.if_nametoindex("lo")
    slot = int(dp.map("sg_ifaces")[ct.c_int(lo)].value) if lo < abi.IFINDEX_MAX else 0
    block = dp.map("sg_counters")[ct.c_int(slot if slot < abi.IFACE_SLOTS else 0)][min(cpu)]
    model.port_syns = {w: [int(block.ports[w].syns), int(block.ports[w].window_s), int(block.ports[w].window_syns)]
                       for w in range(abi.PORT_SLOTS)}  # slot 0: every unwatched port together


def run_scenario(dp, sc: Scenario, frames: int, seed: int, batch: int) -> Stats:
    rng = random.Random(seed)
    base = sc.now_s
    model = Model()
    pair = Pair(dp, model)
    stats = Stats()
    slot = sc.slot
    armed = set(sc.arm) | set(sc.watched)
    try:
        # Leftovers of earlier tests in this session's program: no port armed or watched.
        dp.set_watched([])
        for key, leaf in dp.map("sg_ports").items():
            if leaf.auto_until_s:
                dp.arm_port(int(key.value), 0)
        pair("tick", base)
        pair("set_slot_key", slot - 1, rng.randbytes(16))
        pair("set_slot_key", slot, rng.randbytes(16))
        pair("set_slot", slot)
        pair("set_synack", 1460, 1440, 7, sc.tcp_opts)
        pair("set_ports", set(sc.ports))
        pair("set_allow_cidrs", list(sc.allow))
        pair("set_deny_cidrs", list(sc.deny))
        pair("set_fast_trigger", *sc.fast_trigger)
        pair("arm_all", base + sc.arm_all if sc.arm_all is not None else 0)
        model.set_watched(dp.set_watched(list(sc.watched)))
        for port in armed:
            pair("arm_port", port, base + sc.arm[port] if port in sc.arm else 0)
        pair("set_mode", sc.mode)
        load_port_windows(dp, model)
        pair.check_state(stats, f"{sc.name} start")
        fg = FrameGen(rng)
        now = base
        started = time.monotonic()
        counts_before = dp.counters()
        model_sum: collections.Counter = collections.Counter()
        for i in range(frames):
            # The control plane moves on now and then: clock, cookie slot, SYN-ACK settings, arming.
            r = rng.random()
            if r < 0.004:
                now += 1 if rng.random() < 0.9 else rng.randrange(10, 80)
                pair("tick", now & 0xFFFFFFFF)
            elif r < 0.0048:  # the next cookie slot: its key first, as the daemon does
                slot = (slot + 1) & 0xFFFFFFFF
                pair("set_slot_key", slot, rng.randbytes(16))
                pair("set_slot", slot)
            elif r < 0.0053:
                pair("set_synack", rng.choice((1460, 1400, 536)), rng.choice((1440, 8940)), rng.randrange(15),
                     rng.randrange(16))
            elif r < 0.0073 and sc.mode == Mode.AUTO and sc.arm:
                port = rng.choice(sorted(sc.arm))
                pair("arm_port", port, (now + rng.randrange(-5, 60)) & 0xFFFFFFFF)

            frame = fg.frame()
            got = dp.test_run(frame)
            verdict, deltas, out = model.step(frame)
            stats.verdicts[got.retval] += 1
            model_sum.update(deltas)
            if got.retval != verdict:
                stats.mismatch(f"{sc.name} #{i}: " + _describe(frame, got, verdict, out), "verdict")
            elif verdict == XDP_TX:
                if got.data != out:
                    stats.mismatch(f"{sc.name} #{i}: " + _describe(frame, got, verdict, out), "output")
                else:
                    seg = parse(frame)
                    fg.challenges.append((got.data, seg.l3, seg.ipv6))
            elif got.data != frame:
                stats.mismatch(f"{sc.name} #{i}: {VERDICT_NAMES[verdict]} changed the frame: "
                               + _describe(frame, got, verdict, None), "frame")
            if (i + 1) % batch == 0 or i + 1 == frames:
                counts_after = dp.counters()
                kernel = {c: counts_after[c] - counts_before[c] for c in C if counts_after[c] != counts_before[c]}
                if kernel != {c: n for c, n in model_sum.items() if n}:
                    diff = {c.name: (kernel.get(c, 0), model_sum.get(c, 0)) for c in C
                            if kernel.get(c, 0) != model_sum.get(c, 0)}
                    first = i + 1 - ((i + 1) % batch or batch)
                    where = f"frames {first}..{i}" if batch > 1 else f"#{i} frame {frame.hex()}"
                    stats.mismatch(f"{sc.name} {where}: counters (program, model) {diff}", "counters")
                stats.counters.update(kernel)
                counts_before, model_sum = counts_after, collections.Counter()
            if (i + 1) % 20_000 == 0:
                pair.check_state(stats, f"{sc.name} #{i}")
        pair.check_state(stats, f"{sc.name} end")
        stats.frames = frames
        stats.elapsed = time.monotonic() - started
    finally:
        dp.set_fast_trigger(0, 0)
        dp.set_watched([])
        for port in armed:
            dp.arm_port(port, 0)
    return stats


def fuzz(dp, total: int, seed: int, label: str) -> Stats:
    # SYNGUARD_FUZZ_DIAG=1 compares counters after every frame (slow): a counter
    # mismatch then names its frame.
    batch = 1 if os.environ.get("SYNGUARD_FUZZ_DIAG") else 1000
    cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cpus)})  # one CPU: the fast trigger's windows are per CPU
    try:
        stats = Stats()
        per = -(-total // len(SCENARIOS))
        for k, sc in enumerate(SCENARIOS):
            s = run_scenario(dp, sc, per, seed * 100 + k, batch)
            print(f"  {label} {sc.name}: {s.frames} frames {s.verdict_text()} {s.mismatch_text()} "
                  f"{s.elapsed:.1f}s")
            stats.add(s)
    finally:
        os.sched_setaffinity(0, cpus)
    rate = stats.frames / stats.elapsed if stats.elapsed else 0
    print(f"fuzz[{label}] seed={seed}: frames={stats.frames} verdicts {stats.verdict_text()} "
          f"{stats.mismatch_text()} elapsed={stats.elapsed:.1f}s ({rate:.0f} frames/s)")
    print("  counters: " + " ".join(f"{c.name}={stats.counters.get(c, 0)}" for c in C))
    for text in stats.mismatches:
        print("  MISMATCH " + text)
    return stats


def _seed(default: int) -> int:
    return int(os.environ.get("SYNGUARD_FUZZ_SEED", default))


def _frames(default: int) -> int:
    return int(os.environ.get("SYNGUARD_FUZZ_FRAMES", default))


# Every path the generator must reach for the comparison to mean something.
COVERED = (C.MALFORMED, C.FRAGMENT, C.IPV6_EXT_LIMIT, C.SYN_RECEIVED, C.CHALLENGE_SENT, C.SYN_PASSED,
           C.SYN_ALLOW_CIDR, C.SYN_DROPPED_DENY, C.FAST_TRIGGER)


def test_fuzz_program_equals_model(dp):
    """~30,000 frames over every scenario: verdicts, outputs and counters agree exactly."""
    stats = fuzz(dp, _frames(30_000), _seed(1), "ci")
    assert stats.mismatch_count == 0, "\n".join(stats.mismatches)
    assert {XDP_PASS, XDP_DROP, XDP_TX} <= set(stats.verdicts)
    missing = [c.name for c in COVERED if not stats.counters.get(c)]
    assert not missing, f"generator never reached {missing}"


@pytest.mark.slow
def test_fuzz_program_equals_model_long(dp):
    """1,000,000+ frames (a different seed from the CI run)."""
    total = _frames(1_000_000)
    stats = fuzz(dp, total, _seed(2), "long")
    assert stats.mismatch_count == 0, "\n".join(stats.mismatches)
    assert stats.frames >= total


# ---- model checks that need no kernel ---------------------------------------------------


def test_builders_match_scapy():
    """The hand-built frames are the frames scapy builds (tests/frames.py)."""
    from frames import CLIENT4, CLIENT6, SERVER4, SERVER6, IPv6ExtHdrDestOpt, IPv6ExtHdrHopByHop, syn4, syn6

    assert tcp_frame(ip(CLIENT4), ip(SERVER4), 40000, 80, 1000, SYN, options=SYN_OPTIONS) == bytes(syn4())
    assert tcp_frame(ip(CLIENT6), ip(SERVER6), 40000, 80, 1000, SYN, options=SYN_OPTIONS) == bytes(syn6())
    assert tcp_frame(ip(CLIENT6), ip(SERVER6), 40000, 80, 1000, SYN, options=SYN_OPTIONS, ext=[(0, 0), (60, 0)]) == \
        bytes(syn6(ext=IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt()))
    assert tcp_frame(ip(CLIENT4), ip(SERVER4), 40000, 80, 1234, RST) == bytes(syn4(seq=1234, flags="R", options=[]))
    for layout in SYN_LAYOUTS:
        assert tcp_frame(ip(CLIENT4), ip(SERVER4), 40000, 80, 1000, SYN, options=layout) == \
            bytes(syn4(options=layout))


def test_model_synack_is_well_formed():
    """The model's XDP_TX frames pass scapy's reading in tests/frames.py (fields, options,
    checksums recomputed by scapy) for every generated SYN layout."""
    from frames import check_synack

    key = bytes(range(16))
    m = Model(mode=Mode.PROTECT, now_s=100_000)
    m.set_slot_key(77, key)
    m.set_slot(77)
    m.set_synack(1460, 1440, 9, 0xF)
    m.set_ports([])
    fg = FrameGen(random.Random(5))
    # Extension headers scapy can dissect (a random routing header defeats it).
    fg._ext = lambda: fg.rng.choice(([], [(0, 0)], [(0, 0), (60, 1)], [(60, 2)]))
    seen = 0
    for _ in range(300):
        frame, *_ = fg.valid(flags=SYN, dport=80)
        frame = bytes(frame)
        verdict, deltas, out = m.step(frame)
        if verdict == XDP_TX:
            check_synack(out, frame, key, 77, 1460, 1440, 9, 0xF)
            seen += 1
    assert seen > 50


def test_model_verdict_table():
    """The README table, row by row, on the model alone."""
    m = Model(mode=Mode.PROTECT, now_s=5000)
    m.set_synack(1460, 1440, 7, 0xF)
    m.set_ports([80])
    cli, srv = ip("192.0.2.200"), ip("198.51.100.1")
    syn = tcp_frame(cli, srv, 1234, 80, 99, SYN, options=SYN_OPTIONS)
    base = {C.PACKETS: 1, C.TCP: 1, C.SYN_RECEIVED: 1}
    assert m.step(syn)[:2] == (XDP_TX, {**base, C.CHALLENGE_SENT: 1})
    assert m.step(tcp_frame(cli, srv, 1234, 22, 99, SYN))[:2] == (XDP_PASS, {**base, C.SYN_PASSED: 1})
    for flags in (ACK, RST, SYN | ACK, SYN | RST, FIN, 0):
        assert m.step(tcp_frame(cli, srv, 1234, 80, 99, flags))[:2] == (XDP_PASS, {C.PACKETS: 1, C.TCP: 1})
    m.set_allow_cidrs(["192.0.2.0/24"])
    assert m.step(syn)[:2] == (XDP_PASS, {**base, C.SYN_ALLOW_CIDR: 1, C.SYN_PASSED: 1})
    m.set_deny_cidrs(["192.0.2.200/32"])
    assert m.step(syn)[:2] == (XDP_DROP, {**base, C.SYN_DROPPED_DENY: 1})
    m.set_mode(Mode.OBSERVE)
    assert m.step(syn)[:2] == (XDP_PASS, {**base, C.SYN_PASSED: 1})
    m.set_mode(Mode.AUTO)
    m.set_deny_cidrs([])
    m.set_allow_cidrs([])
    assert m.step(syn)[0] == XDP_PASS
    m.arm_port(80, 5001)
    assert m.step(syn)[0] == XDP_TX
    m.tick(5001)  # deadline reached: no longer armed
    assert m.step(syn)[0] == XDP_PASS
