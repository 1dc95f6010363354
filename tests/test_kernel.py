"""synguard.kernel: listeners' SYN/accept queues, TCP counters, sysctls.

Pure tests (formatting, the sock_diag parser fed with crafted netlink
messages) run anywhere. The rest build a netns lab, are marked `netns`, carry
a hard timeout (SIGALRM) and read the kernel from inside the lab's server
namespace (`with lab.netns(lab.server_ns): kernel.listeners()`).
"""

from __future__ import annotations

import errno
import json
import socket
import struct
import subprocess
import sys
import time

import pytest

from helpers import hard_timeout, needs_lab

from synguard import kernel
from synguard_lab import lab as labmod
from synguard.kernel import Listener
from synguard_lab.kernel_bench import HOLDER_CODE






# --- pure: presentation -----------------------------------------------------------

ROWS = [
    Listener("0.0.0.0", 80, 4, syn_recv=512, accept_queue=3, backlog=1024),
    Listener("::", 443, 6, syn_recv=0, accept_queue=0, backlog=4096),
    Listener("10.0.0.1", 8080, 4, syn_recv=128, accept_queue=0, backlog=128),
    Listener("fd00::1", 22, 6, syn_recv=10, accept_queue=1, backlog=0),
    Listener("10.0.0.1", 25, 4, syn_recv=0, accept_queue=0, backlog=100),
    Listener("9.0.0.1", 25, 4, syn_recv=0, accept_queue=12345, backlog=100),
]


def test_listener_properties():
    assert ROWS[0].synq_pct == 50.0
    assert ROWS[0].key == "0.0.0.0:80"
    assert ROWS[1].key == "[::]:443"
    assert ROWS[3].key == "[fd00::1]:22"
    assert ROWS[3].synq_pct == 0.0          # backlog 0: no division
    assert Listener("1.2.3.4", 1, 4, 1, 0, 3).synq_pct == pytest.approx(100 / 3)
    with pytest.raises(Exception):
        ROWS[0].syn_recv = 1                # frozen


def test_format_listeners_table():
    want = "\n".join([
        "Local Address:Port  SynRecv  Backlog  SynQ%  AcceptQ",
        "10.0.0.1:8080           128      128  100.0        0",
        "0.0.0.0:80              512     1024   50.0        3",
        "9.0.0.1:25                0      100    0.0    12345",
        "10.0.0.1:25               0      100    0.0        0",
        "[::]:443                  0     4096    0.0        0",
        "[fd00::1]:22             10        0    0.0        1",
    ])
    assert kernel.format_listeners(ROWS) == want
    # Input order does not matter; header=False drops only the title line.
    assert kernel.format_listeners(list(reversed(ROWS)), header=False) == \
        "\n".join(want.splitlines()[1:])


def test_format_listeners_empty_and_wide():
    assert kernel.format_listeners([]) == "Local Address:Port  SynRecv  Backlog  SynQ%  AcceptQ"
    assert kernel.format_listeners([], header=False) == ""
    wide = Listener("fd77:1:2:3:4:5:6:7", 65535, 6, 1, 2, 3)
    lines = kernel.format_listeners([wide, ROWS[0]]).splitlines()
    assert len({len(line) for line in lines}) == 1      # columns line up
    assert lines[2].startswith("[fd77:1:2:3:4:5:6:7]:65535  ")
    assert lines[2].endswith("   33.3        2")


def test_to_json():
    out = kernel.to_json(ROWS[:2] + [Listener("1.2.3.4", 1, 4, 1, 0, 3)])
    assert out[0] == {"address": "0.0.0.0", "port": 80, "family": 4,
                      "syn_recv": 512, "accept_queue": 3, "backlog": 1024,
                      "synq_pct": 50.0}
    assert out[1]["address"] == "::" and out[1]["family"] == 6
    assert out[2]["synq_pct"] == 33.33
    json.dumps(out)


def test_sysctls_missing_is_omitted(monkeypatch):
    monkeypatch.setattr(kernel, "SYSCTLS",
                        ("net.core.somaxconn", "net.ipv4.no_such_sysctl_here"))
    got = kernel.sysctls()
    assert list(got) == ["net.core.somaxconn"]
    assert isinstance(got["net.core.somaxconn"], int)


