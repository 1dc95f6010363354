"""The tc ingress program (ebpf/synguard_tc.bpf.c) and its loader (synguard/datapath/tc.py).

Layer 1: BPF_PROG_TEST_RUN of the real program on crafted frames, valid cookies
built with the reference (synguard/cookie.py). Under BPF_PROG_TEST_RUN the kfunc
bpf_sk_assign_tcp_reqsk() always returns -EINVAL (the skb is not at tc ingress),
so a valid cookie with a listener counts COOKIE_REFUSED here: that proves the
program got through the check and the lookup to the kfunc. The live handshake is
tests/test_handshake.py.
Layer 2: attach/detach on a veth in a network namespace this test creates.
"""

from __future__ import annotations

import contextlib
import ctypes as ct
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt
from scapy.layers.l2 import ARP, Dot1Q, Ether

from synguard import abi, cookie
from synguard.abi import Counter, Mode

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (BPF, network namespaces)")

TC_ACT_UNSPEC = 0xFFFFFFFF  # -1: "not decided here", the program's verdict for all it does not drop
TC_ACT_SHOT = 2  # an out-of-state segment while they are dropped (synguard_scope.h)
OOS_ACK_DROPPED = {Counter.OOS_ACK: 1, Counter.OOS_DROPPED: 1}
CLIENT4, SERVER4 = "192.0.2.10", "198.51.100.1"
CLIENT6, SERVER6 = "2001:db8::10", "2001:db8:1::1"
PORT = 80
KEY = bytes(range(16))
KEY_OTHER = bytes(range(100, 116))
SLOT = 0x12345  # odd: sg_secrets[1] = KEY, sg_secrets[0] = KEY_OTHER (the previous slot)
SYNACK_WSCALE = 9
ALL_OPTS = abi.OPT_TS | abi.OPT_SACK | abi.OPT_WSCALE | abi.OPT_ECN


# ---- the maps, written through libbpf (the program's own fresh maps) -------------


class Config(ct.Structure):
    """struct sg_config; its size is checked against the map."""

    _fields_ = [(n, ct.c_uint32) for n in abi.CONFIG_FIELDS[:8]] + [
        ("synack_mss4", ct.c_uint16), ("synack_mss6", ct.c_uint16), ("synack_wscale", ct.c_uint8),
        ("tcp_opts", ct.c_uint8), ("method", ct.c_uint8), ("local_only", ct.c_uint8), ("all_until_s", ct.c_uint32),
        ("oos_until_s", ct.c_uint32)]


class Port(ct.Structure):
    _fields_ = [("protect", ct.c_uint8), ("watch_slot", ct.c_uint8), ("reserved", ct.c_uint16),
                ("auto_until_s", ct.c_uint32)]


class Secret(ct.Structure):
    _fields_ = [("k0", ct.c_uint64), ("k1", ct.c_uint64)]


COUNTER_BLOCK_SIZE = abi.COUNTER_MAX * 8 + abi.PORT_SLOTS * 16 + 8 + 2 * abi.HLL_REGS


def _bpf():
    from synguard.datapath.libbpf import lib

    return lib()


def map_value_size(fd: int) -> int:
    info = (ct.c_uint32 * 20)()  # struct bpf_map_info: type, id, key_size, value_size, ...
    size = ct.c_uint32(ct.sizeof(info))
    assert _bpf().bpf_obj_get_info_by_fd(fd, info, ct.byref(size)) == 0
    return info[3]


class Maps:
    def __init__(self, tc):
        self.fd = {name: tc.map_fd(name) for name in ("sg_config", "sg_ports", "sg_secrets", "sg_counters")}
        self.ncpu = _bpf().libbpf_num_possible_cpus()

    def _put(self, name, key, value):
        k = ct.c_int(key)
        assert _bpf().bpf_map_update_elem(self.fd[name], ct.byref(k), ct.byref(value), 0) == 0

    def config(self, mode=Mode.PROTECT, all_ports=0, slot=SLOT, now_s=0, all_until_s=0):
        self._put("sg_config", 0, Config(mode=int(mode), all_ports=all_ports, slot=slot, synack_mss4=1460,
                                         synack_mss6=1440, synack_wscale=SYNACK_WSCALE, tcp_opts=ALL_OPTS,
                                         now_s=now_s, all_until_s=all_until_s))

    def port(self, port, protect, auto_until_s=0):
        self._put("sg_ports", port, Port(protect=protect, auto_until_s=auto_until_s))

    def secrets(self, by_parity):
        for i, key in enumerate(by_parity):
            k0, k1 = int.from_bytes(key[:8], "little"), int.from_bytes(key[8:], "little")
            self._put("sg_secrets", i, Secret(k0, k1))

    def counters(self) -> dict[Counter, int]:
        """Slot 0 (test runs have ingress ifindex 0), summed over CPUs."""
        stride = (COUNTER_BLOCK_SIZE + 7) // 8 * 8
        buf = ct.create_string_buffer(stride * self.ncpu)
        k = ct.c_int(0)
        assert _bpf().bpf_map_lookup_elem(self.fd["sg_counters"], ct.byref(k), buf) == 0
        out = {}
        for c in Counter:
            out[c] = sum(int.from_bytes(buf.raw[cpu * stride + 8 * c: cpu * stride + 8 * c + 8], "little")
                         for cpu in range(self.ncpu))
        return out


