"""`make demo` (python -m synguard_lab.demo): the main job on an embedded default.

Builds a three-namespace lab (client, server with a real TCP listener,
attacker), starts the real daemon (`synguard run`, mode auto, a counters log
line every tick) on the server's interfaces, lets it learn a quiet baseline,
then runs a bounded spoofed random-source SYN flood from the attacker while a
real client keeps connecting; shows the last tick's rates live, then reports
and tears everything down.

Every figure of the report comes from what was measured during the run: the
daemon's per-tick counter lines (JSON log, `read_at` = when the program's
counters were read), the attacker's own count, the server's and the client's
kernel counters (/proc/net/netstat of their namespaces) and the client's
connect() times. judge() turns them into the verdict; tests/test_demo.py runs
the demo and recomputes the verdict from the daemon's log.

Exit status 0 only if the defense held:
  - clients served: every legit connect succeeded, and at one round trip (the
    client's kernel retransmitted no SYN: TcpExt TCPSynRetrans +0);
  - protection engaged fast: within ENGAGE_WITHIN_S of the flood's first SYN.
    The counters place it in a tick (the first whose read shows cookie SYN-ACKs
    sent by XDP); within that tick it is estimated from the share of the tick's
    SYNs that still reached the kernel. Who engaged it is reported too: the
    in-kernel fast trigger (a port's SYNs on one CPU reach
    ceil(fast_trigger_pps / nCPU) within one window of sg_config.now_s, i.e.
    one daemon tick) or the detector (it arms the port at the end of the first
    tick it alarms on, usually the flood's first).
    Why the fast trigger seldom fires here: on veth the receiver's work runs on
    the sender's CPU, so while the port is unprotected each spoofed SYN costs
    the sender the kernel's own SYN handling and the flood runs at what the
    kernel can answer (35-120k SYN/s on a busy 2-vCPU box, mostly below the
    default 100k/s ceiling); once XDP answers, the same sender reaches 100-200k/s.
    The attacker's average over the whole flood mixes both phases.
  - once protection was on, the flood did not reach the kernel: the program
    handed no SYN to the kernel in any later tick and the server's kernel sent
    no SYN cookie of its own (TcpExt SyncookiesSent +0);
  - the daemon reported the attack, classified "spoofed" from its start to its end
    (the report lists every kind the daemon reported, as the live line showed them).
    The sender's frame pool (flood.DEFAULT_POOL, 262,144 frames) cycles in about a
    second at full speed, so its sources repeat; the detector calls a flood from
    that many addresses "spoofed" whether they repeat or not (detect.classify).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

from synguard_lab.common import percentile

PORT = 8080
QUIET_S = 3.0
ENGAGE_WITHIN_S = 2.0  # seconds from the flood's first SYN until XDP answers it
CONNECT_TIMEOUT_S = 3.0

# The legit client: `n` connects `gap` seconds apart, one JSON line each:
# {"at": wall time of connect(), "s": its duration or null}.
_CLIENT_CODE = r"""
import json, socket, sys, time
host, port, n, gap, timeout = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
for _ in range(n):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    at, t0 = time.time(), time.perf_counter()
    try:
        s.connect((host, port))
        d = time.perf_counter() - t0
    except OSError:
        d = None
    finally:
        s.close()
    print(json.dumps({"at": round(at, 6), "s": d}), flush=True)
    time.sleep(max(0.0, gap - (time.perf_counter() - t0)))
"""


# -- the verdict, from measurements only (pure: tests/test_demo.py calls it too) -------

def ticks_of(events: list[dict]) -> list[tuple[float, dict]]:
    """(read_at, counters) of the daemon's per-tick "counters" log lines, in order."""
    out = [(float(e.get("read_at", e["ts"])), e["counters"]) for e in events if e.get("event") == "counters"]
    return sorted(out, key=lambda t: t[0])


