"""Pure-Python model of the XDP program's verdict table (README, "How it works").

The fuzz oracle (tests/test_fuzz.py): written from the README's verdict table and
ebpf/COOKIE.md, not from the C. It keeps its own copy of the state the control
plane writes (mode, ports, CIDR lists, cookie slot and keys, SYN-ACK settings),
parses frames with its own byte-offset reader, and builds the SYN-ACK from
synguard.cookie (the bit-exact cookie reference) and an RFC 1071 checksum over
the bytes. It depends on nothing but the standard library and synguard.cookie,
never on scapy, so a bug shared by a packet library and the tests cannot hide here.

Parsing rules (README): up to 2 VLAN tags (802.1Q / 802.1ad); IPv4 with options
(MF or a fragment offset = fragment); IPv6 with up to 4 extension headers
(hop-by-hop, routing, destination options, AH; a fragment header = fragment;
a fifth header that is not TCP = ext limit);
the IP length must cover the headers and fit in the frame; the TCP data offset
must be >= 5 and fit in the IP length and the frame. Anything else is malformed.

Not modelled, because no verdict, counter or output depends on them: the
HyperLogLog registers and the sampled per-source SYN table.
The per-port one-second SYN window (fast trigger) is per CPU: compare with a
program run on one pinned CPU.

step(frame) -> (verdict, counter deltas, output frame, or None when the program
must leave the frame untouched).
"""

from __future__ import annotations

import ipaddress
import struct
from typing import NamedTuple

from synguard import abi, cookie
from synguard.abi import Counter, Mode

XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX = 0, 1, 2, 3

_U32 = 0xFFFFFFFF

ETH_P_IP, ETH_P_IPV6, ETH_P_8021Q, ETH_P_8021AD = 0x0800, 0x86DD, 0x8100, 0x88A8
IPPROTO_HOPOPTS, IPPROTO_TCP, IPPROTO_ROUTING, IPPROTO_FRAGMENT, IPPROTO_AH, IPPROTO_DSTOPTS = 0, 6, 43, 44, 51, 60
TCP_FIN, TCP_SYN, TCP_RST, TCP_ACK, TCP_ECE, TCP_CWR = 0x01, 0x02, 0x04, 0x10, 0x40, 0x80

SYNACK_TCP_LEN = 40  # 20 + 20 option bytes (COOKIE.md); 24 when no timestamps are negotiated
SYNACK_PAD_MAX = 16  # NOP bytes that may end the options instead of shrinking the frame
_NO_PORT = (0, 0, 0)  # sg_ports entry never written: not protected, not watched, not armed

# Why a frame is not a TCP segment the program reads further.
NOT_OURS, MALFORMED, FRAGMENT, EXT_LIMIT = "not ours", "malformed", "fragment", "ext limit"
_REASON_COUNTER = {MALFORMED: Counter.MALFORMED, FRAGMENT: Counter.FRAGMENT, EXT_LIMIT: Counter.IPV6_EXT_LIMIT}


def s32(x: int) -> int:
    """A u32 as a signed 32-bit number (serial-number comparisons of second counters)."""
    x &= _U32
    return x - (1 << 32) if x & 0x80000000 else x


def ones_complement_checksum(data: bytes) -> int:
    """RFC 1071 Internet checksum of data."""
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def mapped(addr: bytes) -> bytes:
    """A source address as the CIDR lists hold it: IPv6 as is, IPv4 as ::ffff:a.b.c.d."""
    return addr if len(addr) == 16 else b"\0" * 10 + b"\xff\xff" + addr


def _cidr_entry(net) -> tuple[int, int]:
    """(prefix length, 128-bit network) of a CIDR over the mapped address space."""
    net = ipaddress.ip_network(net, strict=False)
    if net.version == 4:
        return 96 + net.prefixlen, int.from_bytes(mapped(net.network_address.packed), "big")
    return net.prefixlen, int(net.network_address)


class _CidrList:
    """Does any listed network cover the address?"""

    def __init__(self, nets=()):
        self.entries: set[tuple[int, int]] = set()
        self.count = 0  # distinct networks, as DataPath writes sg_config.allow_cidrs / deny_cidrs
        self.set(nets)

    def set(self, nets) -> None:
        nets = {ipaddress.ip_network(n, strict=False) for n in nets}
        self.entries = {_cidr_entry(n) for n in nets}
        self.count = len(nets)

    def match(self, addr16: bytes) -> bool:
        a = int.from_bytes(addr16, "big")
        return any(plen == 0 or (a >> (128 - plen)) == (net >> (128 - plen)) for plen, net in self.entries)


