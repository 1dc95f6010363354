"""Cost of the tc program per path via BPF_PROG_TEST_RUN, against an empty tc program
(ebpf/bench_tc.bpf.c) measured in the same run, rounds interleaved, medians and minima.

The program never rewrites a packet, so every path is timed directly. It shares the
XDP program's maps (DataPath), configured as the daemon would. Test runs happen in
a private network namespace with a listener on the protected port, so the valid
cookie path goes through the socket lookup to the kfunc, and real loopback connections
give the established rows a socket (the lookup finds it and the segment passes: no
cookie check); an ACK without a socket is out of state (the listener is found, our
cookie and the kernel's fail, the segment is dropped). Under BPF_PROG_TEST_RUN
the kfunc returns -EINVAL at its first checks (not at tc ingress), so its real cost
(allocating the request socket) is not in these figures.

    python -m synguard_lab.tcbench [--repeat N] [--rounds R]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import uuid

from synguard import cookie
from synguard_lab.bench import in_fresh_thread
from synguard.abi import OPT_ECN, OPT_SACK, OPT_TS, OPT_WSCALE, Mode

CLIENT4, SERVER4, CLIENT6, SERVER6 = "192.0.2.10", "198.51.100.1", "2001:db8::10", "2001:db8:1::1"
PORT, OTHER_PORT = 80, 81
KEY, KEY_PREV = bytes(range(16)), bytes(range(100, 116))
SLOT = 0x1234567
ALL_OPTS = OPT_TS | OPT_SACK | OPT_WSCALE | OPT_ECN


def _frames(est_ports: dict[int, int] | None = None) -> list[tuple[str, bytes]]:
    """est_ports: family (4, 6) -> client port of a real loopback connection to PORT."""
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether

    eth = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    ts = [("NOP", None), ("NOP", None), ("Timestamp", (1000, 2000))]
    sack_ts = [("NOP", None), ("NOP", None), ("SAck", (5000, 6000)), ("NOP", None), ("NOP", None),
               ("Timestamp", (1000, 2000))]

    def est(l3, dport, opts=ts):
        return eth / l3 / TCP(sport=40000, dport=dport, seq=123456, ack=654321, flags="A", window=502, options=opts)

    def valid(ipv6):
        src, dst = (CLIENT6, SERVER6) if ipv6 else (CLIENT4, SERVER4)
        neg = cookie.negotiate(ipv6, 1460, 7, True, True, False, ALL_OPTS)
        seq, tsval = cookie.synack_fields(KEY, src, dst, 40000, PORT, 99, SLOT, neg)
        l3 = IPv6(src=src, dst=dst) if ipv6 else IP(src=src, dst=dst)
        return eth / l3 / TCP(sport=40000, dport=PORT, seq=100, ack=(seq + 1) & 0xFFFFFFFF, flags="A", window=502,
                              options=[("NOP", None), ("NOP", None), ("Timestamp", (1000, tsval))])

    def data(family):
        lo = IP(src="127.0.0.1", dst="127.0.0.1") if family == 4 else IPv6(src="::1", dst="::1")
        return eth / lo / TCP(sport=est_ports[family], dport=PORT, seq=123456, ack=654321, flags="PA", window=502,
                              options=ts) / (b"x" * 100)

    ip4, ip6 = IP(src=CLIENT4, dst=SERVER4), IPv6(src=CLIENT6, dst=SERVER6)
    est_rows = [] if not est_ports else [
        ("established data segment, protected port, v4 (socket lookup, pass)", bytes(data(4))),
        ("established data segment, protected port, v6 (socket lookup, pass)", bytes(data(6))),
    ]
    return est_rows + [
        ("UDP (not TCP)", bytes(eth / ip4 / UDP(dport=53) / (b"x" * 32))),
        ("established ACK, unprotected port, v4", bytes(est(ip4, OTHER_PORT))),
        ("established ACK, unprotected port, v6", bytes(est(ip6, OTHER_PORT))),
        ("forged ACK (no socket), protected port, v4: lookup, SipHash, kernel cookie, drop", bytes(est(ip4, PORT))),
        ("forged ACK (no socket), protected port, v6", bytes(est(ip6, PORT))),
        ("forged ACK (no socket), protected port, v4, SACK then TS (option walk)", bytes(est(ip4, PORT, sack_ts))),
        ("forged ACK (no socket), protected port, v4, no options", bytes(est(ip4, PORT, []))),
        ("valid cookie ACK, v4 (+ socket lookup + kfunc entry)", bytes(valid(False))),
        ("valid cookie ACK, v6", bytes(valid(True))),
    ]


def _netns_with_listener():
    """A private namespace (name, fd) with listeners on PORT; caller deletes it."""
    name = f"sgtcb-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
    return name, os.open(f"/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)


def run(repeat: int = 200_000, rounds: int = 7, out=sys.stdout) -> list[dict]:
    from synguard.datapath import DataPath, in_netns
    from synguard.datapath.tc import SHARED_MAPS, TcProgram

    dp = DataPath()
    tc = empty = None
    name, fd = _netns_with_listener()
    socks = []
    try:
        tc = TcProgram({n: dp.map(n).map_fd for n in SHARED_MAPS})
        empty = TcProgram(src_name="bench_tc.bpf.c", prog_name="tc_bench_empty")
        dp.set_slot_key(SLOT - 1, KEY_PREV)
        dp.set_slot_key(SLOT, KEY)
        dp.set_slot(SLOT)
        dp.set_synack(1460, 1440, 10, ALL_OPTS)
        dp.set_ports({PORT})
        dp.set_mode(Mode.PROTECT)
        with in_netns(fd):
            for family, addr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
                s = socket.socket(family, socket.SOCK_STREAM)
                if family == socket.AF_INET6:
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                s.bind((addr, PORT))
                s.listen(8)
                socks.append(s)
            est_ports = {}
            for family, host in ((4, "127.0.0.1"), (6, "::1")):
                c = socket.create_connection((host, PORT))
                socks.append(c)
                socks.append(socks[family // 6].accept()[0])  # listeners: [0] v4, [1] v6
                est_ports[family] = c.getsockname()[1]
            frames = _frames(est_ports)
            floor_frame = dict(frames)["established ACK, unprotected port, v4"]
            floor: list[float] = []
            times: dict[str, list[float]] = {n: [] for n, _ in frames}

            def one_round():  # a new thread shares the netns of the thread that starts it
                floor.append(empty.test_run(floor_frame, repeat).duration_ns)
                for n, f in frames:
                    times[n].append(tc.test_run(f, repeat).duration_ns)

            for _ in range(rounds):
                in_fresh_thread(one_round)  # each round on its own kernel stack (bench.in_fresh_thread)
    finally:
        for s in socks:
            s.close()
        os.close(fd)
        subprocess.run(["ip", "netns", "del", name], check=False)
        for p in (tc, empty):
            if p is not None:
                p.close()
        dp.close()
    # Medians and minima over the rounds: on a shared box the minimum is the
    # program's own cost, the median what a busy CPU sees.
    base, base_min = statistics.median(floor), min(floor)
    rows = [{"path": "empty tc program (floor)", "ns": base, "added_ns": 0.0, "ratio": 1.0,
             "min_ns": base_min, "min_added_ns": 0.0}]
    for n, _ in frames:
        t, t_min = statistics.median(times[n]), min(times[n])
        rows.append({"path": n, "ns": t, "added_ns": t - base, "ratio": t / base if base else 0.0,
                     "min_ns": t_min, "min_added_ns": t_min - base_min})
    print(f"{'path':66} {'median':>7} {'added':>6} {'x empty':>7} {'min':>5} {'added':>6}", file=out)
    for r in rows:
        print(f"{r['path']:66} {r['ns']:7.1f} {r['added_ns']:6.1f} {r['ratio']:7.2f} {r['min_ns']:5.0f} "
              f"{r['min_added_ns']:6.0f}", file=out)
    print(f"(ns per packet, BPF_PROG_TEST_RUN, {repeat} repeats x {rounds} rounds)", file=out)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m synguard_lab.tcbench", description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=200_000)
    p.add_argument("--rounds", type=int, default=7)
    a = p.parse_args(argv)
    run(a.repeat, a.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
