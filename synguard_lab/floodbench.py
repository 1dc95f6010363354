"""The same spoofed SYN flood against the kernel alone and against synguard.

``python -m synguard_lab.floodbench [--seconds S] [--short] [--senders N] [--json]``
(root; builds its own network-namespace labs and removes them again).

One invocation runs the same bounded flood (``synguard_lab.flood``: prebuilt
frames, AF_PACKET + sendmmsg, unpaced, random spoofed IPv4 sources, several
sender processes in parallel, each bounded in packets and seconds) into a
fresh lab per run, the server listening on :8080 with backlog 1024:

A. kernel alone: no XDP program on the server's veths, tcp_syncookies=1 (the
   kernel answers with its own SYN cookies once the 1024-entry SYN queue is full);
B. synguard: a real ``synguard run`` daemon in the server namespace, mode
   protect, port 8080 protected, on s0 and s1.

In full mode two extra runs come first: a calibration (1..nCPU senders, 2 s
each, kernel alone) that picks the sender count with the highest offered rate,
and a floor run (the same flood, an XDP_DROP program on s1) that measures
what the sender and the veth hand-off cost by themselves.

What is measured, per run (``markdown()`` prints it, ``run()`` returns it):
- offered: frames the senders handed to the kernel (``sent``; refused frames,
  ENOBUFS, are not counted), rate = the sum of the senders' own rates.
- answered: SYN-ACKs that reached the attacker: ``rx_packets`` delta of a0
  (``ip -s -j link`` in the attacker namespace). On veth one end's tx_packets
  is computed from what its peer received, so s1 tx_packets moves by exactly
  the same amount; XDP_TX frames never pass s1's transmit path, yet land in
  both (and in ``ethtool -S s1`` rx_queue_0_xdp_tx); if a0's 256-slot ring is
  full they are counted as s1 tx_dropped / a0 rx_dropped instead. The
  attacker's own XDP program (replacing the lab's pass program on a0) counts
  SYN-ACKs, drops TCP and passes everything else (ARP, ND): the SYN-ACKs cost
  the attacker namespace nothing, so they do not inflate the CPU figures.
- CPU: /proc/stat sampled every 100 ms, interpolated at the first sender's
  first frame and the last sender's last frame; system + irq + softirq of all
  CPUs per million SYNs sent (CPU-seconds per million = microseconds per SYN).
  On veth the receiver's work runs on the sender's CPU (the softirq that runs
  when sendmmsg re-enables bottom halves), so it lands in these columns. It is
  not split per process: with tick-based accounting (this kernel: no IRQ time
  accounting, the irq column stays 0) a sender's stime includes the receive
  softirq that ran in its context, so subtracting it would remove the
  server's work; the senders' user time is in ``user`` and not counted at all.
  The floor run isolates the senders' own kernel cost (syscall, skb, veth
  ring, the veth's skb-to-XDP copy, a 2-instruction XDP program); "net" =
  total - floor. The veth's skb-to-XDP copy is in the floor and in synguard's
  total but not in the kernel's, so the net kernel figure is slightly low and
  the ratio errs in the kernel's favour. /proc/stat is host-wide: the user time
  of processes that are not ours during the window is reported as "foreign"
  (other jobs on the machine add their kernel work to the figures too).
- legit: a client process in the client namespace connects every 50 ms, round
  robin from 16 source addresses; only connects started while every sender was
  sending count. Behind synguard every connect is a first contact answered by
  XDP's cookie SYN-ACK and completed by the tc program (one round trip): the
  client's TcpExt TCPSynRetrans delta says whether any connect needed a second
  SYN.
- drain: after the last sender exits, the attacker's sink is polled until its
  SYN-ACK count holds still for DRAIN_STABLE_S (at most DRAIN_MAX_S) and the
  sampler has a sample past that point, before the answered share is read.
- spoofed SYNs that reached the kernel's TCP stack: kernel alone:
  SyncookiesSent delta + the half-open peak (sock_diag, every 100 ms);
  synguard: XDP SYN_PASSED delta - the connections the kernel made from SYNs
  it saw (Tcp PassiveOpens delta - cookies validated by the tc program, whose
  connections count as passive opens too), plus SyncookiesSent delta.
- daemon: utime+stime (/proc/<pid>/stat) and VmRSS, idle (10 s after start-up)
  and during the flood.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import json
import os
import platform
import resource
import select
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from synguard_lab import lab as labmod
from synguard_lab.common import REPO_ROOT, LabDaemon, percentile
from synguard_lab.lab import Lab

PORT = 8080
BACKLOG = 1024
CLIENT_SOURCES = 16
CONNECT_GAP_S = 0.05
CONNECT_TIMEOUT_S = 3.0
SAMPLE_S = 0.1
HZ = os.sysconf("SC_CLK_TCK")
PER_SENDER_PPS_BOUND = 1_000_000   # packet bound per sender: seconds x this
CPU_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
QUIET_PCT = 15.0                   # machine busy % below which we call it quiet

# What synguard must do under the flood (compare() checks each; tests/test_floodbench.py too):
# answer >= 95 % of the spoofed SYNs offered, let none reach the TCP stack (no kernel cookie,
# no half-open request), serve every legit connect at one round trip (no SYN retransmitted,
# p99 <= 10 ms on veth), and cost the kernel at most half the CPU per SYN of its own cookies.
TARGETS = {"answered_pct": 95.0, "legit_pct": 100.0, "p99_ms": 10.0, "cpu_ratio": 0.5}
DRAIN_STABLE_S = 0.1   # SYN-ACKs have drained once the attacker's sink count holds this long
DRAIN_MAX_S = 5.0

# The attacker's sink (on a0) and the floor run's drop program (on s1):
# ebpf/lab_sink.bpf.c counts TCP frames (SYN-ACKs apart), drops them, passes the rest.
# Legit client (client netns): connect every `gap` s, round robin over the
# given source addresses, until stdin closes or `max_s` passes (hard bound).
CLIENT_CODE = r"""
import json, os, select, socket, sys, time
host, port, gap, timeout, max_s = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
srcs = sys.argv[6].split(",")
out = []
print("ready", flush=True)
end = time.monotonic() + max_s
nxt = time.monotonic()
i = 0
while time.monotonic() < end:
    r, _, _ = select.select([sys.stdin], [], [], max(0.0, nxt - time.monotonic()))
    if r:
        break
    nxt = max(nxt + gap, time.monotonic())
    src = srcs[i % len(srcs)]
    i += 1
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.bind((src, 0))
        ts = time.time()
        t0 = time.perf_counter()
        s.connect((host, port))
        out.append([ts, time.perf_counter() - t0, src, 0])
    except OSError as e:
        out.append([ts, None, src, e.errno or -1])
    finally:
        s.close()
