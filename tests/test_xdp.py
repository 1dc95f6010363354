"""Table-driven BPF_PROG_TEST_RUN fixtures: the real program in the real kernel.

Each case: input frame -> expected verdict, output frame check, and the exact
counter deltas (every counter not listed must stay unchanged).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from synguard import cookie
from synguard.abi import Counter as C, Mode

from conftest import ALLOW_TTL_S, GEN, NOW_S, SECRET, SECRET_PREV
from frames import (
    ARP, CLIENT4, CLIENT6, SERVER4, SERVER6, TCP, UDP, XDP_DROP, XDP_PASS, XDP_TX,
    Dot1AD, Dot1Q, Ether, IP, IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop,
    check_challenge, eth, rst, syn4, syn6,
)

SLOT = cookie.slot_of(NOW_S)
CHALLENGED = {C.PACKETS: 1, C.TCP: 1, C.SYN_RECEIVED: 1, C.CHALLENGE_SENT: 1}
PASSED_SYN = {C.PACKETS: 1, C.TCP: 1, C.SYN_RECEIVED: 1, C.SYN_PASSED: 1}


def valid_cookie(src=CLIENT4, dst=SERVER4, sport=40000, dport=80, slot=SLOT, gen=GEN, secret=SECRET):
    return cookie.cookie(secret, src, dst, sport, dport, slot, gen)


@dataclass
class Case:
    name: str
    frame: Callable[[], object]
    verdict: int
    counters: dict
    output: str = "unchanged"  # "unchanged" | "challenge" | "any"
    setup: Callable = field(default=lambda dp: None)
    after: Callable = field(default=lambda dp, frame: None)


def allowlisted(dp, src=CLIENT4, ipv6=False):
    frame = rst(valid_cookie(src=src, dst=SERVER6 if ipv6 else SERVER4), src=src, dst=SERVER6 if ipv6 else SERVER4, ipv6=ipv6)
    assert dp.test_run(bytes(frame)).retval == XDP_DROP


def source_in_allowlist(dp, frame):
    import ipaddress

    assert ipaddress.ip_address(CLIENT4) in dp.allowlist()


def source_not_in_allowlist(dp, frame):
    assert not dp.allowlist()


CASES = [
    # -- the challenge -------------------------------------------------------
    Case("ipv4 syn, protected port", lambda: syn4(), XDP_TX, CHALLENGED, "challenge"),
    Case("ipv4 syn, no options", lambda: syn4(options=[]), XDP_TX, CHALLENGED, "challenge"),
    Case("ipv4 syn, ethernet padding", lambda: syn4(options=[]) / (b"\0" * 6), XDP_TX, CHALLENGED, "challenge"),
    Case("ipv4 syn with ip options", lambda: eth() / IP(src=CLIENT4, dst=SERVER4, options=b"\x01\x01\x01\x00")
         / TCP(sport=40000, dport=80, seq=5, flags="S"), XDP_TX, CHALLENGED, "challenge"),
    Case("ipv6 syn", lambda: syn6(), XDP_TX, CHALLENGED, "challenge"),
    Case("ipv6 syn after hop-by-hop + dest opts", lambda: syn6(ext=IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt()),
         XDP_TX, CHALLENGED, "challenge"),
    Case("802.1Q tagged ipv4 syn", lambda: Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / Dot1Q(vlan=42)
         / IP(src=CLIENT4, dst=SERVER4) / TCP(sport=40000, dport=80, flags="S"), XDP_TX, CHALLENGED, "challenge"),
    Case("802.1ad + 802.1Q tagged ipv6 syn", lambda: Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
         / Dot1AD(vlan=7) / Dot1Q(vlan=42) / IPv6(src=CLIENT6, dst=SERVER6) / TCP(sport=1, dport=80, flags="S"),
         XDP_TX, CHALLENGED, "challenge"),
    Case("syn+fin counts as a syn", lambda: syn4(flags="SF"), XDP_TX, CHALLENGED, "challenge"),
    Case("every port protected when the list is empty", lambda: syn4(dport=12345), XDP_TX, CHALLENGED, "challenge",
         setup=lambda dp: dp.set_ports([])),
    # -- passes ----------------------------------------------------------------
    Case("syn to an unprotected port", lambda: syn4(dport=22), XDP_PASS, PASSED_SYN),
    Case("observe mode passes syns", lambda: syn4(), XDP_PASS, PASSED_SYN, setup=lambda dp: dp.set_mode(Mode.OBSERVE)),
    Case("syn-ack is not ours", lambda: syn4(flags="SA"), XDP_PASS, {C.PACKETS: 1, C.TCP: 1}),
    Case("ack with data is not ours", lambda: syn4(flags="PA", options=[]) / b"GET / HTTP/1.0\r\n\r\n", XDP_PASS,
         {C.PACKETS: 1, C.TCP: 1}),
    Case("syn+rst is not ours", lambda: syn4(flags="SR"), XDP_PASS, {C.PACKETS: 1, C.TCP: 1}),
    Case("udp", lambda: eth() / IP(src=CLIENT4, dst=SERVER4) / UDP(sport=1, dport=80), XDP_PASS, {C.PACKETS: 1}),
    Case("arp", lambda: Ether(src="02:00:00:00:00:01", dst="ff:ff:ff:ff:ff:ff") / ARP(psrc=CLIENT4, pdst=SERVER4),
         XDP_PASS, {C.PACKETS: 1}),
    Case("ipv4 first fragment", lambda: eth() / IP(src=CLIENT4, dst=SERVER4, flags="MF") / TCP(sport=1, dport=80, flags="S"),
         XDP_PASS, {C.PACKETS: 1, C.FRAGMENT: 1}),
    Case("ipv4 later fragment", lambda: eth() / IP(src=CLIENT4, dst=SERVER4, frag=3, proto=6) / (b"\0" * 40),
         XDP_PASS, {C.PACKETS: 1, C.FRAGMENT: 1}),
    Case("ipv6 fragment header", lambda: syn6(ext=IPv6ExtHdrFragment(m=1)), XDP_PASS, {C.PACKETS: 1, C.FRAGMENT: 1}),
    Case("ipv6 four extension headers are skipped", lambda: syn6(ext=IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt()
         / IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt()), XDP_TX, CHALLENGED, "challenge"),
    Case("ipv6 five extension headers pass", lambda: syn6(ext=IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt()
         / IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt()), XDP_PASS, {C.PACKETS: 1, C.IPV6_EXT_LIMIT: 1}),
    Case("allow cidr passes unchallenged", lambda: syn4(), XDP_PASS,
         {**PASSED_SYN, C.SYN_ALLOW_CIDR: 1}, setup=lambda dp: dp.set_allow_cidrs(["192.0.2.0/24"])),
    Case("allow cidr v6", lambda: syn6(), XDP_PASS,
         {**PASSED_SYN, C.SYN_ALLOW_CIDR: 1}, setup=lambda dp: dp.set_allow_cidrs(["2001:db8::/48"])),
    Case("allow cidr elsewhere does not match", lambda: syn4(), XDP_TX, CHALLENGED, "challenge",
         setup=lambda dp: dp.set_allow_cidrs(["10.0.0.0/8", "2001:db8::/127"])),
    Case("verified source passes", lambda: syn4(sport=50000), XDP_PASS,
         {**PASSED_SYN, C.SYN_ALLOWLISTED: 1}, setup=allowlisted),
    Case("verified v6 source passes", lambda: syn6(sport=50000), XDP_PASS,
         {**PASSED_SYN, C.SYN_ALLOWLISTED: 1}, setup=lambda dp: allowlisted(dp, CLIENT6, True)),
    Case("expired verified source is challenged again", lambda: syn4(), XDP_TX, CHALLENGED, "challenge",
         setup=lambda dp: (dp.set_allow_ttl(0), allowlisted(dp))),
    # -- drops -----------------------------------------------------------------
    Case("deny cidr drops syns on any port", lambda: syn4(dport=22), XDP_DROP,
         {C.PACKETS: 1, C.TCP: 1, C.SYN_RECEIVED: 1, C.SYN_DROPPED_DENY: 1},
         setup=lambda dp: dp.set_deny_cidrs(["192.0.2.0/28"])),
    Case("deny wins over allow", lambda: syn4(), XDP_DROP,
         {C.PACKETS: 1, C.TCP: 1, C.SYN_RECEIVED: 1, C.SYN_DROPPED_DENY: 1},
         setup=lambda dp: (dp.set_deny_cidrs(["192.0.2.10/32"]), dp.set_allow_cidrs(["192.0.2.0/24"]))),
    Case("deny ignored in observe mode", lambda: syn4(), XDP_PASS, PASSED_SYN,
         setup=lambda dp: (dp.set_deny_cidrs(["192.0.2.0/24"]), dp.set_mode(Mode.OBSERVE))),
    # -- challenge answers -----------------------------------------------------
    Case("rst with valid cookie allowlists the source", lambda: rst(valid_cookie()), XDP_DROP,
         {C.PACKETS: 1, C.TCP: 1, C.COOKIE_VALIDATED: 1}, after=source_in_allowlist),
    Case("rst with valid ipv6 cookie", lambda: rst(valid_cookie(CLIENT6, SERVER6), src=CLIENT6, dst=SERVER6, ipv6=True),
         XDP_DROP, {C.PACKETS: 1, C.TCP: 1, C.COOKIE_VALIDATED: 1}),
    Case("rst with cookie of previous secret", lambda: rst(valid_cookie(gen=GEN - 1, secret=SECRET_PREV)), XDP_DROP,
         {C.PACKETS: 1, C.TCP: 1, C.COOKIE_VALIDATED: 1}, after=source_in_allowlist),
    Case("rst with cookie of previous slot", lambda: rst(valid_cookie(slot=SLOT - 1)), XDP_DROP,
         {C.PACKETS: 1, C.TCP: 1, C.COOKIE_VALIDATED: 1}),
    Case("rst with cookie two slots old", lambda: rst(valid_cookie(slot=SLOT - 2)), XDP_DROP,
         {C.PACKETS: 1, C.TCP: 1, C.COOKIE_INVALID: 1}, after=source_not_in_allowlist),
    Case("rst with cookie for another port", lambda: rst(valid_cookie(dport=443)), XDP_DROP,
         {C.PACKETS: 1, C.TCP: 1, C.COOKIE_INVALID: 1}, after=source_not_in_allowlist),
    Case("rst with cookie off by one", lambda: rst(valid_cookie() ^ 4), XDP_DROP,
         {C.PACKETS: 1, C.TCP: 1, C.COOKIE_INVALID: 1}, after=source_not_in_allowlist),
    Case("bad rst from a verified source passes", lambda: rst(12345), XDP_PASS, {C.PACKETS: 1, C.TCP: 1},
         setup=allowlisted),
    Case("rst+ack is not a challenge answer", lambda: rst(valid_cookie(), flags="RA"), XDP_PASS, {C.PACKETS: 1, C.TCP: 1}),
    Case("rst in observe mode passes", lambda: rst(1), XDP_PASS, {C.PACKETS: 1, C.TCP: 1},
         setup=lambda dp: dp.set_mode(Mode.OBSERVE)),
    Case("rst to an unprotected port passes", lambda: rst(1, dport=22), XDP_PASS, {C.PACKETS: 1, C.TCP: 1}),
]


def run_case(dp, frame):
    before = dp.counters()
    result = dp.test_run(bytes(frame))
    after = dp.counters()
    deltas = {c: after[c] - before[c] for c in after if after[c] != before[c]}
    return result, deltas


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_fixture(dp, case):
    case.setup(dp)
    frame = case.frame()
    result, deltas = run_case(dp, frame)
    assert result.retval == case.verdict
    assert deltas == case.counters
    if case.output == "challenge":
        check_challenge(result.data, frame, SECRET, GEN, SLOT)
    elif case.output == "unchanged":
        assert result.data == bytes(frame)
    case.after(dp, frame)


def test_never_an_acceptable_synack(dp):
    """If the cookie equals ISN + 1 the SYN goes to the kernel instead."""
    c = valid_cookie()
    frame = syn4(seq=(c - 1) & 0xFFFFFFFF)
    result, deltas = run_case(dp, frame)
    assert result.retval == XDP_PASS and result.data == bytes(frame)
    assert deltas == {**PASSED_SYN, C.COOKIE_COLLISION: 1}


def test_secret_rotation_keeps_cookies_of_the_previous_secret(dp):
    old = valid_cookie()
    dp.set_secret(GEN + 1, bytes(range(50, 66)))
    assert dp.test_run(bytes(rst(old))).retval == XDP_DROP
    assert dp.counters()[C.COOKIE_VALIDATED] >= 1
    # Two rotations later it is gone.
    dp.allowlist_clear()
    before = dp.counters()[C.COOKIE_INVALID]
    dp.set_secret(GEN + 2, bytes(range(70, 86)))
    assert dp.test_run(bytes(rst(old))).retval == XDP_DROP
    assert dp.counters()[C.COOKIE_INVALID] == before + 1


def test_handshake_through_the_challenge(dp):
    """SYN -> cookie SYN-ACK -> RST(seq = ack) -> retransmitted SYN passes."""
    syn = syn4(sport=41000, seq=777)
    out = dp.test_run(bytes(syn))
    assert out.retval == XDP_TX
    synack = Ether(out.data)
    answer = rst(synack[TCP].ack, sport=41000)  # what RFC 793 makes the client send
    assert dp.test_run(bytes(answer)).retval == XDP_DROP
    again = dp.test_run(bytes(syn))
    assert again.retval == XDP_PASS and again.data == bytes(syn)
    expires, validated = dp.allowlist()[__import__("ipaddress").ip_address(CLIENT4)]
    assert expires == NOW_S + ALLOW_TTL_S and validated == 1


@pytest.mark.parametrize("family", [4, 6])
def test_every_truncation_of_a_syn(dp, family):
    """Cut anywhere inside the headers: pass to the kernel and count malformed.

    BPF_PROG_TEST_RUN refuses frames shorter than an Ethernet header (14 bytes),
    as no driver hands XDP one; a bare Ethernet header is the shortest case."""
    frame = bytes(syn4() if family == 4 else syn6())
    for length in range(14, len(frame)):
        result, deltas = run_case(dp, frame[:length])
        assert result.retval == XDP_PASS, length
        assert result.data == frame[:length]
        assert deltas == {C.PACKETS: 1, C.MALFORMED: 1}, length
    result, deltas = run_case(dp, frame)
    assert result.retval == XDP_TX


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.ip_addresses(v=4), st.ip_addresses(v=4), st.integers(1, 65535), st.integers(0, 2**32 - 1),
       st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.binary(min_size=16, max_size=16))
def test_kernel_cookie_equals_python_reference_v4(dp, src, dst, sport, seq, now, gen, secret):
    dp.set_ports([])
    dp.set_secret(gen, secret)
    dp.tick(now)
    frame = syn4(src=str(src), dst=str(dst), sport=sport, seq=seq)
    result = dp.test_run(bytes(frame))
    if result.retval == XDP_PASS:  # the 2^-32 collision case
        assert valid_cookie(str(src), str(dst), sport, 80, cookie.slot_of(now), gen, secret) == (seq + 1) & 0xFFFFFFFF
        return
    assert result.retval == XDP_TX
    check_challenge(result.data, frame, secret, gen, cookie.slot_of(now))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.ip_addresses(v=6), st.ip_addresses(v=6), st.integers(1, 65535), st.integers(0, 2**32 - 1),
       st.integers(0, 2**32 - 1), st.binary(min_size=16, max_size=16))
def test_kernel_cookie_equals_python_reference_v6(dp, src, dst, sport, now, gen, secret):
    dp.set_ports([])
    dp.set_secret(gen, secret)
    dp.tick(now)
    frame = syn6(src=str(src), dst=str(dst), sport=sport, seq=1)
    result = dp.test_run(bytes(frame))
    assert result.retval == XDP_TX
    check_challenge(result.data, frame, secret, gen, cookie.slot_of(now))


VERDICTS = {XDP_PASS, XDP_DROP, XDP_TX}


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(min_size=14, max_size=200))
def test_garbage_frames(dp, data):
    """Random bytes: never aborted; a TX is always a well-formed cookie SYN-ACK."""
    dp.set_ports([])
    result, deltas = run_case(dp, data)
    assert result.retval in VERDICTS
    assert deltas.get(C.PACKETS) == 1
    if result.retval == XDP_TX:
        check_challenge(result.data, data, SECRET, GEN, SLOT)
    elif result.retval == XDP_PASS:
        assert result.data == data


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from([bytes(syn4()), bytes(syn6()), bytes(rst(1)), bytes(syn6(ext=IPv6ExtHdrHopByHop()))]),
       st.lists(st.tuples(st.integers(0, 119), st.integers(0, 255)), min_size=1, max_size=6))
def test_mutated_frames(dp, base, flips):
    """Valid frames with bytes overwritten: same rule as garbage."""
    data = bytearray(base)
    for pos, value in flips:
        if pos < len(data):
            data[pos] = value
    data = bytes(data)
    result, deltas = run_case(dp, data)
    assert result.retval in VERDICTS
    if result.retval == XDP_TX:
        check_challenge(result.data, data, SECRET, GEN, SLOT)
    elif result.retval == XDP_PASS:
        assert result.data == data


def test_ipv6_siphash_cache_follows_the_secret(dp):
    """The per-CPU SipHash state cached per IPv6 destination must never outlive its key."""
    for i, secret in enumerate([SECRET, bytes(range(30, 46)), bytes(16), SECRET]):
        dp.set_secret(GEN + i, secret)
        frame = syn6(sport=1000 + i)
        result = dp.test_run(bytes(frame))
        assert result.retval == XDP_TX
        check_challenge(result.data, frame, secret, GEN + i, SLOT)
