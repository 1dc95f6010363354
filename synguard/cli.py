"""synguard command line: run, bench, demo.

Every error an operator can fix ends in one line on stderr and exit status 1
(2 for bad arguments, argparse's convention).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time

from synguard import __version__

log = logging.getLogger("synguard")


def _ports(text: str) -> list[int]:
    """"80,443" -> [80, 443]; "" -> [] (every port)."""
    ports = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        if not part.isdigit() or not 1 <= int(part) <= 65535:
            raise argparse.ArgumentTypeError(f"invalid port {part!r}: ports are integers 1-65535, comma-separated")
        ports.append(int(part))
    return sorted(set(ports))


def _seconds(text: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    t = text.strip()
    try:
        value = int(t[:-1]) * units[t[-1]] if t and t[-1] in units else int(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: use e.g. 90, 90s, 10m, 1h") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: must be positive")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="synguard", description="SYN-flood detector and SYN-cookie defense (XDP).")
    p.add_argument("--version", action="version", version=f"synguard {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="attach to interfaces and defend (foreground)")
    run.add_argument("-i", "--interface", action="append", default=[], dest="interfaces", metavar="IFACE",
                     help="interface to protect (repeat for several)")
    run.add_argument("--mode", choices=("observe", "protect"), default="observe",
                     help="observe: count only; protect: challenge unverified sources (default: observe)")
    run.add_argument("--ports", type=_ports, default=[], metavar="LIST",
                     help="protected TCP ports, e.g. 80,443 (default: every port)")
    run.add_argument("--allow-ttl", type=_seconds, default=3600, metavar="DURATION",
                     help="how long a verified source stays verified (default: 1h)")
    run.add_argument("--xdp-mode", choices=("auto", "native", "generic"), default="auto",
                     help="XDP attach mode; auto tries native, then generic (default: auto)")
    run.add_argument("--interval", type=_seconds, default=5, metavar="DURATION",
                     help="seconds between counter lines (default: 5)")
    run.add_argument("--ebpf", action="store_true", help=argparse.SUPPRESS)  # print the C as compiled, exit

    bench = sub.add_parser("bench", help="XDP cost per path vs. an empty program (BPF_PROG_TEST_RUN)")
    bench.add_argument("--repeat", type=int, default=200_000)
    bench.add_argument("--rounds", type=int, default=7)

    demo = sub.add_parser("demo", help="network-namespace lab under a live spoofed SYN flood")
    demo.add_argument("--flood", type=int, default=2_000_000, metavar="N", help="spoofed SYNs to send, at most (default 2000000)")
    demo.add_argument("--seconds", type=float, default=8.0, help="flood duration bound (default 8)")
    demo.add_argument("--connects", type=int, default=40, help="legit connects during the flood (default 40)")
    return p


# ---- run ------------------------------------------------------------------------


class Stop:
    """Set by SIGINT/SIGTERM in the main thread; the loop exits and cleans up once."""

    def __init__(self):
        self.event = threading.Event()
        self.signal = None

    def __call__(self, signum, frame):
        self.signal = signal.Signals(signum).name
        self.event.set()


def counters_line(now: dict, before: dict | None, seconds: float) -> str:
    from synguard.abi import Counter

    shown = (Counter.SYN_RECEIVED, Counter.CHALLENGE_SENT, Counter.COOKIE_VALIDATED, Counter.COOKIE_INVALID,
             Counter.SYN_PASSED, Counter.SYN_DROPPED_DENY, Counter.MALFORMED)
    parts = []
    for c in shown:
        rate = "" if before is None else f" ({(now[c] - before[c]) / max(seconds, 1e-9):.0f}/s)"
        parts.append(f"{c.label} {now[c]}{rate}")
    return ", ".join(parts)


def cmd_run(args) -> int:
    from synguard.abi import Mode
    from synguard.datapath import DataPath, DataPathError, ebpf_dir

    if args.ebpf:
        print((ebpf_dir() / "synguard_abi.h").read_text())
        print((ebpf_dir() / "synguard.bpf.c").read_text())
        return 0
    if not args.interfaces:
        print("synguard run: error: at least one -i IFACE is required", file=sys.stderr)
        return 2
    stop = Stop()
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    dp = None
    try:
        dp = DataPath()
        dp.set_secret(1, os.urandom(16))
        dp.tick()
        dp.set_allow_ttl(args.allow_ttl)
        dp.set_ports(args.ports)
        mode = Mode.PROTECT if args.mode == "protect" else Mode.OBSERVE
        for ifname in args.interfaces:
            how = dp.attach(ifname, args.xdp_mode)
            log.info("attached to %s (%s XDP)", ifname, how)
        dp.set_mode(mode)
        ports = ",".join(map(str, args.ports)) or "all"
        log.info("mode %s, protected ports %s, verified sources kept %ss", args.mode, ports, args.allow_ttl)
        before, t_before = dp.counters(), time.monotonic()
        last_filter = time.monotonic()
        while not stop.event.wait(1.0):
            dp.tick()
            now = time.monotonic()
            if now - last_filter >= 60:
                dp.allow_filter_rebuild()
                last_filter = now
            if now - t_before >= args.interval:
                counters = dp.counters()
                log.info("%s", counters_line(counters, before, now - t_before))
                before, t_before = counters, now
        log.info("%s: detaching and exiting", stop.signal)
        return 0
    except DataPathError as e:
        log.error("%s", e)
        return 1
    finally:
        if dp is not None:
            dp.close()


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="synguard: %(message)s", stream=sys.stderr)
    args = build_parser().parse_args(argv)
    if args.command == "run":
        return cmd_run(args)
    if args.command == "bench":
        from synguard.datapath import DataPathError

        try:
            from synguard import bench

            bench.run(repeat=args.repeat, rounds=args.rounds)
        except DataPathError as e:
            log.error("%s", e)
            return 1
        return 0
    if args.command == "demo":
        from synguard import demo

        return demo.run(flood=args.flood, seconds=args.seconds, connects=args.connects)
    return 2


if __name__ == "__main__":
    sys.exit(main())
