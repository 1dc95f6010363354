"""The Python cookie reference: SipHash-2-4 against the paper's vectors, then layout."""

import ipaddress
import struct

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from synguard import abi, cookie
from synguard.secret import slot_key

# SipHash-2-4 paper, Appendix A / reference implementation vectors:
# key = 00 01 .. 0f, message i = 00 01 .. (i-1), i = 0..63.
VECTORS = [
    0x726FDB47DD0E0E31, 0x74F839C593DC67FD, 0x0D6C8009D9A94F5A, 0x85676696D7FB7E2D,
    0xCF2794E0277187B7, 0x18765564CD99A68D, 0xCBC9466E58FEE3CE, 0xAB0200F58B01D137,
    0x93F5F5799A932462, 0x9E0082DF0BA9E4B0, 0x7A5DBBC594DDB9F3, 0xF4B32F46226BADA7,
    0x751E8FBC860EE5FB, 0x14EA5627C0843D90, 0xF723CA908E7AF2EE, 0xA129CA6149BE45E5,
    0x3F2ACC7F57C29BDB, 0x699AE9F52CBE4794, 0x4BC1B3F0968DD39C, 0xBB6DC91DA77961BD,
    0xBED65CF21AA2EE98, 0xD0F2CBB02E3B67C7, 0x93536795E3A33E88, 0xA80C038CCD5CCEC8,
    0xB8AD50C6F649AF94, 0xBCE192DE8A85B8EA, 0x17D835B85BBB15F3, 0x2F2E6163076BCFAD,
    0xDE4DAAACA71DC9A5, 0xA6A2506687956571, 0xAD87A3535C49EF28, 0x32D892FAD841C342,
    0x7127512F72F27CCE, 0xA7F32346F95978E3, 0x12E0B01ABB051238, 0x15E034D40FA197AE,
    0x314DFFBE0815A3B4, 0x027990F029623981, 0xCADCD4E59EF40C4D, 0x9ABFD8766A33735C,
    0x0E3EA96B5304A7D0, 0xAD0C42D6FC585992, 0x187306C89BC215A9, 0xD4A60ABCF3792B95,
    0xF935451DE4F21DF2, 0xA9538F0419755787, 0xDB9ACDDFF56CA510, 0xD06C98CD5C0975EB,
    0xE612A3CB9ECBA951, 0xC766E62CFCADAF96, 0xEE64435A9752FE72, 0xA192D576B245165A,
    0x0A8787BF8ECB74B2, 0x81B3E73D20B49B6F, 0x7FA8220BA3B2ECEA, 0x245731C13CA42499,
    0xB78DBFAF3A8D83BD, 0xEA1AD565322A1A0B, 0x60E61C23A3795013, 0x6606D7E446282B93,
    0x6CA4ECB15C5F91E1, 0x9F626DA15C9625F3, 0xE51B38608EF25F57, 0x958A324CEB064572,
]


@pytest.mark.parametrize("n", range(64))
def test_siphash_paper_vectors(n):
    assert cookie.siphash24(bytes(range(16)), bytes(range(n))) == VECTORS[n]


def test_siphash_rejects_bad_key():
    with pytest.raises(ValueError):
        cookie.siphash24(b"short", b"")


def test_message_layout_ipv4_and_ipv6():
    m4 = cookie.cookie_message("192.0.2.1", "198.51.100.7", 40000, 80, 0x1FF)
    assert m4 == bytes([198, 51, 100, 7, 192, 0, 2, 1]) + struct.pack("!HH", 80, 40000) + bytes([0xFF, 1])
    m6 = cookie.cookie_message("2001:db8::1", "2001:db8::2", 1, 2, 5)
    assert len(m6) == 38 and m6[:16] == ipaddress.ip_address("2001:db8::2").packed
    assert m6[16:32] == ipaddress.ip_address("2001:db8::1").packed and m6[32:] == bytes([0, 2, 0, 1, 5, 0])
    with pytest.raises(ValueError):
        cookie.cookie_message("192.0.2.1", "2001:db8::2", 1, 2, 5)


