"""Method kernel-cookie (kernels without bpf_sk_assign_tcp_reqsk): the real program
in the real kernel, forced on this one (sg_config.method = SG_METHOD_KERNEL_COOKIE).

XDP looks up the listener and asks bpf_tcp_gen_syncookie() for the kernel's own
cookie; the SYN-ACK carries it (seq), ack = ISN + 1 and the MSS option only. The
kernel completes the client's ACK by itself. With tcp_syncookies=1 the helper makes
no cookie while the listener's SYN queue has room: the SYN passes to the kernel.

1. BPF_PROG_TEST_RUN inside a Lab's server namespace (the helper looks up sockets
   in the namespace of the caller's loopback device): no listener, free queue,
   tcp_syncookies=0/2, full queue; a cookie SYN-ACK's ACK, injected from the
   client namespace, makes a connection (the kernel's cookie, not ours).
2. Live: the client matrix (plain, INVALID-dropping firewall, NAT44/66, NAT
   dropping INVALID, bare stack) connects at first contact through XDP with
   tcp_syncookies=2 in the server namespace; a filled SYN queue with the default
   tcp_syncookies=1 makes XDP answer too; forged ACKs make no connection.

Namespaces come from Lab/ClientMatrix (unique names, torn down on failure);
programs are detached in fixture teardown; floods are bounded.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import struct
import time

import pytest

from helpers import Listener, hard_timeout, needs_lab, ones_sum

from synguard import abi
from synguard.abi import CookieMethod, Counter as C, Mode
from synguard_lab.clientlab import KINDS

PORT = 8080
XDP_PASS, XDP_TX = 2, 3
FIRST_CONTACT_MS = 50.0
CONTACTS = 5
TCPI_ALL = 1 | 2 | 4  # timestamps, SACK, window scaling
LINUX_OPTS = [("MSS", 1460), ("SAckOK", b""), ("Timestamp", (1, 0)), ("NOP", None), ("WScale", 7)]

pytestmark = [pytest.mark.netns, needs_lab]


# ---- fixtures and helpers ------------------------------------------------------------


@pytest.fixture(scope="module")
def kdp():
    """The XDP program with the kernel-cookie method (no tc program), protect on PORT."""
    from synguard.datapath import DataPath

    dp = DataPath()
    try:
        dp.set_cookie_method(CookieMethod.KERNEL_COOKIE)
        yield dp
    finally:
        dp.close()


def configure(dp) -> None:
    dp.set_slot_key(1, os.urandom(16))
    dp.set_slot(1)
    dp.tick()
    dp.set_synack(1460, 1440, 7, 0xF)  # our cookie's settings: unused by this method
    dp.set_ports({PORT})
    dp.set_allow_cidrs([])
    dp.set_deny_cidrs([])
    dp.set_mode(Mode.PROTECT)


@pytest.fixture
def lab(kdp):
    from synguard_lab.lab import Lab

    configure(kdp)
    with Lab("sgkc") as lab:
        yield lab


def set_syncookies(lab, ns: str, value: int) -> None:
    lab._sysctls(ns, {"net/ipv4/tcp_syncookies": value})


def tcp_info(sock) -> dict:
    raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    return {"options": raw[5], "snd_mss": struct.unpack_from("I", raw, 16)[0]}


def syn(lab, family: int = 4, sport: int = 40000, isn: int = 0x12345678, flags: str = "S", options=LINUX_OPTS):
    from scapy.layers.inet import IP, TCP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether

    from synguard_lab import lab as labmod

    l3 = (IP(src=labmod.CLIENT_IP4, dst=labmod.SERVER_IP4) if family == 4
          else IPv6(src=labmod.CLIENT_IP6, dst=labmod.SERVER_IP6))
    return bytes(Ether(src=lab.mac(lab.client_ns, lab.client_if), dst=lab.mac(lab.server_ns, lab.server_client_if))
                 / l3 / TCP(sport=sport, dport=PORT, seq=isn, flags=flags, window=64240, options=options))


def run_xdp(lab, dp, frame: bytes):
    """(verdict, output, counter deltas): BPF_PROG_TEST_RUN in the server namespace."""
    before = dp.counters()
    with lab.netns(lab.server_ns):
        r = dp.test_run(frame)
    after = dp.counters()
    return r.retval, r.data, {c: after[c] - before[c] for c in C if after[c] != before[c]}


def parse_synack(out: bytes, frame: bytes) -> dict:
    """The SYN-ACK's fields, checked against the SYN it answers (checksums in full)."""
    ipv6 = out[12:14] == b"\x86\xdd"
    l3len = 40 if ipv6 else 20
    ip, tcp = out[14:14 + l3len], out[14 + l3len:]
    sip, stcp = frame[14:14 + l3len], frame[14 + l3len:]
    assert out[0:6] == frame[6:12] and out[6:12] == frame[0:6]
    if ipv6:
        assert ip[8:24] == sip[24:40] and ip[24:40] == sip[8:24]
        src, dst = ip[8:24], ip[24:40]
    else:
        assert ones_sum(ip) == 0xFFFF
        assert ip[12:16] == sip[16:20] and ip[16:20] == sip[12:16]
        src, dst = ip[12:16], ip[16:20]
    doff = tcp[12] >> 4
    tcp = tcp[:doff * 4]
    assert ones_sum(src + dst + struct.pack("!HH", 6, len(tcp)) + tcp) == 0xFFFF
    assert tcp[0:2] == stcp[2:4] and tcp[2:4] == stcp[0:2]
    seq, ack = struct.unpack_from("!II", tcp, 4)
    assert ack == (struct.unpack_from("!I", stcp, 4)[0] + 1) & 0xFFFFFFFF
    assert tcp[13] == 0x12, f"flags {tcp[13]:#x}"  # SYN|ACK, no ECE
    opts = tcp[20:]
    assert opts[0:2] == b"\x02\x04" and set(opts[4:]) <= {1}, opts.hex()  # MSS, then only NOPs
    return {"seq": seq, "mss": struct.unpack_from("!H", opts, 2)[0]}