def judge(ticks: list[tuple[float, dict]], flood: dict, legit: list[dict], connects: int,
          kernel_polls: list[tuple[float, int]], syn_retrans: int, attacks: list[dict],
          mode: str = "auto") -> dict:
    """The demo's findings and verdict.

    ticks: ticks_of(the daemon's log); flood: the flood sender's result (started_at,
    ended_at: wall times of its first and last send); legit: the client's lines;
    kernel_polls: (wall time, server TcpExt SyncookiesSent) read during and after the
    run; syn_retrans: the client's TcpExt TCPSynRetrans growth; attacks: the daemon's
    attack events (attack_start, and attack_update / attack_end: the kind over time;
    an event without "event" is an attack_start)."""
    start, end = flood["started_at"], flood["ended_at"]
    base = max((i for i, (t, _) in enumerate(ticks) if t <= start), default=None)
    if base is None or ticks[-1][0] <= end:
        raise ValueError("the daemon's log must hold a tick before the flood and one after it")
    c0 = ticks[base][1]
    span = ticks[base:]
    per_tick = []
    for (ta, a), (tb, b) in zip(span, span[1:]):
        dt = max(tb - ta, 1e-6)
        per_tick.append({"end": tb, "dt": round(dt, 3),
                         **{k: round((b[k] - a[k]) / dt, 1) for k in ("syn_received", "challenge_sent", "syn_passed")}})
    flood_ticks = [r for r in per_tick if r["end"] - r["dt"] < end]  # ticks overlapping the flood
    engaged = next((i for i in range(base + 1, len(ticks))
                    if ticks[i][1]["challenge_sent"] > ticks[i - 1][1]["challenge_sent"]), None)
    last = ticks[-1][1]
    res = {
        "flood": {"sent": flood["sent"], "seconds": flood["seconds"], "pps": flood["pps"], "started_at": start, "ended_at": end,
                  "syn_received": last["syn_received"] - c0["syn_received"],
                  "challenge_sent": last["challenge_sent"] - c0["challenge_sent"],
                  "tick_peak_pps": max((r["syn_received"] for r in flood_ticks), default=0.0)},
        "ticks": per_tick,
    }
    if engaged is None:
        res["protection"] = None
    else:
        (tp, cp), (te, ce) = ticks[engaged - 1], ticks[engaged]
        # Within the engaging tick, SYNs passed until protection came on: place that
        # instant by the share passed, the tick's SYNs spread evenly over its part
        # of the flood (an estimate; te is the bound the counters prove).
        lo = max(tp, start)
        got = ce["syn_received"] - cp["syn_received"]
        share = (ce["syn_passed"] - cp["syn_passed"]) / got if got else 1.0
        engaged_at = lo + max(te - lo, 0.0) * share
        i0 = next((i for i, (w, _) in enumerate(kernel_polls) if w >= te), None)
        before = ce["syn_passed"] - c0["syn_passed"]
        res["protection"] = {
            "engaged_s": round(max(engaged_at - start, 0.0), 3),
            "engaged_tick_s": round(te - start, 3),  # the read that first shows cookies
            "by": ("mode protect (always on)" if mode == "protect" else
                   "fast trigger" if ce["fast_trigger"] > c0["fast_trigger"] else "detector"),
            "passed_before": before,
            "pps_before": round(before / (engaged_at - start), 1) if engaged_at - start > 0.05 else None,
            "passed_after": last["syn_passed"] - ce["syn_passed"],
            "kernel_cookies_after": None if i0 is None else kernel_polls[-1][1] - kernel_polls[i0][1],
            "validated_after": last["cookie_validated"] - ce["cookie_validated"],
        }
    ok = [r["s"] for r in legit if r["s"] is not None]
    ms = sorted(s * 1000 for s in ok)
    res["legit"] = {"tried": len(legit), "expected": connects, "ok": len(ok), "syn_retransmits": syn_retrans,
                    "p50_ms": percentile(ms, 0.5), "p99_ms": percentile(ms, 0.99), "max_ms": ms[-1] if ms else None,
                    "while_protected": sum(1 for r in legit if engaged is not None and r["at"] >= ticks[engaged][0])}
    starts = [e for e in attacks if e.get("event", "attack_start") == "attack_start"]
    ev = next((e for e in starts if e["ts"] >= start - 1), None)  # the first attack_start of the flood
    a = None if ev is None else ev["attack"]
    kinds = []
    if a is not None:  # the kind at the start, then every change the daemon reported (what the live line showed)
        for e in [ev] + [e for e in attacks if e.get("event") in ("attack_update", "attack_end")
                         and e["ts"] >= ev["ts"] and e["attack"].get("id") == a.get("id")]:
            if not kinds or kinds[-1] != e["attack"]["kind"]:
                kinds.append(e["attack"]["kind"])
    res["attack"] = None if a is None else {"kind": a["kind"], "kinds": kinds, "ports": a["ports"],
                                            "reported_after_s": round(ev["ts"] - start, 3)}
    fail = []
    lg = res["legit"]
    if not (lg["ok"] == lg["tried"] == connects):
        fail.append(f"legit clients: {lg['ok']}/{connects} connected")
    if syn_retrans:
        fail.append(f"legit clients: {syn_retrans} SYN retransmission(s) (a connect took more than one round trip)")
    p = res["protection"]
    if p is None:
        fail.append("protection never engaged (no cookie SYN-ACK sent)")
    else:
        if p["engaged_s"] > ENGAGE_WITHIN_S:
            fail.append(f"protection engaged only {p['engaged_s']:.1f} s after the flood's first SYN")
        if p["passed_after"]:
            fail.append(f"{p['passed_after']} SYNs reached the kernel after protection was on")
        if p["kernel_cookies_after"] is None or p["kernel_cookies_after"] > 0:
            fail.append(f"the kernel sent {p['kernel_cookies_after']} syncookies after protection was on")
    if a is None:
        fail.append("the daemon did not report the attack")
    elif kinds != ["spoofed"]:
        fail.append(f"the attack was classified {' -> '.join(kinds)}, not spoofed throughout")
    res["held"] = not fail
    res["failures"] = fail
    return res


