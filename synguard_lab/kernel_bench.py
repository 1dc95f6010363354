"""How long one ``kernel.listeners()`` collection takes under a real backlog.

``python -m synguard_lab.kernel_bench [--listeners 1000] [--half-open 100000]``
(root; builds its own netns lab and removes it again). It prints figures only,
it asserts nothing about time.

Setup in the lab's server namespace:
- sysctls (per netns, the host is untouched): net.core.somaxconn and
  net.ipv4.tcp_max_syn_backlog = 262144, tcp_syncookies = 0 (so half-open
  connections are kept as request sockets, not answered with cookies) and
  tcp_synack_retries = 8 (a request lives ~8.5 min, longer than the run).
- one holder process (RLIMIT_NOFILE raised) with ``--listeners`` LISTEN
  sockets on consecutive ports, mixing 0.0.0.0, a specific IPv4 address, a
  dual-stack [::] and a specific IPv6 address; the first four ports get
  backlog 65536 and are the flood targets (IPv4 to 0.0.0.0, IPv4 to the
  dual-stack [::] (shows up as ::ffff: requests), IPv4 to 10.77.2.1, IPv6 to
  the dual-stack [::]).
- bounded spoofed SYN floods from the attacker namespace (Lab.flood) until
  about ``--half-open`` request sockets exist; their SYN-ACKs die in the
  attacker namespace, so the requests stay in SYN_RECV.

Then it times ``listeners()`` (median of ``--repeat`` runs), pyroute2's
``DiagSocket.get_sock_stats`` for the same SYN_RECV sockets (once, for the
comparison quoted in kernel.py), and ``ss -ltn`` + ``ss -tn state syn-recv``
(run in the namespace, output read through a pipe).
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import time

from synguard import kernel
from synguard_lab import lab as labmod
from synguard_lab.lab import Lab

BASE_PORT = 20000
BIG_BACKLOG = 65536
SYNACK_QUEUE = 300_000   # pfifo packets on s1
SERVER_SYSCTLS = {
    "net/core/somaxconn": 262144,
    "net/ipv4/tcp_max_syn_backlog": 262144,
    "net/ipv4/tcp_syncookies": 0,
    "net/ipv4/tcp_synack_retries": 8,
}

# Holder of LISTEN sockets that never accepts (tests use it too):
# argv[1] = JSON list of [family, address, port, backlog, v6only(, reuseport)].
HOLDER_CODE = r"""
import json, resource, socket, sys, threading
specs = json.loads(sys.argv[1])
need = len(specs) + 64
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
if soft < need:
    resource.setrlimit(resource.RLIMIT_NOFILE, (need, max(hard, need)))
socks = []
for fam, addr, port, backlog, v6only, *rest in specs:
    s = socket.socket(socket.AF_INET6 if fam == 6 else socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if rest and rest[0]:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if fam == 6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, v6only)
    s.bind((addr, port))
    s.listen(backlog)
    socks.append(s)
print("ready", flush=True)
threading.Event().wait()
"""


def listener_specs(n: int) -> list[list]:
    """[family, address, port, backlog, v6only] for n listeners."""
    big = [
        [4, "0.0.0.0", BASE_PORT + 0, BIG_BACKLOG, 0],
        [6, "::", BASE_PORT + 1, BIG_BACKLOG, 0],
        [4, labmod.SERVER_ATTACKER_IP4, BASE_PORT + 2, BIG_BACKLOG, 0],
        [6, "::", BASE_PORT + 3, BIG_BACKLOG, 0],
    ]
    kinds = [(4, "0.0.0.0", 0), (4, labmod.SERVER_IP4, 0), (6, "::", 0),
             (6, labmod.SERVER_IP6, 1)]
    out = big[:n]
    for i in range(len(out), n):
        fam, addr, v6only = kinds[i % len(kinds)]
        out.append([fam, addr, BASE_PORT + i, 128 + (i % 7) * 64, v6only])
    return out


# (port offset, flood kwargs): who gets which share of the half-open sockets.
FLOOD_TARGETS = [
    (0, {}),
    (1, {}),                                   # IPv4 SYNs into dual-stack [::]
    (2, {"dst": labmod.SERVER_ATTACKER_IP4}),
    (3, {"ipv6": True}),
]


def _ss(args: list[str]) -> tuple[float, int]:
    """Run ss in the current thread's netns; (seconds, output lines)."""
    t0 = time.perf_counter()
    r = subprocess.run(["ss", *args], stdout=subprocess.PIPE, check=True)
    dt = time.perf_counter() - t0
    return dt, r.stdout.count(b"\n")


