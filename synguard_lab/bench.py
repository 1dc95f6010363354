"""`python -m synguard_lab.bench` (part of `make bench`): XDP cost per path via BPF_PROG_TEST_RUN, as ratios to an
empty XDP program measured in the same run (the floor).

Non-rewriting paths are timed directly with a large repeat count. The challenge
rewrites the frame in place (SYN -> SYN-ACK) and BPF_PROG_TEST_RUN does not
restore it between repetitions, so rewriting paths go through the harness in
ebpf/bench.bpf.c: cost = T(rearm -> synguard) - T(rearm -> empty) + T(empty).
The same harness is also applied to one non-rewriting path as a cross-check.
Paths whose reply is longer than the SYN (grows) also carry the harness's undoing
of the growth (one bpf_xdp_adjust_head), which the empty baseline does not.

SYN-ACK rows of the common SYN option layouts also print their cost as a multiple of
the Linux layout's (IPv4), and, when the kernel's XDP SYN proxy of the peer directory
(../shared/peers/xdp-synproxy next to the checkout, built with its build.sh) is
there, synguard's cost as a fraction of that program's on the same frame, timed the
same way in the same rounds.
"""

from __future__ import annotations

import contextlib
import ctypes as ct
import statistics
import sys
from dataclasses import dataclass

from synguard.abi import CookieMethod, Mode
from synguard.datapath import DataPath, prog_test_run
from synguard_lab.common import REPO_ROOT

VERDICTS = {0: "ABORTED", 1: "DROP", 2: "PASS", 3: "TX"}
SECRET = bytes(range(16))
SLOT, NOW_S = 0x1234567, 50_000
CLIENT4, SERVER4, CLIENT6, SERVER6 = "192.0.2.10", "198.51.100.1", "2001:db8::10", "2001:db8:1::1"
LINUX_OPTS = [("MSS", 1460), ("SAckOK", b""), ("Timestamp", (1, 0)), ("NOP", None), ("WScale", 7)]
WINDOWS_OPTS = [("MSS", 1460), ("NOP", None), ("WScale", 8), ("NOP", None), ("NOP", None), ("SAckOK", b"")]
# The common layouts of the fast path (ebpf/synguard.bpf.c synopts_fast); Android sends Linux's.
LAYOUTS = {
    "Linux options": LINUX_OPTS,
    "MSS only": [("MSS", 1460)],
    "no options": [],
    "MSS+WS": [("MSS", 1460), ("NOP", None), ("WScale", 7)],
    "MSS+SACK": [("MSS", 1460), ("NOP", None), ("NOP", None), ("SAckOK", b"")],
    "Windows options": WINDOWS_OPTS,
    "macOS/iOS options": [("MSS", 1460), ("NOP", None), ("WScale", 6), ("NOP", None), ("NOP", None),
                          ("Timestamp", (1, 0)), ("SAckOK", b""), ("EOL", None), ("EOL", None)],
    "TS without SACK": [("MSS", 1460), ("NOP", None), ("NOP", None), ("Timestamp", (1, 0)), ("NOP", None),
                        ("WScale", 7)],
}
# 20 bytes in no fast-path layout: the tail-called option scan, no resize.
OTHER_OPTS = [("MSS", 1460), ("WScale", 7), ("NOP", None), ("SAckOK", b""), ("Timestamp", (1, 0))]
LINUX_ROW = "SYN-ACK: IPv4, Linux options"
PEER_DIR = REPO_ROOT.parent / "shared" / "peers" / "xdp-synproxy"


@dataclass
class Path:
    name: str
    frame: bytes
    verdict: str
    rewrites: bool = False
    target: float | None = None
    layout: bool = False  # a common SYN layout: compared with the Linux one and the peer
    mode: Mode = Mode.PROTECT
    method: CookieMethod = CookieMethod.KFUNC_COOKIE
    syncookies: int = 1  # net.ipv4.tcp_syncookies of the netns (kernel-cookie paths)
    local_only: bool = False  # scope on: sg_local_addrs holds SERVER4/SERVER6 (synguard_scope.h)