def n(v) -> str:
    return f"{v:,.0f}"


def report(res: dict, say) -> None:
    f, p, lg, a = res["flood"], res["protection"], res["legit"], res["attack"]
    say("")
    say("synguard demo report  (rates: per daemon tick of about 1 s, from its counters log)")
    say(f"  flood           attacker sent {n(f['sent'])} spoofed SYNs in {f['seconds']:.1f} s ({n(f['pps'])}/s on "
        f"average); XDP saw {n(f['syn_received'])} SYNs (flood and client), peak tick {n(f['tick_peak_pps'])} SYN/s")
    share = f["challenge_sent"] / max(f["syn_received"], 1)
    say(f"  cookies         {n(f['challenge_sent'])} SYN-ACKs sent by XDP ({share:.1%} of the SYNs it saw)")
    if p is None:
        say("  protection      NEVER ENGAGED: every SYN went to the kernel")
    else:
        before = "" if p["pps_before"] is None else f" (≈ {n(p['pps_before'])}/s while the kernel answered them)"
        by = p["by"] if p["by"].startswith("mode") else f"the {p['by']}"
        say(f"  protection      on ≈ {p['engaged_s']:.2f} s after the flood's first SYN, by {by} "
            f"(counters prove ≤ {p['engaged_tick_s']:.1f} s); {n(p['passed_before'])} SYNs reached the kernel "
            f"before{before}")
        kc = "?" if p["kernel_cookies_after"] is None else n(p["kernel_cookies_after"])
        say(f"  once on         {n(p['passed_after'])} SYNs passed to the kernel, kernel syncookies +{kc}: "
            + ("the flood did not reach the TCP stack" if not p["passed_after"] and p["kernel_cookies_after"] == 0
               else "THE FLOOD REACHED THE TCP STACK"))
    lat = ("" if lg["p50_ms"] is None else
           f"; first contact p50 {lg['p50_ms']:.1f} ms, p99 {lg['p99_ms']:.1f} ms, max {lg['max_ms']:.1f} ms")
    say(f"  legit client    {lg['ok']}/{lg['expected']} connected, SYN retransmissions {lg['syn_retransmits']}{lat}"
        + (f"; {lg['while_protected']} while protection was on (cookies validated "
           f"+{n(p['validated_after'])})" if p else ""))
    if a is None:
        say("  detector        no attack reported")
    else:
        say(f"  detector        reported a {' -> '.join(a.get('kinds') or [a['kind']])} attack on ports {a['ports']} "
            f"{a['reported_after_s']:.1f} s after the flood's first SYN")
    say("  per tick         t(s)     SYN/s   cookies/s  to kernel/s   (t: counters read, from the flood's first SYN)")
    for r in res["ticks"]:
        say(f"               {r['end'] - res['flood']['started_at']:+7.2f} {n(r['syn_received']):>9} "
            f"{n(r['challenge_sent']):>11} {n(r['syn_passed']):>12}")
    if res["held"]:
        say("  verdict         DEFENSE HELD: clients served at one round trip; no spoofed SYN reached the kernel "
            "once protection was on")
    else:
        say("  verdict         DEFENSE FAILED: " + "; ".join(res["failures"]))


