"""Test like the Internet: real client kinds against the lab server, first contact
from a fresh address every time (synguard/clientlab.py).

Kinds: plain, host firewall dropping conntrack INVALID, NAT44/NAT66 router,
NAT router dropping INVALID in forward, and a stack without timestamps / SACK /
window scaling behind NAT; IPv4 and IPv6 each.

- Kernel alone (no XDP program, or synguard in observe mode): every kind
  connects at first contact within FIRST_CONTACT_MS, the server sees the fresh
  address (NAT'ed for the NAT kinds) and negotiates the options the client's
  stack offers. The table of median times is printed (``-s`` / ``-rA``).
- Under a defense on the server port: the same requirement, and the defense must
  have answered the SYNs itself (its own counters), so a defense that never saw
  them cannot pass vacuously. Defenses: synguard in protect mode (XDP answers the
  SYN with a real SYN-ACK whose seq is the cookie, the tc program checks the ACK
  and the kernel makes the connection: one round trip, options kept; the kernel
  never sends a syncookie of its own), and, as the control, the kernel's own
  syncookies for every SYN (tcp_syncookies=2). The earlier RST challenge failed
  NAT and INVALID-dropping clients here (its SYN-ACK acknowledged a cookie, which
  conntrack marks INVALID); it is gone since ABI 2.

One Lab + ClientMatrix per module (fresh addresses make contacts independent);
the DataPath is detached from every server interface after each test, and the
namespaces go at module teardown, also on failure. Hard timeouts everywhere.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time

import pytest

from helpers import hard_timeout, needs_lab

from synguard import cookie
from synguard.abi import Counter, Mode
from synguard_lab.clientlab import ALL_OPTS, KINDS, ClientMatrix
from synguard_lab.lab import NETNS_DIR, Lab

PORT = 8080
FIRST_CONTACT_MS = 50.0   # one round trip on a veth is < 1 ms; an RTO is 1 s
CONTACTS = 5              # fresh first contacts per kind and family
CONNECT_TIMEOUT = 5.0     # long enough to see one SYN retransmission (1 s RTO)

pytestmark = [pytest.mark.netns, needs_lab]


# --- fixtures -------------------------------------------------------------------

@pytest.fixture(scope="module")
def clients():
    """(lab, matrix) with an in-process listener on PORT in the server ns."""
    with Lab("sgk") as lab, ClientMatrix(lab) as matrix:
        matrix.listen(PORT)
        yield lab, matrix


@pytest.fixture(scope="module")
def clients_dp():
    """XDP + tc programs on shared maps (DataPath(tc=True)), as the daemon loads them."""
    from synguard.datapath import DataPath

    d = DataPath(tc=True)
    try:
        yield d
    finally:
        d.close()


@pytest.fixture
def attach(clients, clients_dp):
    """attach(mode): the DataPath (XDP and tc) on every server interface the clients
    use, configured as the daemon would (slot keys, slot, SYN-ACK settings from the
    server namespace's sysctls); detached again after the test."""
    from synguard.kernel import synack_settings

    lab, matrix = clients
    dp = clients_dp

    def _attach(mode: Mode):
        # The daemon's cookie clock, frozen for the test: keys of the previous and
        # the current slot (the tc program accepts both), then the slot itself.
        slot = cookie.slot_of(int(time.time()))
        for s in (slot - 1, slot):
            dp.set_slot_key(s, os.urandom(16))
        dp.set_slot(slot)
        dp.tick()
        dp.set_ports({PORT})
        dp.set_allow_cidrs([])
        dp.set_deny_cidrs([])
        # Interface names and sysctls resolve in the calling thread's netns.
        with lab.netns(lab.server_ns):
            dp.set_synack(*synack_settings(1500))
            for ifname in matrix.server_ifs:
                assert dp.attach(ifname, "native") == "native"
                assert dp.tc_problem is None, dp.tc_problem
        dp.set_mode(mode)
        return dp

    _attach.datapath = dp
    try:
        yield _attach
    finally:
        dp.set_mode(Mode.OBSERVE)
        with lab.netns(lab.server_ns):
            dp.detach_all()


# --- helpers ------------------------------------------------------------------------

def _run_matrix(matrix, n: int = CONTACTS, timeout: float = CONNECT_TIMEOUT):
    """{(kind, family): [Contact, ...]}, n fresh first contacts per case."""
    return {(k, f): [matrix.first_contact_info(k, f, PORT, timeout) for _ in range(n)]
            for k, f in matrix.cases()}


def _fmt(ms):
    return "   fail" if ms is None else f"{ms:7.2f}"


def _table(title: str, results) -> str:
    lines = [title, f"{'kind':<9}{'IP':<4}{'median':>8}{'max':>8}  each (ms)"]
    for (kind, fam), contacts in results.items():
        ms = [c.ms for c in contacts]
        ok = [m for m in ms if m is not None]
        med = statistics.median(ok) if len(ok) == len(ms) else None
        lines.append(f"{kind:<9}v{fam:<3}{_fmt(med):>8}{_fmt(max(ok) if ok else None):>8}  "
                     + " ".join(_fmt(m).strip() for m in ms))
    return "\n".join(lines)


def _problems(results) -> list[str]:
    """Every way a case misses the first-contact requirement."""
    out = []
    for (kind, fam), contacts in results.items():
        want = KINDS[kind].expected_options
        for c in contacts:
            where = f"{kind} IPv{fam} from {c.source}"
            if c.ms is None:
                out.append(f"{where}: no connection within {CONNECT_TIMEOUT} s")
                continue
            if c.ms > FIRST_CONTACT_MS:
                out.append(f"{where}: connected after {c.ms:.0f} ms")
            if c.server is None:
                out.append(f"{where}: server never saw the connection")
                continue
            if c.server.options & ALL_OPTS != want:
                out.append(f"{where}: server negotiated options {c.server.options:#x}, "
                           f"client offers {want:#x}")
    return out


def _check_fresh(results) -> None:
    """The lab itself: each contact from a new address, which the server saw
    (NAT'ed to the router's WAN address for the NAT kinds)."""
    seen = set()
    for (kind, fam), contacts in results.items():
        for c in contacts:
            assert c.source not in seen, f"{kind} IPv{fam}: address {c.source} reused"
            seen.add(c.source)
            if c.server is not None:
                assert c.server_peer == c.source, (kind, fam, c)


# --- 1. the kernel alone ------------------------------------------------------------

@hard_timeout(240)
@pytest.mark.parametrize("program", ["none", "observe"])
def test_kernel_alone_every_kind_connects_at_first_contact(clients, attach, program,
                                                           record_property):
    lab, matrix = clients
    dp = None
    if program == "observe":
        dp = attach(Mode.OBSERVE)
        before = dp.counters()
    results = _run_matrix(matrix)
    table = _table(f"first contact, kernel alone (XDP: {program}), {CONTACTS} fresh "
                   f"addresses per case", results)
    print("\n" + table)
    record_property("first_contact", table)
    _check_fresh(results)
    assert not _problems(results), "\n".join(_problems(results))
    if dp is not None:
        after = dp.counters()
        n = sum(len(v) for v in results.values())
        assert after[Counter.SYN_RECEIVED] - before[Counter.SYN_RECEIVED] >= n
        assert after[Counter.CHALLENGE_SENT] == before[Counter.CHALLENGE_SENT]


# --- 2. under a defense -----------------------------------------------------------------

@contextlib.contextmanager
def _synguard(lab, attach):
    """synguard in protect mode: every first contact answered by XDP (challenges
    sent), completed by the tc program (cookies validated, none refused), and the
    kernel never sent a syncookie of its own."""
    if attach.datapath.cookie_method is None:
        pytest.skip("the tc program cannot run here (kernel without bpf_sk_assign_tcp_reqsk)")
    dp = attach(Mode.PROTECT)
    before = dp.counters()
    kernel_before = lab.netstat(lab.server_ns)["TcpExt"]["SyncookiesSent"]

    def engaged(n_contacts: int) -> str | None:
        after = dp.counters()
        d = {c: after[c] - before[c] for c in Counter}
        kernel = lab.netstat(lab.server_ns)["TcpExt"]["SyncookiesSent"] - kernel_before
        why = []
        if d[Counter.CHALLENGE_SENT] < n_contacts:
            why.append(f"XDP answered {d[Counter.CHALLENGE_SENT]} SYNs for {n_contacts} first contacts")
        if d[Counter.COOKIE_VALIDATED] < n_contacts:
            why.append(f"tc validated {d[Counter.COOKIE_VALIDATED]} cookies for {n_contacts} first contacts")
        if d[Counter.COOKIE_REFUSED] or d[Counter.COOKIE_NO_LISTENER]:
            why.append(f"{d[Counter.COOKIE_REFUSED]} cookies refused by the kernel, "
                       f"{d[Counter.COOKIE_NO_LISTENER]} without listener")
        if kernel:
            why.append(f"the kernel sent {kernel} syncookies of its own (SYNs reached it)")
        return "; ".join(why) or None
    yield engaged


@contextlib.contextmanager
def _kernel_syncookies(lab, attach):
    """The control: the server kernel's own SYN cookies for every SYN
    (tcp_syncookies=2), no XDP program. Stateless like synguard's defense,
    and it must pass."""
    key = "net/ipv4/tcp_syncookies"
    with lab.netns(lab.server_ns), open(f"/proc/sys/{key}") as f:
        old = int(f.read())
    before = lab.netstat(lab.server_ns)["TcpExt"]["SyncookiesSent"]
    lab._sysctls(lab.server_ns, {key: 2})

    def engaged(n_contacts: int) -> str | None:
        sent = lab.netstat(lab.server_ns)["TcpExt"]["SyncookiesSent"] - before
        if sent < n_contacts:
            return f"only {sent} kernel syncookies for {n_contacts} first contacts"
        return None
    try:
        yield engaged
    finally:
        lab._sysctls(lab.server_ns, {key: old})


# name -> context manager (lab, attach) yielding engaged(n_contacts): None, or why
# the defense never saw the SYNs. A new defense adds its own entry (own counters).
DEFENSES = {
    # synguard protect mode: XDP SYN-ACK with the cookie as seq, tc ACK check, the
    # kernel makes the connection (bpf_sk_assign_tcp_reqsk).
    "synguard": _synguard,
    "kernel-syncookies": _kernel_syncookies,
}


@hard_timeout(420)
@pytest.mark.parametrize("defense", ["synguard", "kernel-syncookies"])
def test_every_kind_connects_at_first_contact_under_defense(clients, attach, defense,
                                                            record_property):
    lab, matrix = clients
    with DEFENSES[defense](lab, attach) as engaged:
        results = _run_matrix(matrix)
    table = _table(f"first contact under {defense} (port {PORT}), {CONTACTS} "
                   f"fresh addresses per case", results)
    print("\n" + table)
    record_property("first_contact", table)
    _check_fresh(results)
    # A defense that never saw the SYNs would pass vacuously.
    why_not = engaged(sum(len(v) for v in results.values()))
    assert why_not is None, why_not
    problems = _problems(results)
    assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems)