t = os.times()
print(json.dumps({"connects": out, "utime": t.user, "stime": t.system}), flush=True)
"""


# ---- small readers -----------------------------------------------------------------


def cpustat() -> dict[str, int]:
    """Aggregate 'cpu' line of /proc/stat, in USER_HZ ticks."""
    with open("/proc/stat") as f:
        vals = [int(x) for x in f.readline().split()[1:1 + len(CPU_FIELDS)]]
    return dict(zip(CPU_FIELDS, vals))


def pid_stat(pid: int) -> tuple[int, int, int] | None:
    """(utime, stime, VmRSS kB) of pid, or None when gone. Works on zombies
    (times final, RSS 0) until they are reaped."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        rss = 0
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                    break
    except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
        return None
    return int(fields[11]), int(fields[12]), rss


def ksoftirqd_pids() -> dict[str, int]:
    """{"ksoftirqd/0": pid, ...}: the per-CPU threads deferred softirq work runs in."""
    out = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{d}/comm") as f:
                name = f.read().strip()
                if name.startswith("ksoftirqd/"):
                    out[name] = int(d)
    return out


def busy_pct(seconds: float) -> float:
    """Share of all CPUs not idle over `seconds` (host-wide)."""
    a = cpustat()
    time.sleep(seconds)
    b = cpustat()
    d = {k: b[k] - a[k] for k in CPU_FIELDS}
    total = sum(d.values())
    return 100.0 * (total - d["idle"] - d["iowait"]) / total if total else 0.0


def wait_quiet(max_wait: float, threshold: float = QUIET_PCT) -> float:
    """Wait (at most max_wait s) until the host is quieter than `threshold` %
    busy over one second; returns the last measured busy %."""
    end = time.monotonic() + max_wait
    while True:
        b = busy_pct(1.0 if max_wait > 0 else 0.5)
        if b <= threshold or time.monotonic() >= end:
            return b


def link_stats(lab: Lab) -> dict[str, dict[str, int]]:
    """ip -s -j link counters of s0, s1 (server ns) and a0 (attacker ns)."""
    out = {}
    for ns, names in ((lab.server_ns, (lab.server_client_if, lab.server_attacker_if)),
                      (lab.attacker_ns, (lab.attacker_if,))):
        r = subprocess.run(["ip", "-n", ns, "-s", "-j", "link", "show"], capture_output=True,
                           text=True, timeout=30, check=True)
        for d in json.loads(r.stdout):
            if d["ifname"] in names:
                st = d["stats64"]
                out[d["ifname"]] = {"rx_packets": st["rx"]["packets"], "tx_packets": st["tx"]["packets"],
                                    "rx_dropped": st["rx"]["dropped"], "tx_dropped": st["tx"]["dropped"]}
    return out


def _delta(a: dict, b: dict) -> dict:
    return {k: (_delta(a[k], b[k]) if isinstance(b[k], dict) else b[k] - a.get(k, 0)) for k in b}


# ---- the attacker's sink --------------------------------------------------------------

_sink_lock = threading.Lock()
_sink = None


def _sink_prog():
    global _sink
    with _sink_lock:
        if _sink is None:
            from bcc import BPF
            b = BPF(src_file=str(REPO_ROOT / "ebpf" / "lab_sink.bpf.c").encode(), cflags=["-w"])
            _sink = (b, b.load_func(b"xdp_sink", BPF.XDP), b[b"sink_cnt"], b.load_func(b"xdp_reflect", BPF.XDP))
        return _sink


class Sink:
    """The counting TCP-drop program on interfaces of one lab."""

    def __init__(self, lab: Lab):
        self.lab = lab
        self.attached: list[tuple[str, str]] = []

    def attach(self, ns: str, ifname: str, replace_lab_pass: bool = False, reflect: bool = False) -> None:
        """reflect: the reflector (xdp_reflect: MACs swapped, XDP_TX) instead of the sink."""
        from bcc import BPF
        _, fn, _, reflector = _sink_prog()
        fn = reflector if reflect else fn
        if replace_lab_pass:
            self.lab.detach_xdp(ns, ifname)
        with labmod.netns(ns):
            BPF.attach_xdp(ifname.encode(), fn, labmod.XDP_FLAGS_DRV_MODE)
        self.attached.append((ns, ifname))

    @staticmethod
    def counts() -> dict[str, int]:
        """Process-wide totals (one program, shared by every attachment): use deltas."""
        _, _, table, _ = _sink_prog()
        vals = [sum(table[table.Key(i)]) for i in range(2)]
        return {"synack": vals[0], "other_tcp": vals[1]}

    def close(self) -> None:
        from bcc import BPF
        for ns, ifname in reversed(self.attached):
            if (labmod.NETNS_DIR / ns).exists():
                with contextlib.suppress(Exception), labmod.netns(ns):
                    BPF.remove_xdp(ifname.encode(), labmod.XDP_FLAGS_DRV_MODE)
        self.attached.clear()


# ---- sampling ------------------------------------------------------------------------------


class Sampler:
    """Every SAMPLE_S: /proc/stat, our processes' CPU and RSS, this process's
    user time, and the half-open count on PORT (sock_diag, in the server ns)."""

    def __init__(self, server_ns: str, port: int = PORT):
        self.ns = server_ns
        self.port = port
        self.pids: dict[str, int] = {}
        self.samples: list[dict] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="floodbench-sampler", daemon=True)
        self.error: BaseException | None = None

    def add_pid(self, name: str, pid: int) -> None:
        with self._lock:
            self.pids[name] = pid

    def start(self) -> "Sampler":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def _run(self) -> None:
        from synguard import kernel
        try:
            with labmod.netns(self.ns):
                while True:
                    with self._lock:
                        pids = dict(self.pids)
                    s = {"t": time.time(), "cpu": cpustat(),
                         "self_user": resource.getrusage(resource.RUSAGE_SELF).ru_utime,
                         "procs": {n: st for n, pid in pids.items() if (st := pid_stat(pid)) is not None}}
                    try:
                        s["half_open"] = sum(r.syn_recv for r in kernel.listeners(self.port))
                    except OSError:
                        s["half_open"] = None
                    with self._lock:
                        self.samples.append(s)
                    if self._stop.wait(SAMPLE_S):
                        return
        except BaseException as e:   # reported by the caller
            self.error = e

    def snapshot(self) -> list[dict]:
        with self._lock:
            return list(self.samples)


