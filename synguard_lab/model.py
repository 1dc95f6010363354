"""Pure-Python model of the XDP program's verdict rules (ebpf/synguard.bpf.c).

The model is an executable reading of the C, written to be compared with the
real program frame by frame (tests/test_fuzz.py): same parse, same
classification, same verdict, same counters, same output frame. It depends on
nothing but the standard library and synguard.cookie (the bit-exact cookie
reference), never on scapy, so a bug shared by a packet library and the tests
cannot hide here.

What it models (the state the program sees):
  - sg_config: mode, all_ports, allow_ttl_s, secret_gen, now_s, the CIDR counts,
    fast_trigger_syns / fast_hold_s;
  - sg_ports: protect flag, watch slot and auto deadline per port (the fast
    trigger writes deadlines, as the program does);
  - sg_secrets (by generation parity), sg_allow_cidrs / sg_deny_cidrs (LPM over
    the 128-bit mapped address), sg_allowlist with expiry and its negative
    cache sg_allow_filter;
  - per watched port, the one-second SYN window of ONE CPU (the fast trigger is
    per CPU: compare with a program run on a single, pinned CPU).
Not modelled, because no verdict, counter or output depends on them: the
HyperLogLog registers, the sampled per-source SYN table, the IPv6 SipHash cache
(its result must equal the plain hash: that is what the comparison checks).

step(frame) -> (verdict, counter deltas, expected output frame or None when the
program leaves the frame untouched).
"""

from __future__ import annotations

import ipaddress
import struct

from synguard import abi, cookie
from synguard.abi import Counter, Mode

XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX = 0, 1, 2, 3

_U32 = 0xFFFFFFFF

# sg_parse results (enum sg_parse_result).
PARSE_TCP, PARSE_NOT_OURS, PARSE_MALFORMED, PARSE_FRAGMENT, PARSE_EXT_LIMIT = range(5)

ETH_P_IP, ETH_P_IPV6, ETH_P_8021Q, ETH_P_8021AD = 0x0800, 0x86DD, 0x8100, 0x88A8
IPPROTO_HOPOPTS, IPPROTO_TCP, IPPROTO_ROUTING, IPPROTO_FRAGMENT, IPPROTO_AH, IPPROTO_DSTOPTS = 0, 6, 43, 44, 51, 60
TCP_FIN, TCP_SYN, TCP_RST, TCP_ACK = 0x01, 0x02, 0x04, 0x10

CHALLENGE_TCP_LEN = 20
_NO_PORT = (0, 0, 0)  # sg_ports entry never written: not protected, not watched, not armed


def s32(x: int) -> int:
    """(__s32) of a u32 expression."""
    x &= _U32
    return x - (1 << 32) if x & 0x80000000 else x


def _htons(x: int) -> int:
    """bpf_htons on a little-endian host: the value whose raw (LE) load gives x's network bytes."""
    return ((x & 0xFF) << 8) | ((x >> 8) & 0xFF)


def _bswap32(x: int) -> int:
    return int.from_bytes((x & _U32).to_bytes(4, "little"), "big")


def _sum32(raw: int) -> int:
    """sg_sum32: a u32 as two 16-bit words of a one's complement sum."""
    raw &= _U32
    return (raw & 0xFFFF) + (raw >> 16)


def _fold(s: int) -> int:
    """sg_fold: (u16)~fold(fold(sum)) of a u32 sum."""
    s &= _U32
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _le32(b: bytes) -> int:
    return int.from_bytes(b, "little")


def mapped(addr: bytes) -> bytes:
    """struct sg_addr of a source: IPv6 as is, IPv4 as ::ffff:a.b.c.d."""
    return addr if len(addr) == 16 else b"\0" * 10 + b"\xff\xff" + addr


def _cidr_entry(net) -> tuple[int, int]:
    """(prefixlen, 128-bit network) of a CIDR as the trie holds it (IPv4 /n = 96 + n)."""
    net = ipaddress.ip_network(net, strict=False)
    if net.version == 4:
        return 96 + net.prefixlen, int.from_bytes(mapped(net.network_address.packed), "big")
    return net.prefixlen, int(net.network_address)