def inject_ack(lab, frame: bytes, cookie: int, family: int) -> None:
    """The client's handshake ACK (ack = cookie + 1, no options), sent from c0."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether

    syn_pkt = Ether(frame)
    l3 = syn_pkt[IP if family == 4 else IPv6]
    th = syn_pkt[TCP]
    ip = IP(src=l3.src, dst=l3.dst) if family == 4 else IPv6(src=l3.src, dst=l3.dst)
    ack = bytes(Ether(src=syn_pkt.src, dst=syn_pkt.dst) / ip
                / TCP(sport=th.sport, dport=th.dport, seq=th.seq + 1, ack=(cookie + 1) & 0xFFFFFFFF, flags="A",
                      window=64240))  # unscaled: a small window would cap the server's snd_mss
    with lab.netns(lab.client_ns):
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
            s.bind((lab.client_if, 0))
            s.send(ack)


# ---- 1. BPF_PROG_TEST_RUN --------------------------------------------------------------

SYN_PASSED = {C.PACKETS: 1, C.TCP: 1, C.SYN_RECEIVED: 1, C.SYN_PASSED: 1}


@hard_timeout(60)
def test_no_listener_passes(lab, kdp):
    frame = syn(lab)
    verdict, out, d = run_xdp(lab, kdp, frame)
    assert (verdict, d) == (XDP_PASS, {**SYN_PASSED, C.SYN_NO_LISTENER: 1})
    assert out == frame


@hard_timeout(60)
@pytest.mark.parametrize("family", [4, 6])
def test_listener_with_room_in_its_queue_passes(lab, kdp, family):
    """tcp_syncookies=1 (the default) and a SYN queue with room: the helper says
    -ENOENT, the kernel gets the SYN (and queues it as usual)."""
    listener = Listener(lab, PORT, lab.server_ns)
    try:
        frame = syn(lab, family)
        verdict, out, d = run_xdp(lab, kdp, frame)
    finally:
        listener.close()
    assert (verdict, d) == (XDP_PASS, {**SYN_PASSED, C.SYN_QUEUE_ROOM: 1})
    assert out == frame


@hard_timeout(60)
def test_syncookies_off_passes(lab, kdp):
    set_syncookies(lab, lab.server_ns, 0)
    listener = Listener(lab, PORT, lab.server_ns)
    try:
        verdict, _, d = run_xdp(lab, kdp, syn(lab))
    finally:
        listener.close()
    assert (verdict, d) == (XDP_PASS, {**SYN_PASSED, C.SYN_QUEUE_ROOM: 1})


@hard_timeout(60)
@pytest.mark.parametrize("case", ["syn+fin", "ipv4 to a v6-only listener"])
def test_helper_refusals_pass(lab, kdp, case):
    set_syncookies(lab, lab.server_ns, 2)
    listener = Listener(lab, PORT, lab.server_ns, v6only=case != "syn+fin")
    try:
        verdict, _, d = run_xdp(lab, kdp, syn(lab, flags="SF" if case == "syn+fin" else "S"))
    finally:
        listener.close()
    if case == "syn+fin":
        assert (verdict, d) == (XDP_PASS, {**SYN_PASSED, C.SYN_COOKIE_ERROR: 1})
    else:  # the lookup finds no IPv4 listener at all
        assert (verdict, d) == (XDP_PASS, {**SYN_PASSED, C.SYN_NO_LISTENER: 1})


@hard_timeout(60)
def test_attach_with_syncookies_off_reports_the_problem(lab, kdp):
    """tcp_syncookies=0: the kernel makes no cookies, XDP can answer nothing; attach
    says so (the daemon logs it as syncookies_off)."""
    set_syncookies(lab, lab.server_ns, 0)
    with lab.netns(lab.server_ns):
        try:
            assert kdp.attach(lab.server_client_if, "native") == "native"
            problem, kdp.tc_problem = kdp.tc_problem, None
        finally:
            kdp.detach_all()
    assert problem and "tcp_syncookies is 0" in problem and "unanswered by XDP" in problem, problem
    set_syncookies(lab, lab.server_ns, 1)
    with lab.netns(lab.server_ns):
        try:
            kdp.attach(lab.server_client_if, "native")
            assert kdp.tc_problem is None
        finally:
            kdp.detach_all()


def _answer_and_complete(lab, kdp, listener, frame: bytes, family: int) -> tuple[dict, dict, dict]:
    """test_run the SYN (must be TX), then inject the client's ACK: (SYN-ACK fields,
    counter deltas, server TCP_INFO + TcpExt deltas)."""
    ns0 = lab.netstat(lab.server_ns)
    verdict, out, d = run_xdp(lab, kdp, frame)
    assert verdict == XDP_TX, d
    fields = parse_synack(out, frame)
    inject_ack(lab, frame, fields["seq"], family)
    conn = listener.accept(timeout=5)
    ns1 = lab.netstat(lab.server_ns)
    assert conn is not None, "the kernel did not accept the ACK of its own cookie"
    with conn:
        info = tcp_info(conn)
    ext = {k: ns1["TcpExt"][k] - ns0["TcpExt"][k] for k in ("SyncookiesRecv", "SyncookiesFailed",
                                                         "TCPReqQFullDoCookies")}
    return fields, d, {**info, **ext}


@hard_timeout(60)
@pytest.mark.parametrize("family, mss, want", [(4, 1460, 1460), (4, 1400, 1300), (4, None, 536), (6, 1440, 1440),
                                               (6, 1400, 1220)])
def test_syncookies_2_answers_with_the_kernel_cookie(lab, kdp, family, mss, want):
    """tcp_syncookies=2: a SYN-ACK carrying the kernel's cookie and the MSS class it
    encodes; the client's ACK alone makes a connection, with MSS only."""
    set_syncookies(lab, lab.server_ns, 2)
    listener = Listener(lab, PORT, lab.server_ns)
    try:
        opts = [("MSS", mss)] if mss else []
        fields, d, srv = _answer_and_complete(lab, kdp, listener, syn(lab, family, options=opts + LINUX_OPTS[1:]),
                                              family)
    finally:
        listener.close()
    assert d == {C.PACKETS: 1, C.TCP: 1, C.SYN_RECEIVED: 1, C.CHALLENGE_SENT: 1}, d
    assert fields["mss"] == want, fields
    assert srv["SyncookiesRecv"] == 1 and srv["SyncookiesFailed"] == 0 and srv["TCPReqQFullDoCookies"] == 1, srv
    assert srv["options"] & TCPI_ALL == 0 and srv["snd_mss"] == want, srv


