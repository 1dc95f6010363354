"""`synguard bench`: XDP cost per path via BPF_PROG_TEST_RUN, as ratios to an
empty XDP program measured in the same run (the floor).

Non-rewriting paths are timed directly with a large repeat count. The challenge
rewrites the frame in place (SYN -> SYN-ACK) and BPF_PROG_TEST_RUN does not
restore it between repetitions, so rewriting paths go through the harness in
ebpf/bench.bpf.c: cost = T(rearm -> synguard) - T(rearm -> empty) + T(empty).
The same harness is also applied to one non-rewriting path as a cross-check.
"""

from __future__ import annotations

import ctypes as ct
import statistics
import sys
from dataclasses import dataclass

from synguard import cookie
from synguard.abi import Mode
from synguard.datapath import DataPath, ebpf_dir, prog_test_run

VERDICTS = {0: "ABORTED", 1: "DROP", 2: "PASS", 3: "TX"}
SECRET = bytes(range(16))
GEN, NOW_S = 3, 50_000
CLIENT4, SERVER4, CLIENT6, SERVER6 = "192.0.2.10", "198.51.100.1", "2001:db8::10", "2001:db8:1::1"


@dataclass
class Path:
    name: str
    frame: bytes
    verdict: str
    rewrites: bool = False
    target: float | None = None
    mode: Mode = Mode.PROTECT
    allowlisted: bool = False


def _frames():
    from scapy.layers.inet import IP, TCP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether

    opts = [("MSS", 1460), ("SAckOK", b""), ("Timestamp", (1, 0)), ("NOP", None), ("WScale", 7)]
    eth = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    syn4 = eth / IP(src=CLIENT4, dst=SERVER4) / TCP(sport=40000, dport=80, seq=1, flags="S", options=opts)
    syn6 = eth / IPv6(src=CLIENT6, dst=SERVER6) / TCP(sport=40000, dport=80, seq=1, flags="S", options=opts)
    ack = eth / IP(src=CLIENT4, dst=SERVER4) / TCP(sport=40000, dport=80, seq=2, ack=2, flags="PA") / (b"x" * 64)
    c = cookie.cookie(SECRET, CLIENT4, SERVER4, 40001, 80, cookie.slot_of(NOW_S), GEN)
    rst_ok = eth / IP(src=CLIENT4, dst=SERVER4) / TCP(sport=40001, dport=80, seq=c, flags="R")
    rst_bad = eth / IP(src="192.0.2.99", dst=SERVER4) / TCP(sport=40001, dport=80, seq=c ^ 4, flags="R")
    return [
        Path("pass: established ACK+data", bytes(ack), "PASS", target=1.5),
        Path("pass: SYN, observe mode", bytes(syn4), "PASS", mode=Mode.OBSERVE),
        Path("pass: SYN, unprotected port", bytes(syn4 / b"")[:0] or bytes(eth / IP(src=CLIENT4, dst=SERVER4)
             / TCP(sport=40000, dport=22, flags="S", options=opts)), "PASS"),
        Path("pass: SYN, verified source", bytes(syn4), "PASS", allowlisted=True),
        Path("challenge: IPv4 SYN -> SYN-ACK", bytes(syn4), "TX", rewrites=True, target=3.0),
        Path("challenge: IPv6 SYN -> SYN-ACK", bytes(syn6), "TX", rewrites=True, target=3.0),
        Path("validate: RST, good cookie", bytes(rst_ok), "DROP"),
        Path("validate: RST, bad cookie", bytes(rst_bad), "DROP"),
        Path("cross-check: ACK via harness", bytes(ack), "PASS", rewrites=True),
    ]