def _frames():
    from scapy.layers.inet import IP, TCP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether

    eth = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")

    # DF and valid checksums (scapy's): the peer (xdp_synproxy) drops IPv4 SYNs without DF.
    def syn4(opts, dport=80):
        return bytes(eth / IP(src=CLIENT4, dst=SERVER4, flags="DF") / TCP(sport=40000, dport=dport, seq=1, flags="S",
                                                                          window=64240, options=opts))

    def syn6(opts):
        return bytes(eth / IPv6(src=CLIENT6, dst=SERVER6) / TCP(sport=40000, dport=80, seq=1, flags="S", window=64240,
                                                              options=opts))

    ack = bytes(eth / IP(src=CLIENT4, dst=SERVER4) / TCP(sport=40000, dport=80, seq=2, ack=2, flags="PA") / (b"x" * 64))
    layouts = [Path(f"SYN-ACK: IPv4, {name}", syn4(opts), "TX", rewrites=True, layout=True,
                    target=3.0 if name == "Linux options" else None) for name, opts in LAYOUTS.items()]
    layouts[2:2] = [Path(f"SYN-ACK: IPv6, {name}", syn6(LAYOUTS[name]), "TX", rewrites=True, layout=True,
                         target=3.0 if name == "Linux options" else None) for name in ("Linux options", "MSS only")]
    return [
        Path("pass: established ACK+data", ack, "PASS", target=1.5),
        Path("pass: SYN, observe mode", syn4(LINUX_OPTS), "PASS", mode=Mode.OBSERVE),
        Path("pass: SYN, unprotected port", syn4(LINUX_OPTS, dport=22), "PASS"),
        *layouts,
        Path("SYN-ACK: IPv4, other layout (scan)", syn4(OTHER_OPTS), "TX", rewrites=True),
        Path("cross-check: ACK via harness", ack, "PASS", rewrites=True),
        # Scope (synguard_scope.h): the same SYNs with the local-address check on; its cost is
        # the difference to the rows above. A SYN for another host passes.
        Path("scope: SYN-ACK: IPv4, Linux options", syn4(LINUX_OPTS), "TX", rewrites=True, local_only=True),
        Path("scope: SYN-ACK: IPv6, Linux options", syn6(LINUX_OPTS), "TX", rewrites=True, local_only=True),
        Path("scope: pass: SYN for another host", bytes(eth / IP(src=CLIENT4, dst="203.0.113.7")
                                                          / TCP(sport=40000, dport=80, seq=1, flags="S",
                                                                options=LINUX_OPTS)), "PASS", local_only=True),
    ]


def _kernel_cookie_frames():
    """Method kernel-cookie (bpf_tcp_gen_syncookie), in a netns with a listener on port 80."""
    by_name = {p.name: p for p in _frames()}
    syn4, syn6 = by_name["SYN-ACK: IPv4, Linux options"].frame, by_name["SYN-ACK: IPv6, Linux options"].frame
    kc = CookieMethod.KERNEL_COOKIE
    no_listener = bytearray(syn4)
    no_listener[36:38] = (81).to_bytes(2, "big")  # TCP dport (checksums are not checked)
    forged_ack = bytearray(by_name["pass: established ACK+data"].frame)
    forged_ack[47] = 0x10  # flags: ACK only (no socket has 40000 -> 80 in the bench netns)
    return [
        Path("kernel-cookie: IPv4 SYN -> SYN-ACK (syncookies=2)", syn4, "TX", rewrites=True, method=kc, syncookies=2),
        Path("kernel-cookie: IPv6 SYN -> SYN-ACK (syncookies=2)", syn6, "TX", rewrites=True, method=kc, syncookies=2),
        Path("kernel-cookie: SYN passed, queue has room (=1)", syn4, "PASS", method=kc, syncookies=1),
        Path("kernel-cookie: SYN passed, no listener", bytes(no_listener), "PASS", method=kc, syncookies=2),
        # Out of state (synguard_scope.h): a forged ACK at the listener, checked as the kernel
        # would (bpf_tcp_check_syncookie) and dropped in XDP.
        Path("kernel-cookie: forged ACK dropped (out of state)", forged_ack, "DROP", method=kc, syncookies=2),
    ]


