"""`make demo` (python -m synguard_lab.demo): the main job on an embedded default.

Builds a three-namespace lab (client, server with a real TCP listener,
attacker), starts the real daemon (`synguard run`, mode auto) on the server's
interfaces, lets it learn a quiet baseline, then runs a bounded spoofed
random-source SYN flood from the attacker while a real client keeps connecting;
shows the daemon's live status, then reports and tears everything down.

Exit status 0 only if the defense held:
  - the attack was detected within 2 s and classified "spoofed",
  - no spoofed SYN reached the server's TCP stack once it was detected (the SYNs
    that did are at most those sent before detection plus one tick),
  - every legit connect succeeded.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time

PORT = 8080
QUIET_S = 3.0


def run(flood: int = 2_000_000, seconds: float = 8.0, connects: int = 40, out=sys.stdout) -> int:
    from synguard import view
    from synguard_lab.common import LabDaemon, percentile
    from synguard_lab.lab import Lab

    if os.geteuid() != 0:
        print("synguard demo: needs root (network namespaces, XDP)", file=sys.stderr)
        return 1
    tty = out.isatty()
    say = lambda *a: print(*a, file=out, flush=True)  # noqa: E731
    t0 = time.monotonic()
    with Lab("sgdemo") as lab:
        say(f"lab: client {lab.client_ns} -- server {lab.server_ns} (listener :{PORT}) -- attacker {lab.attacker_ns}")
        lab.tcp_server(PORT, backlog=128)
        daemon = LabDaemon(lab, f"interfaces: [{lab.server_client_if}, {lab.server_attacker_if}]\nmode: auto\n"
                                f"protect:\n  ports: [{PORT}]\n")
        status = daemon.status
        try:
            st = daemon.wait_ready()
        except (TimeoutError, RuntimeError) as e:
            print(f"synguard demo: the daemon did not start: {e}", file=sys.stderr)
            return 1
        ifaces = ", ".join(f"{i['name']} ({i['xdp_mode']} XDP)" for i in st["interfaces"])
        say(f"synguard: mode auto on {ifaces}; learning a quiet baseline for {QUIET_S:.0f} s")
        time.sleep(QUIET_S)
        c0 = status()["counters"]
        kernel0 = lab.netstat(lab.server_ns)

        times: list[float | None] = []
        done = threading.Event()

        def client():
            gap = (seconds + 2) / max(connects, 1)
            for _ in range(connects):
                times.extend(lab.connect_times(1, PORT, timeout=3))
                time.sleep(max(0.0, gap - 0.05))
            done.set()

        say(f"flood: up to {flood} spoofed random-source SYNs for at most {seconds:.0f} s; "
            f"client: {connects} connects meanwhile")
        flood_start = time.time()
        flood_proc = lab.flood_start(flood, seconds, dport=PORT, seed=int(flood_start))
        threading.Thread(target=client, daemon=True).start()
        half_open_peak = 0
        while flood_proc.poll() is None or not done.is_set():
            time.sleep(0.5)
            st = status()
            half_open_peak = max(half_open_peak, lab.syn_recv_count(lab.server_ns, PORT))
            r, c, det = st["rates"], st["counters"], st["detection"]
            attack = det["attack"]
            state = f"ATTACK {attack['kind']} on {attack['ports']}" if attack else "no attack"
            ok = sum(1 for t in times if t is not None)
            line = (f"  t={time.monotonic() - t0:5.1f}s  {state:<28} SYN {view.human(r['syn_received']):>7}/s  "
                    f"challenged {view.human(c['challenge_sent'] - c0['challenge_sent']):>7}  "
                    f"validated {c['cookie_validated'] - c0['cookie_validated']:3d}  "
                    f"half-open {half_open_peak:3d}  legit {ok}/{len(times)}")
            print(("\r" + line) if tty else line, end="" if tty else "\n", file=out, flush=True)
            if time.monotonic() - t0 > seconds + 90:
                break
        if tty:
            print(file=out)
        sent = lab.flood_result(flood_proc, timeout=30)
        time.sleep(1.5)  # the daemon's next tick sees the last of the flood
        st = status()
        kernel1 = lab.netstat(lab.server_ns)
        events = [e for e in daemon.events() if e.get("event", "").startswith("attack_")]
        daemon.stop()

    c1 = st["counters"]
    d = {k: c1[k] - c0[k] for k in c1}
    cookies = kernel1["TcpExt"].get("SyncookiesSent", 0) - kernel0["TcpExt"].get("SyncookiesSent", 0)
    opens = kernel1["Tcp"]["PassiveOpens"] - kernel0["Tcp"]["PassiveOpens"]
    reached = max(0, d["syn_passed"] - opens)
    starts = [e for e in events if e["event"] == "attack_start"]
    ok_times = [t for t in times if t is not None]
    share = d["challenge_sent"] / max(sent["sent"], 1)
    say("")
    say("synguard demo report")
    if starts:
        a = starts[0]["attack"]
        after = starts[0]["ts"] - flood_start
        say(f"  attack detected      after {after:.1f} s (detector: {a['detected_after_s']:.1f} s), "
            f"class {a['kind']}, ports {a['ports']}, peak {a['peak_pps']:.0f} SYN/s")
    else:
        after, a = None, None
        say("  attack detected      NO")
    say(f"  attacker sent        {sent['sent']} spoofed SYNs in {sent['seconds']:.1f} s ({sent['pps']:.0f}/s)")
    say(f"  challenges sent      {d['challenge_sent']} ({share:.1%} of the flood) by XDP, before the kernel")
    say(f"  spoofed SYNs that reached the server's TCP stack: {reached} (before protection was on; "
        f"kernel answered {cookies} with its own syncookies; half-open peak {half_open_peak})")
    if ok_times:
        ms = [t * 1000 for t in ok_times]
        say(f"  legit connects       {len(ok_times)}/{len(times)} succeeded; p50 {statistics.median(ms):.1f} ms, "
            f"p99 {percentile(ms, 0.99):.1f} ms")
    else:
        say(f"  legit connects       0/{len(times)} succeeded")
    before_protection = sent["pps"] * ((after or 0) + 1.0)  # sent before detection, plus one tick
    held = (a is not None and a["kind"] == "spoofed" and after is not None and after <= 2.0
            and reached <= before_protection and len(ok_times) == len(times) == connects)
    say(f"  verdict              {'DEFENSE HELD' if held else 'DEFENSE FAILED'} "
        f"(total {time.monotonic() - t0:.0f} s, lab torn down)")
    return 0 if held else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="make demo ARGS=...", description="network-namespace lab under a live spoofed SYN flood")
    p.add_argument("--flood", type=int, default=2_000_000, metavar="N", help="spoofed SYNs to send, at most (default 2000000)")
    p.add_argument("--seconds", type=float, default=8.0, help="flood duration bound (default 8)")
    p.add_argument("--connects", type=int, default=40, help="legit connects during the flood (default 40)")
    a = p.parse_args(argv)
    if a.flood <= 0 or a.seconds <= 0 or a.connects <= 0:
        p.error("--flood, --seconds and --connects must be positive")
    return run(flood=a.flood, seconds=a.seconds, connects=a.connects)


if __name__ == "__main__":
    sys.exit(main())