@hard_timeout(90)
def test_full_queue_with_default_syncookies_answers(lab, kdp):
    """tcp_syncookies=1: once spoofed SYNs fill the listener's SYN queue, the helper
    makes cookies and XDP answers; the kernel completes the ACK."""
    listener = Listener(lab, PORT, lab.server_ns, backlog=4)
    try:
        res = lab.flood(64, 5, dport=PORT, seed=7, pps=1000)  # into s1: no XDP there
        assert res["sent"] == 64, res
        deadline = time.monotonic() + 10
        while lab.syn_recv_count(lab.server_ns, PORT) < 4 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert lab.syn_recv_count(lab.server_ns, PORT) >= 4
        fields, d, srv = _answer_and_complete(lab, kdp, listener, syn(lab, 4), 4)
    finally:
        listener.close()
    assert d == {C.PACKETS: 1, C.TCP: 1, C.SYN_RECEIVED: 1, C.CHALLENGE_SENT: 1}, d
    assert fields["mss"] == 1460 and srv["SyncookiesRecv"] == 1, (fields, srv)


# ---- 2. live: every client kind at first contact ----------------------------------------


@pytest.fixture(scope="module")
def clients(kdp):
    from synguard_lab.clientlab import ClientMatrix
    from synguard_lab.lab import Lab

    with Lab("sgkm") as lab, ClientMatrix(lab) as matrix:
        matrix.listen(PORT)
        configure(kdp)
        try:
            with lab.netns(lab.server_ns):
                for ifname in matrix.server_ifs:
                    assert kdp.attach(ifname, "native") == "native"
            yield lab, matrix
        finally:
            with lab.netns(lab.server_ns):
                kdp.detach_all()


