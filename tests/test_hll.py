"""HLL registers written by the real program (BPF_PROG_TEST_RUN) and read back."""

import ipaddress
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