class Harness:
    def __init__(self, dp: DataPath):
        from bcc import BPF

        self.bpf = BPF(src_file=str(ebpf_dir() / "bench.bpf.c").encode(), cflags=["-w"])
        self.empty = self.bpf.load_func(b"xdp_bench_empty", BPF.XDP)
        self.rearm = self.bpf.load_func(b"xdp_bench_rearm", BPF.XDP)
        self.jump = self.bpf[b"sg_bench_jump"]
        self.template = self.bpf[b"sg_bench_template"]
        self.dp = dp

    def load(self, frame: bytes, target_fd: int):
        leaf = self.template.Leaf()
        leaf.len = len(frame)
        ct.memmove(leaf.data, frame, len(frame))
        self.template[ct.c_int(0)] = leaf
        self.jump[ct.c_int(0)] = ct.c_int(target_fd)

    def close(self):
        self.bpf.cleanup()


def _setup(dp: DataPath, path: Path):
    dp.set_secret(GEN, SECRET)
    dp.tick(NOW_S)
    dp.set_allow_ttl(3600)
    dp.set_ports({80})
    dp.allowlist_clear()
    dp.set_mode(path.mode)
    if path.allowlisted:
        c = cookie.cookie(SECRET, CLIENT4, SERVER4, 40000, 80, cookie.slot_of(NOW_S), GEN)
        from scapy.layers.inet import IP, TCP
        from scapy.layers.l2 import Ether

        rst = Ether() / IP(src=CLIENT4, dst=SERVER4) / TCP(sport=40000, dport=80, seq=c, flags="R")
        assert dp.test_run(bytes(rst)).retval == 1


def run(repeat: int = 200_000, rounds: int = 7, out=sys.stdout) -> list[dict]:
    dp = DataPath()
    h = Harness(dp)
    try:
        paths = _frames()
        floor_samples, rows = [], []
        # verdict check, once per path, without the harness
        for p in paths:
            _setup(dp, p)
            got = VERDICTS[dp.test_run(p.frame).retval]
            if got != p.verdict:
                raise RuntimeError(f"bench path {p.name!r}: verdict {got}, expected {p.verdict}")
        samples = {p.name: [] for p in paths}
        for _ in range(rounds):
            floor_samples.append(prog_test_run(h.empty.fd, paths[0].frame, repeat).duration_ns)
            for p in paths:
                _setup(dp, p)
                if p.rewrites:
                    h.load(p.frame, dp.prog_fd)
                    with_prog = prog_test_run(h.rearm.fd, p.frame, repeat).duration_ns
                    h.load(p.frame, h.empty.fd)
                    with_empty = prog_test_run(h.rearm.fd, p.frame, repeat).duration_ns
                    samples[p.name].append((with_prog, with_empty))
                else:
                    samples[p.name].append((dp.test_run(p.frame, repeat).duration_ns, None))
        floor = statistics.median(floor_samples)
        for p in paths:
            if p.rewrites:
                prog = statistics.median(s[0] for s in samples[p.name])
                harness = statistics.median(s[1] for s in samples[p.name])
                ns = prog - harness + floor
                how = f"harness {prog:.0f} - {harness:.0f} + floor"
            else:
                ns = statistics.median(s[0] for s in samples[p.name])
                how = "direct"
            rows.append({"path": p.name, "verdict": p.verdict, "ns": ns, "ratio": ns / floor,
                         "target": p.target, "how": how})
        print(f"XDP cost per packet, BPF_PROG_TEST_RUN, repeat={repeat}, median of {rounds} rounds", file=out)
        print(f"floor (empty XDP program): {floor:.0f} ns/packet", file=out)
        print(f"{'path':34} {'verdict':8} {'ns/pkt':>7} {'x floor':>8} {'target':>7}  method", file=out)
        for r in rows:
            target = f"<= {r['target']}" if r["target"] else ""
            ok = "" if not r["target"] else ("  ok" if r["ratio"] <= r["target"] else "  MISSED")
            print(f"{r['path']:34} {r['verdict']:8} {r['ns']:7.1f} {r['ratio']:8.2f} {target:>7}{ok}  {r['how']}", file=out)
        rows.insert(0, {"path": "floor", "ns": floor, "ratio": 1.0})
        return rows
    finally:
        h.close()
        dp.close()


if __name__ == "__main__":
    run()
