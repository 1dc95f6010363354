"""Table-driven BPF_PROG_TEST_RUN fixtures: the real program in the real kernel.

Each case: input frame -> expected verdict, output frame check, and the exact
counter deltas (every counter not listed must stay unchanged). A SYN-ACK is
checked byte for byte against the reference (synguard_lab.model.synack, built on
synguard.cookie) and read back with scapy (fields, options, checksums).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from synguard import abi
from synguard_lab import model
from synguard.abi import Counter as C, Mode

from conftest import NOW_S, SECRET, SECRET_PREV, SLOT, SYNACK_MSS4, SYNACK_MSS6, SYNACK_WSCALE, TCP_OPTS_ALL
from frames import (
    ARP, CLIENT4, CLIENT6, SERVER4, SERVER6, TCP, UDP, XDP_DROP, XDP_PASS, XDP_TX,
    Dot1AD, Dot1Q, Ether, IP, IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop,
    check_synack, eth, syn4, syn6,
)

CHALLENGED = {C.PACKETS: 1, C.TCP: 1, C.SYN_RECEIVED: 1, C.CHALLENGE_SENT: 1}
PASSED_SYN = {C.PACKETS: 1, C.TCP: 1, C.SYN_RECEIVED: 1, C.SYN_PASSED: 1}
NOT_A_SYN = {C.PACKETS: 1, C.TCP: 1}

WINDOWS = [("MSS", 1460), ("NOP", None), ("WScale", 8), ("NOP", None), ("NOP", None), ("SAckOK", b"")]
MACOS = [("MSS", 1460), ("NOP", None), ("WScale", 6), ("NOP", None), ("NOP", None), ("Timestamp", (123, 0)),
         ("SAckOK", b""), ("EOL", None), ("EOL", None)]


def raw_opts(hexstr):
    """A SYN whose option bytes are exactly hexstr (padded to 4 bytes with EOL by scapy)."""
    return lambda: syn4(options=bytes.fromhex(hexstr))


@dataclass
class Case:
    name: str
    frame: Callable[[], object]
    verdict: int
    counters: dict
    output: str = "unchanged"  # "unchanged" | "synack"
    setup: Callable = field(default=lambda dp: None)


CASES = [
    # -- the SYN-ACK -------------------------------------------------------------
    Case("ipv4 linux syn", lambda: syn4(), XDP_TX, CHALLENGED, "synack"),
    Case("ipv6 linux syn", lambda: syn6(), XDP_TX, CHALLENGED, "synack"),
    Case("ipv4 syn, no options (frame grows)", lambda: syn4(options=[]), XDP_TX, CHALLENGED, "synack"),
    Case("ipv6 syn, no options", lambda: syn6(options=[]), XDP_TX, CHALLENGED, "synack"),
    Case("windows-like syn, no timestamps", lambda: syn4(options=WINDOWS), XDP_TX, CHALLENGED, "synack"),
    Case("windows-like ipv6 syn", lambda: syn6(options=WINDOWS), XDP_TX, CHALLENGED, "synack"),
    Case("macos-like syn, 24 option bytes", lambda: syn4(options=MACOS), XDP_TX, CHALLENGED, "synack"),
    Case("linux options in another order", lambda: syn4(options=[("Timestamp", (9, 0)), ("NOP", None),
         ("WScale", 2), ("SAckOK", b""), ("MSS", 1300)]), XDP_TX, CHALLENGED, "synack"),
    Case("ecn setup syn (ECE+CWR)", lambda: syn4(flags="SEC"), XDP_TX, CHALLENGED, "synack"),
    Case("ecn setup syn without timestamps", lambda: syn4(flags="SEC", options=WINDOWS), XDP_TX, CHALLENGED,
         "synack"),
    Case("ECE alone is no ecn setup", lambda: syn4(flags="SE"), XDP_TX, CHALLENGED, "synack"),
    Case("window scale 20 clamped to 14", lambda: syn4(options=[("MSS", 9000), ("SAckOK", b""),
         ("Timestamp", (1, 0)), ("NOP", None), ("WScale", 20)]), XDP_TX, CHALLENGED, "synack"),
    Case("small mss: class 0", lambda: syn4(options=[("MSS", 100)]), XDP_TX, CHALLENGED, "synack"),
    Case("ipv6 jumbo mss", lambda: syn6(options=[("MSS", 8960)]), XDP_TX, CHALLENGED, "synack"),
    # odd layouts: read like the kernel's tcp_parse_options()
    Case("EOL first ends the list", raw_opts("00020405b4"), XDP_TX, CHALLENGED, "synack"),
    Case("unknown option skipped", raw_opts("fe06aabbccdd020405b4"), XDP_TX, CHALLENGED, "synack"),
    Case("mss of wrong length skipped", raw_opts("0205000005020405b4"), XDP_TX, CHALLENGED, "synack"),
    Case("mss 0 ignored", raw_opts("02040000"), XDP_TX, CHALLENGED, "synack"),
    Case("duplicate mss: the later wins", raw_opts("020405b402040514"), XDP_TX, CHALLENGED, "synack"),
    Case("option length 1 stops the list", raw_opts("020405b40301080a0000000100000000"), XDP_TX, CHALLENGED,
         "synack"),
    Case("option length 0 stops the list", raw_opts("0400020405b4"), XDP_TX, CHALLENGED, "synack"),
    Case("option running past the end stops", raw_opts("020405b4080a00000001"), XDP_TX, CHALLENGED, "synack"),
    Case("kind without a length byte at the end", raw_opts("01010101020405b401010108"), XDP_TX, CHALLENGED,
         "synack"),
    Case("40 option bytes: 36 NOPs then mss", raw_opts("01" * 36 + "020405b4"), XDP_TX, CHALLENGED, "synack"),
    Case("40 option bytes: 20 unknown 2-byte options", raw_opts("fe02" * 20), XDP_TX, CHALLENGED, "synack"),
    Case("40 option bytes: all options, padding", raw_opts("01" * 10 + "020405b4" "0402" "080a0000000700000000"
         "01030309" "0101010101010101"), XDP_TX, CHALLENGED, "synack"),
    Case("20 option bytes, not linux's layout", raw_opts("020405b4" "0101" "080a0000000700000000" "01030309"),
         XDP_TX, CHALLENGED, "synack"),
    Case("windows layout, last option not SACK", raw_opts("020405b4" "01030308" "0101" "0502"), XDP_TX, CHALLENGED,
         "synack"),
    Case("apple layout, padding not EOL", raw_opts("020405b4" "01030306" "0101080a0000007b00000000" "0402" "0101"),
         XDP_TX, CHALLENGED, "synack"),
    Case("apple layout, mss 0", raw_opts("02040000" "01030306" "0101080a0000007b00000000" "0402" "0000"),
         XDP_TX, CHALLENGED, "synack"),
    Case("linux layout with wscale kind changed", raw_opts("020405b4" "0402" "080a0000000700000000" "01040309"),
         XDP_TX, CHALLENGED, "synack"),
    # frames around the segment
    Case("ipv4 syn, ethernet padding (frame shrinks)", lambda: syn4(options=[]) / (b"\0" * 6), XDP_TX, CHALLENGED,
         "synack"),
    Case("ipv4 syn with ip options", lambda: eth() / IP(src=CLIENT4, dst=SERVER4, options=b"\x01\x01\x01\x00")
         / TCP(sport=40000, dport=80, seq=5, flags="S"), XDP_TX, CHALLENGED, "synack"),
    Case("ipv6 syn after hop-by-hop + dest opts", lambda: syn6(ext=IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt()),
         XDP_TX, CHALLENGED, "synack"),
    Case("ipv6 four extension headers are skipped", lambda: syn6(ext=IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt()
         / IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt()), XDP_TX, CHALLENGED, "synack"),
    Case("802.1Q tagged ipv4 syn", lambda: Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / Dot1Q(vlan=42)
         / IP(src=CLIENT4, dst=SERVER4) / TCP(sport=40000, dport=80, flags="S", options=WINDOWS), XDP_TX,
         CHALLENGED, "synack"),
    Case("802.1ad + 802.1Q tagged ipv6 syn", lambda: Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
         / Dot1AD(vlan=7) / Dot1Q(vlan=42) / IPv6(src=CLIENT6, dst=SERVER6) / TCP(sport=1, dport=80, flags="S"),
         XDP_TX, CHALLENGED, "synack"),
    Case("syn+fin counts as a syn", lambda: syn4(flags="SF"), XDP_TX, CHALLENGED, "synack"),
    Case("syn with payload", lambda: syn4() / b"data", XDP_TX, CHALLENGED, "synack"),
    Case("every port protected when the list is empty", lambda: syn4(dport=12345), XDP_TX, CHALLENGED, "synack",
         setup=lambda dp: dp.set_ports([])),
    Case("auto mode, armed port", lambda: syn4(), XDP_TX, CHALLENGED, "synack",
         setup=lambda dp: (dp.set_mode(Mode.AUTO), dp.arm_port(80, NOW_S + 5))),
    Case("allow cidr elsewhere does not match", lambda: syn4(), XDP_TX, CHALLENGED, "synack",
         setup=lambda dp: dp.set_allow_cidrs(["10.0.0.0/8", "2001:db8::/127"])),
    # -- passes ----------------------------------------------------------------
    Case("syn to an unprotected port", lambda: syn4(dport=22), XDP_PASS, PASSED_SYN),
    Case("auto mode, port not armed", lambda: syn4(), XDP_PASS, PASSED_SYN, setup=lambda dp: dp.set_mode(Mode.AUTO)),
    Case("auto mode, arming expired", lambda: syn4(), XDP_PASS, PASSED_SYN,
         setup=lambda dp: (dp.set_mode(Mode.AUTO), dp.arm_port(80, NOW_S))),
    Case("observe mode passes syns", lambda: syn4(), XDP_PASS, PASSED_SYN, setup=lambda dp: dp.set_mode(Mode.OBSERVE)),
    Case("syn-ack is not ours", lambda: syn4(flags="SA"), XDP_PASS, NOT_A_SYN),
    Case("ack is not ours (the tc program's)", lambda: syn4(flags="A", options=[]), XDP_PASS, NOT_A_SYN),
    Case("ack with data is not ours", lambda: syn4(flags="PA", options=[]) / b"GET / HTTP/1.0\r\n\r\n", XDP_PASS,
         NOT_A_SYN),
    Case("rst is not ours", lambda: syn4(flags="R", options=[]), XDP_PASS, NOT_A_SYN),
    Case("syn+rst is not ours", lambda: syn4(flags="SR"), XDP_PASS, NOT_A_SYN),
    Case("udp", lambda: eth() / IP(src=CLIENT4, dst=SERVER4) / UDP(sport=1, dport=80), XDP_PASS, {C.PACKETS: 1}),
    Case("arp", lambda: Ether(src="02:00:00:00:00:01", dst="ff:ff:ff:ff:ff:ff") / ARP(psrc=CLIENT4, pdst=SERVER4),
         XDP_PASS, {C.PACKETS: 1}),
    Case("ipv4 first fragment", lambda: eth() / IP(src=CLIENT4, dst=SERVER4, flags="MF") / TCP(sport=1, dport=80, flags="S"),
         XDP_PASS, {C.PACKETS: 1, C.FRAGMENT: 1}),
    Case("ipv4 later fragment", lambda: eth() / IP(src=CLIENT4, dst=SERVER4, frag=3, proto=6) / (b"\0" * 40),
         XDP_PASS, {C.PACKETS: 1, C.FRAGMENT: 1}),
    Case("ipv6 fragment header", lambda: syn6(ext=IPv6ExtHdrFragment(m=1)), XDP_PASS, {C.PACKETS: 1, C.FRAGMENT: 1}),
    Case("ipv6 five extension headers pass", lambda: syn6(ext=IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt()
         / IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt()), XDP_PASS, {C.PACKETS: 1, C.IPV6_EXT_LIMIT: 1}),
    Case("tcp data offset past the frame", lambda: Ether(bytes(syn4(options=[]))[:46] + b"\xf0"
         + bytes(syn4(options=[]))[47:]), XDP_PASS, {C.PACKETS: 1, C.MALFORMED: 1}),
    Case("allow cidr passes unchallenged", lambda: syn4(), XDP_PASS,
         {**PASSED_SYN, C.SYN_ALLOW_CIDR: 1}, setup=lambda dp: dp.set_allow_cidrs(["192.0.2.0/24"])),
    Case("allow cidr v6", lambda: syn6(), XDP_PASS,
         {**PASSED_SYN, C.SYN_ALLOW_CIDR: 1}, setup=lambda dp: dp.set_allow_cidrs(["2001:db8::/48"])),
    # -- drops -----------------------------------------------------------------
    Case("deny cidr drops syns on any port", lambda: syn4(dport=22), XDP_DROP,
         {C.PACKETS: 1, C.TCP: 1, C.SYN_RECEIVED: 1, C.SYN_DROPPED_DENY: 1},
         setup=lambda dp: dp.set_deny_cidrs(["192.0.2.0/28"])),
    Case("deny wins over allow", lambda: syn4(), XDP_DROP,
         {C.PACKETS: 1, C.TCP: 1, C.SYN_RECEIVED: 1, C.SYN_DROPPED_DENY: 1},
         setup=lambda dp: (dp.set_deny_cidrs(["192.0.2.10/32"]), dp.set_allow_cidrs(["192.0.2.0/24"]))),
    Case("deny ignored in observe mode", lambda: syn4(), XDP_PASS, PASSED_SYN,
         setup=lambda dp: (dp.set_deny_cidrs(["192.0.2.0/24"]), dp.set_mode(Mode.OBSERVE))),
]


def run_case(dp, frame):
    before = dp.counters()
    result = dp.test_run(bytes(frame))
    after = dp.counters()
    deltas = {c: after[c] - before[c] for c in after if after[c] != before[c]}
    return result, deltas


def check(dp, out, frame, key=SECRET, slot=SLOT, tcp_opts=TCP_OPTS_ALL):
    check_synack(out, bytes(frame), key, slot, SYNACK_MSS4, SYNACK_MSS6, SYNACK_WSCALE, tcp_opts)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_fixture(dp, case):
    case.setup(dp)
    frame = case.frame()
    result, deltas = run_case(dp, frame)
    assert result.retval == case.verdict
    assert deltas == case.counters
    if case.output == "synack":
        check(dp, result.data, frame)
    else:
        assert result.data == bytes(frame)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_fixture_agrees_with_the_model(case):
    """The README verdict table as synguard_lab.model implements it gives every fixture's
    verdict, counters and output (setups call the same methods on the model)."""
    m = model_of()
    case.setup(m)
    frame = bytes(case.frame())
    verdict, cnt, out = m.step(frame)
    assert (verdict, cnt) == (case.verdict, case.counters)
    assert (out is not None) == (case.output == "synack")


def model_of() -> model.Model:
    """A model holding the state the dp fixture writes."""
    m = model.Model(mode=Mode.PROTECT, now_s=NOW_S)
    m.set_slot_key(SLOT - 1, SECRET_PREV)
    m.set_slot_key(SLOT, SECRET)
    m.set_slot(SLOT)
    m.set_synack(SYNACK_MSS4, SYNACK_MSS6, SYNACK_WSCALE, TCP_OPTS_ALL)
    m.set_ports({80})
    return m


@pytest.mark.parametrize("tcp_opts", range(16))
@pytest.mark.parametrize("frame", [syn4(flags="SEC"), syn6(flags="SEC"), syn4(options=MACOS, flags="SEC")],
                         ids=["linux4", "linux6", "macos4"])
def test_server_options_mask_the_synack(dp, tcp_opts, frame):
    """A server without timestamps / SACK / window scaling / ECN never gets them offered."""
    dp.set_synack(SYNACK_MSS4, SYNACK_MSS6, SYNACK_WSCALE, tcp_opts)
    result = dp.test_run(bytes(frame))
    assert result.retval == XDP_TX
    check(dp, result.data, frame, tcp_opts=tcp_opts)
    opts = dict(Ether(result.data)[TCP].options)
    ts = bool(tcp_opts & abi.OPT_TS)
    assert ("Timestamp" in opts) == ts
    assert ("SAckOK" in opts) == (ts and bool(tcp_opts & abi.OPT_SACK))
    assert ("WScale" in opts) == (ts and bool(tcp_opts & abi.OPT_WSCALE))
    assert ("E" in str(Ether(result.data)[TCP].flags)) == (ts and bool(tcp_opts & abi.OPT_ECN))


def test_synack_values(dp):
    """The numbers a client sees, spelled out once (the rest compares with the reference)."""
    from synguard import cookie

    result = dp.test_run(bytes(syn4(seq=1000, options=MACOS, flags="SEC")))
    tcp = Ether(result.data)[TCP]
    assert tcp.ack == 1001 and str(tcp.flags) == "SAE"
    opts = dict(tcp.options)
    assert opts["MSS"] == SYNACK_MSS4 and opts["WScale"] == SYNACK_WSCALE and "SAckOK" in opts
    tsval, tsecr = opts["Timestamp"]
    assert tsecr == 123
    assert tsval & 0x3F == 6 | 1 << 4 | 1 << 5  # wscale 6, SACK, ECN
    assert tcp.seq & 7 == (SLOT & 1) << 2 | 3  # slot parity, MSS class of 1460
    neg = cookie.check_ack((SECRET_PREV, SECRET) if SLOT & 1 else (SECRET, SECRET_PREV), CLIENT4, SERVER4,
                           40000, 80, 1001, tcp.seq + 1, tsval)
    assert neg == cookie.negotiate(False, 1460, 6, True, True, True, TCP_OPTS_ALL)


def test_key_follows_the_slot(dp):
    """sg_secrets[slot & 1] signs: advancing the slot switches keys, for every family."""
    keys = {SLOT + 1: bytes(range(50, 66)), SLOT + 2: bytes(range(70, 86)), SLOT + 3: bytes(16)}
    for slot, key in keys.items():
        dp.set_slot_key(slot, key)
        dp.set_slot(slot)
        for frame in (syn4(sport=slot & 0xFFFF), syn6(sport=slot & 0xFFFF), syn6(sport=1)):
            result = dp.test_run(bytes(frame))
            assert result.retval == XDP_TX
            check(dp, result.data, frame, key=key, slot=slot)


@pytest.mark.parametrize("family", [4, 6])
def test_every_truncation_of_a_syn(dp, family):
    """Cut anywhere inside the headers: pass to the kernel and count malformed.

    BPF_PROG_TEST_RUN refuses frames shorter than an Ethernet header (14 bytes),
    as no driver hands XDP one; a bare Ethernet header is the shortest case."""
    frame = bytes(syn4(options=MACOS) if family == 4 else syn6(options=MACOS))
    for length in range(14, len(frame)):
        result, deltas = run_case(dp, frame[:length])
        assert result.retval == XDP_PASS, length
        assert result.data == frame[:length]
        assert deltas == {C.PACKETS: 1, C.MALFORMED: 1}, length
    result, deltas = run_case(dp, frame)
    assert result.retval == XDP_TX


def _options():
    """Random TCP option lists: known kinds with right and wrong lengths, NOP/EOL, garbage."""
    known = st.sampled_from(["020405b4", "02040578", "0204ffff", "02040000", "0402", "080a0000000100000002",
                             "030307", "03030e", "0303ff", "01", "00", "fe03aa", "0204", "0802"])
    return st.one_of(st.lists(known, max_size=12).map(lambda xs: bytes.fromhex("".join(xs))[:40]),
                     st.binary(max_size=40))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.booleans(), st.integers(0, 2**32 - 1), st.integers(1, 65535), st.integers(0, 2**32 - 1),
       st.integers(0, 2**28 - 1), st.binary(min_size=16, max_size=16), _options(), st.integers(0, 15),
       st.sampled_from(["S", "SEC", "SE", "SC", "SF"]))
def test_kernel_synack_equals_reference(dp, ipv6, addr, sport, seq, slot, key, opts, tcp_opts, flags):
    dp.set_ports([])
    dp.set_slot_key(slot, key)
    dp.set_slot(slot)
    dp.set_synack(SYNACK_MSS4, SYNACK_MSS6, SYNACK_WSCALE, tcp_opts)
    opts = opts + b"\0" * (-len(opts) % 4)
    if ipv6:
        frame = syn6(src=str(__import__("ipaddress").IPv6Address(addr << 64 | 7)), sport=sport, seq=seq, flags=flags,
                     options=opts)
    else:
        frame = syn4(src=str(__import__("ipaddress").IPv4Address(addr)), sport=sport, seq=seq, flags=flags,
                     options=opts)
    result = dp.test_run(bytes(frame))
    assert result.retval == XDP_TX
    check(dp, result.data, frame, key=key, slot=slot, tcp_opts=tcp_opts)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(min_size=14, max_size=200))
def test_garbage_frames(dp, data):
    """Random bytes: the model's verdict, never aborted; a TX is the reference SYN-ACK."""
    dp.set_ports([])
    m = model_of()
    m.set_ports([])
    result, deltas = run_case(dp, data)
    verdict, cnt, out = m.step(data)
    assert result.retval == verdict and deltas == cnt
    assert result.data == (out if out is not None else data)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from([bytes(syn4()), bytes(syn6()), bytes(syn4(options=MACOS)), bytes(syn4(options=[])),
                        bytes(syn6(ext=IPv6ExtHdrHopByHop()))]),
       st.lists(st.tuples(st.integers(0, 119), st.integers(0, 255)), min_size=1, max_size=6))