def value_at(samples: list[dict], t: float, get) -> float | None:
    """get(sample) linearly interpolated at wall time t (clamped to the ends)."""
    pts = [(s["t"], v) for s in samples if (v := get(s)) is not None]
    if not pts:
        return None
    times = [p[0] for p in pts]
    i = bisect.bisect_left(times, t)
    if i == 0:
        return pts[0][1]
    if i >= len(pts):
        return pts[-1][1]
    (t0, v0), (t1, v1) = pts[i - 1], pts[i]
    return v0 + (v1 - v0) * (t - t0) / (t1 - t0) if t1 > t0 else v1


def delta_at(samples: list[dict], t0: float, t1: float, get) -> float:
    a, b = value_at(samples, t0, get), value_at(samples, t1, get)
    return 0.0 if a is None or b is None else b - a


# ---- processes -------------------------------------------------------------------------------


def wait_drained(sampler: Sampler) -> float | None:
    """After the last frame: poll until the attacker's sink has counted no new SYN-ACK
    for DRAIN_STABLE_S and the sampler holds a sample taken after that; seconds it
    took, or None if DRAIN_MAX_S passed first."""
    t0 = time.monotonic()
    last, since = Sink.counts()["synack"], t0
    while time.monotonic() - t0 < DRAIN_MAX_S:
        time.sleep(0.01)
        now = Sink.counts()["synack"]
        if now != last:
            last, since = now, time.monotonic()
            continue
        if time.monotonic() - since >= DRAIN_STABLE_S:
            quiet_at = time.time()
            while time.monotonic() - t0 < DRAIN_MAX_S:
                if any(s["t"] > quiet_at for s in sampler.snapshot()[-3:]):
                    return round(time.monotonic() - t0, 3)
                time.sleep(0.01)
    return None


def start_senders(lab: Lab, n: int, seconds: float, seed: int, pps: int | None = None) -> list[subprocess.Popen]:
    """n senders, each unpaced or paced at pps."""
    count = int(seconds * PER_SENDER_PPS_BOUND)
    procs = []
    for k in range(n):
        procs.append(lab.flood_start(count, seconds, dport=PORT, seed=seed + 1000 * k, pps=pps))
    return procs