# ---- fixtures ------------------------------------------------------------------


def _why_not() -> str | None:
    from synguard.datapath import tc as tcprog

    if not (shutil.which("clang") or shutil.which("clang-14")):
        return "needs clang (make setup)"
    if not tcprog.kernel_has_kfunc():
        return f"kernel lacks {tcprog.KFUNC}"
    return None


@pytest.fixture(scope="module")
def tc():
    why = _why_not()
    if why:
        pytest.skip(why)
    from synguard.datapath.tc import TcProgram

    t = TcProgram()
    yield t
    t.close()


@pytest.fixture
def maps(tc):
    m = Maps(tc)
    m.config()
    m.secrets([KEY_OTHER, KEY])  # SLOT is odd
    for port in (PORT, 81):
        m.port(port, 0)
    m.port(PORT, 1)
    return m


_ns_seq = iter(range(10**6))


@contextlib.contextmanager
def new_netns(tag: str):
    """A fresh network namespace (name unique to this process); yields (name, fd)."""
    name = f"sgtc-{os.getpid()}-{next(_ns_seq)}-{tag}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        yield name, fd
    finally:
        os.close(fd)
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture(scope="module")
def listen_ns():
    """A namespace with listeners on PORT (IPv4 and IPv6): the lookup finds them."""
    from synguard.datapath import in_netns

    with new_netns("listen") as (name, fd):
        socks = []
        with in_netns(fd):
            s4 = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s4.bind(("0.0.0.0", PORT))
            s4.listen(16)
            s6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            s6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s6.bind(("::", PORT))
            s6.listen(16)
            socks += [s4, s6]
        try:
            yield fd
        finally:
            for s in socks:
                s.close()


@pytest.fixture(scope="module")
def empty_ns():
    with new_netns("empty") as (name, fd):
        yield fd


def run_in(fd, tc, frame):
    from synguard.datapath import in_netns

    with in_netns(fd):
        return tc.test_run(bytes(frame))


# ---- frames --------------------------------------------------------------------


def ts_option(tsval, tsecr, layout="linux"):
    if layout == "linux":  # NOP, NOP, TS: the fast path
        return [("NOP", None), ("NOP", None), ("Timestamp", (tsval, tsecr))]
    if layout == "bare":  # TS first, padded after: the bounded walk
        return [("Timestamp", (tsval, tsecr)), ("NOP", None), ("NOP", None)]
    if layout == "sack":  # SACK blocks before TS (e.g. a data ACK): the bounded walk
        return [("NOP", None), ("NOP", None), ("SAck", (1000, 2000)), ("NOP", None), ("NOP", None),
                ("Timestamp", (tsval, tsecr))]
    raise ValueError(layout)


def eth():
    return Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")


def cookie_ack(ipv6=False, ts=True, key=KEY, slot=SLOT, isn=0x01020304, sport=40000, dport=PORT,
               layout="linux", wscale=7, sack=True, ecn=False, client_tsval=777, mss=1460):
    """A client's handshake ACK to our SYN-ACK: (frame, Negotiated)."""
    src, dst = (CLIENT6, SERVER6) if ipv6 else (CLIENT4, SERVER4)
    neg = cookie.negotiate(ipv6, mss, wscale, sack, ts, ecn, ALL_OPTS)
    seq, tsval = cookie.synack_fields(key, src, dst, sport, dport, isn, slot, neg)
    opts = ts_option(client_tsval, tsval, layout) if ts else []
    l3 = IPv6(src=src, dst=dst) if ipv6 else IP(src=src, dst=dst)
    frame = eth() / l3 / TCP(sport=sport, dport=dport, seq=(isn + 1) & 0xFFFFFFFF,
                               ack=(seq + 1) & 0xFFFFFFFF, flags="A", window=502, options=opts)
    if (slot, key) in ((SLOT, KEY), (SLOT - 1, KEY_OTHER)):  # the reference agrees (a test of the test)
        keys = {SLOT & 1: KEY, (SLOT - 1) & 1: KEY_OTHER}
        assert cookie.check_ack(keys, src, dst, sport, dport, (isn + 1) & 0xFFFFFFFF,
                                (seq + 1) & 0xFFFFFFFF, tsval) == neg
    return frame, neg