def test_mutated_frames(dp, base, flips):
    """Valid frames with bytes overwritten: same rule as garbage."""
    data = bytearray(base)
    for pos, value in flips:
        if pos < len(data):
            data[pos] = value
    data = bytes(data)
    m = model_of()
    result, deltas = run_case(dp, data)
    verdict, cnt, out = m.step(data)
    assert result.retval == verdict and deltas == cnt
    assert result.data == (out if out is not None else data)


# ---- The fast path's option layouts (ebpf/synguard.bpf.c synopts_fast) -----------------
# Option bytes as sent; each answered by xdp_synguard itself, without the option-scan tail call.
FAST_LAYOUTS = {
    "none": "",
    "mss only": "020405b4",
    "mss, nop ws": "020405b4" "01030307",
    "mss, nop nop sack": "020405b4" "01010402",
    "mss, sack nop nop": "020405b4" "04020101",
    "mss, sack eol eol": "020405b4" "04020000",
    "windows": "020405b4" "01030308" "01010402",
    "linux without timestamps": "020405b4" "01010402" "01030307",
    "mss, sack ts": "020405b4" "0402080a1122334400000000",
    "mss, nop nop ts": "020405b4" "0101080a1122334400000000",
    "linux (android)": "020405b4" "0402080a1122334400000000" "01030307",
    "linux, ts without sack": "020405b4" "0101080a1122334400000000" "01030307",
    "freebsd": "020405b4" "01030306" "0402080a1122334400000000",
    "macos/ios": "020405b4" "01030306" "0101080a1122334400000000" "04020000",
    "macos, sack padded with nops": "020405b4" "01030306" "0101080a1122334400000000" "01010402",
    "wscale 15 clamped": "020405b4" "0402080a1122334400000000" "0103030f",
}