def test_counter_sections_parse():
    text = ("TcpExt: SyncookiesSent ListenDrops\nTcpExt: 5 7\n"
            "IpExt: InNoRoutes\nIpExt: 1\n")
    assert kernel._sections(text, ("TcpExt",)) == {
        "TcpExt.SyncookiesSent": 5, "TcpExt.ListenDrops": 7}
    snmp = "Tcp: RtoAlgorithm MaxConn PassiveOpens\nTcp: 1 -1 9\n"
    assert kernel._sections(snmp, ("Tcp",)) == {
        "Tcp.RtoAlgorithm": 1, "Tcp.MaxConn": -1, "Tcp.PassiveOpens": 9}


# --- pure: the sock_diag parser on crafted messages ---------------------------------

def _v4(a: str) -> bytes:
    return socket.inet_pton(socket.AF_INET, a) + bytes(12)


def _v6(a: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6, a)


def _diag_msg(seq: int, family: int, state: int, sport: int, src: bytes,
              rq: int = 0, wq: int = 0, attrs: bytes = b"") -> bytes:
    body = struct.pack("=BBBB", family, state, 0, 0)
    body += struct.pack(">HH16s16s", sport, 40000, src, bytes(16))
    body += struct.pack("=IQIIIII", 0, 0, 0, rq, wq, 0, 0)
    assert len(body) == 72
    body += attrs
    return struct.pack("=IHHII", 16 + len(body), 20, 2, seq, 0) + body


def _done(seq: int) -> bytes:
    return struct.pack("=IHHIIi", 20, 3, 2, seq, 0, 0)


def _error(seq: int, err: int) -> bytes:
    return struct.pack("=IHHIIi", 36, 2, 0, seq, 0, -err) + bytes(16)


class FakeDiag:
    """Stands in for the netlink socket: answers each request with chunks."""

    def __init__(self, answers):
        self.answers = answers      # family -> list of chunks (seq filled in)
        self.sent: list[bytes] = []
        self.pending: list[bytes] = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def send(self, data: bytes) -> int:
        self.sent.append(bytes(data))
        _, _, _, seq, _ = struct.unpack_from("=IHHII", data)
        family = data[16]
        self.pending = [c(seq) for c in self.answers[family]]
        return len(data)

    def recv_into(self, view) -> int:
        chunk = self.pending.pop(0)
        view[:len(chunk)] = chunk
        return len(chunk)


L, R = kernel.TCP_LISTEN, kernel.TCP_SYN_RECV
A4, A6 = socket.AF_INET, socket.AF_INET6
ATTR = struct.pack("=HHI", 8, 15, 0)   # an INET_DIAG_MARK attribute, skipped


def _answers():
    v4_first = lambda s: (  # noqa: E731
        _diag_msg(s, A4, L, 80, _v4("0.0.0.0"), rq=1, wq=128, attrs=ATTR)
        + _diag_msg(s, A4, L, 80, _v4("10.0.0.1"), wq=64)
        + _diag_msg(s, A4, L, 81, _v4("0.0.0.0"), rq=2, wq=10)
        + _diag_msg(s, A4, L, 81, _v4("0.0.0.0"), rq=1, wq=10)   # SO_REUSEPORT
        + b"".join(_diag_msg(s, A4, R, 80, _v4("10.0.0.1"), attrs=ATTR)
                   for _ in range(3)))
    v4_second = lambda s: (  # noqa: E731
        b"".join(_diag_msg(s, A4, R, 80, _v4("10.0.0.2")) for _ in range(2))
        + _diag_msg(s, A4, R, 81, _v4("10.0.0.9"))
        + _diag_msg(s, A4, R, 9999, _v4("10.0.0.9"))              # no listener
        + _done(s))
    v6 = lambda s: (  # noqa: E731
        _diag_msg(s, A6, L, 443, _v6("::"), wq=100, attrs=ATTR)
        + _diag_msg(s, A6, L, 22, _v6("fd00::1"), wq=5)
        + b"".join(_diag_msg(s, A6, R, 443, _v6("::ffff:10.0.0.1")) for _ in range(4))
        + _diag_msg(s, A6, R, 443, _v6("fd00::5"))
        + _diag_msg(s, A6, R, 22, _v6("fd00::1"))
        + _diag_msg(s, A6, R, 81, _v6("::ffff:10.0.0.3"))          # -> 0.0.0.0:81
        + _done(s))
    return {A4: [v4_first, v4_second], A6: [v6]}