def delta(maps, before):
    after = maps.counters()
    return {c: after[c] - before[c] for c in Counter if after[c] != before[c]}


def run(tc, maps, fd, frame):
    """Counters the frame moved; the verdict is SHOT exactly when OOS_DROPPED counted one."""
    before = maps.counters()
    res = run_in(fd, tc, frame)
    got = delta(maps, before)
    assert res.retval == (TC_ACT_SHOT if got.get(Counter.OOS_DROPPED) else TC_ACT_UNSPEC), (res.retval, got)
    assert res.data == bytes(frame), "the program never changes a packet"
    return got


# ---- layer 1: BPF_PROG_TEST_RUN ----------------------------------------------------


def test_map_shapes_match_abi(tc):
    """The libbpf declarations hold the ABI structs (the XDP maps they reuse have these sizes)."""
    assert map_value_size(tc.map_fd("sg_config")) == ct.sizeof(Config) == 48
    assert map_value_size(tc.map_fd("sg_ports")) == ct.sizeof(Port)
    assert map_value_size(tc.map_fd("sg_secrets")) == ct.sizeof(Secret)
    assert map_value_size(tc.map_fd("sg_counters")) == COUNTER_BLOCK_SIZE
    assert map_value_size(tc.map_fd("sg_ifaces")) == 4


def test_req_attrs_layout_matches_kernel_btf():
    """Our declaration of struct bpf_tcp_req_attrs is the running kernel's."""
    bpftool = shutil.which("bpftool") or "/usr/sbin/bpftool"
    if not os.path.exists(bpftool):
        pytest.skip("needs bpftool")
    dump = subprocess.run([bpftool, "btf", "dump", "file", "/sys/kernel/btf/vmlinux", "format", "c"],
                          capture_output=True, text=True, check=True).stdout
    kernel = re.search(r"struct bpf_tcp_req_attrs \{(.*?)\};", dump, re.S).group(1)
    from synguard.datapath import ebpf_dir

    ours = re.search(r"struct bpf_tcp_req_attrs \{(.*?)\};", (ebpf_dir() / "synguard_tc.bpf.c").read_text(),
                     re.S).group(1)
    def norm(body):
        return [(re.sub(r"^__", "", t), n) for t, n in re.findall(r"(\w+)\s+(\w+(?:\[\d+\])?);", body)]

    assert norm(ours) == norm(kernel) and len(norm(ours)) == 11


@pytest.mark.parametrize("ipv6", [False, True], ids=["v4", "v6"])
@pytest.mark.parametrize("ts, layout", [(True, "linux"), (True, "bare"), (True, "sack"), (False, None)],
                         ids=["ts-linux", "ts-bare", "ts-after-sack", "no-ts"])
def test_valid_cookie_reaches_kfunc(tc, maps, listen_ns, ipv6, ts, layout):
    frame, _ = cookie_ack(ipv6=ipv6, ts=ts, layout=layout or "linux")
    assert run(tc, maps, listen_ns, frame) == {Counter.ACK_CHECKED: 1, Counter.COOKIE_REFUSED: 1}


@pytest.mark.parametrize("ipv6", [False, True], ids=["v4", "v6"])
def test_valid_cookie_without_listener(tc, maps, empty_ns, ipv6):
    frame, _ = cookie_ack(ipv6=ipv6)
    assert run(tc, maps, empty_ns, frame) == {Counter.ACK_CHECKED: 1, Counter.COOKIE_NO_LISTENER: 1}


