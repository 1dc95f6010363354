"""End to end: the real XDP program on the lab server's veths (netns + veth).

The program (ebpf/synguard.bpf.c, compiled once per module by DataPath) is
attached in native mode to both server veths, s0 (client link) and s1
(attacker link), from inside the server namespace. Real Linux clients, a real
listener and the bounded spoofed flood sender then check the contract:

- a Linux client accepts the cookie SYN-ACK from XDP (IPv4 and IPv6): one SYN
  each, the client reaches ESTABLISHED (XDP alone here: completing the
  connection is the tc program's job, tests/test_handshake.py and
  tests/test_clients.py);
- a spoofed flood in protect mode never reaches the listener: no SYN_RECV, no
  kernel syncookies, every SYN answered with a cookie SYN-ACK; the same flood
  in observe mode does reach it (control);
- non-SYN traffic passes untouched: an established connection survives
  observe -> protect -> observe;
- detach/close leave no program on the interfaces.

Each test runs in its own Lab (namespaces torn down by the Lab); the module's
DataPath is detached from the lab's veths in the per-test fixture teardown and
closed in the module fixture teardown, also when a test fails. Every test has a
hard timeout (SIGALRM). Only addresses inside the lab are ever targeted and
every flood is bounded in packets and seconds.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from ipaddress import ip_address

import pytest

from helpers import hard_timeout

from synguard_lab import lab as labmod
from synguard.abi import Counter, Mode

PORT = 8080

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0,
                       reason="needs root (BPF, XDP, network namespaces)"),
]





# --- fixtures -------------------------------------------------------------------

@pytest.fixture(scope="module")
def e2e_datapath():
    """The real program, compiled once for the module; closed at the end."""
    from synguard.datapath import DataPath

    d = DataPath()
    try:
        d.set_slot_key(1, os.urandom(16))
        d.set_slot(1)
        d.tick()
        d.set_synack(1460, 1440, 7, 0xF)
        d.set_ports({PORT})
        d.set_mode(Mode.PROTECT)
        yield d
    finally:
        d.close()


def _configure(dp, mode: Mode = Mode.PROTECT) -> None:
    dp.tick()
    dp.set_ports({PORT})
    dp.set_allow_cidrs([])
    dp.set_deny_cidrs([])
    dp.set_mode(mode)


@pytest.fixture
def guarded(e2e_datapath):
    """(lab, dp): a fresh lab with the program on s0 and s1 (native XDP), protect mode.

    Not conftest's session `datapath`: that one runs on a frozen clock for
    BPF_PROG_TEST_RUN; this one ticks the real clock, as the daemon does."""
    from synguard_lab.lab import Lab

    dp = e2e_datapath
    with Lab("sge") as lab:
        try:
            with lab.netns(lab.server_ns):
                for ifname in (lab.server_client_if, lab.server_attacker_if):
                    assert dp.attach(ifname, "native") == "native"
            _configure(dp)
            yield lab, dp
        finally:
            # Interface names resolve in the calling thread's netns: detach
            # from inside the server ns, before the Lab deletes it.
            with lab.netns(lab.server_ns):
                dp.detach_all()
            dp.set_mode(Mode.OBSERVE)


# --- helpers ----------------------------------------------------------------------

def _delta(before: dict, after: dict, key) -> int:
    return after[key] - before[key]


def _wait_counter(dp, before: dict, key: Counter, at_least: int,
                  timeout: float = 10.0) -> int:
    """Delta of counter `key`, polled until >= at_least (or the deadline).

    XDP runs in the receiver's NAPI poll, which can lag the sender a little."""
    deadline = time.monotonic() + timeout
    while True:
        d = dp.counters()[key] - before[key]
        if d >= at_least or time.monotonic() > deadline:
            return d
        time.sleep(0.05)


def _netstat_delta(before: dict, after: dict, sect: str, key: str) -> int:
    return after[sect][key] - before[sect][key]


def _ms(x: float) -> str:
    return f"{x * 1000:8.2f}"


# --- 1. a Linux client accepts the SYN-ACK ---------------------------------------
# Completing the connection is the tc program's job (ebpf/synguard_tc.bpf.c); here
# XDP alone: the client's own stack takes our SYN-ACK as valid (connect() returns in
# one round trip; the server's kernel then resets the ACK it cannot match).