def _expected_mss(kind: str, family: int) -> int:
    return 1460 if family == 4 else 1440  # every client stack here: MTU 1500


@hard_timeout(420)
@pytest.mark.parametrize("timestamps", [1, 2], ids=["tcp_timestamps=1", "tcp_timestamps=2"])
def test_every_kind_connects_at_first_contact(clients, kdp, record_property, timestamps):
    """tcp_timestamps=1 (the default): MSS only. tcp_timestamps=2 (no secret TS
    offset): clients that send timestamps keep window scaling, SACK and timestamps,
    carried in our TSval as the kernel encodes them; the bare stack keeps MSS only."""
    from synguard import kernel

    lab, matrix = clients
    set_syncookies(lab, lab.server_ns, 2)
    lab._sysctls(lab.server_ns, {"net/ipv4/tcp_timestamps": timestamps})
    with lab.netns(lab.server_ns):
        settings = kernel.synack_settings(1500)
    assert bool(settings[3] & abi.OPT_TS_NO_OFFSET) == (timestamps == 2), settings
    kdp.set_synack(*settings)
    try:
        ns0 = lab.netstat(lab.server_ns)
        before = kdp.counters()
        results = {(k, f): [matrix.first_contact_info(k, f, PORT, 5.0) for _ in range(CONTACTS)]
                   for k, f in matrix.cases()}
    finally:  # the next tests expect the defaults
        lab._sysctls(lab.server_ns, {"net/ipv4/tcp_timestamps": 1})
        configure(kdp)
    d = {c: kdp.counters()[c] - before[c] for c in C}
    ns1 = lab.netstat(lab.server_ns)
    lines = [f"{'kind':<9}{'IP':<4}{'median':>8}{'max':>8}  server options / snd_mss"]
    problems = []
    for (kind, fam), contacts in results.items():
        ok = [c.ms for c in contacts if c.ms is not None]
        lines.append(f"{kind:<9}v{fam:<3}{statistics.median(ok) if ok else float('nan'):8.2f}"
                     f"{max(ok) if ok else float('nan'):8.2f}  "
                     + " ".join(f"{c.server.options:#x}/{c.server.snd_mss}" if c.server else "-" for c in contacts))
        for c in contacts:
            where = f"{kind} IPv{fam} from {c.source}"
            if c.ms is None or c.server is None:
                problems.append(f"{where}: no connection")
            elif c.ms > FIRST_CONTACT_MS:
                problems.append(f"{where}: connected after {c.ms:.0f} ms")
            elif timestamps == 1 and (c.server.options & TCPI_ALL or c.client.options & TCPI_ALL):
                problems.append(f"{where}: options {c.server.options:#x}/{c.client.options:#x}, expected MSS only")
            elif timestamps == 2 and (c.server.options & TCPI_ALL != KINDS[kind].expected_options
                                      or c.client.options & TCPI_ALL != KINDS[kind].expected_options):
                problems.append(f"{where}: options {c.server.options:#x}/{c.client.options:#x}, expected "
                                f"{KINDS[kind].expected_options:#x}")
            elif timestamps == 2 and c.server.wscale and (c.server.rcv_wscale != settings[2]
                                                           or c.server.snd_wscale != c.client.rcv_wscale):
                problems.append(f"{where}: window scale server {c.server.snd_wscale}/{c.server.rcv_wscale}, "
                                f"client {c.client.snd_wscale}/{c.client.rcv_wscale}, ours {settings[2]}")
            elif c.server.snd_mss != _expected_mss(kind, fam) - (12 if c.server.options & 1 else 0):  # TS: 12 bytes
                problems.append(f"{where}: server snd_mss {c.server.snd_mss}")
            elif c.server_peer != c.source:
                problems.append(f"{where}: server saw {c.server_peer}")
    table = "\n".join(lines)
    print(f"\nfirst contact, kernel-cookie method, tcp_syncookies=2, tcp_timestamps={timestamps}\n" + table)
    record_property("first_contact", table)
    n = sum(len(v) for v in results.values())
    assert not problems, "\n".join(problems)
    # XDP answered every first contact; the kernel made each connection from its cookie.
    assert d[C.CHALLENGE_SENT] >= n and d[C.SYN_PASSED] == 0, d
    assert ns1["TcpExt"]["SyncookiesRecv"] - ns0["TcpExt"]["SyncookiesRecv"] >= n
    assert ns1["TcpExt"]["SyncookiesSent"] == ns0["TcpExt"]["SyncookiesSent"]  # the kernel sent none itself
    assert not any(d[c] for c in (C.ACK_CHECKED, C.COOKIE_VALIDATED)), d  # no tc program