def test_parser_attribution(monkeypatch):
    fake = FakeDiag(_answers())
    monkeypatch.setattr(kernel, "_sock", lambda: fake)
    rows = {r.key: r for r in kernel.listeners()}
    assert set(rows) == {"0.0.0.0:80", "10.0.0.1:80", "0.0.0.0:81", "[::]:443",
                         "[fd00::1]:22"}
    assert rows["10.0.0.1:80"].syn_recv == 3        # exact address wins
    assert rows["0.0.0.0:80"].syn_recv == 2         # the rest of the family
    assert (rows["0.0.0.0:80"].accept_queue, rows["0.0.0.0:80"].backlog) == (1, 128)
    r81 = rows["0.0.0.0:81"]                        # reuseport group merged
    assert (r81.syn_recv, r81.accept_queue, r81.backlog) == (2, 3, 20)
    assert rows["[::]:443"].syn_recv == 5           # ::ffff:v4 and v6 alike
    assert rows["[::]:443"].family == 6 and rows["[::]:443"].address == "::"
    assert rows["[fd00::1]:22"].syn_recv == 1
    # Requests went out for AF_INET then AF_INET6, LISTEN | SYN_RECV, no filter.
    assert [m[16] for m in fake.sent] == [A4, A6]
    for m in fake.sent:
        assert len(m) == 16 + 56
        assert struct.unpack_from("=I", m, 20)[0] == (1 << L) | (1 << R)


def test_parser_port_filter_request(monkeypatch):
    fake = FakeDiag(_answers())
    monkeypatch.setattr(kernel, "_sock", lambda: fake)
    kernel.listeners(port=443)
    m = fake.sent[0]
    assert len(m) == 16 + 56 + 4 + 8
    nla_len, nla_type = struct.unpack_from("=HH", m, 72)
    assert (nla_len, nla_type) == (12, kernel.INET_DIAG_REQ_BYTECODE)
    assert struct.unpack_from("=BBHBBH", m, 76) == (kernel.INET_DIAG_BC_S_EQ, 8, 12,
                                                     0, 0, 443)
    with pytest.raises(ValueError):
        kernel.listeners(port=70000)


def test_parser_netlink_error(monkeypatch):
    fake = FakeDiag({A4: [lambda s: _error(s, errno.EINVAL)], A6: []})
    monkeypatch.setattr(kernel, "_sock", lambda: fake)
    with pytest.raises(OSError) as e:
        kernel.listeners()
    assert e.value.errno == errno.EINVAL


# --- netns: the real kernel ------------------------------------------------------------

def _set_sysctls(lab, values: dict[str, int]) -> None:
    with lab.netns(lab.server_ns):
        for key, val in values.items():
            with open("/proc/sys/" + key.replace(".", "/"), "w") as f:
                f.write(f"{val}\n")