@pytest.mark.parametrize("variant", [
    "ack-hash", "seq", "sport", "saddr", "tsecr-hash", "tsecr-wscale", "tsecr-sack", "no-ts-on-ts-cookie",
    "ts-on-no-ts-cookie", "mss-class", "slot-bit", "other-key",
])
@pytest.mark.parametrize("ipv6", [False, True], ids=["v4", "v6"])
def test_forged_cookie_no_lookup(tc, maps, listen_ns, ipv6, variant):
    """Every field the cookie authenticates: change it and the ACK is checked, never
    handed to the kfunc (that would count REFUSED: listeners exist), and dropped as out
    of state (protect mode: no socket owns it, no kernel cookie either)."""
    ts = variant != "ts-on-no-ts-cookie"
    frame, neg = cookie_ack(ipv6=ipv6, ts=ts, key=KEY_OTHER if variant == "other-key" else KEY)
    t = frame[TCP]
    opts = dict((k, v) for k, v in t.options if k == "Timestamp")
    tsval, tsecr = opts.get("Timestamp", (0, 0))
    if variant == "ack-hash":
        t.ack ^= 0x100
    elif variant == "seq":  # the ISN is added below the 3 low bits (COOKIE.md): a change by 8 shows
        t.seq = (t.seq + 8) & 0xFFFFFFFF
    elif variant == "sport":
        t.sport += 1
    elif variant == "saddr":
        frame[IPv6 if ipv6 else IP].src = "2001:db8::11" if ipv6 else "192.0.2.11"
    elif variant == "tsecr-hash":
        t.options = ts_option(tsval, tsecr ^ 0x1000)
    elif variant == "tsecr-wscale":
        t.options = ts_option(tsval, tsecr ^ 0x1)
    elif variant == "tsecr-sack":
        t.options = ts_option(tsval, tsecr ^ 0x10)
    elif variant == "no-ts-on-ts-cookie":
        t.options = []
    elif variant == "ts-on-no-ts-cookie":
        t.options = ts_option(1, 0x0F)  # claims "no wscale" with TS: a different opt word
    elif variant == "mss-class":
        t.ack = (((t.ack - 1) ^ 1) + 1) & 0xFFFFFFFF
    elif variant == "slot-bit":
        t.ack = ((((t.ack - 1) ^ 4) + 1) & 0xFFFFFFFF)
    frame = Ether(bytes(frame))
    assert run(tc, maps, listen_ns, frame) == {Counter.ACK_CHECKED: 1, **OOS_ACK_DROPPED}


def test_previous_slot_accepted_older_refused(tc, maps, listen_ns):
    frame, _ = cookie_ack(key=KEY_OTHER, slot=SLOT - 1)
    assert run(tc, maps, listen_ns, frame) == {Counter.ACK_CHECKED: 1, Counter.COOKIE_REFUSED: 1}
    # SLOT - 2 had its own key (secret.slot_key), no longer installed: same parity as SLOT, refused.
    frame, _ = cookie_ack(key=bytes(range(200, 216)), slot=SLOT - 2)
    assert run(tc, maps, listen_ns, frame) == {Counter.ACK_CHECKED: 1, **OOS_ACK_DROPPED}
    # Two slots later the same ACK is stale: the daemon has replaced both keys.
    frame, _ = cookie_ack()
    maps.config(slot=SLOT + 2)
    maps.secrets([bytes(range(50, 66)), bytes(range(70, 86))])
    assert run(tc, maps, listen_ns, frame) == {Counter.ACK_CHECKED: 1, **OOS_ACK_DROPPED}


def test_decoded_options_all_combinations(tc, maps, listen_ns):
    """Each negotiated option set validates (w 0..14 and none, sack, ecn, every MSS class)."""
    cases = [dict(wscale=w, sack=s, ecn=e, mss=m) for w in (None, 0, 7, 14, 20) for s in (False, True)
             for e in (False, True) for m in (536, 1300, 1440, 1460, 9000, None)]
    for ipv6 in (False, True):
        for i, kw in enumerate(cases[:: 3 if ipv6 else 1]):
            frame, _ = cookie_ack(ipv6=ipv6, isn=i * 7919, **kw)
            assert run(tc, maps, listen_ns, frame) == {Counter.ACK_CHECKED: 1, Counter.COOKIE_REFUSED: 1}, kw


def test_unlisted_port_and_observe_untouched(tc, maps, listen_ns):
    frame, _ = cookie_ack(dport=81)
    assert run(tc, maps, listen_ns, frame) == {}
    maps.config(all_ports=1)  # every port listed (nobody listens on 81)
    assert run(tc, maps, listen_ns, frame) == {Counter.ACK_CHECKED: 1, Counter.COOKIE_NO_LISTENER: 1}
    maps.config(mode=Mode.OBSERVE, all_ports=1)
    assert run(tc, maps, listen_ns, frame) == {}
    frame, _ = cookie_ack()
    assert run(tc, maps, listen_ns, frame) == {}
    maps.config(mode=Mode.AUTO)  # auto, never armed: XDP issued no cookie, none is checked
    assert run(tc, maps, listen_ns, frame) == {}