class Segment(NamedTuple):
    """A parsed TCP segment (addresses as packed bytes, numbers in host order)."""

    l3: int  # offset of the IP header (after Ethernet and VLAN tags)
    l4: int  # offset of the TCP header
    ipv6: bool
    saddr: bytes
    daddr: bytes
    sport: int
    dport: int
    seq: int
    flags: int
    options: bytes  # the TCP option bytes (data offset * 4 - 20 of them)


def parse(frame: bytes) -> Segment | str:
    """The README's parsing rules: a Segment, or why the frame is not one (NOT_OURS, MALFORMED, ...)."""
    n = len(frame)
    if n < 14:
        return MALFORMED
    proto = int.from_bytes(frame[12:14], "big")
    pos = 14
    for _ in range(abi.VLAN_MAX):
        if proto not in (ETH_P_8021Q, ETH_P_8021AD):
            break
        if pos + 4 > n:
            return MALFORMED
        proto = int.from_bytes(frame[pos + 2:pos + 4], "big")
        pos += 4
    l3 = pos
    if proto == ETH_P_IP:
        ipv6 = False
        if pos + 20 > n:
            return MALFORMED
        ihl = (frame[pos] & 0x0F) * 4
        if frame[pos] >> 4 != 4 or ihl < 20 or pos + ihl > n:
            return MALFORMED
        if frame[pos + 9] != IPPROTO_TCP:
            return NOT_OURS
        if int.from_bytes(frame[pos + 6:pos + 8], "big") & 0x3FFF:  # MF or an offset
            return FRAGMENT
        ip_len = int.from_bytes(frame[pos + 2:pos + 4], "big")
        saddr, daddr = frame[pos + 12:pos + 16], frame[pos + 16:pos + 20]
        pos += ihl
    elif proto == ETH_P_IPV6:
        ipv6 = True
        if pos + 40 > n or frame[pos] >> 4 != 6:
            return MALFORMED
        nexthdr = frame[pos + 6]
        ip_len = 40 + int.from_bytes(frame[pos + 4:pos + 6], "big")
        saddr, daddr = frame[pos + 8:pos + 24], frame[pos + 24:pos + 40]
        pos += 40
        skipped = 0
        while nexthdr != IPPROTO_TCP:
            if skipped == abi.IPV6_EXT_MAX:
                return EXT_LIMIT  # whatever the next header is: the program reads no further
            if nexthdr == IPPROTO_FRAGMENT:
                return FRAGMENT
            if nexthdr not in (IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_DSTOPTS, IPPROTO_AH):
                return NOT_OURS
            if pos + 2 > n:
                return MALFORMED
            # AH counts 4-byte words minus 2, the others 8-byte words minus 1.
            size = (frame[pos + 1] + 2) * 4 if nexthdr == IPPROTO_AH else (frame[pos + 1] + 1) * 8
            nexthdr = frame[pos]
            pos += size
            skipped += 1
    else:
        return NOT_OURS
    l3_hdr = pos - l3
    if ip_len < l3_hdr or l3 + ip_len > n:
        return MALFORMED
    if pos + 20 > n:
        return MALFORMED
    doff = (frame[pos + 12] >> 4) * 4
    if doff < 20 or doff > ip_len - l3_hdr or pos + doff > n:
        return MALFORMED
    return Segment(l3, pos, ipv6, bytes(saddr), bytes(daddr), int.from_bytes(frame[pos:pos + 2], "big"),
                   int.from_bytes(frame[pos + 2:pos + 4], "big"), int.from_bytes(frame[pos + 4:pos + 8], "big"),
                   frame[pos + 13], bytes(frame[pos + 20:pos + doff]))