def _rx_packets(lab, ns: str, ifname: str) -> int:
    """Packets received by ifname in ns (/proc/net/dev of that namespace)."""
    from synguard_lab.lab import netns

    with netns(ns), open("/proc/thread-self/net/dev") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name.strip() == ifname:
                return int(rest.split()[1])
    raise LookupError(f"{ifname} not in {ns}")


# -- the run --------------------------------------------------------------------------

def run(flood: int = 2_000_000, seconds: float = 8.0, connects: int = 40, quiet: float = QUIET_S,
        mode: str = "auto", out=sys.stdout, keep_log: str | None = None, json_out: str | None = None,
        start_timeout: float = 90.0) -> int:
    from synguard import view
    from synguard_lab.common import LabDaemon
    from synguard_lab.lab import SERVER_IP4, Lab

    if os.geteuid() != 0:
        print("synguard demo: needs root (network namespaces, XDP)", file=sys.stderr)
        return 1
    tty = out.isatty()
    say = lambda *a: print(*a, file=out, flush=True)  # noqa: E731
    t0 = time.monotonic()
    with Lab("sgdemo") as lab:
        say(f"lab: client {lab.client_ns} -- server {lab.server_ns} (listener :{PORT}) -- attacker {lab.attacker_ns}")
        lab.tcp_server(PORT, backlog=128)
        daemon = LabDaemon(lab, f"interfaces: [{lab.server_client_if}, {lab.server_attacker_if}]\nmode: {mode}\n"
                                f"protect:\n  ports: [{PORT}]\n", args=("--interval", "1"))
        try:
            st = daemon.wait_ready(pred=lambda s: len(s["interfaces"]) == 2, timeout=start_timeout)
        except (TimeoutError, RuntimeError) as e:
            print(f"synguard demo: the daemon did not start: {e}", file=sys.stderr)
            daemon.stop()
            return 1
        ifaces = ", ".join(f"{i['name']} ({i['xdp_mode']} XDP)" for i in st["interfaces"])
        say(f"synguard: mode {st['mode']} on {ifaces}; learning a quiet baseline for {quiet:.0f} s")
        time.sleep(quiet)
        daemon.ticks_after(time.time(), 1)  # a tick before the flood: judge()'s baseline
        kernel_polls = [(time.time(), lab.netstat(lab.server_ns)["TcpExt"].get("SyncookiesSent", 0))]
        retrans0 = lab.netstat(lab.client_ns)["TcpExt"].get("TCPSynRetrans", 0)

        say(f"flood: up to {n(flood)} spoofed random-source SYNs for at most {seconds:g} s; "
            f"client: {connects} connects meanwhile")
        rx0 = _rx_packets(lab, lab.server_ns, lab.server_attacker_if)
        flood_proc = lab.flood_start(flood, seconds, dport=PORT, seed=int(time.time()))
        # The sender builds its frames first (about a second): the client starts with the flood.
        wait_until = time.monotonic() + 60
        while _rx_packets(lab, lab.server_ns, lab.server_attacker_if) - rx0 < 1000 and flood_proc.poll() is None:
            if time.monotonic() > wait_until:
                break
            time.sleep(0.02)
        gap = (seconds + 1) / connects
        client = lab.popen(lab.client_ns, [sys.executable, "-c", _CLIENT_CODE, SERVER_IP4, str(PORT), str(connects),
                                           str(gap), str(CONNECT_TIMEOUT_S)], stdout=subprocess.PIPE, text=True)
        legit: list[dict] = []
        reader = threading.Thread(target=lambda: legit.extend(json.loads(line) for line in client.stdout), daemon=True)
        reader.start()
        half_open_peak = 0
        deadline = time.monotonic() + seconds + 60 + connects * (CONNECT_TIMEOUT_S + gap)
        while (flood_proc.poll() is None or client.poll() is None) and time.monotonic() < deadline:
            time.sleep(0.5)
            kernel_polls.append((time.time(), lab.netstat(lab.server_ns)["TcpExt"].get("SyncookiesSent", 0)))
            half_open_peak = max(half_open_peak, lab.syn_recv_count(lab.server_ns, PORT))
            events = daemon.events()
            ticks = ticks_of(events)
            if len(ticks) < 2:
                continue
            (ta, a), (tb, b) = ticks[-2:]
            rate = lambda k: view.human((b[k] - a[k]) / max(tb - ta, 1e-6))  # noqa: E731
            attack = next((e["attack"] for e in reversed(events) if e.get("event", "").startswith("attack_")), None)
            state = "no attack" if attack is None or attack.get("ended") else f"ATTACK {attack['kind']}"
            ok = sum(1 for r in legit if r["s"] is not None)
            line = (f"  t={time.monotonic() - t0:5.1f}s  {state:<15} last tick: SYN {rate('syn_received'):>6}/s  "
                    f"cookies {rate('challenge_sent'):>6}/s  to kernel {rate('syn_passed'):>6}/s  "
                    f"validated {rate('cookie_validated'):>4}/s  half-open {half_open_peak:3d}  "
                    f"legit {ok}/{len(legit)}")
            print(("\r" + line) if tty else line, end="" if tty else "\n", file=out, flush=True)
        if tty:
            print(file=out)
        for p in (flood_proc, client):
            if p.poll() is None:
                lab.stop(p)
        sent = lab.flood_result(flood_proc, timeout=30)
        reader.join(5)
        # Ticks read after the flood's last SYN and the client's last connect (both are over).
        daemon.ticks_after(max(time.time(), sent["ended_at"]), 2)  # 2: the first may have been read just before
        kernel_polls.append((time.time(), lab.netstat(lab.server_ns)["TcpExt"].get("SyncookiesSent", 0)))
        syn_retrans = lab.netstat(lab.client_ns)["TcpExt"].get("TCPSynRetrans", 0) - retrans0
        events = daemon.stop(keep_log=keep_log)

    res = judge(ticks_of(events), sent, legit, connects, kernel_polls, syn_retrans,
                [e for e in events if e.get("event") in ("attack_start", "attack_update", "attack_end")], mode=mode)
    res["half_open_peak"] = half_open_peak
    report(res, say)
    say(f"  (total {time.monotonic() - t0:.0f} s, lab torn down)")
    if json_out:
        with open(json_out, "w") as fh:
            json.dump(res, fh, indent=1)
    return 0 if res["held"] else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="make demo ARGS=...", description="network-namespace lab under a live spoofed SYN flood")
    p.add_argument("--flood", type=int, default=2_000_000, metavar="N", help="spoofed SYNs to send, at most (default 2000000)")
    p.add_argument("--seconds", type=float, default=8.0, help="flood duration bound (default 8)")
    p.add_argument("--connects", type=int, default=40, help="legit connects during the flood (default 40)")
    p.add_argument("--start-timeout", type=float, default=90.0, metavar="S",
                   help="seconds the daemon may take to start (BCC compiles; default 90; a TCG guest needs ~300)")
    p.add_argument("--quiet", type=float, default=QUIET_S, help=f"quiet baseline before the flood (default {QUIET_S:g})")
    p.add_argument("--mode", choices=("auto", "protect", "observe"), default="auto",
                   help="the daemon's mode (default auto; observe shows the flood reaching the kernel)")
    p.add_argument("--keep-log", metavar="FILE", help="copy the daemon's JSON log here")
    p.add_argument("--json", metavar="FILE", help="write the findings as JSON here")
    a = p.parse_args(argv)
    if a.flood <= 0 or a.seconds <= 0 or a.connects <= 0 or a.quiet < 0:
        p.error("--flood, --seconds and --connects must be positive")
    return run(flood=a.flood, seconds=a.seconds, connects=a.connects, quiet=a.quiet, mode=a.mode,
               start_timeout=a.start_timeout, keep_log=a.keep_log, json_out=a.json)


if __name__ == "__main__":
    sys.exit(main())
