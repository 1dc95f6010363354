"""Detection evaluation suite: the real daemon in auto mode against real traffic.

``python -m synguard_lab.evaluate [--short]`` (or ``run(short)``) plays each scenario
in a fresh three-namespace Lab (synguard/lab.py):

- a real listener (``Lab.tcp_server``) on PORT in the server ns;
- a real ``synguard run`` in the server ns, ``mode: auto``, attached to both
  server veths, ``protect.ports: [PORT]``, JSON log (``--log-format json``,
  ``--interval 1``) written to a file, control socket per lab;
- a background legit client in the client ns connecting every LEGIT_INTERVAL
  seconds for the whole scenario (warm-up, traffic, clear), each connect timed;
  it sends a request and counts only once the echo is back (the listener is
  ``Lab.tcp_server(mode="reply")``: one echo, then the server closes first and
  keeps the TIME_WAIT socket, like an HTTP/1.0 server). A scenario may narrow
  the client's ephemeral port range (``client_ports``) so its ports come round
  while the server still holds them in TIME_WAIT (issue 19 item 7);
- the scenario's traffic: spoofed floods from the attacker ns (``Lab.flood_start``,
  bounded in packets and seconds; optionally paced or ramped), or a flash crowd
  of real clients completing handshakes: CROWD_ADDRESSES extra /32s on the
  client veth (10.77.1.10-209, ``Lab.add_client_addresses``), CROWD_PROCS
  processes connecting back to back, each bind()ing the next address, closing
  with RST once connected (no TIME_WAIT pile-up).

Measured from the daemon's JSON log (``ts`` is the daemon's wall clock) and our
own wall clock (the flood sender reports when it really started and stopped
sending; the crowd processes likewise):

- detected: an attack_start at or after the traffic start;
- time to detect: its ts - traffic start; also the detector's own
  detected_after_s (alarm tick - estimated start of the excursion);
- class: the attack's kind at the start, and every change of kind during it
  (attack_update events);
- time to clear: the attack_end ts - traffic stop;
- false alarms: attack_start events in scenarios that are not attacks, before
  the traffic started, or more than one per attack scenario;
- legit: success % and p50/p99 connect time over the whole scenario;
- ``synguard status --json`` once the attack is seen (mitigation in force) and at
  the end (attacks_total, denied sources, counters).

Targets (``met`` per scenario): legit success 100 % everywhere (request sent,
echo read); no valid cookie ACK without a listener (``cookies_no_listener`` 0:
each one is a client that believes it is connected); no attack in the quiet and
flash-crowd scenarios; every attack detected with the right class throughout
(``kinds_seen``: the kind at the start and every change) and no extra alarm; the
spoofed flood within SPOOFED_TTD_S; ramps and floods flagged ``before_end``
before they end; the single source denied; ``sources_sample`` never names a real
client (the crowd's addresses, the legit client); a busy port's clients all
connect.

Detection config: the daemon's defaults in every scenario of the full run;
``--short`` sets ``clear_ticks: 2`` (SHORT_DETECTION) so each attack ends ~3 s
sooner, and shortens the traffic. The flash crowd runs a second variant with
floor_pps lowered to CROWD_LOW_FLOOR when the crowd did not reach
CROWD_TARGET_PPS connects/s, so the volume gate really opens.

Safety: traffic only inside the Lab's namespaces; floods bounded in packets and
seconds; every process is started through the Lab and killed by PID at its
teardown, which also runs when a scenario fails or times out.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from synguard_lab import lab as labmod
from synguard_lab.common import LabDaemon, percentile

PORT = 8080
LISTEN_BACKLOG = 4096
LEGIT_INTERVAL = 0.05  # s between legit connects
LEGIT_TIMEOUT = 5.0  # s per legit connect (covers two SYN retransmissions)
WARMUP_TICKS = 2  # detector ticks with only legit traffic before the scenario's traffic
# --short only: attacks end after 2 quiet ticks instead of the default 5 (saves ~3 s per attack
# scenario; time to clear is then ~3 s shorter). Everything else: the daemon's defaults.
SHORT_DETECTION = {"clear_ticks": 2}
SPOOFED_TTD_S = 2.0
# Packet bound of an unpaced flood: seconds x this (the sender reaches ~200k SYN/s here). Random-source
# floods prebuild that many distinct frames (pool = count, ~3 s per million): a frame pool smaller than
# the flood replays its sources, which the detector rightly sees as repeating (not new) sources.
FLOOD_MAX_PPS = 250_000
FLOOD_MAX_PPS_REPEAT = 800_000  # few-source floods (default pool): denied SYNs are cheap, the sender speeds up
CROWD_ADDRESSES = 200
CROWD_PROCS = 2
CROWD_TARGET_PPS = 3000
CROWD_LOW_FLOOR = 500
SETTLE_S = 2.0  # after non-attack traffic: ticks in which a late false alarm would show
FLOOD_FIRST_S = 2.0  # flood_first: the flood runs this long before the daemon starts
DAEMON_START_TIMEOUT = 90.0
# Keys of the status document (synguard.status.document) kept in a result, beside the detection.
STATUS_KEPT = ("protecting", "cookie_method", "counters", "kernel")


@dataclass(frozen=True)
class Scenario:
    name: str
    traffic: str  # "quiet" | "flood" | "crowd"
    seconds: float
    short_seconds: float | None  # None: full run only
    expect: str | None = None  # expected attack kind; None: never an attack
    flood: dict = field(default_factory=dict)  # Lab.flood_start keywords (sources, pps, ramp_to, ramp, seed)
    detection: dict = field(default_factory=dict)  # detection config overrides
    ttd_target: float | None = None  # max time to detect (s)
    before_end: bool = False  # must be detected before the traffic stops
    client_ports: tuple[int, int] | None = None  # the legit client's ip_local_port_range (None: the default)
    flood_first: bool = False  # the flood starts FLOOD_FIRST_S before the daemon (a restart during an attack)
    pre_flood: dict = field(default_factory=dict)  # a flood played before the scenario's own (not an attack)
    pre_seconds: float = 0.0  # ... for this long (short run: half)
    busy_port: int | None = None  # a crowd of real clients on this port (a second listener) during the flood


SCENARIOS = [
    Scenario("quiet background", "quiet", 20, 8),
    Scenario("spoofed random-source flood", "flood", 6, 4, "spoofed", {"seed": 11}, ttd_target=SPOOFED_TTD_S),
    Scenario("single-source flood", "flood", 6, 4, "single-source", {"seed": 12, "sources": 1}),
    Scenario("300-source flood", "flood", 6, 4, "botnet", {"seed": 13, "sources": 300}),
    Scenario("flash crowd", "crowd", 10, 6),
    Scenario("slow ramp 500->50k SYN/s (exp)", "flood", 30, 12, "spoofed",
             {"seed": 14, "pps": 500, "ramp_to": 50_000, "ramp": "exp"}, before_end=True),
    # Issue 19 item 7: the legit client's ports come round (64 of them, ~1.3 s per lap at 50
    # connects/s) while the server still holds them in TIME_WAIT; a cookie answer to such a SYN
    # lost the connection (the ACK met the TIME_WAIT socket: cookies_no_listener).
    Scenario("ramp 200->12k SYN/s, client ports reused", "flood", 20, 10, "spoofed",
             {"seed": 16, "pps": 200, "ramp_to": 12_000}, before_end=True, client_ports=(40000, 40063)),
    # Issue 19 item 1: the flood is already running when the daemon starts (a restart, a reboot);
    # before, the baseline started at the floor (gate 6,000 SYN/s) and 5,000 SYN/s were never reported.
    Scenario("restart during a 5k SYN/s flood", "flood", 20, 12, "spoofed", {"seed": 17, "pps": 5000},
             before_end=True, flood_first=True),
    # Issue 19 item 2: a trickle under the alarm level (1,100 spoofed SYN/s) first; before, it was
    # learnt as normal and the following 2,900 SYN/s flood was never reported.
    Scenario("trickle 1.1k then 2.9k SYN/s", "flood", 16, 10, "spoofed", {"seed": 18, "pps": 2900},
             before_end=True, pre_flood={"seed": 19, "pps": 1100}, pre_seconds=40),
    # Issue 19 item 3: a random-source flood next to a busy port (a crowd of 200 real clients on
    # PORT + 1); before, the real clients' SYNs made it a botnet and sources_sample named them.
    Scenario("spoofed 10k SYN/s next to a busy port", "flood", 8, 6, "spoofed", {"seed": 20, "pps": 10_000},
             busy_port=PORT + 1),
    # Issue 19 item 3: a pool of 4,096 spoofed addresses (each repeats ~5 times a second).
    Scenario("4k-address pool 20k SYN/s", "flood", 8, 6, "spoofed", {"seed": 21, "pps": 20_000, "pool": 4096}),
    # Issue 19 item 4: one source while real clients (the crowd) use the same port.
    Scenario("single source among real clients", "flood", 8, 6, "single-source",
             {"seed": 22, "sources": 1, "pps": 30_000}, busy_port=PORT),
    # Full run only: a long random-source flood, every source new. Checks that the class holds while the
    # detector's 10-minute source history (HyperLogLog) fills up.
    Scenario("long spoofed flood 50k SYN/s", "flood", 60, None, "spoofed", {"seed": 15, "pps": 50_000}),
]


# ---- helper programs (stdlib only; run inside the lab's namespaces) --------------------

_LEGIT_CODE = r"""
import json, select, socket, sys, time
host, port, interval, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
out = []
print("ready", flush=True)
nxt = time.monotonic()
while True:
    r, _, _ = select.select([sys.stdin], [], [], max(0.0, nxt - time.monotonic()))
    if r:
        break  # stdin closed: stop
    nxt = max(nxt + interval, time.monotonic())
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    ts = time.time()
    t0 = time.perf_counter()
    try:
        s.connect((host, port))
        dt = time.perf_counter() - t0
        s.sendall(b"ping")  # a request; it counts only once its echo is back
        got = b""
        while len(got) < 4:
            d = s.recv(4 - len(got))
            if not d:
                raise ConnectionResetError(104, "closed before the echo")
            got += d
        if got != b"ping":
            raise OSError(74, "wrong echo")
        s.recv(1)  # the server closes first (it keeps the TIME_WAIT, the client's port is free at once)
        out.append((round(ts, 4), round(dt, 6), 0))
    except OSError as e:
        out.append((round(ts, 4), None, e.errno or -1))
    finally:
        s.close()