class _Trie:
    """An LPM trie looked up with prefixlen 128: does any entry cover the address?"""

    def __init__(self, nets=()):
        self.entries: set[tuple[int, int]] = set()
        self.count = 0  # sg_config.allow_cidrs / deny_cidrs: the lookup is skipped when 0
        self.set(nets)

    def set(self, nets) -> None:
        nets = {ipaddress.ip_network(n, strict=False) for n in nets}
        self.entries = {_cidr_entry(n) for n in nets}
        self.count = len(nets)  # DataPath writes the number of distinct networks

    def match(self, addr16: bytes) -> bool:
        a = int.from_bytes(addr16, "big")
        for plen, net in self.entries:
            if plen == 0 or (a >> (128 - plen)) == (net >> (128 - plen)):
                return True
        return False


class Model:
    """The program's state and its verdict rules; see the module docstring."""

    def __init__(self, *, mode: Mode = Mode.OBSERVE, now_s: int = 0, allow_ttl_s: int = 0):
        self.mode = Mode(mode)
        self.all_ports = True
        self.now_s = now_s & _U32
        self.allow_ttl_s = allow_ttl_s & _U32
        self.secret_gen = 0
        self.secrets: list[bytes] = [bytes(16), bytes(16)]
        self.fast_trigger_syns = 0
        self.fast_hold_s = 0
        # sg_ports: port -> [protect, watch_slot, auto_until_s]; absent = all zero.
        self.ports: dict[int, list[int]] = {}
        self.allow = _Trie()
        self.deny = _Trie()
        # sg_allowlist: 16-byte mapped source -> [expires_s, validated]; sg_allow_filter bits.
        self.allowlist_map: dict[bytes, list[int]] = {}
        self.allow_filter: set[int] = set()
        # One CPU's per-watch-slot SYN state: slot -> [syns, window_s, window_syns].
        self.port_syns: dict[int, list[int]] = {}

    # ---- control plane, mirroring DataPath ---------------------------------

    def set_mode(self, mode: Mode) -> None:
        self.mode = Mode(mode)

    def tick(self, now_s: int) -> None:
        self.now_s = now_s & _U32

    def set_allow_ttl(self, seconds: int) -> None:
        self.allow_ttl_s = seconds & _U32

    def set_secret(self, gen: int, secret: bytes) -> None:
        if len(secret) != 16:
            raise ValueError("secret must be 16 bytes")
        self.secrets[gen & 1] = bytes(secret)
        self.secret_gen = gen & _U32

    def _port(self, port: int) -> list[int]:
        return self.ports.setdefault(port, [0, 0, 0])

    def set_ports(self, ports) -> None:
        """Protected ports; empty protects every port (all_ports)."""
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

    def set_fast_trigger(self, syns_per_cpu_second: int, hold_s: int) -> None:
        self.fast_trigger_syns = syns_per_cpu_second & _U32
        self.fast_hold_s = hold_s & _U32

    def set_allow_cidrs(self, nets) -> None:
        self.allow.set(nets)

    def set_deny_cidrs(self, nets) -> None:
        self.deny.set(nets)

    def allowlist_clear(self) -> None:
        self.allowlist_map.clear()
        self.allow_filter_rebuild()

    def allow_filter_rebuild(self) -> None:
        """DataPath.allow_filter_rebuild: bits of the entries still live at now_s."""
        self.allow_filter = {
            abi.allow_filter_bit(a) for a, (expires, _) in self.allowlist_map.items() if s32(expires - self.now_s) > 0
        }

    def allowlist(self) -> dict:
        """As DataPath.allowlist(): address -> (expires_s, validated)."""
        out = {}
        for a, (expires, validated) in self.allowlist_map.items():
            addr = ipaddress.IPv6Address(a)
            out[addr.ipv4_mapped or addr] = (expires, validated)
        return out

    def config(self) -> dict[str, int]:
        """sg_config as DataPath.config() reads it back."""
        return {
            "mode": int(self.mode),
            "all_ports": int(self.all_ports),
            "allow_ttl_s": self.allow_ttl_s,
            "secret_gen": self.secret_gen,
            "now_s": self.now_s,
            "allow_cidrs": self.allow.count,
            "deny_cidrs": self.deny.count,
            "fast_trigger_syns": self.fast_trigger_syns,
            "fast_hold_s": self.fast_hold_s,
            "reserved": 0,
        }

    def port_table(self) -> dict[int, tuple[int, int, int]]:
        """The non-zero entries of sg_ports: port -> (protect, watch_slot, auto_until_s)."""
        return {p: tuple(s) for p, s in self.ports.items() if any(s)}

    # ---- cookies ------------------------------------------------------------

    @property
    def slot(self) -> int:
        return self.now_s >> abi.SLOT_SHIFT

    def cookie_hash(self, saddr: bytes, daddr: bytes, sport: int, dport: int, slot: int, key_idx: int) -> int:
        """cookie_hash(): SipHash-2-4 of daddr | saddr | dport | sport | slot_le32 (synguard.cookie)."""
        msg = daddr + saddr + struct.pack("!HH", dport, sport) + struct.pack("<I", slot & _U32)
        return cookie.siphash24(self.secrets[key_idx & 1], msg)

    def cookie(self, saddr, daddr, sport: int, dport: int, slot: int | None = None, gen: int | None = None) -> int:
        """The cookie the program would send (or accept) for a client->server 4-tuple.

        Addresses as packed bytes (4 or 16) or anything ipaddress accepts; slot and gen
        default to the current ones. The secret is the one held for gen's parity."""
        saddr, daddr = _packed(saddr), _packed(daddr)
        slot = self.slot if slot is None else slot & _U32
        gen = self.secret_gen if gen is None else gen
        h = self.cookie_hash(saddr, daddr, sport, dport, slot, gen & 1)
        return (h & 0xFFFFFFFC) | (gen & 1) << 1 | (slot & 1)

    # ---- the program ----------------------------------------------------------

    @staticmethod
    def parse(frame: bytes):
        """sg_parse(): (result, l3_off, l4_off, ipv6). Offsets are valid only for PARSE_TCP."""
        n = len(frame)
        if n < 14:
            return PARSE_MALFORMED, 0, 0, False
        proto = frame[12] << 8 | frame[13]
        pos = 14
        for _ in range(abi.VLAN_MAX):
            if proto != ETH_P_8021Q and proto != ETH_P_8021AD:
                break
            if pos + 4 > n:
                return PARSE_MALFORMED, 0, 0, False
            proto = frame[pos + 2] << 8 | frame[pos + 3]
            pos += 4
        l3 = pos
        if proto == ETH_P_IP:
            ipv6 = False
            if pos + 20 > n:
                return PARSE_MALFORMED, l3, 0, ipv6
            hdrlen = (frame[pos] & 0x0F) * 4
            if frame[pos] >> 4 != 4 or hdrlen < 20:
                return PARSE_MALFORMED, l3, 0, ipv6
            if pos + hdrlen > n:
                return PARSE_MALFORMED, l3, 0, ipv6
            if frame[pos + 9] != IPPROTO_TCP:
                return PARSE_NOT_OURS, l3, 0, ipv6
            if (frame[pos + 6] << 8 | frame[pos + 7]) & 0x3FFF:
                return PARSE_FRAGMENT, l3, 0, ipv6
            l3_len = frame[pos + 2] << 8 | frame[pos + 3]
            pos += hdrlen
        elif proto == ETH_P_IPV6:
            ipv6 = True
            if pos + 40 > n:
                return PARSE_MALFORMED, l3, 0, ipv6
            if frame[pos] >> 4 != 6:
                return PARSE_MALFORMED, l3, 0, ipv6
            nexthdr = frame[pos + 6]
            l3_len = 40 + (frame[pos + 4] << 8 | frame[pos + 5])
            pos += 40
            for _ in range(abi.IPV6_EXT_MAX):
                if nexthdr == IPPROTO_TCP:
                    break
                if nexthdr == IPPROTO_FRAGMENT:
                    return PARSE_FRAGMENT, l3, 0, ipv6
                if nexthdr in (IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_DSTOPTS, IPPROTO_AH):
                    if pos + 2 > n:
                        return PARSE_MALFORMED, l3, 0, ipv6
                    # AH counts 4-byte words minus 2, the others 8-byte words minus 1.
                    step = (frame[pos + 1] + 2) * 4 if nexthdr == IPPROTO_AH else (frame[pos + 1] + 1) * 8
                    nexthdr = frame[pos]
                    pos += step
                else:
                    return PARSE_NOT_OURS, l3, 0, ipv6
            else:
                if nexthdr != IPPROTO_TCP:
                    return PARSE_EXT_LIMIT, l3, 0, ipv6
        else:
            return PARSE_NOT_OURS, l3, 0, False
        # The IP length must cover the headers and fit in the frame.
        l3_hdr = pos - l3
        if l3_len < l3_hdr or l3 + l3_len > n:
            return PARSE_MALFORMED, l3, 0, ipv6
        # parse_tcphdr
        if pos + 20 > n:
            return PARSE_MALFORMED, l3, 0, ipv6
        hdrlen = (frame[pos + 12] >> 4) * 4
        if hdrlen < 20 or hdrlen > l3_len - l3_hdr:
            return PARSE_MALFORMED, l3, 0, ipv6
        if pos + hdrlen > n:
            return PARSE_MALFORMED, l3, 0, ipv6
        return PARSE_TCP, l3, pos, ipv6

    def _port_protected(self, state) -> bool:
        if not (self.all_ports or state[0]):
            return False
        if self.mode == Mode.PROTECT:
            return True
        return self.mode == Mode.AUTO and s32(state[2] - self.now_s) > 0

    def allowlist_check(self, src: bytes) -> bool:
        if abi.allow_filter_bit(src) not in self.allow_filter:
            return False
        e = self.allowlist_map.get(src)
        return e is not None and s32(e[0] - self.now_s) > 0

    def _allowlist_add(self, src: bytes) -> None:
        expires = (self.now_s + self.allow_ttl_s) & _U32
        self.allow_filter.add(abi.allow_filter_bit(src))
        e = self.allowlist_map.get(src)
        if e is None:
            self.allowlist_map[src] = [expires, 1]
            return
        e[0] = expires
        if e[1] != _U32:
            e[1] += 1

    def _port_count(self, state, cnt: dict) -> None:
        """port_count(): per-watched-port SYNs and, in auto mode, the fast trigger."""
        if not state[1]:
            return
        ps = self.port_syns.setdefault(state[1] & (abi.PORT_SLOTS - 1), [0, None, 0])
        ps[0] += 1
        if ps[1] != self.now_s:
            ps[1] = self.now_s
            ps[2] = 0
        ps[2] = (ps[2] + 1) & _U32
        if (
            self.mode == Mode.AUTO
            and self.fast_trigger_syns
            and ps[2] == self.fast_trigger_syns
            and s32(state[2] - self.now_s) < s32(self.fast_hold_s >> 1)
        ):
            state[2] = (self.now_s + self.fast_hold_s) & _U32
            cnt[Counter.FAST_TRIGGER] = cnt.get(Counter.FAST_TRIGGER, 0) + 1

    def step(self, frame: bytes, ingress_slot: int = 0):
        """Run the program on one frame: (verdict, counter deltas, output frame or None if unchanged).

        ingress_slot is the counter block the frame counts in; the deltas are the
        same whatever the slot (the caller sums them over slots)."""
        frame = bytes(frame)
        cnt: dict[Counter, int] = {Counter.PACKETS: 1}
        result, l3, l4, ipv6 = self.parse(frame)
        if result != PARSE_TCP:
            extra = {PARSE_MALFORMED: Counter.MALFORMED, PARSE_FRAGMENT: Counter.FRAGMENT,
                     PARSE_EXT_LIMIT: Counter.IPV6_EXT_LIMIT}.get(result)
            if extra is not None:
                cnt[extra] = 1
            return XDP_PASS, cnt, None
        cnt[Counter.TCP] = 1
        flags = frame[l4 + 13] & (TCP_SYN | TCP_ACK | TCP_RST)
        if flags != TCP_SYN and flags != TCP_RST:
            return XDP_PASS, cnt, None
        if ipv6:
            saddr, daddr = frame[l3 + 8:l3 + 24], frame[l3 + 24:l3 + 40]
        else:
            saddr, daddr = frame[l3 + 12:l3 + 16], frame[l3 + 16:l3 + 20]
        sport = frame[l4] << 8 | frame[l4 + 1]
        dport = frame[l4 + 2] << 8 | frame[l4 + 3]
        seq = int.from_bytes(frame[l4 + 4:l4 + 8], "big")
        src = mapped(saddr)
        state = self.ports.get(dport, _NO_PORT)  # the real entry: the fast trigger writes it
        if flags == TCP_SYN:
            return self._handle_syn(frame, cnt, l3, ipv6, saddr, daddr, sport, dport, seq, src, state)
        return self._handle_rst(cnt, saddr, daddr, sport, dport, seq, src, state)

    def _handle_syn(self, frame, cnt, l3, ipv6, saddr, daddr, sport, dport, seq, src, state):
        self._port_count(state, cnt)
        cnt[Counter.SYN_RECEIVED] = 1
        if self.mode != Mode.OBSERVE:
            if self.deny.count and self.deny.match(src):
                cnt[Counter.SYN_DROPPED_DENY] = 1
                return XDP_DROP, cnt, None
            if self._port_protected(state):
                if self.allow.count and self.allow.match(src):
                    cnt[Counter.SYN_ALLOW_CIDR] = 1
                elif self.allowlist_check(src):
                    cnt[Counter.SYN_ALLOWLISTED] = 1
                else:
                    gen, slot = self.secret_gen, self.slot
                    h = self.cookie_hash(saddr, daddr, sport, dport, slot, gen & 1)
                    ck = (h & 0xFFFFFFFC) | (gen & 1) << 1 | (slot & 1)
                    # Never an acceptable SYN-ACK (ack == ISN + 1): the kernel gets the SYN.
                    if ck == (seq + 1) & _U32:
                        cnt[Counter.COOKIE_COLLISION] = 1
                    else:
                        cnt[Counter.CHALLENGE_SENT] = 1
                        verdict, out = self.challenge(frame, l3, ipv6, saddr, daddr, sport, dport, ck, h >> 32)
                        return verdict, cnt, out
        cnt[Counter.SYN_PASSED] = 1
        return XDP_PASS, cnt, None

    def _handle_rst(self, cnt, saddr, daddr, sport, dport, seq, src, state):
        if not self._port_protected(state):
            return XDP_PASS, cnt, None
        # Low bit: slot parity (current or previous); next bit: secret parity.
        slot = self.slot
        if (slot ^ seq) & 1:
            slot = (slot - 1) & (_U32 >> abi.SLOT_SHIFT)  # slots wrap at 2^(32 - SLOT_SHIFT)
        idx = (seq >> 1) & 1
        h = self.cookie_hash(saddr, daddr, sport, dport, slot, idx)
        if ((h & 0xFFFFFFFC) | idx << 1 | (slot & 1)) == seq:
            self._allowlist_add(src)
            cnt[Counter.COOKIE_VALIDATED] = 1
            return XDP_DROP, cnt, None
        if self.allowlist_check(src):
            return XDP_PASS, cnt, None
        cnt[Counter.COOKIE_INVALID] = 1
        return XDP_DROP, cnt, None

    @staticmethod
    def challenge(frame: bytes, l3_off: int, ipv6: bool, saddr: bytes, daddr: bytes,
                  sport: int, dport: int, ck: int, isn: int):
        """challenge_send(): (verdict, output frame). A fresh L3 header and a 20-byte
        TCP SYN-ACK written at l3_off, MACs swapped, length and trailing bytes kept."""
        out = bytearray(frame)
        if len(out) < 14:
            return XDP_ABORTED, None
        out[0:6], out[6:12] = frame[6:12], frame[0:6]
        l3 = l3_off & 0x3F
        sport_raw = _le32(struct.pack("!H", sport))  # as the C loads it: network bytes, LE host
        dport_raw = _le32(struct.pack("!H", dport))
        if ipv6:
            if l3 + 40 + CHALLENGE_TCP_LEN > len(out):
                return XDP_ABORTED, bytes(out)
            out[l3:l3 + 40] = b"\x60\0\0\0" + struct.pack("!HBB", CHALLENGE_TCP_LEN, IPPROTO_TCP, 64) + daddr + saddr
            th = l3 + 40
            s = 0
            for i in range(0, 16, 4):
                s += _sum32(_le32(saddr[i:i + 4])) + _sum32(_le32(daddr[i:i + 4]))
        else:
            if l3 + 20 + CHALLENGE_TCP_LEN > len(out):
                return XDP_ABORTED, bytes(out)
            s = _sum32(_le32(saddr)) + _sum32(_le32(daddr))
            check = _fold(s + _htons(0x4500) + _htons(20 + CHALLENGE_TCP_LEN) + _htons(0x4000)
                          + _htons(64 << 8 | IPPROTO_TCP))
            out[l3:l3 + 20] = (struct.pack("!HHHHBB", 0x4500, 20 + CHALLENGE_TCP_LEN, 0, 0x4000, 64, IPPROTO_TCP)
                               + struct.pack("<H", check) + daddr + saddr)
            th = l3 + 20
        s += _htons(IPPROTO_TCP) + _htons(CHALLENGE_TCP_LEN)
        s += (sport_raw + dport_raw + _sum32(_bswap32(isn)) + _sum32(_bswap32(ck))
              + _htons(0x5000 | 0x12) + _htons(65535))
        out[th:th + 20] = (struct.pack("!HHIIHH", dport, sport, isn & _U32, ck & _U32, 0x5012, 65535)
                           + struct.pack("<H", _fold(s)) + b"\0\0")
        return XDP_TX, bytes(out)


def _packed(addr) -> bytes:
    if isinstance(addr, (bytes, bytearray)):
        if len(addr) not in (4, 16):
            raise ValueError("address must be 4 or 16 bytes")
        return bytes(addr)
    return ipaddress.ip_address(addr).packed