@hard_timeout(120)
def test_linux_client_accepts_the_synack(guarded):
    lab, dp = guarded
    lab.tcp_server(PORT, backlog=128)
    for family in (4, 6):
        dp.set_mode(Mode.OBSERVE)  # warm ARP / ND
        assert all(t is not None for t in lab.connect_times(2, PORT, family=family))
        dp.set_mode(Mode.PROTECT)
        dp.tick()
        before, cli_before = dp.counters(), lab.netstat(lab.client_ns)
        times = lab.connect_times(3, PORT, family=family, timeout=5)
        after, cli_after = dp.counters(), lab.netstat(lab.client_ns)
        assert _delta(before, after, Counter.CHALLENGE_SENT) == 3  # one SYN each: no retransmission
        # Each connect reached ESTABLISHED on the client (our SYN-ACK accepted, its ACK
        # sent): it either completed or was reset from ESTABLISHED (EstabResets), never
        # failed in SYN-SENT (AttemptFails: a SYN-ACK the client refused).
        connected = sum(t is not None for t in times)
        assert connected + _netstat_delta(cli_before, cli_after, "Tcp", "EstabResets") == 3, times
        assert _netstat_delta(cli_before, cli_after, "Tcp", "AttemptFails") == 0


# --- 2. a spoofed flood never reaches the listener -------------------------------

FLOOD_COUNT = 20000
FLOOD_SECONDS = 10
CONTROL_COUNT = 2000
SMALL_BACKLOG = 16


@hard_timeout(240)
def test_spoofed_flood_never_reaches_the_listener(guarded, record_property):
    lab, dp = guarded
    lab.tcp_server(PORT, backlog=SMALL_BACKLOG)
    dp.tick()
    ns_before = lab.netstat(lab.server_ns)
    before = dp.counters()

    # Request sockets live for tens of seconds (SYN-ACK retries) and the
    # TcpExt counters only grow, so the checks after the flood also cover its
    # duration; the polls during it are a second look.
    proc = lab.flood_start(FLOOD_COUNT, FLOOD_SECONDS, dport=PORT, seed=1234)
    max_syn_recv_during = 0
    polls = 0
    while proc.poll() is None:
        max_syn_recv_during = max(max_syn_recv_during,
                                  lab.syn_recv_count(lab.server_ns, PORT))
        polls += 1
        time.sleep(0.02)
    res = lab.flood_result(proc)
    sent = res["sent"]
    assert sent >= 0.9 * FLOOD_COUNT, res   # bounded: all of them, or 10 s
    challenges = _wait_counter(dp, before, Counter.CHALLENGE_SENT, sent)
    after = dp.counters()
    ns_after = lab.netstat(lab.server_ns)
    syn_recv_after = lab.syn_recv_count(lab.server_ns, PORT)
    record_property("flood", res)
    record_property("flood_challenges", challenges)
    print(f"\nspoofed flood (protect): sent {sent} SYNs in {res['seconds']:.3f} s "
          f"= {res['pps']:.0f} pps (errors {res['errors']}, pool build "
          f"{res['build_seconds']} s); XDP: syn received "
          f"{_delta(before, after, Counter.SYN_RECEIVED)}, challenges sent "
          f"{challenges} ({100 * challenges / max(sent, 1):.1f} %), cookies "
          f"validated {_delta(before, after, Counter.COOKIE_VALIDATED)}; "
          f"server SYN_RECV max during {max_syn_recv_during} ({polls} polls), "
          f"after {syn_recv_after}; SyncookiesSent +"
          f"{_netstat_delta(ns_before, ns_after, 'TcpExt', 'SyncookiesSent')}; "
          f"Tcp InSegs +{_netstat_delta(ns_before, ns_after, 'Tcp', 'InSegs')}")

    assert max_syn_recv_during == 0 and syn_recv_after == 0
    for key in ("SyncookiesSent", "TCPReqQFullDoCookies", "TCPReqQFullDrop",
                "ListenOverflows", "ListenDrops"):
        assert _netstat_delta(ns_before, ns_after, "TcpExt", key) == 0, key
    assert _netstat_delta(ns_before, ns_after, "Tcp", "PassiveOpens") == 0
    # The SYNs were answered in XDP: (almost) none reached TCP at all.
    assert _netstat_delta(ns_before, ns_after, "Tcp", "InSegs") < 0.01 * sent
    assert challenges >= 0.95 * sent, (challenges, sent)  # veth may lose a few under load...
    assert challenges == _delta(before, after, Counter.SYN_RECEIVED)  # ...but every SYN that arrived got one
    assert challenges <= sent
    assert _delta(before, after, Counter.COOKIE_VALIDATED) == 0
    assert _delta(before, after, Counter.SYN_PASSED) == 0

    # Control, to prove the assertions above can fail: in observe mode a
    # smaller flood does reach the listener.
    dp.set_mode(Mode.OBSERVE)
    dp.tick()
    ns_before = lab.netstat(lab.server_ns)
    before = dp.counters()
    res = lab.flood(CONTROL_COUNT, FLOOD_SECONDS, dport=PORT, seed=4321)
    assert res["sent"] >= 0.9 * CONTROL_COUNT, res
    seen = _wait_counter(dp, before, Counter.SYN_RECEIVED, res["sent"])
    deadline = time.monotonic() + 10
    while True:   # the stack's counters follow the XDP counters closely
        ns_after = lab.netstat(lab.server_ns)
        syn_recv = lab.syn_recv_count(lab.server_ns, PORT)
        cookies = _netstat_delta(ns_before, ns_after, "TcpExt", "SyncookiesSent")
        if syn_recv + cookies >= 0.9 * res["sent"] or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    after = dp.counters()
    print(f"control flood (observe): sent {res['sent']} at {res['pps']:.0f} pps; "
          f"XDP saw {seen} SYNs, challenges "
          f"{_delta(before, after, Counter.CHALLENGE_SENT)}; server SYN_RECV "
          f"{syn_recv}, SyncookiesSent +{cookies}")
    assert _delta(before, after, Counter.CHALLENGE_SENT) == 0
    assert syn_recv > 0 or cookies > 0
    assert syn_recv + cookies >= 0.9 * res["sent"], (syn_recv, cookies)