# Issue 20 item 3: in auto mode a cookie ACK is a blind guess unless XDP issued cookies
# for its port lately: checked only while the port (or "protect all") is armed, and for
# SG_ACK_GRACE_S after (a cookie's lifetime: the current and the previous slot).
@pytest.mark.parametrize("switch", ["port", "all"])
def test_auto_mode_checks_only_while_armed_and_a_grace_after(tc, maps, listen_ns, switch):
    frame, _ = cookie_ack()
    checked = {Counter.ACK_CHECKED: 1, Counter.COOKIE_REFUSED: 1}
    now = 100000
    grace = abi.ACK_GRACE_S

    def arm(until):
        if switch == "port":
            maps.config(mode=Mode.AUTO, now_s=now)
            maps.port(PORT, 1, auto_until_s=until)
        else:
            maps.config(mode=Mode.AUTO, now_s=now, all_until_s=until)
            maps.port(PORT, 1)

    try:
        arm(0)
        assert run(tc, maps, listen_ns, frame) == {}  # never armed
        arm(now + 5)
        assert run(tc, maps, listen_ns, frame) == checked  # armed
        arm(now - grace + 1)
        assert run(tc, maps, listen_ns, frame) == checked  # disarmed, within the grace
        arm(now - grace)
        assert run(tc, maps, listen_ns, frame) == {}  # past it
        maps.config(mode=Mode.PROTECT, now_s=now)
        assert run(tc, maps, listen_ns, frame) == checked  # protect mode: always
    finally:
        maps.config()
        maps.port(PORT, 1)


def _others():
    good, _ = cookie_ack()
    ip = good[IP]
    yield "syn", eth() / IP(src=CLIENT4, dst=SERVER4) / TCP(dport=PORT, flags="S")
    yield "synack", eth() / IP(src=CLIENT4, dst=SERVER4) / TCP(dport=PORT, flags="SA", ack=good[TCP].ack)
    yield "udp", eth() / IP(src=CLIENT4, dst=SERVER4) / UDP(dport=PORT)
    yield "arp", eth() / ARP()
    yield "fragment", eth() / IP(src=CLIENT4, dst=SERVER4, flags="MF", proto=6) / bytes(ip[TCP])
    yield "fragment-offset", eth() / IP(src=CLIENT4, dst=SERVER4, frag=3, proto=6) / bytes(good[TCP])
    yield "ihl<5", Ether(bytes(good)[:14] + bytes([0x44]) + bytes(good)[15:])
    raw = bytearray(bytes(good))
    raw[14 + 20 + 12] = 0x40  # doff 4
    yield "doff<5", Ether(bytes(raw))
    raw = bytearray(bytes(good))
    raw[14 + 20 + 12] = 0xF0  # doff 15: beyond the frame
    yield "doff-beyond", Ether(bytes(raw))


@pytest.mark.parametrize("name, frame", list(_others()), ids=[n for n, _ in _others()])
def test_not_an_ack_untouched(tc, maps, listen_ns, name, frame):
    assert run(tc, maps, listen_ns, frame) == {}


def test_ipv4_options_ack_checked(tc, maps, listen_ns):
    frame, _ = cookie_ack()
    with_opts = eth() / IP(src=CLIENT4, dst=SERVER4, options=[b"\x01\x01\x01\x00"]) / frame[TCP]
    assert Ether(bytes(with_opts))[IP].ihl == 6
    assert run(tc, maps, listen_ns, with_opts) == {Counter.ACK_CHECKED: 1, Counter.COOKIE_REFUSED: 1}


def test_ipv6_extension_header_ack_checked(tc, maps, listen_ns):
    """The parser the XDP program uses (synguard_parse.h) skips IPv6 extension headers
    for the tc program too: such an ACK's cookie is checked, not left to the kernel."""
    good6, _ = cookie_ack(ipv6=True)
    frame = eth() / IPv6(src=CLIENT6, dst=SERVER6) / IPv6ExtHdrDestOpt() / good6[TCP]
    assert run(tc, maps, listen_ns, frame) == {Counter.ACK_CHECKED: 1, Counter.COOKIE_REFUSED: 1}


def test_vlan_tagged_ack_checked(tc, maps, listen_ns):
    frame, _ = cookie_ack()
    tagged = eth() / Dot1Q(vlan=5) / frame[IP]
    assert run(tc, maps, listen_ns, tagged) == {Counter.ACK_CHECKED: 1, Counter.COOKIE_REFUSED: 1}