class Harness:
    def __init__(self, dp: DataPath):
        from bcc import BPF

        self.bpf = BPF(src_file=str(REPO_ROOT / "ebpf" / "bench.bpf.c").encode(),
                       cflags=["-w", f"-I{REPO_ROOT / 'ebpf'}"])
        self.empty = self.bpf.load_func(b"xdp_bench_empty", BPF.XDP)
        self.sip = {4: self.bpf.load_func(b"xdp_bench_sip4", BPF.XDP), 6: self.bpf.load_func(b"xdp_bench_sip6", BPF.XDP)}
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
    dp.set_slot_key(SLOT, SECRET)
    dp.set_slot(SLOT)
    dp.tick(NOW_S)
    dp.set_synack(1460, 1440, 10, 0xF)
    dp.set_ports({80, 81})
    dp.set_mode(path.mode)
    dp.set_cookie_method(path.method)
    if path.local_only:
        dp.set_local_addrs([SERVER4, SERVER6])
    else:
        dp.set_local_only(False)
    if path.method == CookieMethod.KERNEL_COOKIE:  # only ever inside _bench_netns's private netns
        with open("/proc/sys/net/ipv4/tcp_syncookies", "w") as f:  # the calling thread's netns
            f.write(str(path.syncookies))


@contextlib.contextmanager
def _bench_netns(kernel_cookie: bool):
    """kernel_cookie: run in a private lab netns with a dual-stack listener on port 80
    (the helper looks sockets up in the caller's netns). Else: where we are."""
    if not kernel_cookie:
        yield
        return
    import socket

    from synguard_lab.lab import Lab

    with Lab("sgkb", xdp_pass=False) as lab, lab.netns(lab.server_ns):
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            s.bind(("::", 80))
            s.listen(4096)
            yield


def run(repeat: int = 200_000, rounds: int = 7, out=sys.stdout, kernel_cookie: bool = False) -> list[dict]:
    """kernel_cookie: also the kernel-cookie method's paths (in a private netns)."""
    with _bench_netns(kernel_cookie):
        return _run(repeat, rounds, out, kernel_cookie)


def in_fresh_thread(fn) -> None:
    """Run fn in a new thread and wait for it. Under BPF_PROG_TEST_RUN the program's
    stack is on the calling thread's kernel stack, whose address is fixed for the
    thread; where it falls against the packet buffer (4 KiB aliasing) makes the same
    program 10-50 % faster or slower for a whole thread (measured here: IPv4 SYN-ACK
    minimum 88-113 ns over 8 threads of one process, 105-155 ns across processes).
    Each round in its own thread samples that placement too, instead of one draw."""
    import threading

    err: list[BaseException] = []

    def run():
        try:
            fn()
        except BaseException as e:  # re-raised in the caller
            err.append(e)

    t = threading.Thread(target=run)
    t.start()
    t.join()
    if err:
        raise err[0]