@pytest.fixture
def no_optscan(dp):
    """sg_progs[SG_PROG_OPTSCAN] emptied for the test (a SYN needing the scan then passes)."""
    import ctypes as ct

    progs = dp.map("sg_progs")
    del progs[ct.c_int(0)]
    try:
        yield dp
    finally:
        progs[ct.c_int(0)] = ct.c_int(dp.optscan_fd)


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("layout", FAST_LAYOUTS, ids=list(FAST_LAYOUTS))
def test_fast_layouts_need_no_scan(no_optscan, layout, family):
    dp = no_optscan
    opts = bytes.fromhex(FAST_LAYOUTS[layout])
    frame = (syn4 if family == 4 else syn6)(options=opts, flags="SEC")
    result, deltas = run_case(dp, frame)
    assert result.retval == XDP_TX and deltas == CHALLENGED, layout
    check(dp, result.data, frame)
    # the scan's layouts really are left to the scan: with the slot empty, they pass
    other = (syn4 if family == 4 else syn6)(options=bytes.fromhex("0101020405b4"))
    assert dp.test_run(bytes(other)).retval == XDP_PASS


@pytest.mark.parametrize("layout", FAST_LAYOUTS, ids=list(FAST_LAYOUTS))
def test_fast_layouts_mutated(dp, layout):
    """Every option byte of every fast layout overwritten with values that matter to the
    layout checks: the answer is always the reference's (fast path or scan alike)."""
    opts = bytes.fromhex(FAST_LAYOUTS[layout])
    for pos in range(len(opts)):
        for value in (0x00, 0x01, 0x02, 0x03, 0x04, 0x08, 0x0a, 0x0e, 0x0f, 0xff, opts[pos] ^ 0x80):
            mutated = opts[:pos] + bytes([value]) + opts[pos + 1:]
            frame = syn4(options=mutated, seq=pos * 256 + value)
            result = dp.test_run(bytes(frame))
            assert result.retval == XDP_TX, (layout, pos, value)
            check(dp, result.data, frame)