@pytest.mark.parametrize("ipv6", [False, True], ids=["v4", "v6"])
def test_truncated_at_every_length(tc, maps, listen_ns, ipv6):
    frame = bytes(cookie_ack(ipv6=ipv6)[0])
    l3_end = 14 + (40 if ipv6 else 20)  # BPF_PROG_TEST_RUN itself refuses shorter IP frames (EINVAL)
    for n in range(l3_end, len(frame)):  # the TCP header and its options end the frame
        got = run(tc, maps, listen_ns, frame[:n])
        assert got == {}, (n, got)
    assert run(tc, maps, listen_ns, frame) == {Counter.ACK_CHECKED: 1, Counter.COOKIE_REFUSED: 1}
    for n in range(14, l3_end):  # the kernel's own check, not ours: documented here
        with pytest.raises(OSError):
            run_in(listen_ns, tc, frame[:n])


def test_garbage_options_never_crash(tc, maps, listen_ns):
    import random

    rnd = random.Random(5)
    base, _ = cookie_ack(ts=False)
    for _ in range(300):
        base[TCP].ack = rnd.getrandbits(32)  # an invalid cookie (2^-29 chance otherwise)
        opts = bytes(rnd.randrange(256) for _ in range(rnd.choice([4, 8, 12, 20, 40])))
        raw = bytearray(bytes(base[Ether].copy()))
        tcp_off = 14 + 20
        hdr = raw[tcp_off:tcp_off + 20]
        hdr[12] = ((20 + len(opts)) // 4) << 4
        frame = bytes(raw[:tcp_off]) + bytes(hdr) + opts
        frame = frame[:16] + (len(frame) - 14).to_bytes(2, "big") + frame[18:]  # IPv4 total length
        got = run(tc, maps, listen_ns, frame)
        assert got == {Counter.ACK_CHECKED: 1, **OOS_ACK_DROPPED}, got


def test_established_socket_not_counted(tc, maps):
    """A valid-looking cookie on a 4-tuple that has a connection: the lookup finds an
    established socket, the program releases it and counts nothing (no cookie check)."""
    from synguard.datapath import in_netns

    with new_netns("est") as (name, fd):
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        with in_netns(fd):
            srv = socket.socket()
            srv.bind(("127.0.0.1", PORT))
            srv.listen(4)
            cli = socket.create_connection(("127.0.0.1", PORT))
            conn, _ = srv.accept()
            sport = cli.getsockname()[1]
        try:
            src = dst = "127.0.0.1"
            neg = cookie.negotiate(False, 1460, 7, True, True, False, ALL_OPTS)
            seq, tsval = cookie.synack_fields(KEY, src, dst, sport, PORT, 5, SLOT, neg)
            frame = eth() / IP(src=src, dst=dst) / TCP(sport=sport, dport=PORT, seq=6, ack=seq + 1, flags="A",
                                                         options=ts_option(1, tsval))
            assert run(tc, maps, fd, frame) == {}
        finally:
            for s in (cli, conn, srv):
                s.close()


def test_shares_the_xdp_programs_maps(dp, listen_ns):
    """With the XDP program's map fds, the tc program reads the config and keys the
    control plane wrote through BCC and counts into the same blocks."""
    import conftest
    from synguard.datapath.tc import SHARED_MAPS, TcProgram

    if _why_not():
        pytest.skip(_why_not())
    with TcProgram({name: dp.map(name).map_fd for name in SHARED_MAPS}) as shared:
        frame, _ = cookie_ack(key=conftest.SECRET, slot=conftest.SLOT, dport=80)
        forged, _ = cookie_ack(key=KEY_OTHER, slot=conftest.SLOT, dport=80)
        for f, want, verdict in ((frame, {Counter.ACK_CHECKED: 1, Counter.COOKIE_REFUSED: 1}, TC_ACT_UNSPEC),
                                 (forged, {Counter.ACK_CHECKED: 1, **OOS_ACK_DROPPED}, TC_ACT_SHOT)):
            before = dp.counters()
            assert run_in(listen_ns, shared, f).retval == verdict
            after = dp.counters()
            assert {c: after[c] - before[c] for c in Counter if after[c] != before[c]} == want
        dp.set_mode(Mode.OBSERVE)
        before = dp.counters()
        run_in(listen_ns, shared, frame)
        assert dp.counters() == before


# ---- layer 2: attach / detach on a veth --------------------------------------------


FOREIGN_SRC = textwrap.dedent("""\
    #include <linux/bpf.h>
    #include <linux/pkt_cls.h>
    __attribute__((section("tc"), used)) int foreign(struct __sk_buff *skb) { return TC_ACT_OK; }
    char LICENSE[] __attribute__((section("license"), used)) = "GPL";
""")


@pytest.fixture
def veth_ns():
    from synguard.datapath import in_netns

    with new_netns("veth") as (name, fd):
        subprocess.run(["ip", "-n", name, "link", "add", "v0", "type", "veth", "peer", "name", "v1"], check=True)
        subprocess.run(["ip", "-n", name, "link", "set", "v0", "up"], check=True)
        yield name, fd
        with in_netns(fd):
            from synguard.datapath import tc as tcprog

            tcprog.unpin()  # a test that failed half way leaves no pin behind


def tc_filters(ns):
    return subprocess.run(["tc", "-n", ns, "filter", "show", "dev", "v0", "ingress"], capture_output=True,
                          text=True, check=True).stdout


def test_attach_detach_leaves_foreign_filter(tc, veth_ns, tmp_path):
    from synguard.datapath import tc as tcprog
    from synguard.datapath import in_netns

    name, fd = veth_ns
    src = tmp_path / "foreign.c"
    src.write_text(FOREIGN_SRC)
    clang = shutil.which("clang") or shutil.which("clang-14")
    subprocess.run([clang, "-O2", "-target", "bpf", f"-I/usr/include/{sys.implementation._multiarch}", "-c",
                    str(src), "-o", str(tmp_path / "foreign.o")], check=True)
    with in_netns(fd):
        tc.attach("v0")
        assert tcprog.filter_prog_id("v0") == tc.prog_id
        assert tcprog.pinned_tc_prog_id() == tc.prog_id
    subprocess.run(["tc", "-n", name, "filter", "add", "dev", "v0", "ingress", "prio", "7", "handle", "3", "bpf",
                    "da", "obj", str(tmp_path / "foreign.o"), "sec", "tc"], check=True)
    shown = tc_filters(name)
    assert "tc_synguard" in shown and "foreign" in shown
    assert tc.detach("v0") is True
    shown = tc_filters(name)
    assert "tc_synguard" not in shown and "foreign" in shown
    assert tc.detach("v0") is False  # idempotent


def test_refuses_foreign_filter_at_our_slot(tc, veth_ns, tmp_path):
    from synguard.datapath import tc as tcprog
    from synguard.datapath import DataPathError, in_netns

    name, fd = veth_ns
    src = tmp_path / "foreign.c"
    src.write_text(FOREIGN_SRC)
    clang = shutil.which("clang") or shutil.which("clang-14")
    subprocess.run([clang, "-O2", "-target", "bpf", f"-I/usr/include/{sys.implementation._multiarch}", "-c",
                    str(src), "-o", str(tmp_path / "foreign.o")], check=True)
    subprocess.run(["tc", "-n", name, "qdisc", "add", "dev", "v0", "clsact"], check=True)
    subprocess.run(["tc", "-n", name, "filter", "add", "dev", "v0", "ingress", "prio", str(tcprog.TC_PRIORITY),
                    "handle", hex(tcprog.TC_HANDLE), "bpf", "da", "obj", str(tmp_path / "foreign.o"), "sec", "tc"],
                   check=True)
    with in_netns(fd):
        with pytest.raises(DataPathError, match="replaces only its own"):
            tc.attach("v0")
        assert tcprog.detach_orphan("v0") is False  # not pinned by us: left alone
    assert "foreign" in tc_filters(name)


CRASHER = textwrap.dedent("""\
    import os, sys
    from synguard.datapath import in_netns
    from synguard.datapath.tc import TcProgram
    fd = os.open(sys.argv[1], os.O_RDONLY)
    with in_netns(fd):
        t = TcProgram()
        t.attach("v0")
        print(t.prog_id, flush=True)
    os._exit(0)  # dies without cleaning up
""")


def test_crash_leaves_pinned_filter_detach_by_pin(tc, veth_ns):
    from synguard.datapath import tc as tcprog
    from synguard.datapath import in_netns

    name, fd = veth_ns
    out = subprocess.run([sys.executable, "-c", CRASHER, f"/run/netns/{name}"], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    dead_id = int(out.split()[-1])
    with in_netns(fd):
        assert tcprog.filter_prog_id("v0") == dead_id  # the filter outlived its loader
        assert tcprog.pinned_tc_prog_id() == dead_id
        assert tcprog.detach_orphan("v0") is True  # `synguard detach`
        assert tcprog.filter_prog_id("v0") is None
        tcprog.unpin()
        assert tcprog.pinned_tc_prog_id() is None


def test_cli_detach_removes_dead_daemons_filter(tc, veth_ns):
    """`synguard detach -i IF` (ExecStopPost), run with `ip netns exec`: there /sys is
    remounted and the pin is out of sight, so the filter is recognized by name."""
    from synguard.datapath import tc as tcprog
    from synguard.datapath import in_netns

    name, fd = veth_ns
    subprocess.run([sys.executable, "-c", CRASHER, f"/run/netns/{name}"], capture_output=True, text=True,
                   timeout=120, check=True)
    r = subprocess.run(["ip", "netns", "exec", name, sys.executable, "-m", "synguard.cli", "detach", "-i", "v0"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "detached our tc filter" in r.stdout
    with in_netns(fd):
        assert tcprog.filter_prog_id("v0") is None


def test_restart_replaces_dead_daemons_filter(tc, veth_ns):
    from synguard.datapath import tc as tcprog
    from synguard.datapath import in_netns

    name, fd = veth_ns
    out = subprocess.run([sys.executable, "-c", CRASHER, f"/run/netns/{name}"], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    dead_id = int(out.split()[-1])
    with in_netns(fd):
        tc.attach("v0")  # replaces in one step: the interface is never unguarded
        assert tcprog.filter_prog_id("v0") == tc.prog_id != dead_id
        assert tcprog.pinned_tc_prog_id() == tc.prog_id
    assert tc_filters(name).count(f"handle {tcprog.TC_HANDLE:#x}") == 1
    assert tc.detach("v0")


def test_syncookies_off_is_a_clear_error(tc, veth_ns):
    from synguard.datapath import DataPathError, in_netns

    name, fd = veth_ns
    subprocess.run(["ip", "netns", "exec", name, "sysctl", "-qw", "net.ipv4.tcp_syncookies=0"], check=True)
    with in_netns(fd):
        with pytest.raises(DataPathError, match="tcp_syncookies is 0"):
            tc.attach("v0")


def test_missing_clang_is_a_clear_error(monkeypatch):
    from synguard.datapath import tc as tcprog
    from synguard.datapath import DataPathError

    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv("SYNGUARD_CLANG", raising=False)
    with pytest.raises(DataPathError, match="clang not found"):
        tcprog.find_clang()


def test_missing_kfunc_detected(tmp_path):
    from synguard.datapath import tc as tcprog

    fake = tmp_path / "vmlinux"
    fake.write_bytes(b"\0bpf_sk_assign\0bpf_sk_lookup_tcp\0")
    assert tcprog.kernel_has_kfunc(fake) is False
    if _why_not() is None:
        assert tcprog.kernel_has_kfunc()  # and the real one has it


BAD_VERIFIER_SRC = textwrap.dedent("""\
    #include <linux/bpf.h>
    #include <bpf/bpf_helpers.h>
    SEC("tc") int tc_bad(struct __sk_buff *skb)
    {
        return *(int *)(long)skb->data; /* no bounds check */
    }
    char LICENSE[] SEC("license") = "GPL";
""")


def test_verifier_rejection_names_its_log(tmp_path, monkeypatch):
    from synguard.datapath import DataPathError
    from synguard.datapath.tc import TcProgram

    if _why_not():
        pytest.skip(_why_not())
    (tmp_path / "bad.bpf.c").write_text(BAD_VERIFIER_SRC)
    monkeypatch.setenv("SYNGUARD_EBPF_DIR", str(tmp_path))
    with pytest.raises(DataPathError, match=r"cannot load the tc program: .*verifier log: (\S+)\)") as e:
        TcProgram(src_name="bad.bpf.c", prog_name="tc_bad")
    log = re.search(r"verifier log: (\S+)\)", str(e.value)).group(1)
    assert "invalid access to packet" in open(log).read()
    shutil.rmtree(os.path.dirname(log))  # kept by the loader for the operator
    assert "\n" not in str(e.value)


def test_compile_error_names_its_log(tmp_path, monkeypatch):
    from synguard.datapath import DataPathError
    from synguard.datapath.tc import TcProgram

    if _why_not():
        pytest.skip(_why_not())
    (tmp_path / "broken.bpf.c").write_text("this is not C\n")
    monkeypatch.setenv("SYNGUARD_EBPF_DIR", str(tmp_path))
    with pytest.raises(DataPathError, match=r"cannot compile broken.bpf.c with \S+: see (\S+)$") as e:
        TcProgram(src_name="broken.bpf.c", prog_name="x")
    log = re.search(r"see (\S+)$", str(e.value)).group(1)
    assert "error" in open(log).read()
    shutil.rmtree(os.path.dirname(log))