print(json.dumps(out), flush=True)
"""

_CROWD_CODE = r"""
import json, socket, struct, sys, time
host, port, seconds, timeout, start_at = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
addrs = sys.argv[6].split(",")
IP_BIND_ADDRESS_NO_PORT = 24
rst = struct.pack("ii", 1, 0)  # close with RST once connected: no TIME_WAIT pile-up
d = start_at - time.time()
if d > 0:
    time.sleep(d)
ok = fail = 0
errs = {}
lat = []
started_at = time.time()
t0 = time.monotonic()
end = t0 + seconds
pc = time.perf_counter
i, n = 0, len(addrs)
while True:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        s.bind((addrs[i % n], 0))
        s.settimeout(timeout)
        c0 = pc()
        s.connect((host, port))
        lat.append(pc() - c0)
        ok += 1
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, rst)
    except OSError as e:
        fail += 1
        errs[str(e.errno)] = errs.get(str(e.errno), 0) + 1
    finally:
        s.close()
    i += 1
    if (i & 15) == 0 and time.monotonic() >= end:
        break
el = time.monotonic() - t0
lat.sort()
q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] if lat else None
print(json.dumps({"ok": ok, "fail": fail, "errors": errs, "seconds": el, "started_at": started_at,
                  "ended_at": started_at + el, "p50": q(0.5), "p99": q(0.99), "max": lat[-1] if lat else None}))