def _src_syns(dp, addr: str) -> int | None:
    """sg_src_syns' estimate for an IPv4 source, None when not in the table."""
    import ctypes as ct
    import ipaddress

    table = dp.map("sg_src_syns")
    key = table.Key()
    ct.memmove(key.addr, b"\0" * 10 + b"\xff\xff" + ipaddress.IPv4Address(addr).packed, 16)
    try:
        return int(table[key].syns)
    except KeyError:
        return None


def test_source_sample_enters_on_the_second_sample(dp):
    """One SYN in SG_SRC_SAMPLE per CPU is sampled; a source enters sg_src_syns on its
    second sample on the CPU (counted as both), so sources sampled once (a random-source
    flood) never cost an LRU insert."""
    import os
    import random

    n = abi.SRC_SAMPLE
    base = random.Random().randrange(1 << 16)  # sources no earlier test used (door slots hold fingerprints)
    heavy = f"198.18.{base >> 8}.{base & 0xFF}"
    once = [f"198.19.{(base + i) >> 8 & 0xFF}.{(base + i) & 0xFF}" for i in range(1, 65)]
    old = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(old)})  # one CPU: its own sample counter and doorkeeper
    try:
        for k in range(1, 4):
            for _ in range(n):
                assert dp.test_run(bytes(syn4(src=heavy))).retval == XDP_TX
            assert _src_syns(dp, heavy) == (None if k == 1 else k * n), k  # 16 SYNs: exactly one sample
        for src in once:  # each source: one sampled SYN (its 16th), in n SYNs
            for _ in range(n):
                assert dp.test_run(bytes(syn4(src=src))).retval == XDP_TX
        assert [s for s in once if _src_syns(dp, s) is not None] == []
        assert _src_syns(dp, heavy) == 3 * n
    finally:
        os.sched_setaffinity(0, old)