def _holder(lab, specs) -> subprocess.Popen:
    p = lab.popen(lab.server_ns, [sys.executable, "-c", HOLDER_CODE, json.dumps(specs)],
                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if p.stdout.readline().strip() != "ready":
        p.wait(5)
        raise RuntimeError(f"holder failed: {p.stderr.read()}")
    return p


def _ss_listen(lab) -> dict[int, tuple[int, int]]:
    """port -> (Recv-Q, Send-Q) summed over LISTEN sockets, per ss."""
    out: dict[int, tuple[int, int]] = {}
    r = lab.run(lab.server_ns, ["ss", "-Hltn"])
    for line in r.stdout.splitlines():
        f = line.split()
        rq, sq, port = int(f[1]), int(f[2]), int(f[3].rsplit(":", 1)[1])
        a, b = out.get(port, (0, 0))
        out[port] = (a + rq, b + sq)
    return out


def _ss_syn_recv(lab, port: int, family: int | None = None) -> int:
    fam = [] if family is None else [f"-{family}"]
    r = lab.run(lab.server_ns, ["ss", "-Htn", *fam, "state", "syn-recv",
                                "sport", "=", f":{port}"])
    return sum(1 for line in r.stdout.splitlines() if line.strip())


@pytest.mark.netns
@needs_lab
@hard_timeout(90)
def test_listen_backlog_and_accept_queue():
    somaxconn = 256
    with labmod.Lab(prefix="ktq") as lab:
        _set_sysctls(lab, {"net.core.somaxconn": somaxconn})
        p_dual, p_any4, p_addr4, p_addr6, p_reuse = 8081, 8082, 8083, 8084, 8085
        lab.tcp_server(p_dual, backlog=64, mode="hold")        # dual-stack [::]
        _holder(lab, [
            [4, "0.0.0.0", p_any4, 50, 0],
            [4, labmod.SERVER_IP4, p_addr4, 1000, 0],            # capped
            [6, labmod.SERVER_IP6, p_addr6, 7, 1],
            [4, "0.0.0.0", p_reuse, 10, 0, 1],
            [4, "0.0.0.0", p_reuse, 30, 0, 1],
        ])
        conns = {p_dual: (3, 2), p_any4: (2, 0), p_addr4: (1, 0), p_addr6: (0, 1)}
        for port, (n4, n6) in conns.items():
            if n4:
                assert None not in lab.connect_times(n4, port, family=4)
            if n6:
                assert None not in lab.connect_times(n6, port, family=6)

        want = {  # key -> (backlog, accept_queue)
            f"[::]:{p_dual}": (64, 5),
            f"0.0.0.0:{p_any4}": (50, 2),
            f"{labmod.SERVER_IP4}:{p_addr4}": (min(1000, somaxconn), 1),
            f"[{labmod.SERVER_IP6}]:{p_addr6}": (7, 1),
            f"0.0.0.0:{p_reuse}": (40, 0),                     # merged group
        }
        deadline = time.monotonic() + 5
        while True:   # the server side may take the final ACK a moment later
            with lab.netns(lab.server_ns):
                rows = {r.key: r for r in kernel.listeners()}
            got = {k: (rows[k].backlog, rows[k].accept_queue) for k in want if k in rows}
            if got == want or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert got == want
        assert set(rows) == set(want)                  # nothing else listens there
        assert all(r.syn_recv == 0 for r in rows.values())

        # Same queues as ss -lnt (Recv-Q = accept queue, Send-Q = backlog).
        ss = _ss_listen(lab)
        for r in rows.values():
            assert ss[r.port] == (r.accept_queue, r.backlog), r

        # Port filter (kernel-side bytecode) returns just that listener.
        with lab.netns(lab.server_ns):
            only = kernel.listeners(p_addr4)
            assert [r.key for r in only] == [f"{labmod.SERVER_IP4}:{p_addr4}"]
            assert kernel.listeners(9) == []

            # Counters and sysctls are this namespace's.
            c = kernel.tcp_counters()
            s = kernel.sysctls()
        assert c["Tcp.PassiveOpens"] == sum(a + b for a, b in conns.values())
        assert s["net.core.somaxconn"] == somaxconn


@pytest.mark.netns
@needs_lab
@hard_timeout(120)
def test_half_open_matches_ss():
    with labmod.Lab(prefix="kth") as lab:
        ns = lab.server_ns
        # No cookies, so every SYN below the backlog becomes a request socket.
        _set_sysctls(lab, {"net.ipv4.tcp_syncookies": 0})
        # SYN-ACKs leave via s1; if the attacker veth's 256-slot XDP ring is
        # full the transmit fails, and the kernel drops a request whose SYN-ACK
        # retransmit fails. A qdisc on s1 queues instead, so counts stay put.
        subprocess.run(["tc", "-n", ns, "qdisc", "replace", "dev",
                        lab.server_attacker_if, "root", "pfifo", "limit", "10000"],
                       check=True, capture_output=True)
        p_dual, p_split, p_addr = 8090, 8091, 8092
        lab.tcp_server(p_dual, backlog=1024, mode="hold")       # dual-stack [::]
        _holder(lab, [
            [4, "0.0.0.0", p_split, 512, 0],
            [6, "::", p_split, 512, 1],                          # v6only
            [4, labmod.SERVER_ATTACKER_IP4, p_addr, 256, 0],
        ])
        floods = [  # (port, ipv6, count)
            (p_dual, False, 300), (p_dual, True, 50),
            (p_split, False, 40), (p_split, True, 30),
            (p_addr, False, 20),
        ]
        for seed, (port, v6, n) in enumerate(floods, 1):
            r = lab.flood(count=n, seconds=5, dport=port, ipv6=v6, seed=seed)
            assert r["sent"] == n

        keys = {
            f"[::]:{p_dual}": (p_dual, None),        # IPv4 arrives as ::ffff:
            f"0.0.0.0:{p_split}": (p_split, 4),
            f"[::]:{p_split}": (p_split, 6),
            f"{labmod.SERVER_ATTACKER_IP4}:{p_addr}": (p_addr, None),
        }
        for _ in range(10):   # settle: ours, ss, ours again must agree
            with lab.netns(ns):
                before = {r.key: r.syn_recv for r in kernel.listeners()}
            ss = {k: _ss_syn_recv(lab, port, fam) for k, (port, fam) in keys.items()}
            with lab.netns(ns):
                after = {r.key: r.syn_recv for r in kernel.listeners()}
                one = kernel.listeners(p_dual)
            if before == after and all(after.get(k) == ss[k] for k in keys):
                break
            time.sleep(0.3)
        assert {k: after.get(k) for k in keys} == ss
        assert all(n > 0 for n in ss.values()), ss
        assert after[f"[::]:{p_dual}"] <= 350
        assert ss[f"[::]:{p_dual}"] == _ss_syn_recv(lab, p_dual)   # all of them
        assert [(r.key, r.syn_recv) for r in one] == [(f"[::]:{p_dual}",
                                                       after[f"[::]:{p_dual}"])]
        with lab.netns(ns):
            rows = {r.key: r for r in kernel.listeners()}
            c = kernel.tcp_counters()
            s = kernel.sysctls()
        r = rows[f"[::]:{p_dual}"]
        assert r.synq_pct == pytest.approx(100 * r.syn_recv / 1024)
        assert s["net.ipv4.tcp_syncookies"] == 0
        assert c["TcpExt.SyncookiesSent"] == 0
        text = kernel.format_listeners(rows.values())
        assert text.splitlines()[1].startswith(f"[::]:{p_dual}")   # fullest first


@pytest.mark.netns
@needs_lab
@hard_timeout(60)
def test_counters_and_sysctls_keys():
    want_ext = ("SyncookiesSent", "SyncookiesRecv", "SyncookiesFailed",
                "ListenOverflows", "ListenDrops", "TCPReqQFullDoCookies",
                "TCPReqQFullDrop")
    want_tcp = ("PassiveOpens", "ActiveOpens", "AttemptFails", "CurrEstab")
    with labmod.Lab(prefix="ktc") as lab:
        _set_sysctls(lab, {"net.ipv4.tcp_synack_retries": 3,
                           "net.ipv4.tcp_max_syn_backlog": 333})
        with lab.netns(lab.server_ns):
            c = kernel.tcp_counters()
            s = kernel.sysctls()
    for name in want_ext:
        assert isinstance(c[f"TcpExt.{name}"], int)
    for name in want_tcp:
        assert isinstance(c[f"Tcp.{name}"], int)
    assert all(k.startswith(("TcpExt.", "Tcp.")) for k in c)
    assert all(isinstance(v, int) for v in c.values())
    assert c["Tcp.PassiveOpens"] == 0          # a fresh namespace
    assert set(s) == set(kernel.SYSCTLS)
    assert all(isinstance(v, int) for v in s.values())
    assert s["net.ipv4.tcp_synack_retries"] == 3
    assert s["net.ipv4.tcp_max_syn_backlog"] == 333


@hard_timeout(60)
@needs_lab
def test_peers_names_clients_past_the_handshake_only():
    """kernel.peers(): remote addresses of sockets past the handshake (established, closing,
    TIME_WAIT), IPv4 clients of a dual-stack listener as IPv4; a listener is not a peer."""
    with labmod.Lab("sgpe") as lab:
        with lab.netns(lab.server_ns):
            ls = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        with ls:
            ls.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            ls.bind(("::", 8080))
            ls.listen(8)
            with lab.netns(lab.server_ns):
                assert kernel.peers() == set()
            lab.connect_times(1, 8080, family=4)  # connects, closes: the server keeps it (CLOSE_WAIT/TW)
            lab.connect_times(1, 8080, family=6)
            with lab.netns(lab.server_ns):
                got = kernel.peers()
            assert got == {labmod.CLIENT_IP4, labmod.CLIENT_IP6}, got