FORGED = 2000


@hard_timeout(180)
@pytest.mark.parametrize("family", [4, 6])
def test_forged_acks_make_no_connection(clients, kdp, family):
    """Right after real cookie contacts (the listener's overflow flag is armed, so the
    kernel checks every ACK as a cookie), forged ACKs make no connection."""
    lab, matrix = clients
    set_syncookies(lab, lab.server_ns, 2)
    assert matrix.first_contact("plain", family, PORT, 5.0) is not None  # arms the flag
    ns0 = lab.netstat(lab.server_ns)
    argv = lab._flood_argv(FORGED, 20, PORT, 5, None, family == 6, None, 4096, pps=5000) + ["--ack"]
    res = json.loads(lab.run(lab.attacker_ns, argv, timeout=80, env=lab._flood_env()).stdout.strip()
                     .splitlines()[-1])
    time.sleep(0.5)
    ns1 = lab.netstat(lab.server_ns)
    failed = ns1["TcpExt"]["SyncookiesFailed"] - ns0["TcpExt"]["SyncookiesFailed"]
    print(f"\nforged ACKs (IPv{family}): sent {res['sent']}, kernel cookie checks failed {failed}")
    assert res["sent"] >= 200, res
    assert failed >= res["sent"] * 0.9, (failed, res)  # each one was checked as a cookie
    assert ns1["Tcp"]["PassiveOpens"] == ns0["Tcp"]["PassiveOpens"]
    assert ns1["TcpExt"]["SyncookiesRecv"] == ns0["TcpExt"]["SyncookiesRecv"]


@hard_timeout(180)
@pytest.mark.parametrize("family", [4, 6])
def test_full_queue_default_syncookies_first_contact(clients, kdp, family):
    """The default tcp_syncookies=1: while spoofed SYNs keep the listener's SYN queue
    full, XDP answers a real client's first contact with the kernel's cookie."""
    lab, matrix = clients
    set_syncookies(lab, lab.server_ns, 1)
    # matrix's listener has backlog 128: flood it past that (into s1, no XDP there).
    res = lab.flood(1000, 10, dport=PORT, seed=11 + family, pps=2000, ipv6=family == 6)
    assert res["sent"] == 1000, res
    assert lab.syn_recv_count(lab.server_ns, PORT) >= 128
    before = kdp.counters()
    contacts = [matrix.first_contact_info("plain", family, PORT, 5.0) for _ in range(3)]
    d = {c: kdp.counters()[c] - before[c] for c in C}
    assert all(c.ms is not None and c.ms <= FIRST_CONTACT_MS and c.server is not None for c in contacts), contacts
    assert d[C.CHALLENGE_SENT] >= 3 and d[C.SYN_QUEUE_ROOM] == 0, d
    assert all(c.server.options & TCPI_ALL == 0 for c in contacts), contacts


# ---- 3. method selection and the daemon -----------------------------------------------------