def exited(p: subprocess.Popen) -> bool:
    """Has p exited? Does not reap it (its /proc times stay readable)."""
    if p.returncode is not None:
        return True
    try:
        return os.waitid(os.P_PID, p.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def wait_exited(p: subprocess.Popen, timeout: float) -> None:
    """Wait until p has exited, without reaping it."""
    end = time.monotonic() + timeout
    while not exited(p):
        if time.monotonic() > end:
            raise TimeoutError(f"process {p.pid} still running after {timeout:.0f} s")
        time.sleep(0.02)


def reap_sender(lab: Lab, p: subprocess.Popen) -> dict:
    out, err = p.communicate(timeout=10)
    lab.stop(p)
    if p.returncode != 0:
        raise RuntimeError(f"flood sender failed ({p.returncode}): {err.strip()}")
    return json.loads(out.strip().splitlines()[-1])


def start_client(lab: Lab, sources: list[str], max_s: float) -> subprocess.Popen:
    p = lab.popen(lab.client_ns, [sys.executable, "-c", CLIENT_CODE, labmod.SERVER_IP4, str(PORT),
                                  str(CONNECT_GAP_S), str(CONNECT_TIMEOUT_S), str(max_s), ",".join(sources)],
                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    r, _, _ = select.select([p.stdout], [], [], 15)
    if not r or p.stdout.readline().strip() != "ready":
        lab.stop(p)
        raise RuntimeError("legit client did not start")
    return p


def stop_client(lab: Lab, p: subprocess.Popen) -> dict:
    out, err = p.communicate(timeout=CONNECT_TIMEOUT_S + 20)   # closes stdin: the client stops
    lab.stop(p)
    if p.returncode != 0:
        raise RuntimeError(f"legit client failed ({p.returncode}): {err.strip()}")
    return json.loads(out.strip().splitlines()[-1])


def start_daemon(lab: Lab, timeout: float = 90) -> LabDaemon:
    """A real `synguard run` in the server ns: protect PORT on s0 and s1. Returns
    once both interfaces are attached and it is protecting."""
    d = LabDaemon(lab, f"interfaces: [{lab.server_client_if}, {lab.server_attacker_if}]\nmode: protect\n"
                       f"protect:\n  ports: [{PORT}]\n", args=("--interval", "5"))
    want = {lab.server_client_if, lab.server_attacker_if}
    try:
        d.wait_ready(lambda st: st.get("protecting") and {i["name"] for i in st["interfaces"]} >= want, timeout)
    except Exception:
        d.stop()
        raise
    return d


def _iface_counters(status: dict, name: str) -> dict:
    for i in status["interfaces"]:
        if i["name"] == name:
            return i["counters"]
    return {}


# ---- one run --------------------------------------------------------------------------------------


def run_one(mode: str, *, seconds: float, senders: int, seed: int = 7, idle_s: float = 10.0,
            quiet_wait: float = 0.0, pps: int | None = None, log=None) -> dict:
    """One lab, one flood. mode: "kernel" (A), "synguard" (B, C), "floor"
    (XDP_DROP on s1, no client) or "reflector" (XDP_TX of every frame, MACs swapped,
    on s1, no client). pps: each sender paced at this rate (None: unpaced)."""
    if mode not in ("kernel", "synguard", "floor", "reflector"):
        raise ValueError(f"bad mode {mode!r}")
    if seconds <= 0 or senders < 1:
        raise ValueError("seconds and senders must be positive")
    say = (lambda *a: print(*a, file=log, flush=True)) if log else (lambda *a: None)
    res: dict = {"mode": mode, "senders": senders, "sender_pps": pps, "flood_seconds_bound": seconds,
                 "flood_count_bound": senders * int(seconds * PER_SENDER_PPS_BOUND)}
    client_on = mode not in ("floor", "reflector")
    t_run = time.monotonic()
    with Lab("fbench") as lab:
        sink = Sink(lab)
        sampler = Sampler(lab.server_ns)
        daemon = None
        procs: list[subprocess.Popen] = []
        client = None
        try:
            with lab.netns(lab.server_ns):
                with open("/proc/sys/net/ipv4/tcp_syncookies", "w") as f:
                    f.write("1\n")
            listener = lab.tcp_server(PORT, backlog=BACKLOG)
            sources = lab.add_client_addresses(CLIENT_SOURCES) if client_on else []
            sink.attach(lab.attacker_ns, lab.attacker_if, replace_lab_pass=True)
            if mode in ("floor", "reflector"):
                sink.attach(lab.server_ns, lab.server_attacker_if, reflect=mode == "reflector")
            sampler.add_pid("listener", listener.pid)
            for name, pid in ksoftirqd_pids().items():
                sampler.add_pid(name, pid)
            sampler.start()
            if mode == "synguard":
                say(f"  {mode}: starting synguard run (protect :{PORT} on s0, s1)")
                daemon = start_daemon(lab)
                sampler.add_pid("daemon", daemon.pid)
                time.sleep(1.0)   # past start-up
                a, c0 = pid_stat(daemon.pid), cpustat()
                time.sleep(idle_s)
                b, c1 = pid_stat(daemon.pid), cpustat()
                dc = {k: c1[k] - c0[k] for k in CPU_FIELDS}
                res["daemon_idle"] = {"seconds": idle_s,
                                      "cpu_pct": 100.0 * ((b[0] + b[1]) - (a[0] + a[1])) / HZ / idle_s,
                                      "rss_kb": b[2],
                                      "host_busy_pct": 100.0 * (sum(dc.values()) - dc["idle"] - dc["iowait"])
                                      / max(1, sum(dc.values()))}
            res["host_busy_before_pct"] = round(wait_quiet(quiet_wait), 1)
            status0 = daemon.status() if daemon else None
            links0, net0, sink0 = link_stats(lab), lab.netstat(lab.server_ns), Sink.counts()
            cnet0 = lab.netstat(lab.client_ns)
            say(f"  {mode}: flood: {senders} sender(s), at most {seconds:g} s / "
                f"{res['flood_count_bound']} SYNs (host busy before: {res['host_busy_before_pct']:.0f} %)")
            procs = start_senders(lab, senders, seconds, seed, pps)
            for i, p in enumerate(procs):
                sampler.add_pid(f"sender{i}", p.pid)
            # Frames arriving at a sink = the flood has begun (pools are built first).
            end = time.monotonic() + 60
            while sum(Sink.counts().values()) == sum(sink0.values()):
                if time.monotonic() > end or all(exited(p) for p in procs):
                    raise RuntimeError("the flood did not start")
                time.sleep(0.01)
            if client_on:
                client = start_client(lab, sources, seconds + 60)
                sampler.add_pid("client", client.pid)
            for p in procs:
                wait_exited(p, seconds + 90)
            res["drain_s"] = wait_drained(sampler)
            flood = [reap_sender(lab, p) for p in procs]
            procs = []
            conn = stop_client(lab, client) if client else None
            client = None
            links1, net1, sink1 = link_stats(lab), lab.netstat(lab.server_ns), Sink.counts()
            cnet1 = lab.netstat(lab.client_ns)
            status1 = daemon.status() if daemon else None
            if sampler.error:
                raise RuntimeError(f"sampler failed: {sampler.error!r}")
            samples = sampler.snapshot()
        finally:
            sampler.stop()
            for p in procs:
                lab.stop(p)
            if client is not None:
                lab.stop(client)
            if daemon is not None:
                daemon.stop(grace=15)
                res["daemon_exit"] = daemon.exit_code
            sink.close()

    # ---- figures ----
    t0 = min(r["started_at"] for r in flood)
    t1 = max(r["ended_at"] for r in flood)
    full0 = max(r["started_at"] for r in flood)
    full1 = min(r["ended_at"] for r in flood)
    window = max(t1 - t0, 1e-6)
    sent = sum(r["sent"] for r in flood)
    res.update({
        "sent": sent, "errors": sum(r["errors"] for r in flood),
        "offered_pps": sum(r["pps"] for r in flood),
        "per_sender": [{k: r[k] for k in ("sent", "seconds", "pps", "errors", "build_seconds")} for r in flood],
        "window_s": round(window, 3), "all_senders_s": round(max(0.0, full1 - full0), 3),
    })
    dl = _delta(links0, links1)
    answered = dl[lab.attacker_if]["rx_packets"]
    res["links"] = dl
    res["answered"] = answered
    # Same time base as offered_pps (the senders' own rates): overlapping senders
    # start a little apart, so answered / union window would understate it.
    res["answered_pps"] = res["offered_pps"] * answered / sent if sent else 0.0
    res["answered_pct"] = 100.0 * answered / sent if sent else 0.0
    res["sink"] = _delta(sink0, sink1)

    dcpu = {k: delta_at(samples, t0, t1, lambda s, k=k: s["cpu"][k]) for k in CPU_FIELDS}
    total = sum(dcpu.values())
    kcpu_s = (dcpu["system"] + dcpu["irq"] + dcpu["softirq"]) / HZ
    ncpu = os.cpu_count() or 1
    ours_user = delta_at(samples, t0, t1, lambda s: s["self_user"])
    for name in {n for s in samples for n in s["procs"]}:
        ours_user += delta_at(samples, t0, t1, lambda s, n=name: s["procs"].get(n, (None,))[0]) / HZ
    foreign = max(0.0, (dcpu["user"] + dcpu["nice"]) / HZ - ours_user)
    # Kernel time charged to the lab's own processes (senders, listener, client,
    # daemon) and to ksoftirqd: with tick accounting the receive softirq that runs
    # in a sender's context is in its stime. Other jobs' user time is not in it.
    lab_sys_s = 0.0
    for name in {n for s in samples for n in s["procs"]}:
        lab_sys_s += delta_at(samples, t0, t1, lambda s, n=name: s["procs"].get(n, (None, None))[1]) / HZ
    res["cpu"] = {
        "ticks": {k: round(v, 1) for k, v in dcpu.items()},
        "kernel_cpu_s": round(kcpu_s, 3),
        "us_per_syn": kcpu_s / sent * 1e6 if sent else None,   # = CPU-s per million SYNs
        "lab_sys_s": round(lab_sys_s, 3),
        "lab_us_per_syn": lab_sys_s / sent * 1e6 if sent else None,
        "host_busy_pct": 100.0 * (total - dcpu["idle"] - dcpu["iowait"]) / total if total else 0.0,
        "foreign_user_pct": 100.0 * foreign / (window * ncpu),
        "irq_time_accounting": dcpu["irq"] > 0,
    }
    flood_samples = [s for s in samples if t0 - 0.2 <= s["t"] <= t1 + 0.5]
    res["half_open_peak"] = max((s["half_open"] or 0 for s in flood_samples), default=0)
    res["half_open_end"] = samples[-1].get("half_open") if samples else None

    tcpext = lambda n, k: n["TcpExt"].get(k, 0)   # noqa: E731
    res["syncookies_sent"] = tcpext(net1, "SyncookiesSent") - tcpext(net0, "SyncookiesSent")
    res["listen_drops"] = tcpext(net1, "ListenDrops") - tcpext(net0, "ListenDrops")
    res["listen_overflows"] = tcpext(net1, "ListenOverflows") - tcpext(net0, "ListenOverflows")
    res["passive_opens"] = net1["Tcp"]["PassiveOpens"] - net0["Tcp"]["PassiveOpens"]

    if conn is not None:
        inside = [c for c in conn["connects"] if full0 <= c[0] <= full1]
        ok = [c[1] * 1000 for c in inside if c[1] is not None]
        res["legit"] = {"tried": len(inside), "ok": len(ok),
                        "pct": 100.0 * len(ok) / len(inside) if inside else 0.0,
                        "p50_ms": statistics.median(ok) if ok else None,
                        "p99_ms": percentile(ok, 0.99), "max_ms": max(ok) if ok else None,
                        "sources": CLIENT_SOURCES,
                        "errors": sorted({c[3] for c in inside if c[1] is None}),
                        "all_tried": len(conn["connects"]),
                        # connects slower than 5 ms: (seconds into the flood, ms)
                        "slow": [(round(c[0] - full0, 2), round(c[1] * 1000, 1)) for c in inside
                                 if c[1] is not None and c[1] > 0.005],
                        # every connect of the run, in or out of the window: any retransmitted SYN
                        "syn_retransmits": tcpext(cnet1, "TCPSynRetrans") - tcpext(cnet0, "TCPSynRetrans")}

    if mode == "synguard":
        g0, g1 = status0["counters"], status1["counters"]
        s1_0 = _iface_counters(status0, lab.server_attacker_if)
        s1_1 = _iface_counters(status1, lab.server_attacker_if)
        xdp = {"s1_syn_received": s1_1["syn_received"] - s1_0["syn_received"],
               "s1_challenge_sent": s1_1["challenge_sent"] - s1_0["challenge_sent"],
               "syn_passed": g1["syn_passed"] - g0["syn_passed"],
               "cookie_validated": g1["cookie_validated"] - g0["cookie_validated"]}
        res["xdp"] = xdp
        # Connections the kernel made from SYNs it saw itself: passive opens minus those the
        # tc program made from cookie ACKs (bpf_sk_assign_tcp_reqsk counts as a passive open).
        res["kernel_opens"] = max(0, res["passive_opens"] - xdp["cookie_validated"])
        res["reached_kernel"] = max(0, xdp["syn_passed"] - res["kernel_opens"]) + res["syncookies_sent"]
        res["answered_pct_of_xdp"] = (100.0 * answered / xdp["s1_syn_received"]
                                      if xdp["s1_syn_received"] else 0.0)
        d = lambda s, i: (s["procs"].get("daemon") or (None, None, None))[i]   # noqa: E731
        dut = delta_at(samples, t0, t1, lambda s: None if d(s, 0) is None else d(s, 0) + d(s, 1))
        res["daemon_flood"] = {"cpu_pct": 100.0 * dut / HZ / window,
                               "rss_kb": max((d(s, 2) or 0 for s in flood_samples), default=0)}
    elif mode == "kernel":
        res["reached_kernel"] = res["syncookies_sent"] + res["half_open_peak"]
    res["run_seconds"] = round(time.monotonic() - t_run, 1)
    return res


def calibrate(max_senders: int, seconds: float = 2.5, rounds: int = 2, quiet_wait: float = 0.0,
              log=None) -> dict:
    """Offered rate with 1..max_senders senders (kernel alone, one lab), best of
    `rounds` alternating rounds (a passing job on the host hits one round, not
    one sender count). More senders are chosen only if they raise the offered
    rate by more than 10 %."""
    say = (lambda *a: print(*a, file=log, flush=True)) if log else (lambda *a: None)
    rates: dict[int, int] = {}
    with Lab("fbcal") as lab:
        sink = Sink(lab)
        try:
            lab.tcp_server(PORT, backlog=BACKLOG)
            sink.attach(lab.attacker_ns, lab.attacker_if, replace_lab_pass=True)
            wait_quiet(quiet_wait)
            for rnd in range(rounds):
                for n in range(1, max_senders + 1):
                    procs = start_senders(lab, n, seconds, seed=100 + 10 * rnd + n)
                    try:
                        for p in procs:
                            wait_exited(p, seconds + 90)
                        flood = [reap_sender(lab, p) for p in procs]
                    finally:
                        for p in procs:
                            lab.stop(p)
                    pps = round(sum(r["pps"] for r in flood))
                    rates[n] = max(rates.get(n, 0), pps)
                    say(f"  calibration round {rnd + 1}: {n} sender(s): {pps} pps offered")
        finally:
            sink.close()
    best = 1
    for n in sorted(rates):
        if rates[n] > 1.10 * rates[best]:
            best = n
    return {"seconds": seconds, "rounds": rounds, "pps_by_senders": rates, "chosen": best}


def run(seconds: float = 10.0, short: bool = False, senders: int | None = None,
        idle_s: float | None = None, floor: bool | None = None, calibrate_senders: bool | None = None,
        quiet_wait: float | None = None, out=sys.stdout, log=sys.stderr) -> dict:
    """Calibration and floor (full mode), then A (kernel alone, senders unpaced), B (synguard,
    senders paced at A's offered rate: the same flood, side by side) and, in full mode, C
    (synguard, senders unpaced: what it answers when they go as fast as they can).
    Prints the markdown table to `out` and returns every figure."""
    if os.geteuid() != 0:
        raise PermissionError("floodbench needs root (network namespaces, XDP)")
    if short:
        seconds = min(seconds, 2.0)
    idle_s = (3.0 if short else 10.0) if idle_s is None else idle_s
    floor = (not short) if floor is None else floor
    calibrate_senders = (not short and senders is None) if calibrate_senders is None else calibrate_senders
    quiet_wait = (0.0 if short else 30.0) if quiet_wait is None else quiet_wait
    ncpu = os.cpu_count() or 1
    t_start = time.monotonic()
    res: dict = {"machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                 "params": {"seconds": seconds, "short": short, "port": PORT, "backlog": BACKLOG,
                            "idle_s": idle_s, "client_gap_s": CONNECT_GAP_S,
                            "client_sources": CLIENT_SOURCES}}
    if calibrate_senders:
        res["calibration"] = calibrate(ncpu, quiet_wait=quiet_wait, log=log)
        senders = res["calibration"]["chosen"]
    senders = senders or ncpu
    res["params"]["senders"] = senders
    kw = dict(seconds=seconds, senders=senders, idle_s=idle_s, quiet_wait=quiet_wait, log=log)
    if floor:
        res["floor"] = run_one("floor", **kw)
        res["reflector"] = run_one("reflector", **kw)
    res["kernel"] = run_one("kernel", **kw)
    # The senders share the lab's CPUs with the server: unpaced, they push more SYNs into
    # the cheaper receiver until both CPUs are saturated, and the legit client's connects
    # then wait for a CPU. B therefore offers A's rate; C shows the unpaced capacity.
    res["synguard"] = run_one("synguard", pps=max(1, int(res["kernel"]["offered_pps"] / senders)), **kw)
    if not short:
        res["synguard_unpaced"] = run_one("synguard", **kw)
    ack = dict(seconds=min(seconds, 5.0), senders=1, log=log)
    res["ack_flood"] = {"kernel": run_ack_flood("kernel", **ack), "synguard": run_ack_flood("synguard", **ack)}
    res["compare"] = compare(res)
    res["seconds_total"] = round(time.monotonic() - t_start, 1)
    if out is not None:
        print(markdown(res), file=out, flush=True)
    return res


# ---- the forged ACK flood (issue 18): the kernel alone vs synguard, same offered rate ---------------

ACK_PPS = 20_000  # per sender: a rate both sides take in full on a 2-vCPU VM


def run_ack_flood(mode: str, *, seconds: float, senders: int, pps: int = ACK_PPS, seed: int = 23, log=None) -> dict:
    """Forged ACKs (random sources, seq, ack, timestamps) at the listener's port, paced (the
    same offered rate in both modes). mode "kernel": no program, the kernel answers each
    with a RST; "synguard": a `synguard run` daemon in protect mode drops them as out of
    state. Measured: sent, the kernel's RSTs (Tcp OutRsts), host-wide system+irq+softirq
    CPU per forged ACK over the flood (µs), the daemon's out-of-state counters."""
    if mode not in ("kernel", "synguard"):
        raise ValueError(f"bad mode {mode!r}")
    say = (lambda *a: print(*a, file=log, flush=True)) if log else (lambda *a: None)
    hz = os.sysconf("SC_CLK_TCK")
    with Lab("fback") as lab:
        server = lab.tcp_server(PORT, backlog=BACKLOG)
        daemon = start_daemon(lab) if mode == "synguard" else None
        procs: list[subprocess.Popen] = []
        sampler = Sampler(lab.server_ns).start()
        try:
            ns0 = lab.netstat(lab.server_ns)
            st0 = daemon.status() if daemon else None
            for k in range(senders):
                argv = lab._flood_argv(int(seconds * pps), seconds, PORT, seed + 1000 * k, None, False, None,
                                       65536, pps=pps) + ["--ack"]
                procs.append(lab.popen(lab.attacker_ns, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       text=True, env=lab._flood_env()))
            sent = [reap_sender(lab, p) for p in procs]
            time.sleep(0.3)
            ns1 = lab.netstat(lab.server_ns)
            st1 = daemon.status() if daemon else None
            samples = sampler.snapshot()
        finally:
            sampler.stop()
            for p in procs:
                lab.stop(p)
            if daemon is not None:
                daemon.stop()
            lab.stop(server)
    n = sum(r["sent"] for r in sent)
    # Host-wide kernel CPU, interpolated at the first and the last frame (as run_one): it
    # holds the sender's own send path too (the same in both runs) and other jobs' work.
    t0, t1 = min(r["started_at"] for r in sent), max(r["ended_at"] for r in sent)
    kernel_ticks = sum(delta_at(samples, t0, t1, lambda x, f=f: x["cpu"][f]) for f in ("system", "irq", "softirq"))
    res = {"mode": mode, "senders": senders, "sender_pps": pps, "sent": n,
           "offered_pps": round(sum(r["pps"] for r in sent), 1), "window_s": round(t1 - t0, 2),
           "rsts_sent": ns1["Tcp"]["OutRsts"] - ns0["Tcp"]["OutRsts"],
           "tcp_in_segs": ns1["Tcp"]["InSegs"] - ns0["Tcp"]["InSegs"],
           "us_per_ack": round(kernel_ticks / hz * 1e6 / n, 3) if n else None}
    if st0 is not None:
        res["oos_dropped"] = st1["counters"]["oos_dropped"] - st0["counters"]["oos_dropped"]
        res["oos_acks"] = st1["counters"]["oos_ack"] - st0["counters"]["oos_ack"]
    say(f"ack flood, {mode}: {res}")
    return res


def ack_markdown(k: dict, s: dict) -> str:
    rows = ["| forged ACK flood (same offered rate) | A: kernel alone | B: synguard (protect) |", "|---|---:|---:|",
            f"| forged ACKs sent | {k['sent']:,} at {k['offered_pps']:,.0f}/s | {s['sent']:,} at "
            f"{s['offered_pps']:,.0f}/s |",
            f"| RSTs the kernel sent (Tcp OutRsts) | {k['rsts_sent']:,} | {s['rsts_sent']:,} |",
            f"| segments into the TCP stack (Tcp InSegs) | {k['tcp_in_segs']:,} | {s['tcp_in_segs']:,} |",
            f"| kernel CPU per forged ACK incl. the sender's own send path (system+irq+softirq, host-wide, µs) "
            f"| {_n(k['us_per_ack'], '{:.2f}')} | {_n(s['us_per_ack'], '{:.2f}')} |",
            f"| dropped as out of state (synguard) | — | {s.get('oos_dropped', 0):,} |"]
    return "\n".join(rows) + "\n"


def compare(res: dict) -> dict:
    """Ratios synguard / kernel. The check uses the figure charged to the lab
    minus the floor when there is a floor run, else the lab figure: unlike the
    host-wide /proc/stat figure, it does not move with other jobs on the host."""
    k, s, f = res["kernel"], res["synguard"], res.get("floor")
    ku, su = k["cpu"]["us_per_syn"], s["cpu"]["us_per_syn"]
    kl, sl = k["cpu"]["lab_us_per_syn"], s["cpu"]["lab_us_per_syn"]
    c = {"cpu_ratio_host": su / ku if ku else None, "cpu_ratio_lab": sl / kl if kl else None}
    ratio = c["cpu_ratio_lab"]
    if f:
        fl = f["cpu"]["lab_us_per_syn"]
        kn, sn = kl - fl, sl - fl
        c.update({"floor_lab_us_per_syn": fl, "floor_host_us_per_syn": f["cpu"]["us_per_syn"],
                  "kernel_net_us_per_syn": kn, "synguard_net_us_per_syn": sn,
                  "cpu_ratio_net": (max(sn, 0.0) / kn) if kn > 0 else None})
        ratio = c["cpu_ratio_net"]
    c["cpu_ratio_checked"] = ratio
    r, u = res.get("reflector"), res.get("synguard_unpaced")
    if r and u and r["answered_pps"]:
        # the same unpaced senders (C, not B: B is paced at A's rate)
        c["answered_vs_reflector"] = u["answered_pps"] / r["answered_pps"]
    legit = s.get("legit", {})
    c["checks"] = {
        "answered": s["answered_pct"] >= TARGETS["answered_pct"],
        "legit": legit.get("tried", 0) > 0 and legit["ok"] == legit["tried"],
        "p99": legit.get("p99_ms") is not None and legit["p99_ms"] <= TARGETS["p99_ms"],
        "cpu": ratio is not None and ratio <= TARGETS["cpu_ratio"],
        "reached": s["reached_kernel"] == 0 and s["syncookies_sent"] == 0 and s["half_open_peak"] == 0,
        "one_rtt": legit.get("syn_retransmits") == 0,
    }
    u = res.get("synguard_unpaced")
    if u:
        ul = u.get("legit", {})
        c["checks"].update({
            "answered_unpaced": u["answered_pct"] >= TARGETS["answered_pct"],
            "legit_unpaced": ul.get("tried", 0) > 0 and ul["ok"] == ul["tried"],
            "reached_unpaced": u["reached_kernel"] == 0 and u["syncookies_sent"] == 0 and u["half_open_peak"] == 0,
            "one_rtt_unpaced": ul.get("syn_retransmits") == 0,
        })
    return c


def machine() -> dict:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        mem = f"{int(f.readline().split()[1]) / 1024 / 1024:.1f} GiB"
    return {"kernel": platform.release(), "cpus": os.cpu_count(), "cpu_model": model, "memory": mem,
            "python": platform.python_version()}


# ---- output ------------------------------------------------------------------------------------------


def _n(v, fmt="{:,.0f}") -> str:
    return "—" if v is None else fmt.format(v)


def _ok(flag: bool) -> str:
    return "✔" if flag else "✘"


def markdown(res: dict) -> str:
    k, s, f, c = res["kernel"], res["synguard"], res.get("floor"), res["compare"]
    u = res.get("synguard_unpaced")
    ck = c["checks"]
    runs = [k, s] + ([u] if u else [])
    rows = []

    def row(label, cell, target=""):
        """cell(run) -> the run's text; runs A, B and (if run) C."""
        rows.append(f"| {label} | " + " | ".join(cell(r) for r in runs) + f" | {target} |")

    def ours(cell):
        return lambda r: "—" if r is k else cell(r)

    def both(name):  # a check on B, and on C when it ran
        return _ok(ck[name]) + (f" (C {_ok(ck[name + '_unpaced'])})" if u else "")

    def flood(r):
        pace = f", paced at {r['sender_pps']:,} pps each" if r.get("sender_pps") else ", unpaced"
        return (f"{r['sent']:,} SYNs, {r['senders']} sender(s){pace}, {r['window_s']:.1f} s"
                + (f" ({r['errors']:,} refused)" if r["errors"] else ""))

    row("flood (same bounds every run)", flood)
    row("offered pps (sum of senders)", lambda r: _n(r["offered_pps"]))
    row("answered: SYN-ACKs that reached the attacker (a0 rx_packets)",
        lambda r: f"{r['answered']:,} ({r['answered_pct']:.1f} %)",
        f"synguard ≥ {TARGETS['answered_pct']:.0f} % of offered {both('answered')}")
    row("answered pps (offered pps × answered share)", lambda r: _n(r["answered_pps"]))
    target = f"(target ≤ {TARGETS['cpu_ratio']}, B / A) {_ok(ck['cpu'])}"
    row("kernel CPU per SYN, host-wide: /proc/stat system+irq+softirq, all CPUs (µs = CPU-s per 1M SYNs)",
        lambda r: _n(r["cpu"]["us_per_syn"], "{:.2f}"), f"ratio B / A {_n(c['cpu_ratio_host'], '{:.2f}')}")
    row("… charged to the lab: senders (incl. the receive softirq in their context), ksoftirqd, "
        "daemon, listener, client (µs/SYN)", lambda r: _n(r["cpu"]["lab_us_per_syn"], "{:.2f}"),
        f"ratio {_n(c['cpu_ratio_lab'], '{:.2f}')}" + ("" if f else " " + target))
    if f:
        def net(r):
            v = r["cpu"]["lab_us_per_syn"] - c["floor_lab_us_per_syn"]
            return _n(v, "{:.2f}") if v >= 0 else f"≈ 0 ({v:.2f}: within run-to-run noise)"

        row(f"… charged to the lab, minus the sender floor ({c['floor_lab_us_per_syn']:.2f} µs/SYN)", net,
            f"ratio {_n(c['cpu_ratio_net'], '{:.2f}')} {target}")
    row("host busy during the flood / foreign user CPU",
        lambda r: f"{r['cpu']['host_busy_pct']:.0f} % / {r['cpu']['foreign_user_pct']:.0f} %",
        "foreign ≈ 0 for clean figures")

    def legit(r):
        lg = r.get("legit")
        return f"{lg['ok']}/{lg['tried']}" if lg else "—"

    row("legit connects succeeded/tried (during the flood)", legit, f"100 % {both('legit')}")

    def lat(r):
        lg = r.get("legit")
        if not lg or lg.get("p50_ms") is None:
            return "—"
        return f"{lg['p50_ms']:.1f} / {lg['p99_ms']:.1f} (max {lg['max_ms']:.1f})"

    row("legit connect p50 / p99 ms", lat, f"p99 ≤ {TARGETS['p99_ms']:.0f} ms at A's rate (B) {_ok(ck['p99'])}")
    row("legit SYNs retransmitted (client TcpExt TCPSynRetrans Δ)",
        lambda r: _n(r.get("legit", {}).get("syn_retransmits")), f"0: one round trip {both('one_rtt')}")
    row("spoofed SYNs that reached the kernel's TCP stack (synguard: also no kernel cookie, no half-open)",
        lambda r: (f"{r['reached_kernel']:,} (cookies {r['syncookies_sent']:,} + half-open {r['half_open_peak']})"
                   if r is k else
                   f"{r['reached_kernel']:,} (passed {r['xdp']['syn_passed']:,} − kernel-made opens "
                   f"{r['kernel_opens']:,}, cookies {r['syncookies_sent']})"),
        f"synguard 0 {both('reached')}")
    row("TcpExt SyncookiesSent Δ / half-open peak", lambda r: f"{r['syncookies_sent']:,} / {r['half_open_peak']}")
    row("XDP on s1: SYNs seen / challenges sent",
        lambda r: "no XDP" if r is k else (f"{r['xdp']['s1_syn_received']:,} / {r['xdp']['s1_challenge_sent']:,} "
                                           f"(answered {r['answered_pct_of_xdp']:.1f} % of seen)"))
    row("synguard daemon CPU, idle / flood (% of one CPU)",
        ours(lambda r: f"{r.get('daemon_idle', {}).get('cpu_pct', 0):.1f} % / "
                       f"{r.get('daemon_flood', {}).get('cpu_pct', 0):.1f} %"))
    row("synguard daemon RSS, idle / flood",
        ours(lambda r: f"{r.get('daemon_idle', {}).get('rss_kb', 0) / 1024:.1f} / "
                       f"{r.get('daemon_flood', {}).get('rss_kb', 0) / 1024:.1f} MiB"))
    head = ["| | A: kernel alone (tcp_syncookies=1) | B: synguard (protect), A's rate"
            + (" | C: synguard, senders unpaced" if u else "") + " | target |",
            "|---|---:|---:|" + ("---:|" if u else "") + "---|"]
    notes = []
    cal = res.get("calibration")
    if cal:
        rates = ", ".join(f"{n}: {p:,} pps" for n, p in cal["pps_by_senders"].items())
        notes.append(f"- Senders: calibrated (kernel alone, best of {cal['rounds']} rounds of {cal['seconds']:g} s) "
                     f"— {rates}; "
                     f"chose {cal['chosen']} (more senders only when they add > 10 %).")
    if f:
        notes.append(f"- Floor run (same flood, XDP_DROP on s1): {f['sent']:,} SYNs at {f['offered_pps']:,.0f} pps, "
                     f"{f['cpu']['lab_us_per_syn']:.2f} µs/SYN charged to the lab ({f['cpu']['us_per_syn']:.2f} "
                     f"host-wide, foreign user CPU {f['cpu']['foreign_user_pct']:.0f} %): the senders' syscalls, "
                     f"skbs and veth hand-off (incl. veth's skb-to-XDP copy, which synguard pays too but the "
                     f"kernel alone does not: the kernel's net figure is slightly low, the ratio errs in its favour).")
    r = res.get("reflector")
    if r:
        vs = (f"synguard (C, unpaced) answered {u['answered_pps']:,.0f} pps = {c['answered_vs_reflector']:.2f} "
              f"× the reflector's." if "answered_vs_reflector" in c else
              "No unpaced synguard run (B is paced at A's rate): no ratio.")
        notes.append(f"- Reflector run (same senders, unpaced; on s1 an XDP program that only swaps the MACs and "
                     f"returns XDP_TX: the most any answering program can send back here): offered "
                     f"{r['offered_pps']:,.0f} pps, answered {r['answered_pps']:,.0f} pps ({r['answered_pct']:.0f} %). "
                     f"XDP_DROP on s1 (floor): offered {f['offered_pps']:,.0f} pps. " + vs)
    ka = k["links"]
    notes.append(f"- Counters: answered = a0 rx_packets Δ; s1 tx_packets Δ (kernel {ka['s1']['tx_packets']:,}, "
                 f"synguard {s['links']['s1']['tx_packets']:,}) is the same figure (veth computes it from the "
                 f"peer's receive side), XDP_TX frames included; s1 tx_dropped Δ (ring to a0 full): "
                 f"kernel {ka['s1']['tx_dropped']:,}, synguard {s['links']['s1']['tx_dropped']:,}. "
                 f"SYN-ACKs counted by the attacker's sink: kernel {k['sink']['synack']:,}, "
                 f"synguard {s['sink']['synack']:,} (the kernel's include retransmits for its half-open requests).")
    notes.append("- Runs: A floods unpaced; B offers A's rate (each sender paced at A's offered rate / senders), "
                 "so both columns see the same flood; " + ("C floods unpaced again. " if u else "")
                 + "The senders share the lab's CPUs with the server: unpaced against synguard they push "
                 "more SYNs into the cheaper receiver until both CPUs are saturated, and legit connects then "
                 "wait for a CPU (C's latency), which a flood from elsewhere on the Internet would not cause.")
    notes.append(f"- Legit client: one connect every {CONNECT_GAP_S * 1000:.0f} ms, round robin over "
                 f"{CLIENT_SOURCES} source addresses, counted only while every sender was sending. Behind "
                 f"synguard each connect is answered by XDP's cookie SYN-ACK and completed by the tc program "
                 f"(bpf_sk_assign_tcp_reqsk): one round trip, as with the kernel's own cookies.")
    notes.append(f"- Drain: after the last frame the attacker's sink was polled until no SYN-ACK arrived for "
                 f"{DRAIN_STABLE_S * 1000:.0f} ms (kernel {_n(k.get('drain_s'), '{:.2f}')} s, synguard "
                 f"{_n(s.get('drain_s'), '{:.2f}')} s; — = not within {DRAIN_MAX_S:g} s).")
    notes.append("- CPU: sampled every 100 ms, interpolated at the first and last frame of the flood. On veth the "
                 "receiver's work runs on the sender's CPU, in the softirq run when sendmmsg re-enables bottom "
                 "halves (or in ksoftirqd), so the host-wide system+irq+softirq columns hold it. The senders' "
                 "stime is not subtracted: with tick-based accounting (irq column 0 here) it includes that "
                 "softirq, i.e. the server's work; the senders' user time is in `user` and not counted. "
                 "Host-wide figures also hold other jobs' kernel work (foreign = user time of processes not "
                 "ours during the flood); the lab-charged figure (stime of our processes + ksoftirqd) does "
                 "not, and equals the host-wide one on a quiet host.")
    if s.get("daemon_exit") not in (0, None):
        notes.append(f"- WARNING: synguard run exited with status {s['daemon_exit']}.")
    ack = ""
    if res.get("ack_flood"):
        ack = ("\n" + ack_markdown(res["ack_flood"]["kernel"], res["ack_flood"]["synguard"])
               + "\nForged ACKs (random sources, seq, ack and timestamps) at :8080, one paced sender, the same "
               "rate in both runs: the kernel answers each with a RST; synguard drops them before the TCP "
               "stack (out of state: no socket, no cookie of ours or the kernel's).\n")
    return "\n".join(head + rows) + "\n\n" + "\n".join(notes) + "\n" + ack


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m synguard_lab.floodbench", description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=10.0, help="flood duration bound per run (default 10)")
    p.add_argument("--short", action="store_true",
                   help="2 s floods, 3 s idle, no calibration, no floor run, no waiting for a quiet host")
    p.add_argument("--senders", type=int, default=None, help="sender processes (default: calibrated, or nCPU)")
    p.add_argument("--idle", type=float, default=None, help="daemon idle measurement, s (default 10)")
    p.add_argument("--quiet-wait", type=float, default=None,
                   help=f"wait up to this many s for the host to be < {QUIET_PCT:.0f} %% busy before each flood "
                        "(default 30, 0 with --short)")
    p.add_argument("--json", metavar="FILE", help="also write every figure as JSON")
    a = p.parse_args(argv)
    if a.seconds <= 0 or (a.senders is not None and a.senders < 1):
        p.error("--seconds and --senders must be positive")
    res = run(seconds=a.seconds, short=a.short, senders=a.senders, idle_s=a.idle, quiet_wait=a.quiet_wait)
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1, default=str))
    print(f"floodbench: {res['seconds_total']:.0f} s in total", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