"""


class LegitClient:
    """Connects every LEGIT_INTERVAL s from the client ns until stop()."""

    def __init__(self, lab):
        self.lab = lab
        self.proc = lab.popen(lab.client_ns, [sys.executable, "-c", _LEGIT_CODE, labmod.SERVER_IP4, str(PORT),
                                              str(LEGIT_INTERVAL), str(LEGIT_TIMEOUT)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError("legit client did not start")

    def stop(self) -> list[tuple[float, float | None, int]]:
        out, _ = self.proc.communicate(timeout=LEGIT_TIMEOUT + 15)  # closes stdin: the client stops
        self.lab.stop(self.proc)
        return [tuple(r) for r in json.loads(out.strip().splitlines()[-1])]


def crowd(lab, addrs: list[str], seconds: float, procs: int = CROWD_PROCS, port: int = PORT) -> dict:
    """Real clients from `addrs`, `procs` processes connecting back to back."""
    return crowd_result(lab, crowd_start(lab, addrs, seconds, procs, port), seconds)


def crowd_start(lab, addrs: list[str], seconds: float, procs: int = CROWD_PROCS, port: int = PORT) -> list:
    start_at = time.time() + 0.5
    return [lab.popen(lab.client_ns, [sys.executable, "-c", _CROWD_CODE, labmod.SERVER_IP4, str(port), str(seconds),
                                      "3", str(start_at), ",".join(addrs[k::procs])],
                      stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for k in range(procs)]


def crowd_result(lab, ps: list, seconds: float) -> dict:
    rs = []
    for p in ps:
        out, err = p.communicate(timeout=seconds + 30)
        lab.stop(p)
        if p.returncode != 0:
            raise RuntimeError(f"crowd client failed ({p.returncode}): {err.strip()}")
        rs.append(json.loads(out.strip().splitlines()[-1]))
    t0 = min(r["started_at"] for r in rs)
    t1 = max(r["ended_at"] for r in rs)
    ok = sum(r["ok"] for r in rs)
    fail = sum(r["fail"] for r in rs)
    return {"ok": ok, "fail": fail, "started_at": t0, "ended_at": t1, "seconds": round(t1 - t0, 3),
            "pps": round(ok / (t1 - t0), 1), "p99_ms": round(max(r["p99"] or 0 for r in rs) * 1e3, 3),
            "errors": [r["errors"] for r in rs if r["errors"]]}


def _flood_source(seed: int) -> str:
    """The address of a sources=1 flood with this seed (flood.build_frames draws it first)."""
    import ipaddress

    from synguard_lab.flood import random_sources

    return str(ipaddress.ip_address(random_sources(random.Random(seed), 1, False)[0]))


# ---- one scenario ------------------------------------------------------------------------------


def _flood_plan(flood: dict, seconds: float) -> tuple[int, dict]:
    """(packet bound, Lab.flood_start keywords) of a flood of `seconds`."""
    kw = dict(flood)
    if "pps" in kw:
        from synguard_lab.flood import schedule

        count = int(schedule(kw["pps"], seconds, kw.get("ramp_to"), kw.get("ramp", "linear"))(seconds))
        count += 256
    elif kw.get("sources") is None:
        count = int(FLOOD_MAX_PPS * seconds)
    else:
        count = int(FLOOD_MAX_PPS_REPEAT * seconds)
    if kw.get("sources") is None and "pool" not in kw:
        kw["pool"] = count  # every frame its own source: never a repeat
    return count, kw


def run_scenario(sc: Scenario, short: bool, workdir: Path, variant: dict | None = None) -> dict:
    """Play one scenario in a fresh lab; returns its measurements (see analyse())."""
    seconds = sc.short_seconds if short else sc.seconds
    detection = {**(SHORT_DETECTION if short else {}), **sc.detection, **(variant or {})}
    name = sc.name + (f" ({', '.join(f'{k} {v}' for k, v in variant.items())})" if variant else "")
    res: dict = {"scenario": name, "expect": sc.expect, "detection_overrides": detection, "seconds_planned": seconds}
    t_begin = time.monotonic()
    phases = res["phases_s"] = {}

    def mark(name):
        phases[name] = round(time.monotonic() - t_begin - sum(phases.values()), 2)

    with labmod.Lab("sgev") as lab:
        lab.tcp_server(PORT, backlog=LISTEN_BACKLOG, mode="reply")
        if sc.client_ports is not None:
            with lab.netns(lab.client_ns), open("/proc/sys/net/ipv4/ip_local_port_range", "w") as f:
                f.write("%d %d" % sc.client_ports)
        addrs = lab.add_client_addresses(CROWD_ADDRESSES) if sc.traffic == "crowd" or sc.busy_port else []
        res["crowd_addresses"] = addrs
        if sc.busy_port is not None and sc.busy_port != PORT:
            lab.tcp_server(sc.busy_port, backlog=LISTEN_BACKLOG, mode="reply")
        mark("lab")
        early = None
        if sc.flood_first:
            # Already running when the daemon starts, for however long the daemon takes to start (a
            # BCC compile on a loaded box): this first flood is bounded by the start timeout and is
            # stopped once the scenario's own flood (same rate) has begun.
            first_s = FLOOD_FIRST_S + DAEMON_START_TIMEOUT
            count, kw = _flood_plan({**sc.flood, "seed": sc.flood.get("seed", 0) + 1000, "pool": 50_000}, first_s)
            t_first = time.time()
            early = lab.flood_start(count, first_s, dport=PORT, **kw)
            time.sleep(FLOOD_FIRST_S)
        det = "".join(f"  {k}: {v}\n" for k, v in detection.items())
        d = LabDaemon(lab, f"interfaces: [{lab.server_client_if}, {lab.server_attacker_if}]\nmode: auto\n"
                           f"protect:\n  ports: [{PORT}]\n" + (f"detection:\n{det}" if det else ""),
                      args=("--metrics-listen", "127.0.0.1:9046", "--interval", "1"))
        legit = None
        try:
            if d.wait_event(lambda e: e.get("event") == "metrics", DAEMON_START_TIMEOUT, "daemon start") is None:
                raise TimeoutError(f"daemon not ready within {DAEMON_START_TIMEOUT:.0f} s:\n{d.tail()}")
            mark("daemon start")
            t_ready = time.time()
            legit = LegitClient(lab)
            if early is None:
                d.ticks_after(time.time(), WARMUP_TICKS)  # baseline ticks with the legit client only
            mark("warm-up")
            mid_status = None
            if sc.pre_flood:  # e.g. a trickle under the alarm level: must not alarm, must not blind
                pre_s = sc.pre_seconds / 2 if short else sc.pre_seconds
                count, kw = _flood_plan(sc.pre_flood, pre_s)
                pre = lab.flood(count, pre_s, dport=PORT, **kw)
                res["pre_traffic"] = {"params": kw, **{k: pre[k] for k in ("sent", "pps", "seconds")}}
                mark("pre-flood")
            if sc.traffic == "quiet":
                t0 = time.time()
                time.sleep(seconds)
                t1 = time.time()
                # pps: measured below from the legit client's own connect times (its pacing is a setting)
                res["traffic"] = {"kind": "legit only", "pps": None, "seconds": round(t1 - t0, 2),
                                  "interval_setting_s": LEGIT_INTERVAL}
            elif sc.traffic == "crowd":
                c = crowd(lab, addrs, seconds)
                t0, t1 = c["started_at"], c["ended_at"]
                res["traffic"] = {"kind": f"{len(addrs)} real clients, {CROWD_PROCS} procs", **c}
            else:
                count, kw = _flood_plan(sc.flood, seconds)
                busy = None
                if sc.busy_port is not None:  # real clients on a busy port next to the flood
                    busy = crowd_start(lab, addrs, seconds + 2, port=sc.busy_port)
                    time.sleep(1.5)  # the crowd runs (and is learnt) before the flood
                p = lab.flood_start(count, seconds, dport=PORT, **kw)
                t_launch = time.time() if early is None else 0.0
                if early is not None:
                    time.sleep(0.3)  # the second flood has built its frames
                    lab.stop(early)
                # Status while the mitigation is in force, if the attack is seen before the flood ends.
                while p.poll() is None:
                    if d.wait_event(lambda e: e.get("event") == "attack_start" and e["ts"] > t_launch, 0.5,
                                  "attack start") is not None:
                        mid_status = d.status()
                        break
                f = lab.flood_result(p, timeout=seconds + 60)
                if busy is not None:
                    res["busy"] = crowd_result(lab, busy, seconds + 2)
                t0, t1 = f["started_at"], f["ended_at"]
                if early is not None:  # the traffic started with the first flood, before the daemon
                    t0 = t_first
                    res["daemon_ready_after_flood_s"] = round(t_ready - t_first, 2)
                res["traffic"] = {"kind": "spoofed SYN flood", "params": kw,
                                  **{k: f[k] for k in ("sent", "pps", "seconds", "errors", "build_seconds")}}
                if kw.get("sources") == 1:
                    res["flood_source"] = _flood_source(kw.get("seed", 0))
            res["t_start"], res["t_stop"] = t0, t1
            mark("traffic")
            if sc.expect is not None:
                clear = int(detection.get("clear_ticks", 5))
                d.wait_event(lambda e: e.get("event") == "attack_end" and e["ts"] > t0, clear * 2 + 15, "attack end")
            else:
                d.ticks_after(t1, int(SETTLE_S))
            res["status_mid"] = mid_status
            res["status_end"] = d.status()
            mark("clear")
        finally:
            if legit is not None and legit.proc.poll() is None:
                try:
                    res["legit"] = legit.stop()
                except Exception as e:  # keep tearing down
                    res["legit_error"] = repr(e)
            res["events"] = d.stop(keep_log=workdir / f"{lab.id}.log")
            res["daemon_exit"] = d.exit_code
        mark("stop")
    mark("teardown")
    res["wall_s"] = round(time.monotonic() - t_begin, 1)
    return analyse(sc, res)


def analyse(sc: Scenario, res: dict) -> dict:
    t0, t1 = res["t_start"], res["t_stop"]
    evs = res.pop("events")
    attack_evs = [e for e in evs if e.get("event") in ("attack_start", "attack_update", "attack_end")]
    starts = [e for e in attack_evs if e["event"] == "attack_start"]
    res["attack_events"] = [{"event": e["event"], "ts": e["ts"], **{k: e["attack"].get(k) for k in
                             ("id", "kind", "ports", "started", "detected_after_s", "detected_after_ticks", "peak_pps", "ended",
                              "duration_s", "sources_sample")}} for e in attack_evs]
    # SYN/s as the daemon saw it: deltas of the per-tick counter lines over the traffic.
    ctr = [(e["ts"], e["counters"]) for e in evs if e.get("event") == "counters"]
    rates = [(b[0], (b[1]["syn_received"] - a[1]["syn_received"]) / max(b[0] - a[0], 1e-3))
             for a, b in zip(ctr, ctr[1:]) if t0 - 0.5 <= b[0] <= t1 + 1.5]
    res["peak_syn_pps_seen"] = round(max((r for _, r in rates), default=0.0))
    res["daemon_errors"] = [e.get("msg") for e in evs if e.get("level") in ("error", "critical")]

    match = None
    if sc.expect is not None:
        match = next((e for e in starts if e["ts"] >= t0 - 0.05), None)
    res["false_alarms"] = len(starts) - (1 if match else 0)
    res["detected"] = match is not None
    if match:
        a = match["attack"]
        aid = a["id"]
        mine = [e for e in attack_evs if e["attack"]["id"] == aid]
        end = next((e for e in mine if e["event"] == "attack_end"), None)
        res["time_to_detect_s"] = round(match["ts"] - t0, 2)
        res["detected_after_s"] = a["detected_after_s"]
        res["detected_after_ticks"] = a.get("detected_after_ticks")
        res["kind"] = a["kind"]
        res["kind_final"] = mine[-1]["attack"]["kind"]
        seq = [e["attack"]["kind"] for e in mine]
        res["kinds_seen"] = [k for i, k in enumerate(seq) if i == 0 or seq[i - 1] != k]  # in order, no repeats
        # ... and when each was first reported, s after the traffic started
        res["kinds_timeline"] = [(e["attack"]["kind"], round(e["ts"] - t0, 2)) for i, e in enumerate(mine)
                                 if i == 0 or mine[i - 1]["attack"]["kind"] != e["attack"]["kind"]]
        res["ports"] = mine[-1]["attack"]["ports"]
        res["time_to_clear_s"] = round(end["ts"] - t1, 2) if end else None
        res["detected_before_stop"] = match["ts"] <= t1
    else:
        res["kind"] = starts[0]["attack"]["kind"] if starts else None
        res["time_to_detect_s"] = res["detected_after_s"] = res["time_to_clear_s"] = None

    legit = res.get("legit") or []
    tr = res.get("traffic") or {}
    if tr.get("kind") == "legit only":  # what the quiet scenario really offered
        tr["pps"] = round(sum(1 for ts, _, _ in legit if t0 <= ts < t1) / max(t1 - t0, 1e-9), 1)
    ok = [d for _, d, _ in legit if d is not None]
    during = [d for ts, d, _ in legit if d is not None and t0 <= ts <= t1]
    res["legit_n"] = len(legit)
    res["legit_failed"] = len(legit) - len(ok)
    res["legit_errnos"] = sorted({err for _, d, err in legit if d is None})
    res["legit_success_pct"] = round(100.0 * len(ok) / len(legit), 2) if legit else 0.0
    res["legit_p50_ms"] = round(percentile(ok, 0.50) * 1e3, 2) if ok else None
    res["legit_p99_ms"] = round(percentile(ok, 0.99) * 1e3, 2) if ok else None
    res["legit_max_ms"] = round(max(ok) * 1e3, 2) if ok else None
    res["legit_p99_during_ms"] = round(percentile(during, 0.99) * 1e3, 2) if during else None
    res["legit"] = None  # raw samples dropped from the result

    # Valid cookie ACKs the tc program found no listener for (a TIME_WAIT 4-tuple): each one is a
    # client that believed it was connected while the server had no connection.
    res["cookies_no_listener"] = ((res.get("status_end") or {}).get("counters") or {}).get("cookie_no_listener")
    targets = []
    targets.append(("legit success 100%", bool(legit) and res["legit_failed"] == 0,
                    f"{res['legit_success_pct']}% of {len(legit)}"))
    targets.append(("cookies_no_listener 0", not res["cookies_no_listener"], f"{res['cookies_no_listener']}"))
    if sc.expect is None:
        targets.append(("never an attack", not starts, f"{len(starts)} attack_start"))
    else:
        targets.append(("detected", res["detected"], ""))
        targets.append((f"class {sc.expect}", res["detected"] and res["kinds_seen"] == [sc.expect],
                        " -> ".join(res.get("kinds_seen") or [])))
        targets.append(("no false/extra alarm", res["false_alarms"] == 0, f"{res['false_alarms']}"))
        if sc.ttd_target is not None:
            targets.append((f"detected <= {sc.ttd_target:g} s", res["detected"]
                            and res["time_to_detect_s"] <= sc.ttd_target, f"{res['time_to_detect_s']}"))
        if sc.before_end:
            targets.append(("detected before the flood ends", bool(res.get("detected_before_stop")), ""))
        if sc.expect == "single-source":
            src = res.get("flood_source")
            denied = []
            for key in ("status_mid", "status_end"):
                st = res.get(key) or {}
                denied += (st.get("detection") or {}).get("denied_sources", [])
            dropped = ((res.get("status_end") or {}).get("counters") or {}).get("syn_dropped_deny", 0)
            res["denied_sources"] = sorted(set(denied))
            res["syn_dropped_deny"] = dropped
            targets.append(("source denied", src in denied and dropped > 0, f"{src} in {sorted(set(denied))}, "
                                                                            f"{dropped} SYNs dropped"))
    if res.get("busy") is not None:
        b = res["busy"]
        targets.append(("busy port's clients all connect", b["ok"] > 0 and b["fail"] == 0,
                        f"{b['ok']} ok, {b['fail']} failed, {b['pps']} conn/s"))
    if sc.expect is not None:
        named = sorted({a for e in res["attack_events"] for a in (e.get("sources_sample") or [])})
        real = set(res.get("crowd_addresses") or []) | {labmod.CLIENT_IP4}
        res["real_clients_named"] = sorted(real & set(named))
        targets.append(("sources_sample names no real client", not res["real_clients_named"],
                        ", ".join(res["real_clients_named"][:5])))
    if res.get("daemon_exit") not in (0, None):
        targets.append(("daemon exits 0", False, f"exit {res['daemon_exit']}"))
    res["targets"] = [{"target": n, "met": bool(m), "detail": d} for n, m, d in targets]
    res["met"] = all(t["met"] for t in res["targets"])
    for key in ("status_mid", "status_end"):  # keep the useful part of the status documents
        st = res.get(key)
        if st and "detection" in st:
            res[key] = {k: st.get(k) for k in STATUS_KEPT} | {"detection": st["detection"] | {"events": None}}
    return res


# ---- the suite -----------------------------------------------------------------------------------


def run(short: bool = False, *, only: list[str] | None = None, log=None, workdir: str | None = None) -> list[dict]:
    """Run every scenario (or those whose name contains one of `only`); one dict each."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    labmod.cleanup_stale("sgev")
    tmp = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="synguard-eval-"))
    tmp.mkdir(parents=True, exist_ok=True)
    results = []
    try:
        for sc in SCENARIOS:
            if only and not any(o in sc.name for o in only):
                continue
            if short and sc.short_seconds is None:
                continue
            variants = [None]
            for variant in variants:
                log(f"== {sc.name}{' ' + str(variant) if variant else ''} ...")
                try:
                    r = run_scenario(sc, short, tmp, variant)
                except TimeoutError:
                    raise
                except Exception as e:  # one broken scenario must not hide the others
                    r = {"scenario": sc.name, "error": f"{type(e).__name__}: {e}", "met": False,
                         "targets": [{"target": "scenario ran", "met": False, "detail": str(e)[:200]}]}
                results.append(r)
                log(f"   {summary_line(r)}")
                if (sc.traffic == "crowd" and variant is None and "traffic" in r
                        and r["traffic"]["pps"] < CROWD_TARGET_PPS):
                    variants.append({"floor_pps": CROWD_LOW_FLOOR})
    finally:
        if not workdir:
            shutil.rmtree(tmp, ignore_errors=True)
    return results