def test_datapath_chooses_the_method(monkeypatch):
    """DataPath(tc=True): kfunc when the kernel has it (this one), kernel-cookie when
    SYNGUARD_COOKIE_METHOD forces it (no tc program then), an unknown value refused."""
    from synguard.datapath import COOKIE_METHOD_ENV, DataPath, DataPathError
    from synguard.datapath import tc as tcmod

    if not tcmod.kernel_has_kfunc():
        pytest.skip(f"kernel lacks {tcmod.KFUNC}: kfunc cannot be chosen here")
    monkeypatch.delenv(COOKIE_METHOD_ENV, raising=False)
    dp = DataPath(tc=True)
    try:
        assert (dp.cookie_method, dp.config()["method"], dp.tc is not None) == ("kfunc", 0, True)
        assert tcmod.KFUNC in dp.cookie_method_reason
    finally:
        dp.close()
    monkeypatch.setenv(COOKIE_METHOD_ENV, "kernel-cookie")
    dp = DataPath(tc=True)
    try:
        assert (dp.cookie_method, dp.config()["method"], dp.tc) == ("kernel-cookie", 1, None)
        assert COOKIE_METHOD_ENV in dp.cookie_method_reason
    finally:
        dp.close()
    monkeypatch.setenv(COOKIE_METHOD_ENV, "siphash")
    with pytest.raises(DataPathError, match="SYNGUARD_COOKIE_METHOD='siphash'"):
        DataPath(tc=True)


def test_datapath_falls_back_when_the_tc_program_is_refused(monkeypatch, tmp_path):
    """The kfunc in BTF is not enough: the tc program's real load is the probe. A tc
    program the verifier refuses (here: one that reads past the packet) leaves the
    kernel-cookie method, with the verifier's refusal as the reason; forced kfunc fails."""
    import shutil

    from synguard.datapath import COOKIE_METHOD_ENV, DataPath, DataPathError, ebpf_dir
    from synguard.datapath import tc as tcmod

    if not tcmod.kernel_has_kfunc():
        pytest.skip("this kernel has no bpf_sk_assign_tcp_reqsk(): the tc program is never loaded")
    src = tmp_path / "ebpf"
    shutil.copytree(ebpf_dir(), src, ignore=shutil.ignore_patterns("*.o"))
    tc_c = src / "synguard_tc.bpf.c"
    text = tc_c.read_text()
    assert "\ttcp = parse_ack(skb, &a);\n" in text
    tc_c.write_text(text.replace("\ttcp = parse_ack(skb, &a);\n",
                                 "\ttcp = parse_ack(skb, &a);\n\tif (tcp && ((__u8 *)tcp)[4000] == 1)\n"
                                 "\t\treturn TC_ACT_SHOT; /* unchecked: the verifier refuses it */\n"))
    monkeypatch.setenv("SYNGUARD_EBPF_DIR", str(src))
    monkeypatch.delenv(COOKIE_METHOD_ENV, raising=False)
    dp = DataPath(tc=True)
    try:
        assert (dp.cookie_method, dp.config()["method"], dp.tc) == ("kernel-cookie", 1, None)
        assert "refused the tc program" in dp.cookie_method_reason, dp.cookie_method_reason
        assert dp.cookie_method_why == "tc-refused"
    finally:
        dp.close()
    monkeypatch.setenv(COOKIE_METHOD_ENV, "kfunc")
    with pytest.raises(DataPathError):
        DataPath(tc=True)


def test_datapath_without_the_kfunc_falls_back(monkeypatch):
    """A kernel without the kfunc (Debian 12's 6.1), simulated by the one check that
    reads /sys/kernel/btf/vmlinux: kernel-cookie, and kfunc forced is refused."""
    from synguard.datapath import COOKIE_METHOD_ENV, DataPath, DataPathError
    from synguard.datapath import tc as tcmod

    monkeypatch.setattr(tcmod, "kernel_has_kfunc", lambda *a: False)
    monkeypatch.delenv(COOKIE_METHOD_ENV, raising=False)
    dp = DataPath(tc=True)
    try:
        assert (dp.cookie_method, dp.config()["method"], dp.tc) == ("kernel-cookie", 1, None)
        assert "no bpf_sk_assign_tcp_reqsk() kfunc" in dp.cookie_method_reason
        assert dp.cookie_method_why == "no-kfunc"
    finally:
        dp.close()
    monkeypatch.setenv(COOKIE_METHOD_ENV, "kfunc")
    with pytest.raises(DataPathError, match="kfunc, but this kernel has no"):
        DataPath(tc=True)