# --- 3. the lab's own contract ---------------------------------------------------------------

@hard_timeout(120)
def test_bulk_throughput_over_one_connection(clients, record_property):
    lab, matrix = clients
    rates = {(k, f): matrix.throughput(k, f, PORT, megabytes=32)
             for k, f in (("plain", 4), ("nat", 6), ("natbare", 4))}
    print("\nbulk MB/s, 32 MB over one connection (XDP_PASS on the edge veth): "
          + ", ".join(f"{k} v{f} {r:.0f}" for (k, f), r in rates.items()))
    record_property("throughput", rates)
    # throughput() raises unless the server read every byte; rates are only
    # reported (2 shared cores), but a positive rate proves the transfer ended.
    assert all(r > 0 for r in rates.values())


@hard_timeout(120)
def test_matrix_teardown_removes_namespaces_and_programs_on_failure():
    with Lab("sgk") as lab:
        names, xdp = [], []
        with pytest.raises(RuntimeError, match="boom"):
            with ClientMatrix(lab, ["natfw", "plain"]) as m:
                names = m.namespaces
                xdp = list(m._xdp)
                assert len(names) == 3 and len(xdp) == 2
                assert all((NETNS_DIR / n).exists() for n in names)
                m.listen(PORT)
                assert m.first_contact("natfw", 4, PORT, timeout=3) is not None
                raise RuntimeError("boom")
        assert not any((NETNS_DIR / n).exists() for n in names)
        assert not any(x in lab._xdp_attached for x in xdp)
        # The server-side ends go with the namespaces (netns cleanup runs in
        # a kernel work item, so give it a moment).
        deadline = time.monotonic() + 10
        while True:
            links = {line.split("@")[0].split()[0] for line in
                     lab._ip(lab.server_ns, ["-br", "link"]).splitlines() if line.strip()}
            if not links & {"k1", "k2"} or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert not links & {"k1", "k2"}, links
        with pytest.raises(RuntimeError, match="closed"):
            m.first_contact("plain", 4, PORT)


