"""HLL registers written by the real program (BPF_PROG_TEST_RUN) and read back."""

import ipaddress
import os
import random

import pytest

from synguard import hll

from conftest import NOW_S
from frames import syn4, syn6


def send_sources(dp, sources, now_s):
    dp.tick(now_s)
    for src in sources:
        frame = syn6(src=str(src)) if src.version == 6 else syn4(src=str(src))
        dp.test_run(bytes(frame))


@pytest.mark.parametrize("n, v6", [(1, False), (50, False), (800, False), (5000, False), (3000, True)])
def test_estimate_from_kernel_registers(dp, n, v6):
    from synguard.abi import Mode

    dp.set_mode(Mode.OBSERVE)
    rng = random.Random(n)
    if v6:
        sources = [ipaddress.IPv6Address(rng.getrandbits(128)) for _ in range(n)]
    else:
        sources = [ipaddress.IPv4Address(rng.getrandbits(32)) for _ in range(n)]
    second = NOW_S + 1000 + n  # a fresh second: the program clears the bank on first use
    send_sources(dp, sources + sources[: n // 2], second)  # repeats do not count
    est = hll.estimate(dp.hll_registers(second))
    assert est == pytest.approx(n, rel=0.1, abs=1)
    assert dp.hll_registers(second + 1) is None  # nothing seen in the next second yet


def test_new_sources_against_history(dp):
    from synguard.abi import Mode

    dp.set_mode(Mode.OBSERVE)
    rng = random.Random(7)
    old = [ipaddress.IPv4Address(rng.getrandbits(32)) for _ in range(2000)]
    new = [ipaddress.IPv4Address(rng.getrandbits(32)) for _ in range(1000)]
    h = hll.History()
    send_sources(dp, old, NOW_S + 50_000)
    h.add(dp.hll_registers(NOW_S + 50_000), NOW_S + 50_000)
    send_sources(dp, old[:1000] + new, NOW_S + 50_001)
    distinct, novel = h.novelty(dp.hll_registers(NOW_S + 50_001))
    assert distinct == pytest.approx(2000, rel=0.1)
    assert novel == pytest.approx(1000, rel=0.25)


def test_daemon_counts_the_sources_of_a_second_the_clock_jumped_past(dp):
    """The daemon's tick period is just over 1 s, so now and then it moves the program's
    clock by 2: the window that just ended then shares its HLL bank (now_s & 1) with the
    new one, which the program clears at its first SYN. The daemon reads the blocks
    before it advances the clock and names that window (Mitigation.tick's window_s); read
    after the tick, the window's sources were gone and a spoofed flood looked like
    "distinct <= 2" (single-source)."""
    from synguard import config
    from synguard.abi import Mode
    from synguard.daemon import Daemon
    from synguard.detect import Detector

    dp.set_mode(Mode.OBSERVE)
    rng = random.Random(11)
    second = NOW_S + 70_000
    # Test runs count on the CPU they run on: keep both sends on one CPU, as one
    # flow's SYNs are (a migration in between would leave the old bank on the other CPU).
    affinity = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(affinity)})
    try:
        send_sources(dp, [ipaddress.IPv4Address(rng.getrandbits(32)) for _ in range(1500)], second)
        blocks = dp.read_blocks()  # the daemon's read, before its tick
        send_sources(dp, [ipaddress.IPv4Address("198.51.100.7")], second + 2)  # tick: +2, then one SYN
    finally:
        os.sched_setaffinity(0, affinity)
    assert dp.hll_registers(second) is None and dp.hll_registers(second + 1) is None  # lost if read now
    d = Daemon(config.Config(), datapath=dp)
    d.mitigation.detector = Detector(d.config.detection)
    d.mitigation.tick(0.0, second + 2, 1.0, blocks, second)
    assert d.mitigation.sources_distinct == pytest.approx(1500, rel=0.1)