ALL = abi.OPT_TS | abi.OPT_SACK | abi.OPT_WSCALE | abi.OPT_ECN


@pytest.mark.parametrize("ipv6, mss, cls", [
    (False, None, 0), (False, 100, 0), (False, 536, 0), (False, 1299, 0), (False, 1300, 1), (False, 1459, 2),
    (False, 1460, 3), (False, 65495, 3), (True, None, 0), (True, 1220, 0), (True, 1420, 1), (True, 1440, 2),
    (True, 8939, 2), (True, 8940, 3), (True, 65475, 3),
])
def test_mss_class(ipv6, mss, cls):
    assert cookie.negotiate(ipv6, mss, None, False, False, False, ALL).mss_class == cls


@pytest.mark.parametrize("args, tcp_opts, expect", [
    # (wscale, sack, ts, ecn), server options -> (wscale, sack, ecn, ts)
    ((7, True, True, True), ALL, (7, True, True, True)),
    ((20, True, True, False), ALL, (14, True, False, True)),       # shift clamped to 14
    ((7, True, False, True), ALL, (0xF, False, False, False)),     # no TS: only the MSS survives
    ((7, True, True, True), ALL & ~abi.OPT_TS, (0xF, False, False, False)),
    ((7, True, True, True), ALL & ~abi.OPT_SACK, (7, False, True, True)),
    ((7, True, True, True), ALL & ~abi.OPT_WSCALE, (0xF, True, True, True)),
    ((7, True, True, True), ALL & ~abi.OPT_ECN, (7, True, False, True)),
    ((None, False, True, False), ALL, (0xF, False, False, True)),
])
def test_negotiate(args, tcp_opts, expect):
    w, sack, ts, ecn = args
    n = cookie.negotiate(False, 1460, w, sack, ts, ecn, tcp_opts)
    assert (n.wscale, n.sack, n.ecn, n.ts) == expect
    assert n.opt == 3 | n.wscale << 2 | n.sack << 6 | n.ecn << 7 | n.ts << 8


@pytest.mark.parametrize("raw, expect", [
    (b"", (None, None, False, None)),
    (bytes.fromhex("020405b40402080a0000000100000000") + bytes.fromhex("01030307"), (1460, 7, True, 1)),
    (bytes.fromhex("020405b4010303080101040200000000"), (1460, 8, True, None)),   # Windows-like, EOL padding
    (bytes.fromhex("0204000001030305"), (None, 5, False, None)),                # MSS 0 ignored
    (bytes.fromhex("000204058c"), (None, None, False, None)),                   # EOL first ends the list
    (bytes.fromhex("0205000005b4020405dc"), (None, None, False, None)),         # bad-length MSS skipped, then overrun: stop
    (bytes.fromhex("fe04aabb020405dc"), (1500, None, False, None)),             # unknown kind skipped
    (bytes.fromhex("020405dc0301"), (1500, None, False, None)),                 # length 1: parsing stops
    (bytes.fromhex("020405dc0303"), (1500, None, False, None)),                 # runs past the end: stops
    (bytes.fromhex("020405dc08"), (1500, None, False, None)),                   # kind without length byte
    (bytes.fromhex("020405dc020405b4"), (1460, None, False, None)),             # later duplicate wins
])
def test_parse_syn_options(raw, expect):
    assert tuple(cookie.parse_syn_options(raw)) == expect


def test_parse_syn_options_mss_wrong_length():
    # kind 2 length 5 is skipped whole (5 bytes), the next MSS is read
    assert cookie.parse_syn_options(bytes.fromhex("0205000005020405dc")).mss == 1500


def test_synack_options_layout():
    n = cookie.negotiate(False, 1460, 7, True, True, True, ALL)
    assert cookie.synack_options(n, 1460, 10, 0x11223344, 0x55667788) == bytes.fromhex(
        "020405b4" "0402" "080a1122334455667788" "0103030a")
    n = cookie.negotiate(True, None, None, False, False, False, ALL)
    assert cookie.synack_options(n, 1440, 10, None, None) == bytes.fromhex("020405a0")  # MSS only