def _half_open_total() -> int:
    return sum(r.syn_recv for r in kernel.listeners())


def _pyroute2_syn_recv() -> tuple[float, int] | None:
    try:
        from pyroute2 import DiagSocket
        from pyroute2.netlink.diag import SS_SYN_RECV
    except ImportError:
        return None
    t0 = time.perf_counter()
    n = 0
    with DiagSocket() as ds:
        ds.bind()
        for fam in (socket.AF_INET, socket.AF_INET6):
            n += len(ds.get_sock_stats(family=fam, states=1 << SS_SYN_RECV))
    return time.perf_counter() - t0, n


def run(n_listeners: int, half_open: int, repeat: int, use_pyroute2: bool,
        max_rounds: int = 8) -> dict:
    res: dict = {"listeners_created": n_listeners, "half_open_target": half_open}
    with Lab(prefix="kbench") as lab:
        ns = lab.server_ns
        with lab.netns(ns):
            for key, val in SERVER_SYSCTLS.items():
                with open(f"/proc/sys/{key}", "w") as f:
                    f.write(f"{val}\n")
        # SYN-ACKs leave through s1. Without a qdisc a full receive ring on
        # the attacker's veth (256 slots with its XDP program) makes the
        # transmit fail, and a request whose SYN-ACK *retransmit* fails is
        # dropped by the kernel (reqsk_timer_handler): a burst of retransmits
        # would halve the backlog every round. A pfifo queues them instead.
        subprocess.run(["tc", "-n", ns, "qdisc", "replace", "dev",
                        lab.server_attacker_if, "root", "pfifo", "limit",
                        str(SYNACK_QUEUE)], check=True, capture_output=True)
        specs = listener_specs(n_listeners)
        holder = lab.popen(ns, [sys.executable, "-c", HOLDER_CODE, json.dumps(specs)],
                           stdout=subprocess.PIPE, text=True)
        line = holder.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError("listener holder did not start")

        # Fill: bounded floods, topped up per target until the share is there
        # (frames can be lost between the veths when the server falls behind).
        targets = FLOOD_TARGETS[:min(len(FLOOD_TARGETS), n_listeners)]
        share = half_open // len(targets)
        t0 = time.monotonic()
        sent = 0
        seed = 1
        for _ in range(max_rounds):
            with lab.netns(ns):
                have = {r.port: r.syn_recv for r in kernel.listeners()}
            todo = [(off, kw, share - have.get(BASE_PORT + off, 0))
                    for off, kw in targets]
            todo = [t for t in todo if t[2] > share // 100]
            print(f"fill: {sum(have.get(BASE_PORT + off, 0) for off, _ in targets)} "
                  "half-open so far", file=sys.stderr, flush=True)
            if not todo:
                break
            for off, kw, missing in todo:
                r = lab.flood(count=missing, seconds=30, dport=BASE_PORT + off,
                              seed=seed, **kw)
                seed += 1
                sent += r["sent"]
            time.sleep(0.5)
        res["fill_seconds"] = round(time.monotonic() - t0, 1)
        res["syns_sent"] = sent

        with lab.netns(ns):
            time.sleep(0.5)
            kernel.listeners()                      # warm up
            times = []
            rows = []
            for _ in range(repeat):
                t = time.perf_counter()
                rows = kernel.listeners()
                times.append(time.perf_counter() - t)
            _, ss_syn_lines = _ss(["-Htn", "state", "syn-recv"])
            res["listeners_found"] = len(rows)
            res["half_open_counted"] = sum(r.syn_recv for r in rows)
            res["half_open_ss"] = ss_syn_lines
            res["per_listener_top"] = [
                {"key": r.key, "syn_recv": r.syn_recv, "backlog": r.backlog}
                for r in sorted(rows, key=lambda r: -r.syn_recv)[:4]]
            res["collect_seconds_median"] = round(statistics.median(times), 4)
            res["collect_seconds_min"] = round(min(times), 4)
            res["collect_seconds_max"] = round(max(times), 4)

            # The same with a port filter (kernel-side bytecode).
            t = time.perf_counter()
            one = kernel.listeners(BASE_PORT)
            res["collect_one_port_seconds"] = round(time.perf_counter() - t, 4)
            res["one_port_syn_recv"] = one[0].syn_recv if one else None

            ss_l, ss_s, lines = [], [], (0, 0)
            for _ in range(repeat):
                a, nl = _ss(["-ltn"])
                b, ns_ = _ss(["-tn", "state", "syn-recv"])
                ss_l.append(a)
                ss_s.append(b)
                lines = (nl, ns_)
            res["ss_ltn_seconds_median"] = round(statistics.median(ss_l), 4)
            res["ss_synrecv_seconds_median"] = round(statistics.median(ss_s), 4)
            res["ss_total_seconds_median"] = round(
                statistics.median(a + b for a, b in zip(ss_l, ss_s)), 4)
            res["ss_lines"] = {"ltn": lines[0], "syn_recv": lines[1]}

            # A whole /metrics scrape (our collector: maps + listeners) with this load.
            from prometheus_client import CollectorRegistry, generate_latest

            from synguard import config as configmod
            from synguard.daemon import Daemon
            from synguard.datapath import DataPath
            from synguard.metrics import SynguardCollector

            d = Daemon(configmod.Config(), datapath=DataPath())
            try:
                registry = CollectorRegistry(auto_describe=False)
                registry.register(SynguardCollector(d))
                scrapes = []
                for _ in range(repeat):
                    t = time.perf_counter()
                    body = generate_latest(registry)
                    scrapes.append(time.perf_counter() - t)
                res["scrape_seconds_median"] = round(statistics.median(scrapes), 4)
                res["scrape_bytes"] = len(body)
            finally:
                d.datapath.close()

            if use_pyroute2:
                pr = _pyroute2_syn_recv()
                if pr is not None:
                    res["pyroute2_get_sock_stats_seconds"] = round(pr[0], 3)
                    res["pyroute2_messages"] = pr[1]
        lab.stop(holder)
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m synguard_lab.kernel_bench",
                                description=__doc__.splitlines()[0])
    p.add_argument("--listeners", type=int, default=1000)
    p.add_argument("--half-open", type=int, default=100_000)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--no-pyroute2", action="store_true",
                   help="skip the (slow) pyroute2 DiagSocket comparison")
    a = p.parse_args(argv)
    if a.listeners < 1 or a.half_open < 0 or a.repeat < 1:
        p.error("--listeners and --repeat must be positive")
    res = run(a.listeners, a.half_open, a.repeat, not a.no_pyroute2)
    print(f"listeners found        {res['listeners_found']} (created {res['listeners_created']})")
    print(f"half-open counted      {res['half_open_counted']} "
          f"(ss -Htn state syn-recv: {res['half_open_ss']})")
    print(f"listeners()            median {res['collect_seconds_median']:.4f} s "
          f"(min {res['collect_seconds_min']:.4f}, max {res['collect_seconds_max']:.4f}, "
          f"{a.repeat} runs)")
    print(f"listeners(port)        {res['collect_one_port_seconds']:.4f} s "
          f"({res['one_port_syn_recv']} half-open on :{BASE_PORT})")
    print(f"ss -ltn + state syn-recv  median {res['ss_total_seconds_median']:.4f} s "
          f"(-ltn {res['ss_ltn_seconds_median']:.4f}, syn-recv "
          f"{res['ss_synrecv_seconds_median']:.4f})")
    if "pyroute2_get_sock_stats_seconds" in res:
        print(f"pyroute2 get_sock_stats(SYN_RECV) {res['pyroute2_get_sock_stats_seconds']:.3f} s "
              f"for {res['pyroute2_messages']} messages")
    print(f"/metrics scrape        median {res['scrape_seconds_median']:.4f} s ({res['scrape_bytes']} bytes)")
    print(f"fill: {res['syns_sent']} SYNs sent in {res['fill_seconds']} s")
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