def synack(frame: bytes, seg: Segment, key: bytes, slot: int, mss4: int, mss6: int, wscale: int,
           tcp_opts: int) -> bytes:
    """The cookie SYN-ACK answering a SYN (COOKIE.md): the SYN's Ethernet header with
    the MACs swapped and its VLAN tags, a fresh IP header, 40 bytes of TCP (24: MSS only, without timestamps)."""
    opts = cookie.parse_syn_options(seg.options)
    ecn = seg.flags & (TCP_ECE | TCP_CWR) == (TCP_ECE | TCP_CWR)
    neg = cookie.negotiate_syn(seg.ipv6, opts, ecn, tcp_opts)
    seq, tsval = cookie.synack_fields(key, seg.saddr, seg.daddr, seg.sport, seg.dport, seg.seq, slot, neg)
    options = cookie.synack_options(neg, mss6 if seg.ipv6 else mss4, wscale, tsval, opts.tsval)
    flags = TCP_SYN | TCP_ACK | (TCP_ECE if neg.ecn else 0)
    # A SYN longer than the reply by whole words, up to SYNACK_PAD_MAX bytes, keeps its
    # length: the options end with that many NOPs (the frame is not shrunk).
    slack = len(frame) - (seg.l3 + (40 if seg.ipv6 else 20) + 20 + len(options))
    if 0 < slack <= SYNACK_PAD_MAX and slack % 4 == 0:
        options += bytes([cookie.OPT_NOP]) * slack
    tcp_len = 20 + len(options)  # SYNACK_TCP_LEN, or 24 without timestamps (MSS only), + NOP padding
    tcp = struct.pack("!HHIIBBHHH", seg.dport, seg.sport, seq, (seg.seq + 1) & _U32, tcp_len // 4 << 4,
                      flags, 65535, 0, 0) + options
    if seg.ipv6:
        pseudo = seg.daddr + seg.saddr + struct.pack("!I3xB", tcp_len, IPPROTO_TCP)
        ip = struct.pack("!IHBB", 0x60000000, tcp_len, IPPROTO_TCP, 64) + seg.daddr + seg.saddr
    else:
        pseudo = seg.daddr + seg.saddr + struct.pack("!BBH", 0, IPPROTO_TCP, tcp_len)
        ip = struct.pack("!BBHHHBBH", 0x45, 0, 20 + tcp_len, 0, 0x4000, 64, IPPROTO_TCP, 0) + seg.daddr + seg.saddr
        ip = ip[:10] + struct.pack("!H", ones_complement_checksum(ip)) + ip[12:]
    tcp = tcp[:16] + struct.pack("!H", ones_complement_checksum(pseudo + tcp)) + tcp[18:]
    return frame[6:12] + frame[0:6] + frame[12:seg.l3] + ip + tcp