# --- 3. established connections are never touched -------------------------------

# Runs in the client ns: one connection, one echo exchange every `interval`
# seconds (64 B and 8 KiB alternately) until "stop" on stdin or max_s; prints a
# JSON summary with each successful exchange's CLOCK_MONOTONIC completion time.
_LONG_CLIENT = r"""
import json, select, socket, sys, time
host, port, interval, max_s = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
s = socket.create_connection((host, port), timeout=5)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
print("connected", flush=True)
done, errors, worst, i = [], [], 0.0, 0
t_end = time.monotonic() + max_s
while time.monotonic() < t_end:
    r, _, _ = select.select([sys.stdin], [], [], interval)
    if r and sys.stdin.readline().strip() in ("stop", ""):
        break
    msg = (b"%08d" % i) * (8 if i % 2 == 0 else 1024)
    t0 = time.monotonic()
    try:
        s.sendall(msg)
        got = b""
        while len(got) < len(msg):
            d = s.recv(len(msg) - len(got))
            if not d:
                raise ConnectionError("EOF from server")
            got += d
    except OSError as e:
        errors.append(f"exchange {i}: {type(e).__name__}: {e}")
        break
    if got != msg:
        errors.append(f"exchange {i}: echo differs")
        break
    done.append(time.monotonic())
    worst = max(worst, done[-1] - t0)
    i += 1
s.close()
print(json.dumps({"done": done, "attempted": i + bool(errors), "errors": errors,
                  "worst_rtt_s": worst}), flush=True)
"""

PHASE_S = 1.5