KEYS = (bytes(range(16)), bytes(range(16, 32)))
MASTER = bytes(range(100, 116))


def slot_keys(cfg_slot: int) -> list[bytes]:
    """sg_secrets while sg_config.slot is cfg_slot: the keys of that slot and the previous one."""
    keys = [b"", b""]
    for s in (cfg_slot - 1, cfg_slot):
        keys[s & 1] = slot_key(MASTER, 240, s)
    return keys


@given(st.booleans(), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.integers(0, 65535),
       st.integers(0, 65535), st.integers(0, 2**32 - 1), st.integers(1, 2**28 - 1), st.integers(0, 65535),
       st.one_of(st.none(), st.integers(0, 255)), st.booleans(), st.booleans(), st.booleans(),
       st.integers(0, 15), st.integers(0, 2**32 - 1))
def test_synack_then_ack_validates(ipv6, s, d, sport, dport, isn, slot, mss, wscale, sack, ts, ecn, tcp_opts,
                                   client_tsval):
    if ipv6:
        saddr, daddr = ipaddress.IPv6Address(s << 64 | d), ipaddress.IPv6Address(d << 96 | s)
    else:
        saddr, daddr = ipaddress.IPv4Address(s), ipaddress.IPv4Address(d)
    n = cookie.negotiate(ipv6, mss, wscale, sack, ts, ecn, tcp_opts)
    seq, tsval = cookie.synack_fields(slot_keys(slot)[slot & 1], saddr, daddr, sport, dport, isn, slot, n)
    assert seq & 7 == (slot & 1) << 2 | n.mss_class
    assert (tsval is None) == (not n.ts)
    ack_seq, ack_ack = (isn + 1) & 0xFFFFFFFF, (seq + 1) & 0xFFFFFFFF
    # accepted in its own slot and the next; never two slots later
    for cfg_slot in (slot, slot + 1):
        assert cookie.check_ack(slot_keys(cfg_slot), saddr, daddr, sport, dport, ack_seq, ack_ack, tsval) == n
    assert cookie.check_ack(slot_keys(slot + 2), saddr, daddr, sport, dport, ack_seq, ack_ack, tsval) is None
    # any change of an authenticated input fails (the ISN enters by addition below the
    # 3 low bits: a change by 8 always shows)
    keys = slot_keys(slot)
    assert cookie.check_ack(keys, saddr, daddr, sport ^ 1, dport, ack_seq, ack_ack, tsval) is None
    assert cookie.check_ack(keys, saddr, daddr, sport, dport ^ 1, ack_seq, ack_ack, tsval) is None
    assert cookie.check_ack(keys, saddr, daddr, sport, dport, (ack_seq + 8) & 0xFFFFFFFF, ack_ack, tsval) is None
    assert cookie.check_ack(keys, saddr, daddr, sport, dport, ack_seq, ack_ack ^ 1, tsval) is None
    assert cookie.check_ack(keys, saddr, daddr, sport, dport, ack_seq, ack_ack ^ 8, tsval) is None
    assert cookie.check_ack(keys[::-1], saddr, daddr, sport, dport, ack_seq, ack_ack, tsval) is None
    if tsval is None:
        assert cookie.check_ack(keys, saddr, daddr, sport, dport, ack_seq, ack_ack, 0) is None
    else:
        assert cookie.check_ack(keys, saddr, daddr, sport, dport, ack_seq, ack_ack, tsval ^ 0x10) is None
        assert cookie.check_ack(keys, saddr, daddr, sport, dport, ack_seq, ack_ack, tsval ^ 0x40) is None
        assert cookie.check_ack(keys, saddr, daddr, sport, dport, ack_seq, ack_ack, None) is None