def _syncookies(lab) -> int:
    with lab.netns(lab.server_ns):
        return int(open("/proc/sys/net/ipv4/tcp_syncookies").read())


@hard_timeout(240)
def test_daemon_reports_and_uses_the_forced_method(monkeypatch):
    """`synguard run` with SYNGUARD_COOKIE_METHOD=kernel-cookie at the default
    tcp_syncookies=1: the start log and the status say which method, why, and what
    clients keep; the daemon holds tcp_syncookies=2 while it protects, so a spoofed
    flood is answered from its first SYN and the listener's SYN queue stays empty;
    clients connect at first contact; the operator's 1 is back after a stop, and
    after a SIGKILL the next run gives it back."""
    from synguard_lab.common import SYNGUARD, LabDaemon
    from synguard_lab.lab import Lab

    monkeypatch.setenv("SYNGUARD_COOKIE_METHOD", "kernel-cookie")  # LabDaemon passes os.environ on
    config = "interfaces: [{}, {}]\nmode: protect\nprotect:\n  ports: [{}]\n"
    with Lab("sgkd") as lab:
        assert _syncookies(lab) == 1
        lab.tcp_server(PORT)
        d = LabDaemon(lab, config.format(lab.server_client_if, lab.server_attacker_if, PORT))
        try:
            st = d.wait_ready(lambda s: len(s["interfaces"]) == 2)
            ev = d.wait_event(lambda e: e.get("event") == "cookie_method", 10, "cookie_method")
            held = _syncookies(lab)
            before = d.status()["counters"]
            res = lab.flood(3000, 5, dport=PORT, seed=5, pps=2000)
            syn_recv = lab.syn_recv_count(lab.server_ns, PORT)
            after = d.status()["counters"]
            times = lab.connect_times(5, PORT) + lab.connect_times(5, PORT, family=6)
            st = d.status()
            text = lab.run(lab.server_ns, [*SYNGUARD, "status", "--socket", d.socket], check=False,
                           timeout=30).stdout
        finally:
            d.stop()
        released = _syncookies(lab)
        # A daemon killed while holding: the next run (same control socket, so the same
        # directory for the saved value) puts the operator's value back when it stops.
        d = LabDaemon(lab, config.format(lab.server_client_if, lab.server_attacker_if, PORT))
        try:
            d.wait_ready(lambda s: s["tcp_syncookies_held"])
            d.proc.kill()
            d.proc.wait(10)
            after_kill = (_syncookies(lab), (d.dir / "tcp_syncookies.saved").read_text().strip())
            d2 = LabDaemon(lab, config.format(lab.server_client_if, lab.server_attacker_if, PORT),
                           args=("--control-socket", d.socket))
            d2.socket = d.socket
            try:
                held_again = d2.wait_ready(lambda s: len(s["interfaces"]) == 2)["tcp_syncookies_held"]
            finally:
                d2.stop()
            after_restart = (_syncookies(lab), (d.dir / "tcp_syncookies.saved").exists())
        finally:
            d.stop()
    assert ev and ev["method"] == "kernel-cookie" and "SYNGUARD_COOKIE_METHOD" in ev["reason"], ev
    assert "clients keep MSS only" in ev["msg"] and "tcp_timestamps=2" in ev["msg"], ev
    assert st["cookie_method"] == "kernel-cookie" and "SYNGUARD_COOKIE_METHOD" in st["cookie_method_reason"]
    assert st["tcp_syncookies_held"] and st["cookie_options"].startswith("MSS only"), st
    assert "cookies:     kernel-cookie" in text and "clients keep: MSS only" in text, text
    assert held == 2 and released == 1, (held, released)
    assert res["sent"] == 3000, res
    answered = after["challenge_sent"] - before["challenge_sent"]
    passed = after["syn_passed"] - before["syn_passed"]
    assert answered == 3000 and passed == 0 and syn_recv == 0, (answered, passed, syn_recv)
    assert all(t is not None and t * 1000 <= FIRST_CONTACT_MS for t in times), times
    assert after_kill == (2, "1") and held_again and after_restart == (1, False), (after_kill, after_restart)
    assert st["counters"]["challenge_sent"] >= 10 and st["counters"]["ack_checked"] == 0, st["counters"]
