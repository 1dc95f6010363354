"""`synguard demo`: the main job on an embedded default.

Builds a three-namespace lab (client, server with a real TCP listener,
attacker), attaches synguard in protect mode to the server's interfaces, runs a
bounded spoofed random-source SYN flood from the attacker while a real client
keeps connecting, shows live counters, then reports and tears everything down.
Exit status 0 only if the defense held:
  - every legit connect succeeded,
  - no spoofed SYN reached the server's TCP stack,
  - the program challenged >= 95% of the SYNs the attacker sent.
"""

from __future__ import annotations

import os
import statistics
import sys
import threading
import time

from synguard.abi import Counter, Mode

PORT = 8080


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def run(flood: int = 200_000, seconds: float = 8.0, connects: int = 40, out=sys.stdout) -> int:
    from synguard.datapath import DataPath, DataPathError
    from synguard.lab import Lab

    if os.geteuid() != 0:
        print("synguard demo: needs root (network namespaces, XDP)", file=sys.stderr)
        return 1
    tty = out.isatty()
    say = lambda *a: print(*a, file=out, flush=True)  # noqa: E731
    t0 = time.monotonic()
    with Lab("sgdemo") as lab:
        say(f"lab: client {lab.client_ns} -- server {lab.server_ns} -- attacker {lab.attacker_ns}")
        lab.tcp_server(PORT, backlog=128)
        try:
            dp = DataPath()
        except DataPathError as e:
            print(f"synguard demo: {e}", file=sys.stderr)
            return 1
        try:
            with lab.netns(lab.server_ns):
                modes = [dp.attach(ifname) for ifname in (lab.server_client_if, lab.server_attacker_if)]
            dp.set_secret(1, os.urandom(16))
            dp.tick()
            dp.set_allow_ttl(3600)
            dp.set_ports({PORT})
            dp.set_mode(Mode.PROTECT)
            say(f"synguard: protect mode on port {PORT}, XDP {modes[0]} on {lab.server_client_if} and "
                f"{lab.server_attacker_if}")
            kernel0 = lab.netstat(lab.server_ns)
            c0 = dp.counters()

            # The legit client: one connect at a time, spread over the flood.
            times: list[float | None] = []
            done = threading.Event()

            def client():
                gap = seconds / max(connects, 1)
                for _ in range(connects):
                    times.extend(lab.connect_times(1, PORT, timeout=3))
                    time.sleep(max(0.0, gap - 0.05))
                done.set()

            say(f"flood: up to {flood} spoofed random-source SYNs for at most {seconds:.0f} s; "
                f"client: {connects} connects")
            flood_proc = lab.flood_start(flood, seconds, dport=PORT, seed=int(time.time()))
            threading.Thread(target=client, daemon=True).start()
            prev, t_prev = c0, time.monotonic()
            half_open_peak = 0
            while flood_proc.poll() is None or not done.is_set():
                time.sleep(0.5)
                dp.tick()
                now, t_now = dp.counters(), time.monotonic()
                half_open_peak = max(half_open_peak, lab.syn_recv_count(lab.server_ns, PORT))
                rate = lambda c: (now[c] - prev[c]) / (t_now - t_prev)  # noqa: E731
                ok = sum(1 for t in times if t is not None)
                line = (f"  t={t_now - t0:5.1f}s  SYN {rate(Counter.SYN_RECEIVED):8.0f}/s  challenges "
                        f"{now[Counter.CHALLENGE_SENT] - c0[Counter.CHALLENGE_SENT]:8d}  validated "
                        f"{now[Counter.COOKIE_VALIDATED] - c0[Counter.COOKIE_VALIDATED]:3d}  half-open "
                        f"{half_open_peak:3d}  legit {ok}/{len(times)}")
                print(("\r" + line) if tty else line, end="" if tty else "\n", file=out, flush=True)
                prev, t_prev = now, t_now
                if time.monotonic() - t0 > seconds + 60:
                    break
            if tty:
                print(file=out)
            sent = lab.flood_result(flood_proc, timeout=30)
            c1 = dp.counters()
            kernel1 = lab.netstat(lab.server_ns)
        finally:
            dp.close()

    d = {c: c1[c] - c0[c] for c in Counter}
    opens = kernel1["Tcp"]["PassiveOpens"] - kernel0["Tcp"]["PassiveOpens"]
    cookies = kernel1["TcpExt"].get("SyncookiesSent", 0) - kernel0["TcpExt"].get("SyncookiesSent", 0)
    ok_times = [t for t in times if t is not None]
    # Every SYN the program passed either opened a legit connection or was spoofed.
    spoofed_reached = max(0, d[Counter.SYN_PASSED] - opens)
    challenged_share = d[Counter.CHALLENGE_SENT] / max(sent["sent"], 1)
    say("")
    say("synguard demo report")
    say(f"  attacker sent        {sent['sent']} spoofed SYNs in {sent['seconds']:.1f} s ({sent['pps']:.0f}/s)")
    say(f"  challenges sent      {d[Counter.CHALLENGE_SENT]} ({challenged_share:.1%} of the flood)")
    say(f"  cookies validated    {d[Counter.COOKIE_VALIDATED]} (real clients that answered)")
    say(f"  spoofed SYNs that reached the server's TCP stack: {spoofed_reached} "
        f"(kernel: SyncookiesSent +{cookies}, half-open peak {half_open_peak})")
    if ok_times:
        ms = [t * 1000 for t in ok_times]
        say(f"  legit connects       {len(ok_times)}/{len(times)} succeeded; first (challenged) "
            f"{ms[0]:.1f} ms, p50 {statistics.median(ms):.1f} ms, p99 {_pct(ms, 0.99):.1f} ms")
    else:
        say(f"  legit connects       0/{len(times)} succeeded")
    held = (len(ok_times) == len(times) == connects and spoofed_reached == 0 and cookies == 0
            and half_open_peak == 0 and challenged_share >= 0.95)
    say(f"  verdict              {'DEFENSE HELD' if held else 'DEFENSE FAILED'} "
        f"(total {time.monotonic() - t0:.0f} s, lab torn down)")
    return 0 if held else 1