@hard_timeout(120)
def test_established_connection_survives_mode_switches(guarded):
    lab, dp = guarded
    lab.tcp_server(PORT, mode="echo")
    dp.set_mode(Mode.OBSERVE)
    dp.tick()
    start = dp.counters()
    srv_before = lab.netstat(lab.server_ns)
    cli_before = lab.netstat(lab.client_ns)

    client = lab.popen(lab.client_ns, [
        sys.executable, "-c", _LONG_CLIENT, labmod.SERVER_IP4, str(PORT),
        "0.1", "60"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        r, _, _ = select.select([client.stdout], [], [], 15)
        line = client.stdout.readline() if r else ""
        assert line.strip() == "connected", (line, client.poll())

        phases = []   # (mode, t_start, t_end)
        for mode in (Mode.OBSERVE, Mode.PROTECT, Mode.OBSERVE):
            dp.tick()
            dp.set_mode(mode)
            t0 = time.monotonic()
            if mode == Mode.PROTECT:
                # Prove protect mode is live meanwhile: spoofed SYNs from the
                # attacker ns are answered in XDP (their SYN-ACKs go to the sink).
                before = dp.counters()
                assert lab.flood(50, 5, dport=PORT, seed=77)["sent"] == 50
                assert _wait_counter(dp, before, Counter.CHALLENGE_SENT, 50) >= 50
            time.sleep(max(0.0, PHASE_S - (time.monotonic() - t0)))
            phases.append((mode, t0, time.monotonic()))
        srv_mid = lab.netstat(lab.server_ns)
        cli_mid = lab.netstat(lab.client_ns)
        client.stdin.write("stop\n")
        client.stdin.flush()
        out, err = client.communicate(timeout=20)
    finally:
        if client.poll() is None:
            lab.stop(client)
    assert client.returncode == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    end = dp.counters()

    per_phase = [sum(1 for t in summary["done"] if a <= t < b) for _, a, b in phases]
    print(f"\nlong-lived connection: {len(summary['done'])} exchanges ok of "
          f"{summary['attempted']}, per phase (observe/protect/observe) {per_phase}, "
          f"worst rtt {summary['worst_rtt_s'] * 1000:.1f} ms, errors {summary['errors']}")
    assert summary["errors"] == []
    assert len(summary["done"]) == summary["attempted"]
    # ~1 exchange per 100 ms + RTT; ask for a third of that per phase.
    assert all(n >= PHASE_S / 0.1 / 3 for n in per_phase), per_phase
    # Never reset, on either side, while the phases ran.
    for before, mid in ((srv_before, srv_mid), (cli_before, cli_mid)):
        assert _netstat_delta(before, mid, "Tcp", "EstabResets") == 0
        assert _netstat_delta(before, mid, "Tcp", "OutRsts") == 0
    # The client was never allowed by CIDR: its segments simply are not the
    # program's business.
    assert dp.config()["allow_cidrs"] == 0
    assert _delta(start, end, Counter.SYN_ALLOW_CIDR) == 0
    # Its data segments went through the program (s0) as TCP.
    assert _delta(start, end, Counter.TCP) >= 2 * len(summary["done"])


# --- 4. cleanup ---------------------------------------------------------------------

def _ip_link_xdp(lab, ifname: str) -> str:
    out = subprocess.run(["ip", "-n", lab.server_ns, "link", "show", ifname],
                         capture_output=True, text=True, check=True,
                         timeout=30).stdout
    return out


@hard_timeout(120)
def test_cleanup_detaches_program(guarded):
    from synguard.datapath import PROG_NAME, DataPath, attached_prog

    lab, dp = guarded
    ifaces = (lab.server_client_if, lab.server_attacker_if)
    with lab.netns(lab.server_ns):
        for ifname in ifaces:
            assert attached_prog(ifname) == (dp.prog_id, PROG_NAME)
    for ifname in ifaces:
        assert f"prog/xdp id {dp.prog_id}" in _ip_link_xdp(lab, ifname)

    # detach(): per interface.
    with lab.netns(lab.server_ns):
        for ifname in ifaces:
            assert dp.detach(ifname) is True
            assert attached_prog(ifname) is None
            assert dp.detach(ifname) is False   # idempotent
    assert dp.attached == {}
    for ifname in ifaces:
        assert "xdp" not in _ip_link_xdp(lab, ifname)

    # Detached means out of the path: protect mode is still set, yet a fresh
    # client connects without the program seeing a packet.
    dp.tick()
    before = dp.counters()
    lab.tcp_server(PORT, backlog=16)
    assert all(t is not None for t in lab.connect_times(2, PORT, family=4, timeout=5))
    assert dp.counters() == before

    # close(): detaches everywhere, then frees the program.
    dp2 = DataPath()
    try:
        with lab.netns(lab.server_ns):
            for ifname in ifaces:
                assert dp2.attach(ifname, "native") == "native"
                assert attached_prog(ifname) == (dp2.prog_id, PROG_NAME)
            dp2.close()
            for ifname in ifaces:
                assert attached_prog(ifname) is None
            dp2.close()   # idempotent
    finally:
        with lab.netns(lab.server_ns):
            dp2.close()
    for ifname in ifaces:
        assert "xdp" not in _ip_link_xdp(lab, ifname)