def test_slot_keys_differ_per_slot_and_master():
    """Each slot has its own key (the slot is not hashed: its key binds it)."""
    keys = {slot_key(MASTER, 240, s) for s in range(1000, 1100)}
    assert len(keys) == 100 and all(len(k) == 16 for k in keys)
    assert slot_key(MASTER, 240, 1000) != slot_key(bytes(16), 240, 1000)
    assert slot_key(MASTER, 240, 1000) == slot_key(MASTER, 240, 1000)


def test_cookie_fixed_vector():
    """Pins the reference: a change to cookie.py that changes the bits fails here."""
    n = cookie.negotiate(False, 1460, 7, True, True, False, ALL)
    assert n.opt == 0x15F
    msg = cookie.cookie_message("192.0.2.1", "198.51.100.7", 40000, 80, n.opt)
    assert msg.hex() == "c6336407c0000201" "00509c40" "5f01"
    h = cookie.siphash24(KEYS[1], msg)
    seq, tsval = cookie.synack_fields(KEYS[1], "192.0.2.1", "198.51.100.7", 40000, 80, 1000, 5, n)
    assert seq == ((h + 1000) & 0xFFFFFFF8) | 4 | 3
    assert tsval == ((h >> 32) & 0xFFFFFFC0) | 7 | 16


# ---- the kernel against the reference (BPF_PROG_TEST_RUN) -----------------------


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.booleans(), st.integers(1, 65535), st.integers(0, 2**32 - 1), st.integers(0, 2**28 - 1),
       st.binary(min_size=16, max_size=16), st.integers(0, 15),
       st.sampled_from(["linux", "windows", "none", "mss-only"]), st.booleans())
def test_kernel_synack_validates_with_the_reference(dp, ipv6, sport, isn, slot, key, tcp_opts, layout, ecn):
    """What a client ACKs after the kernel's SYN-ACK passes cookie.check_ack, which
    decodes exactly the options cookie.negotiate gives for that SYN; once the slot's key
    is gone (two slots later), not."""
    import sys

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from frames import CLIENT4, CLIENT6, SERVER4, SERVER6, TCP, Ether, syn4, syn6

    opts = {"linux": [("MSS", 1460), ("SAckOK", b""), ("Timestamp", (77, 0)), ("NOP", None), ("WScale", 7)],
            "windows": [("MSS", 1440), ("NOP", None), ("WScale", 8), ("NOP", None), ("NOP", None), ("SAckOK", b"")],
            "none": [], "mss-only": [("MSS", 1300)]}[layout]
    dp.set_ports([])
    dp.set_slot_key(slot, key)
    other = bytes(reversed(key))
    dp.set_slot_key(slot + 1, other)
    dp.set_slot(slot)
    dp.set_synack(1460, 1440, 10, tcp_opts)
    make, src, dst = (syn6, CLIENT6, SERVER6) if ipv6 else (syn4, CLIENT4, SERVER4)
    frame = make(sport=sport, seq=isn, options=opts, flags="SEC" if ecn else "S")
    result = dp.test_run(bytes(frame))
    assert result.retval == 3
    tcp = Ether(result.data)[TCP]
    tsval = dict(tcp.options).get("Timestamp", (None,))[0]
    keys = [None, None]
    keys[slot & 1], keys[(slot + 1) & 1] = key, other
    ack_seq, ack_ack = (isn + 1) & 0xFFFFFFFF, (tcp.seq + 1) & 0xFFFFFFFF
    got = cookie.check_ack(keys, src, dst, sport, 80, ack_seq, ack_ack, tsval)
    syn_opts = cookie.parse_syn_options(bytes(Ether(bytes(frame))[TCP])[20:])
    assert got == cookie.negotiate_syn(ipv6, syn_opts, ecn, tcp_opts)
    keys2 = list(keys)
    keys2[slot & 1] = bytes(16) if key != bytes(16) else bytes(range(16))  # slot + 2 has a new key
    assert cookie.check_ack(keys2, src, dst, sport, 80, ack_seq, ack_ack, tsval) is None