@hard_timeout(300)
def test_cookie_made_connection_moves_bulk_like_a_kernel_made_one(clients, attach, record_property):
    """50 MB over one connection made by our cookie (protect: XDP SYN-ACK, tc kfunc) vs one
    made by the kernel's own handshake (observe), same programs attached, same run,
    alternating, the order swapped every round, 25 rounds. The issue's target (within
    10 %) is a speed figure: printed against it here and reported by the closing notes,
    not asserted (rounds of one kind spread 170-480 MB/s on the shared 2-vCPU box; the
    medians were 0.93-1.0 alone and 0.81 / 0.89 inside the full suite). Asserted: no
    pathology (>= 0.75), e.g. a per-segment slow path on cookie-made connections."""
    lab, matrix = clients
    dp = attach(Mode.PROTECT)
    rates = {Mode.PROTECT: [], Mode.OBSERVE: []}
    for i in range(25):
        for mode in (Mode.PROTECT, Mode.OBSERVE)[:: 1 if i % 2 == 0 else -1]:
            dp.set_mode(mode)
            before = dp.counters()
            rates[mode].append(matrix.throughput("plain", 4, PORT, megabytes=50))
            validated = dp.counters()[Counter.COOKIE_VALIDATED] - before[Counter.COOKIE_VALIDATED]
            assert validated == (1 if mode == Mode.PROTECT else 0), (mode, validated)
    cookie_mbs, kernel_mbs = (statistics.median(rates[m]) for m in (Mode.PROTECT, Mode.OBSERVE))
    print(f"\n50 MB: cookie-made {cookie_mbs:.0f} MB/s {[round(r) for r in rates[Mode.PROTECT]]}, "
          f"kernel-made {kernel_mbs:.0f} MB/s {[round(r) for r in rates[Mode.OBSERVE]]}")
    record_property("bulk_mbs", {"cookie": rates[Mode.PROTECT], "kernel": rates[Mode.OBSERVE]})
    ratio = cookie_mbs / kernel_mbs
    print(f"cookie-made / kernel-made = {ratio:.2f} (target >= 0.90: {'met' if ratio >= 0.9 else 'MISSED'})")
    # The server socket of each kind during one more transfer each (untimed: sampling costs
    # CPU): what the receiver negotiated and how its window grew. Measured (issue 21): the
    # same wscale, MSS and rcv_space / rcv_ssthresh growth; only rtt differs (a cookie-made
    # socket has no handshake RTT sample, the kernel did not send its SYN-ACK).
    info = {}
    for mode in (Mode.PROTECT, Mode.OBSERVE):
        dp.set_mode(mode)
        info[mode] = _server_tcp_info_during(lab, lambda: matrix.throughput("plain", 4, PORT, megabytes=50))
        print(f"server TCP_INFO, {'cookie' if mode == Mode.PROTECT else 'kernel'}-made, first / last sample: "
              f"{info[mode][0]} / {info[mode][-1]}")
    for key in ("wscale", "mss", "rcvmss", "advmss"):
        assert info[Mode.PROTECT][-1][key] == info[Mode.OBSERVE][-1][key], (key, info)
    assert ratio >= 0.75, (cookie_mbs, kernel_mbs)


def _server_tcp_info_during(lab, transfer) -> list[dict]:
    """ss -ti of the established server socket on PORT, sampled while transfer() runs."""
    import re
    import threading

    done = threading.Event()
    err: list[BaseException] = []

    def run():
        try:
            transfer()
        except BaseException as e:  # re-raised below
            err.append(e)
        finally:
            done.set()

    t = threading.Thread(target=run)
    t.start()
    samples = []
    while not done.is_set():
        out = lab.run(lab.server_ns, ["ss", "-tinH", "state", "established", f"( sport = :{PORT} )"],
                      check=False).stdout
        line = " ".join(out.split())
        if "rcv_space" in line:
            samples.append({k: m.group(1) for k in ("wscale", "rtt", "rcv_rtt", "rcv_space", "rcv_ssthresh",
                                                    "mss", "rcvmss", "advmss")
                            if (m := re.search(rf"\b{k}:(\S+)", line))})
        done.wait(0.05)
    t.join()
    if err:
        raise err[0]
    assert samples, "no established server socket seen during the transfer"
    return samples