def _fmt(v, nd=2) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def _traffic(r: dict) -> str:
    t = r.get("traffic") or {}
    if not t:
        return "-"
    if "sent" in t:
        kw = t.get("params") or {}
        src = f", {kw['sources']} src" if kw.get("sources") else ""
        if "ramp_to" in kw:
            return (f"{kw['pps']:.0f}->{kw['ramp_to']:.0f} SYN/s ({kw.get('ramp', 'linear')}, mean "
                    f"{t['pps']:.0f}) x {t['seconds']:.1f} s")
        return f"{t['pps']:.0f} SYN/s x {t['seconds']:.1f} s{src}"
    if "ok" in t:
        return f"{t['pps']:.0f} conn/s x {t['seconds']:.1f} s ({t['ok']} ok, {t['fail']} failed)"
    return f"{t['pps']:.0f} conn/s x {t['seconds']:.1f} s"


def _class(r: dict) -> str:
    if r.get("kinds_timeline"):  # every change of kind during the attack, and when (s after the traffic started)
        return " -> ".join(f"{k} @{t:.1f}s" for k, t in r["kinds_timeline"])
    if r.get("kinds_seen"):
        return " -> ".join(r["kinds_seen"])
    return r.get("kind") or "-"


def summary_line(r: dict) -> str:
    if "error" in r:
        return f"ERROR {r['error']}"
    missed = [t["target"] for t in r["targets"] if not t["met"]]
    return (f"detected {_fmt(r.get('detected'))} ttd {_fmt(r.get('time_to_detect_s'))} class {_class(r)} "
            f"clear {_fmt(r.get('time_to_clear_s'))} false {r.get('false_alarms')} legit "
            f"{r.get('legit_success_pct')}% p99 {r.get('legit_p99_ms')} ms ({r.get('wall_s')} s) "
            + ("met" if not missed else "MISSED: " + ", ".join(missed)))


