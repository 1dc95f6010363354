"""synguard command line: run, detach, check-config, status, listeners, top.

Every error an operator can fix ends in one line on stderr and exit status 1
(2 for bad arguments, argparse's convention).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

from synguard import __version__
from synguard.abi import Mode
from synguard import config as configmod
from synguard.config import DEFAULT_CONTROL_SOCKET, DEFAULT_PATH
from synguard.datapath.xdp import XDP_MODES

log = logging.getLogger("synguard")


def _ports(text: str) -> list[int]:
    """"80,443" -> [80, 443]; "all" -> [] (every port). An empty list or an empty
    element ("", "80,,443") is an error, not a silent "every port"."""
    if text.strip().lower() == "all":
        return []
    parts = [p.strip() for p in text.split(",")]
    if not text.strip() or "" in parts:
        raise argparse.ArgumentTypeError(f"invalid port list {text!r}: an empty entry; give ports like 80,443 "
                                         f"(or 'all' for every port)")
    ports = []
    for part in parts:
        if not (part.isascii() and part.isdigit()) or len(part) > 5 or not 1 <= int(part) <= 65535:
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




def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) <= 0:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}: a positive integer")
    return int(text)


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}: an integer 1-65535")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="synguard", description="SYN-flood detector and SYN-cookie defense (XDP).")
    p.add_argument("--version", action="version", version=f"synguard {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="attach to interfaces and defend (foreground daemon)")
    run.add_argument("-c", "--config", metavar="FILE", help="YAML config (flags below override it)")
    run.add_argument("-i", "--interface", action="append", default=None, dest="interfaces", metavar="IFACE",
                     help="interface to protect (repeat for several)")
    run.add_argument("--mode", choices=Mode.labels(), default=None,
                     help="observe: count only; protect: answer SYNs with SYN cookies from XDP; "
                          "auto: protect while an attack is detected (default: observe)")
    run.add_argument("--ports", type=_ports, default=None, metavar="LIST",
                     help="protected TCP ports, e.g. 80,443, or all (default: every port)")
    # Removed with the RST challenge (ABI 2); still accepted so that an old command line
    # (a systemd drop-in) does not stop the daemon from starting: warned about, ignored.
    run.add_argument("--allow-ttl", default=None, help=argparse.SUPPRESS)
    run.add_argument("--xdp-mode", choices=XDP_MODES, default=None,
                     help="XDP attach mode; auto tries native, then generic (default: auto)")
    run.add_argument("--metrics-listen", default=None, metavar="HOST:PORT", help="Prometheus endpoint ('' = off)")
    run.add_argument("--control-socket", default=None, metavar="PATH", help=f"control socket (default {DEFAULT_CONTROL_SOCKET})")
    run.add_argument("--log-format", choices=("human", "json"), default=None, help="log lines (default: human)")
    run.add_argument("--json", action="store_const", const="json", dest="log_format", help="same as --log-format json")
    run.add_argument("--interval", type=_seconds, default=5, metavar="DURATION",
                     help="seconds between counter lines (default: 5)")
    run.add_argument("--ebpf", action="store_true", help=argparse.SUPPRESS)  # print the C as compiled, exit

    detach = sub.add_parser("detach", help="detach a synguard program left behind by a daemon that died")
    detach.add_argument("-c", "--config", metavar="FILE", help="take the interfaces from this config")
    detach.add_argument("-i", "--interface", action="append", default=[], dest="interfaces", metavar="IFACE")
    detach.add_argument("--service-result", default="", metavar="RESULT",
                        help="systemd's $SERVICE_RESULT: after a crash that systemd restarts, keep the program")

    check = sub.add_parser("check-config", help="validate a config file (exit 0 if valid)")
    check.add_argument("file")

    def client(name, help_):
        c = sub.add_parser(name, help=help_)
        c.add_argument("--json", action="store_true", help="machine-readable output")
        c.add_argument("-H", "--no-header", action="store_true", help="no header line")
        c.add_argument("-n", "--numeric", action="store_true", help="exact numbers (no k/M rounding)")
        if name != "listeners":
            c.add_argument("-c", "--config", metavar="FILE",
                           help=f"take the control socket from this config (default: {DEFAULT_PATH} if it exists)")
            c.add_argument("--socket", default=None,
                           help=f"daemon control socket (default: the config's, else {DEFAULT_CONTROL_SOCKET})")
        else:  # listeners reads the kernel, not the daemon; --socket stays accepted for old scripts
            c.add_argument("--socket", default=None, help=argparse.SUPPRESS)
        return c

    status = client("status", "daemon status: mode, interfaces, counters with rates, queues")
    status.add_argument("--watch", type=float, default=None, metavar="SECS", help="refresh every SECS")
    listeners = client("listeners", "half-open and accept queues per listener (no daemon needed)")
    listeners.add_argument("--port", type=_port, default=None, help="only this local port")
    top = client("top", "top SYN sources seen by the XDP program")
    top.add_argument("-N", "--count", type=_positive_int, default=10, dest="count", help="rows (default 10)")

    return p


# ---- run ------------------------------------------------------------------------


def cmd_run(args) -> int:
    from synguard import config as configmod
    from synguard.daemon import Daemon
    from synguard.log import setup_logging
    from synguard.datapath import ebpf_dir
    from synguard.datapath.host import TC_SOURCE, XDP_SOURCES

    if args.ebpf:
        for name in XDP_SOURCES:
            print(f"// ---- {name}\n{(ebpf_dir() / name).read_text()}")
        print(f"// ---- {TC_SOURCE} (clang -O2 -g -target bpf, libbpf)\n"
              f"{(ebpf_dir() / TC_SOURCE).read_text()}")
        return 0
    try:
        cfg = configmod.load(args.config) if args.config else configmod.Config()
        overrides = {k: v for k, v in dict(interfaces=args.interfaces, mode=args.mode, ports=args.ports,
                                              xdp_mode=args.xdp_mode).items()
                     if v is not None}
        cfg = configmod.override(cfg, **overrides)
        extra = {}
        if args.metrics_listen is not None:
            extra["metrics_listen"] = args.metrics_listen
        if args.control_socket is not None:
            extra["control_socket"] = args.control_socket
        if args.log_format is not None:
            extra["log_format"] = args.log_format
        cfg = configmod.override(cfg, **extra) if extra else cfg
    except configmod.ConfigError as e:
        print(str(e), file=sys.stderr)
        return 1
    if args.allow_ttl is not None:
        print(f"synguard run: warning: --allow-ttl {configmod.REMOVED_KEYS['protect.allow_ttl']}",
              file=sys.stderr)
    if not cfg.interfaces:
        print("synguard run: error: no interface: give -i IFACE or `interfaces:` in the config", file=sys.stderr)
        return 2
    setup_logging(cfg.log.format)
    daemon = Daemon(cfg, args.config)
    daemon.log_interval = args.interval
    return daemon.run(overrides)


# $SERVICE_RESULT values after which Restart=on-failure starts synguard again.
RESTARTED_RESULTS = ("exit-code", "signal", "core-dump", "watchdog")


def cmd_detach(args) -> int:
    """ExecStopPost: never leave our program attached once the service is stopped.

    Only a program that is ours (pinned id, or name xdp_synguard) is removed; the
    same for the tc ingress filter (pinned id, or name tc_synguard)."""
    from synguard import config as configmod
    from synguard.datapath import tc as tcprog
    from synguard.datapath import DataPathError, detach_orphan, unpin
    from synguard.datapath.pins import pin_problem

    if args.service_result in RESTARTED_RESULTS:
        print(f"synguard detach: service result {args.service_result!r}: leaving our program attached "
              f"(protection continues; the restarted daemon adopts it). Stop it for good: synguard detach -c FILE")
        return 0
    interfaces = list(args.interfaces)
    if args.config:
        try:
            interfaces += [i for i in configmod.load(args.config).interfaces if i not in interfaces]
        except configmod.ConfigError as e:
            print(str(e), file=sys.stderr)
            return 1
    if not interfaces:
        print("synguard detach: error: give -i IFACE or -c FILE", file=sys.stderr)
        return 2
    status = 0
    problem = pin_problem()
    if problem:
        print(f"synguard detach: {problem}", file=sys.stderr)
    for ifname in interfaces:
        try:
            done, found = detach_orphan(ifname)
            done_tc = tcprog.detach_orphan(ifname)
        except DataPathError as e:
            print(f"synguard detach: {e}", file=sys.stderr)
            status = 1
            continue
        tc_note = "; detached our tc filter" if done_tc else ""
        if done:
            print(f"synguard detach: {ifname}: detached our program{tc_note}")
        elif found is None:
            print(f"synguard detach: {ifname}: no synguard program attached{tc_note}")
        else:
            print(f"synguard detach: {ifname}: XDP program id {found[0]} is not synguard's "
                  f"(not our pinned program): left attached{tc_note}")
    unpin()
    return status


def cmd_check_config(args) -> int:
    from synguard import config as configmod

    from synguard.preflight import host_problems

    try:
        cfg = configmod.load(args.file)
    except configmod.ConfigError as e:
        print(str(e), file=sys.stderr)
        return 1
    except Exception as e:  # a parser bug: still one line, never a traceback
        print(f"{args.file}: cannot load: {type(e).__name__}: {str(e)[:200]}", file=sys.stderr)
        return 1
    for line in cfg.warnings:  # keys that no longer mean anything: the file is still valid
        print(f"{args.file}: warning: {line}", file=sys.stderr)
    # What the daemon would refuse at start, checked without compiling anything.
    problems = host_problems(cfg)
    for line in problems:
        print(line if line.startswith(f"{args.file}: ") else f"{args.file}: {line}", file=sys.stderr)
    if problems:
        return 1
    print(f"{args.file}: OK (mode {cfg.mode}, {len(cfg.interfaces)} interface(s), "
          f"ports {','.join(map(str, cfg.protect.ports)) or 'all'})")
    return 0


def _client_socket(args) -> str:
    """--socket, else the socket of -c FILE, else of the default config if it exists, else the default."""
    if args.socket:
        return args.socket
    path = args.config or (DEFAULT_PATH if os.path.exists(DEFAULT_PATH) else None)
    if path is None:
        return DEFAULT_CONTROL_SOCKET
    return configmod.load(path).control.socket


def cmd_client(args) -> int:
    from synguard import view

    if args.command == "listeners":
        from synguard import kernel

        rows = kernel.listeners(args.port)
        if args.json:
            print(json.dumps(kernel.to_json(rows), indent=2))
        else:
            text = kernel.format_listeners(rows, header=not args.no_header)
            if text:
                print(text)
        return 0
    try:
        args.socket = _client_socket(args)
    except configmod.ConfigError as e:
        print(str(e), file=sys.stderr)
        return 1
    try:
        while True:
            if args.command == "status":
                reply = view.request(args.socket, {"cmd": "status"})
                text = json.dumps(reply, indent=2) if args.json else view.format_status(reply, numeric=args.numeric)
            else:
                reply = view.request(args.socket, {"cmd": "top", "n": args.count})
                text = (json.dumps(reply["sources"], indent=2) if args.json else
                        view.format_top(reply["sources"], header=not args.no_header, numeric=args.numeric,
                                        now_s=reply.get("now_s")))
            if getattr(args, "watch", None):
                print("\033[H\033[J" + text, flush=True)
                time.sleep(args.watch)
                continue
            print(text)
            return 0
    except view.DaemonUnavailable as e:
        print(f"synguard {args.command}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="synguard: %(message)s", stream=sys.stderr)
    args = build_parser().parse_args(argv)
    if args.command == "run":
        return cmd_run(args)
    if args.command == "detach":
        return cmd_detach(args)
    if args.command == "check-config":
        return cmd_check_config(args)
    if args.command in ("status", "listeners", "top"):
        return cmd_client(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