class Model:
    """The program's state, as the control plane writes it, and the verdict table."""

    def __init__(self, *, mode: Mode = Mode.OBSERVE, now_s: int = 0):
        self.mode = Mode(mode)
        self.all_ports = True
        self.now_s = now_s & _U32
        self.slot = 0
        self.keys: list[bytes] = [bytes(16), bytes(16)]
        self.synack_mss4 = self.synack_mss6 = self.synack_wscale = self.tcp_opts = 0
        self.fast_trigger_syns = 0
        self.fast_hold_s = 0
        self.all_until_s = 0  # auto mode: every protected port armed until then ("protect all")
        # port -> [protect, watch_slot, auto_until_s]; absent = all zero.
        self.ports: dict[int, list[int]] = {}
        self.allow = _CidrList()
        self.deny = _CidrList()
        # One CPU's per-watch-slot SYN state: slot -> [syns, window_s, window_syns].
        self.port_syns: dict[int, list[int]] = {}

    # ---- control plane, mirroring DataPath ---------------------------------

    def set_mode(self, mode: Mode) -> None:
        self.mode = Mode(mode)

    def tick(self, now_s: int) -> None:
        self.now_s = now_s & _U32

    def set_slot(self, slot: int) -> None:
        self.slot = slot & _U32

    def set_slot_key(self, slot: int, key: bytes) -> None:
        if len(key) != 16:
            raise ValueError("key must be 16 bytes")
        self.keys[slot & 1] = bytes(key)

    def set_synack(self, mss4: int, mss6: int, wscale: int, tcp_opts: int) -> None:
        self.synack_mss4, self.synack_mss6, self.synack_wscale, self.tcp_opts = mss4, mss6, wscale, tcp_opts

    def _port(self, port: int) -> list[int]:
        return self.ports.setdefault(port, [0, 0, 0])

    def set_ports(self, ports) -> None:
        """Protected ports; empty protects every port."""
        ports = set(ports)
        for port, state in self.ports.items():
            state[0] = 1 if port in ports else 0
        for port in ports:
            self._port(port)[0] = 1
        self.all_ports = not ports

    def set_watched(self, slots: dict[int, int]) -> None:
        """Watched ports as DataPath.set_watched returned them: port -> slot."""
        for port, state in self.ports.items():
            state[1] = slots.get(port, 0)
        for port, slot in slots.items():
            self._port(port)[1] = slot

    def arm_port(self, port: int, until_s: int) -> None:
        self._port(port)[2] = until_s & _U32

    def arm_all(self, until_s: int) -> None:
        self.all_until_s = until_s & _U32

    def set_fast_trigger(self, syns_per_cpu_second: int, hold_s: int) -> None:
        self.fast_trigger_syns = syns_per_cpu_second & _U32
        self.fast_hold_s = hold_s & _U32

    def set_allow_cidrs(self, nets) -> None:
        self.allow.set(nets)

    def set_deny_cidrs(self, nets) -> None:
        self.deny.set(nets)

    def config(self) -> dict[str, int]:
        """sg_config as DataPath.config() reads it back."""
        return {
            "mode": int(self.mode), "all_ports": int(self.all_ports), "now_s": self.now_s, "slot": self.slot,
            "allow_cidrs": self.allow.count, "deny_cidrs": self.deny.count,
            "fast_trigger_syns": self.fast_trigger_syns, "fast_hold_s": self.fast_hold_s,
            "synack_mss4": self.synack_mss4, "synack_mss6": self.synack_mss6,
            "synack_wscale": self.synack_wscale, "tcp_opts": self.tcp_opts, "method": 0, "local_only": 0,
            "all_until_s": self.all_until_s, "oos_until_s": 0,
        }

    def port_table(self) -> dict[int, tuple[int, int, int]]:
        """The non-zero port entries: port -> (protect, watch_slot, auto_until_s)."""
        return {p: tuple(s) for p, s in self.ports.items() if any(s)}

    # ---- the verdict table ----------------------------------------------------

    def protected_now(self, state) -> bool:
        """Listed (or every port when the list is empty); in auto mode, also armed (the
        port itself, or every port: all_until_s)."""
        if not (self.all_ports or state[0]):
            return False
        if self.mode == Mode.PROTECT:
            return True
        return self.mode == Mode.AUTO and (s32(state[2] - self.now_s) > 0 or s32(self.all_until_s - self.now_s) > 0)

    def _count_port(self, state, cnt: dict) -> None:
        """SYNs per watched port, one-second window per CPU; auto mode: the fast trigger
        arms the port for fast_hold_s when the window reaches fast_trigger_syns, unless
        it is armed for more than half of that already. Unwatched ports count together in
        slot 0; the SYN that takes them across arms its own port."""
        ps = self.port_syns.setdefault(state[1] & (abi.PORT_SLOTS - 1), [0, None, 0])
        ps[0] += 1
        if ps[1] != self.now_s:
            ps[1], ps[2] = self.now_s, 0
        ps[2] = (ps[2] + 1) & _U32
        if (self.mode == Mode.AUTO and self.fast_trigger_syns and ps[2] == self.fast_trigger_syns
                and s32(state[2] - self.now_s) < s32(self.fast_hold_s >> 1)):
            state[2] = (self.now_s + self.fast_hold_s) & _U32
            cnt[Counter.FAST_TRIGGER] = cnt.get(Counter.FAST_TRIGGER, 0) + 1

    def step(self, frame: bytes):
        """(verdict, counter deltas, output frame or None if the frame must stay unchanged)."""
        frame = bytes(frame)
        cnt: dict[Counter, int] = {Counter.PACKETS: 1}
        seg = parse(frame)
        if not isinstance(seg, Segment):
            if seg in _REASON_COUNTER:
                cnt[_REASON_COUNTER[seg]] = 1
            return XDP_PASS, cnt, None
        cnt[Counter.TCP] = 1
        if seg.flags & (TCP_SYN | TCP_ACK | TCP_RST) != TCP_SYN:
            return XDP_PASS, cnt, None
        cnt[Counter.SYN_RECEIVED] = 1
        state = self._port(seg.dport)  # the live entry: the fast trigger writes it (port_table skips zeros)
        self._count_port(state, cnt)
        src = mapped(seg.saddr)
        if self.mode != Mode.OBSERVE:
            if self.deny.count and self.deny.match(src):
                cnt[Counter.SYN_DROPPED_DENY] = 1
                return XDP_DROP, cnt, None
            if self.protected_now(state):
                if self.allow.count and self.allow.match(src):
                    cnt[Counter.SYN_ALLOW_CIDR] = 1
                else:
                    cnt[Counter.CHALLENGE_SENT] = 1
                    out = synack(frame, seg, self.keys[self.slot & 1], self.slot, self.synack_mss4,
                                 self.synack_mss6, self.synack_wscale, self.tcp_opts)
                    return XDP_TX, cnt, out
        cnt[Counter.SYN_PASSED] = 1
        return XDP_PASS, cnt, None