def table(results: list[dict]) -> str:
    head = ["scenario", "traffic (rate x s)", "detected", "time to detect (s) [detector]", "class over time",
            "time to clear (s)", "false alarms", "legit success %", "legit p99 (ms)", "targets"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['scenario']} | ERROR: {r['error'][:120]} |" + " |" * (len(head) - 2))
            continue
        ttd = "-" if r.get("time_to_detect_s") is None else \
            f"{r['time_to_detect_s']:.2f} [{_fmt(r.get('detected_after_s'))}]"
        missed = [t for t in r["targets"] if not t["met"]]
        tgt = "met" if not missed else "MISSED: " + "; ".join(
            f"{t['target']} ({t['detail']})" if t["detail"] else t["target"] for t in missed)
        lines.append("| " + " | ".join([
            r["scenario"], _traffic(r),
            "yes" if r.get("detected") else ("no" if r.get("expect") else "no (none expected)"),
            ttd, _class(r), _fmt(r.get("time_to_clear_s")), str(r.get("false_alarms")),
            _fmt(r.get("legit_success_pct")), _fmt(r.get("legit_p99_ms")), tgt]) + " |")
    overrides = sorted({", ".join(f"{k}: {v}" for k, v in sorted((r.get("detection_overrides") or {}).items()))
                        for r in results if "error" not in r})
    lines.append("")
    lines.append("detection config: " + ("; ".join(o or "defaults" for o in overrides) or "-")
                 + f" (mode auto, ports [{PORT}]); time to detect = attack_start ts - first SYN sent "
                 "[detector's detected_after_s]; time to clear = attack_end ts - last SYN sent")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m synguard_lab.evaluate",
                                description="Detection evaluation: the real daemon (auto mode) against lab traffic")
    p.add_argument("--short", action="store_true", help="shorter scenarios (whole run <= 4 min)")
    p.add_argument("--only", action="append", default=None, metavar="TEXT",
                   help="only scenarios whose name contains TEXT (repeatable)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--keep-logs", metavar="DIR", help="keep daemon logs and configs in DIR")
    p.add_argument("--timeout", type=float, default=None, help="hard limit for the whole run (s)")
    a = p.parse_args(argv)
    if os.geteuid() != 0:
        print("evaluate: needs root (network namespaces, XDP)", file=sys.stderr)
        return 2
    limit = a.timeout or (480 if a.short else 1200)

    def boom(signum, frame):
        raise TimeoutError(f"evaluation exceeded its hard limit of {limit:.0f} s")

    old = signal.signal(signal.SIGALRM, boom)
    signal.setitimer(signal.ITIMER_REAL, limit)
    t0 = time.monotonic()
    try:
        results = run(a.short, only=a.only, workdir=a.keep_logs)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    total = time.monotonic() - t0
    print(table(results))
    print(f"\ntotal runtime {total:.1f} s ({'short' if a.short else 'full'} run); "
          f"{sum(r['met'] for r in results)}/{len(results)} scenarios met their targets")
    if a.json:
        Path(a.json).write_text(json.dumps({"short": a.short, "total_s": round(total, 1), "results": results},
                                           indent=1, default=str))
    return 0 if all(r["met"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