class Peer:
    """The kernel's XDP SYN proxy (xdp_synproxy_kern.c, syncookie_xdp) of the peer
    directory, loaded by that directory's own loader (xsp_bench.SynProxy: ports [80],
    MSS 1460/1440, wscale 10, TTL 64, as synguard's _setup). None when absent."""

    @staticmethod
    def load(out):
        import importlib.util

        obj = PEER_DIR / "build" / "xdp_synproxy_kern.bpf.o"
        if not (PEER_DIR / "xsp_bench.py").is_file():
            return None
        if not obj.is_file():
            print(f"peer: {obj} not built (run {PEER_DIR / 'build.sh'}): no ratio to xdp_synproxy", file=out)
            return None
        spec = importlib.util.spec_from_file_location("xsp_bench", PEER_DIR / "xsp_bench.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod.SynProxy(str(obj))


def _run(repeat: int, rounds: int, out, kernel_cookie: bool) -> list[dict]:
    dp = DataPath()
    h = Harness(dp)
    peer = Peer.load(out)
    try:
        paths = _frames() + (_kernel_cookie_frames() if kernel_cookie else [])
        floor_samples, rows = [], []
        # verdict check, once per path, without the harness
        for p in paths:
            _setup(dp, p)
            got = VERDICTS[dp.test_run(p.frame).retval]
            if got != p.verdict:
                raise RuntimeError(f"bench path {p.name!r}: verdict {got}, expected {p.verdict}")
        # the peer on the same frames: only where it answers (TX directly and via the harness)
        peer_paths = set()
        if peer is not None:
            for p in paths:
                if p.layout and p.method == CookieMethod.KFUNC_COOKIE:
                    h.load(p.frame, peer.fd)
                    if (prog_test_run(peer.fd, p.frame, 1).retval == 3
                            and prog_test_run(h.rearm.fd, p.frame, 3).retval == 3):
                        peer_paths.add(p.name)
        peer_samples = {n: [] for n in peer_paths}
        samples = {p.name: [] for p in paths}
        # References, not paths of the program: the cookie's SipHash alone (ebpf/bench.bpf.c).
        by_name = {p.name: p for p in paths}
        refs = {f"reference: SipHash-2-4 alone, IPv{v} message ({r} rounds)": (h.sip[v], by_name[n].frame)
                for v, r, n in ((4, 8, "SYN-ACK: IPv4, Linux options"), (6, 14, "SYN-ACK: IPv6, Linux options"))}
        ref_samples = {n: [] for n in refs}
        def one_round():
            floor_samples.append(prog_test_run(h.empty.fd, paths[0].frame, repeat).duration_ns)
            for n, (prog, frame) in refs.items():
                ref_samples[n].append(prog_test_run(prog.fd, frame, repeat).duration_ns)
            for p in paths:
                _setup(dp, p)
                if p.rewrites:
                    h.load(p.frame, dp.prog_fd)
                    with_prog = prog_test_run(h.rearm.fd, p.frame, repeat).duration_ns
                    h.load(p.frame, h.empty.fd)
                    with_empty = prog_test_run(h.rearm.fd, p.frame, repeat).duration_ns
                    samples[p.name].append((with_prog, with_empty))
                    if p.name in peer_paths:
                        h.load(p.frame, peer.fd)
                        peer_samples[p.name].append(prog_test_run(h.rearm.fd, p.frame, repeat).duration_ns)
                else:
                    samples[p.name].append((dp.test_run(p.frame, repeat).duration_ns, None))

        for _ in range(rounds):
            in_fresh_thread(one_round)
        # Medians and minima over the rounds (as tcbench): on a shared box the minimum is
        # the program's own cost, the median what a busy CPU sees. Targets: the median.
        floor, floor_min = statistics.median(floor_samples), min(floor_samples)
        for p in paths:
            if p.rewrites:
                prog = statistics.median(s[0] for s in samples[p.name])
                harness = statistics.median(s[1] for s in samples[p.name])
                ns = prog - harness + floor
                ns_min = min(s[0] for s in samples[p.name]) - min(s[1] for s in samples[p.name]) + floor_min
                how = f"harness {prog:.0f} - {harness:.0f} + floor"
            else:
                ns = statistics.median(s[0] for s in samples[p.name])
                ns_min = min(s[0] for s in samples[p.name])
                how = "direct"
            row = {"path": p.name, "verdict": p.verdict, "ns": ns, "ratio": ns / floor,
                   "min_ns": ns_min, "min_ratio": ns_min / floor_min, "target": p.target, "how": how}
            if p.name in peer_paths:
                harness = statistics.median(s[1] for s in samples[p.name])
                row["peer_ns"] = statistics.median(peer_samples[p.name]) - harness + floor
                row["peer_ratio"] = ns / row["peer_ns"]
            rows.append(row)
        linux = next((r for r in rows if r["path"] == LINUX_ROW), None)
        for p, r in zip(paths, rows):
            if p.layout and linux is not None:
                r["x_linux"] = r["ns"] / linux["ns"]
        for n, got in ref_samples.items():
            ns, ns_min = statistics.median(got), min(got)
            rows.append({"path": n, "verdict": "PASS", "ns": ns, "ratio": ns / floor, "min_ns": ns_min,
                         "min_ratio": ns_min / floor_min, "target": None, "how": "direct (ebpf/bench.bpf.c)"})
        print(f"XDP cost per packet, BPF_PROG_TEST_RUN, repeat={repeat}, median and minimum of {rounds} rounds",
              file=out)
        print(f"floor (empty XDP program): {floor:.0f} ns/packet (minimum {floor_min:.0f})", file=out)
        print(f"{'path':44} {'verdict':8} {'ns/pkt':>7} {'x floor':>8} {'target':>7}        {'min':>5} {'x min':>6}"
              f" {'x linux':>7} {'xdp_synproxy ns':>16} {'/xsp':>5}  method", file=out)
        for r in rows:
            target = f"<= {r['target']}" if r["target"] else ""
            ok = "" if not r["target"] else ("  ok" if r["ratio"] <= r["target"] else "  MISSED")
            xl = f"{r['x_linux']:7.2f}" if "x_linux" in r else " " * 7
            px = f"{r['peer_ns']:16.1f} {r['peer_ratio']:5.2f}" if "peer_ns" in r else " " * 22
            print(f"{r['path']:44} {r['verdict']:8} {r['ns']:7.1f} {r['ratio']:8.2f} {target:>7}{ok:8} "
                  f"{r['min_ns']:5.0f} {r['min_ratio']:6.2f} {xl} {px}  {r['how']}", file=out)
        if peer is None:
            print(f"(no peer at {PEER_DIR}: no ratio to the kernel's XDP SYN proxy)", file=out)
        else:
            print("xdp_synproxy: the kernel selftest's syncookie_xdp (conntrack lookup + bpf_tcp_raw_gen_syncookie), "
                  "same frames, same harness, same rounds; /xsp = synguard ns / its ns", file=out)
        rows.insert(0, {"path": "floor", "ns": floor, "ratio": 1.0, "min_ns": floor_min, "min_ratio": 1.0,
                        "spread_ns": max(floor_samples) - min(floor_samples)})
        return rows
    finally:
        if peer is not None:
            peer.close()
        h.close()
        dp.close()


def main(argv: list[str] | None = None) -> int:
    import argparse

    from synguard.datapath import DataPathError

    p = argparse.ArgumentParser(prog="python -m synguard_lab.bench", description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=200_000)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--kernel-cookie", action="store_true",
                   help="also the kernel-cookie method's paths (in a private netns with a listener)")
    a = p.parse_args(argv)
    try:
        run(repeat=a.repeat, rounds=a.rounds, kernel_cookie=a.kernel_cookie)
    except DataPathError as e:
        print(f"bench: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())


# ---- Randomising harness (tests/test_reliability.py) ---------------------------------
# xdp_bench_random restores the template, overwrites configured fields with
# xorshift64* values and tail-calls sg_bench_jump[0]. The generator below is its
# bit-exact mirror: which frames a run of N repetitions sent can be recomputed here.

_M64 = (1 << 64) - 1
_XS_MULT = 0x2545F4914F6CDD1D


def xorshift64_step(x: int) -> int:
    """One step of the xorshift64 state (the '*' multiply only shapes the output)."""
    x ^= x >> 12
    x ^= (x << 25) & _M64
    x ^= x >> 27
    return x


def xorshift64_unstep(x: int) -> int:
    """The state before: xorshift64_step(xorshift64_unstep(x)) == x."""
    x ^= (x >> 27) ^ (x >> 54)
    x ^= ((x << 25) ^ (x << 50)) & _M64
    return x ^ (x >> 12) ^ (x >> 24) ^ (x >> 36) ^ (x >> 48) ^ (x >> 60)


def xorshift64_output(x: int) -> int:
    """The 32-bit value drawn from a state (high half of x * M)."""
    return ((x * _XS_MULT) & _M64) >> 32


def xorshift64_jump(x: int, steps: int) -> int:
    """The state after `steps` steps, in O(64^2 log steps): the step is linear over GF(2)."""
    def apply(cols, v):
        out, i = 0, 0
        while v:
            if v & 1:
                out ^= cols[i]
            v >>= 1
            i += 1
        return out

    step = [xorshift64_step(1 << i) for i in range(64)]  # columns: images of the basis bits
    while steps:
        if steps & 1:
            x = apply(step, x)
        step = [apply(step, c) for c in step]  # square
        steps >>= 1
    return x


def splitmix64(z: int) -> int:
    z = (z + 0x9E3779B97F4A7C15) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


@dataclass(frozen=True)
class RandField:
    """A frame field xdp_bench_random overwrites: the low `size` bytes of
    (random & mask) | set, big-endian at byte offset `off`."""

    off: int
    size: int = 4
    mask: int = 0xFFFFFFFF
    set: int = 0


class RandomHarness(Harness):
    """Harness + xdp_bench_random: millions of distinct frames in one BPF_PROG_TEST_RUN."""

    MAX_FIELDS = 8

    def __init__(self, dp: DataPath | None = None):
        from bcc import BPF
        from bcc.utils import get_possible_cpus

        super().__init__(dp)
        self.random = self.bpf.load_func(b"xdp_bench_random", BPF.XDP)
        self.rand_cfg = self.bpf[b"sg_bench_rand_cfg"]
        self.rand_state = self.bpf[b"sg_bench_rand_state"]
        self.cpus = get_possible_cpus()
        self.fields: tuple[RandField, ...] = ()
        self.seed_value: int | None = None

    def configure(self, fields) -> None:
        fields = tuple(fields)
        if not 0 < len(fields) <= self.MAX_FIELDS:
            raise ValueError(f"1 to {self.MAX_FIELDS} fields")
        leaf = self.rand_cfg.Leaf()
        for i, f in enumerate(fields):
            if not 1 <= f.size <= 4 or not 0 <= f.off < 256:
                raise ValueError(f"bad field {f}")
            leaf.f[i].off, leaf.f[i].len = f.off, f.size
            leaf.f[i].mask, leaf.f[i].set = f.mask & 0xFFFFFFFF, f.set & 0xFFFFFFFF
        self.rand_cfg[ct.c_int(0)] = leaf
        self.fields = fields

    @staticmethod
    def cpu_seed(seed: int, cpu: int) -> int:
        """The generator state of one CPU for a test seed (never 0: xorshift's fixed point)."""
        return splitmix64(seed * 0x10001 + cpu) or 1

    def seed(self, seed: int) -> None:
        """Seed every CPU's generator differently (deterministically from seed)."""
        leaf = self.rand_state.Leaf()
        for i, cpu in enumerate(self.cpus):
            leaf[i] = self.cpu_seed(seed, cpu)
        self.rand_state[ct.c_int(0)] = leaf
        self.seed_value = seed

    def state(self, cpu: int) -> int:
        return int(self.rand_state[ct.c_int(0)][self.cpus.index(cpu)])

    def run(self, frame: bytes, target_fd: int, repeat: int, cpu: int | None = None):
        """BPF_PROG_TEST_RUN of xdp_bench_random -> target over `repeat` random frames.

        The calling thread is pinned to `cpu` (default: the first it may use) for the
        run, so one CPU's generator produces the whole sequence (the kernel may
        otherwise migrate a long run between repetitions)."""
        import os

        self.load(frame, target_fd)
        cpu = min(os.sched_getaffinity(0)) if cpu is None else cpu
        old = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {cpu})
        try:
            return prog_test_run(self.random.fd, frame, repeat)
        finally:
            os.sched_setaffinity(0, old)

    def model_frame(self, frame: bytes, state: int) -> tuple[bytes, int]:
        """(the frame the harness sends from generator state `state`, the next state)."""
        out = bytearray(frame)
        for f in self.fields:
            state = xorshift64_step(state)
            v = (xorshift64_output(state) & f.mask) | f.set
            out[f.off:f.off + f.size] = (v & ((1 << 8 * f.size) - 1)).to_bytes(f.size, "big")
        return bytes(out), state

    def model_values(self, state: int, n: int):
        """The field values of the first n frames from state: yields [value per field]
        (no frame bytes built: fast enough for millions)."""
        fields = [(f.mask, f.set, (1 << 8 * f.size) - 1) for f in self.fields]
        for _ in range(n):
            vals = []
            for mask, set_, width in fields:
                state = xorshift64_step(state)
                vals.append(((xorshift64_output(state) & mask) | set_) & width)
            yield vals

    def last_frame(self, frame: bytes, final_state: int) -> bytes:
        """The frame sent last, recomputed from the generator state a run ended with."""
        state = final_state
        for _ in self.fields:
            state = xorshift64_unstep(state)
        return self.model_frame(frame, state)[0]
