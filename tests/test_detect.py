"""synguard/detect.py on synthetic traffic: a seeded scenario suite (quiet, spoofed,
single-source, botnet, flash crowds, slow ramp, fast trigger), unit checks of the
event/mitigation contract, and hypothesis properties (healthy handshakes never
alarm; any input gives a well-formed event stream that quiet ticks always end).

`pytest -s tests/test_detect.py` prints the scenario table."""

from __future__ import annotations

import dataclasses
import json
import math
import random
from dataclasses import dataclass, field
from typing import Callable

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from synguard import abi
from synguard.config import DetectionConfig
from synguard.detect import Detector, Tick, classify

CFG = DetectionConfig()
# HyperLogLog with 2**HLL_BITS registers: relative standard error 1.04 / sqrt(m).
HLL_ERR = 1.04 / math.sqrt(abi.HLL_REGS)


# -- traffic model ------------------------------------------------------------------------

def poisson(rng: random.Random, lam: float) -> int:
    if lam <= 0:
        return 0
    if lam < 50:  # Knuth
        limit, k, p = math.exp(-lam), 0, 1.0
        while True:
            p *= rng.random()
            if p <= limit:
                return k
            k += 1
    return max(0, round(rng.gauss(lam, math.sqrt(lam))))


def binomial(rng: random.Random, n: int, p: float) -> int:
    if n <= 0 or p <= 0:
        return 0
    if p >= 1:
        return n
    if n < 50:
        return sum(rng.random() < p for _ in range(n))
    return min(n, max(0, round(rng.gauss(n * p, math.sqrt(n * p * (1 - p))))))


def const(rate: float) -> Callable[[float], float]:
    return lambda t: rate


def ramp(t0: float, t1: float, r0: float, r1: float) -> Callable[[float], float]:
    """r0 at t0 rising linearly to r1 at t1, r1 after."""
    return lambda t: r0 + (r1 - r0) * min(1.0, max(0.0, (t - t0) / (t1 - t0)))


@dataclass
class Flow:
    """One traffic component, active during [start, stop)."""

    start: float
    stop: float
    rate: Callable[[float], float]  # SYN/s at time t
    completion: float  # share of its SYNs that complete a handshake
    pool: int | None  # distinct addresses it uses; None: random spoofed sources
    ports: dict[int, float]  # watched port -> share of its SYNs (the rest go to unwatched ports)
    prefix: str = "10.1"  # first two octets of its addresses
    seen: float = 0.0  # pool sources already in the history

    def addr(self, i: int) -> str:
        return f"{self.prefix}.{(i >> 8) & 255}.{i & 255}"


WATCHED = (22, 80, 443)


def simulate(flows: list[Flow], duration: int, seed: int, fast_ceiling: int = CFG.fast_trigger_pps,
             dt: float = 1.0) -> list[Tick]:
    """Ticks ending at dt, 2dt, ...: what the daemon would read from the data path.

    Sources are sampled 1 in abi.SRC_SAMPLE (estimates are multiples of it); HLL
    estimates carry a gaussian relative error (doubled for new sources, a
    difference of two estimates); the kernel fast trigger fires on a port when a
    flow's instantaneous rate there reaches fast_ceiling (0: never)."""
    rng = random.Random(seed)
    ticks = []
    for k in range(1, int(duration / dt) + 1):
        t0, t1 = (k - 1) * dt, k * dt
        syns = completions = 0
        distinct = new = 0.0
        port_syns = {p: 0 for p in WATCHED}
        top: list[tuple[str, int]] = []
        fast: set[int] = set()
        for f in flows:
            a, b = max(t0, f.start), min(t1, f.stop)
            if b <= a:
                continue
            n = poisson(rng, f.rate((a + b) / 2) * (b - a))
            syns += n
            completions += binomial(rng, n, f.completion)
            left = n
            for p, share in f.ports.items():
                m = min(left, binomial(rng, n, share))
                port_syns[p] += m
                left -= m
                if fast_ceiling and f.rate((a + b) / 2) * share >= fast_ceiling:
                    fast.add(p)
            if f.pool is None:  # random spoofed sources: all distinct, all new
                d, fresh = float(n), float(n)
                for _ in range(min(10, n // abi.SRC_SAMPLE)):
                    top.append((f"{rng.randrange(1, 224)}.{rng.randrange(256)}.{rng.randrange(256)}."
                                f"{rng.randrange(256)}", abi.SRC_SAMPLE))
            else:
                d = f.pool * (1 - math.exp(-n / f.pool))  # balls in bins
                fresh = d * (1 - f.seen / f.pool)
                f.seen = min(f.pool, f.seen + fresh)
                per = n / max(d, 1.0)
                for i in rng.sample(range(f.pool), min(10, f.pool)):
                    est = abi.SRC_SAMPLE * binomial(rng, poisson(rng, per), 1 / abi.SRC_SAMPLE)
                    if est:
                        top.append((f.addr(i), est))
            distinct += d
            new += fresh
        if distinct:
            distinct = max(0.0, distinct * (1 + rng.gauss(0, HLL_ERR)))
            new = min(distinct, max(0.0, new * (1 + rng.gauss(0, 2 * HLL_ERR))))
        top.sort(key=lambda an: -an[1])
        ticks.append(Tick(t=t1, dt=dt, syns=syns, completions=completions, distinct=distinct, new_sources=new,
                          port_syns=port_syns, top_sources=top[:10], fast_trigger_ports=frozenset(fast)))
    return ticks


def background(rate: float = 50.0, duration: float = 10_000, pool: int = 20_000) -> Flow:
    """Normal clients: Poisson-ish SYNs, 97 % complete, a slowly varying rate."""
    return Flow(0, duration, lambda t: rate * (1 + 0.2 * math.sin(t / 97)), 0.97, pool, {80: 0.6, 443: 0.4})


# -- scenarios ------------------------------------------------------------------------------

@dataclass
class Scenario:
    name: str
    flows: list[Flow]
    duration: int
    attack: tuple[float, float] | None = None  # ground truth [start, stop)
    kind: str | None = None
    max_detect_s: float | None = None  # None: before the attack stops
    cfg: DetectionConfig = CFG
    fast_ceiling: int = CFG.fast_trigger_pps  # the simulated kernel's
    seed: int = 1


SINGLE = Flow(60, 90, const(50_000), 0.0, 1, {443: 1.0}, prefix="198.51")


def scenarios() -> list[Scenario]:
    nofast = dataclasses.replace(CFG, fast_trigger_pps=0)
    return [
        Scenario("quiet 10 min + scans", [
            background(),
            # scanners hitting closed (unwatched) ports: below the floor, no completions
            Flow(100, 103, const(1800), 0.0, 1, {}, prefix="192.0"),
            Flow(250, 251, const(1900), 0.0, 1, {}, prefix="192.0"),
            Flow(400, 430, const(900), 0.0, 40, {}, prefix="192.1"),
        ], 600, seed=11),
        Scenario("spoofed 200k", [background(), Flow(60.5, 90.5, const(200_000), 0.0, None, {80: 1.0})],
                 180, attack=(60.5, 90.5), kind="spoofed", max_detect_s=2, seed=12),
        Scenario("single-source 50k", [background(), dataclasses.replace(SINGLE)],
                 180, attack=(60, 90), kind="single-source", max_detect_s=2, seed=13),
        Scenario("botnet 300 src 30k", [
            background(), Flow(60, 120, const(30_000), 0.02, 300, {80: 1.0}, prefix="100.64")],
                 200, attack=(60, 120), kind="botnet", max_detect_s=2, seed=14),
        Scenario("spoofed 5k (near floor)", [background(), Flow(60, 120, const(5000), 0.0, None, {80: 1.0})],
                 180, attack=(60, 120), kind="spoofed", max_detect_s=3, seed=20),
        Scenario("pulsing 30k 1s on/3s off", [background()] + [
            Flow(t, t + 1, const(30_000), 0.0, None, {443: 1.0}) for t in range(60, 120, 4)],
                 180, attack=(60, 117), kind="spoofed", max_detect_s=1, seed=21),
        Scenario("server stall, busy site", [
            Flow(0, 150, lambda t: 20_000 * (1 + 0.2 * math.sin(t / 97)), 0.97, 200_000, {80: 0.6, 443: 0.4}),
            Flow(150, 160, lambda t: 20_000 * (1 + 0.2 * math.sin(t / 97)), 0.3, 200_000, {80: 0.6, 443: 0.4}),
            Flow(160, 300, lambda t: 20_000 * (1 + 0.2 * math.sin(t / 97)), 0.97, 200_000, {80: 0.6, 443: 0.4})],
                 300, seed=22),
        Scenario("flash crowd 50x", [
            background(), Flow(60, 180, ramp(60, 63, 0, 2450), 0.97, 1_000_000, {80: 1.0}, prefix="10.9")],
                 240, seed=15),
        Scenario("flash crowd 10x busy", [
            background(5000, pool=200_000),
            Flow(150, 270, ramp(150, 155, 0, 45_000), 0.97, 2_000_000, {80: 0.5, 443: 0.5}, prefix="10.9")],
                 330, seed=16),
        Scenario("flash crowd 50x busy", [
            background(2000, pool=200_000),
            Flow(150, 270, ramp(150, 152, 0, 98_000), 0.97, 5_000_000, {80: 0.5, 443: 0.5}, prefix="10.9")],
                 330, seed=17),
        Scenario("slow ramp 50->50k/5min", [
            background(), Flow(60, 360, ramp(60, 360, 0, 50_000), 0.0, None, {80: 1.0})],
                 420, attack=(60, 360), kind="spoofed", seed=18),
        Scenario("fast trigger, busy site", [
            background(40_000, pool=500_000), Flow(180, 210, const(120_000), 0.0, None, {443: 1.0})],
                 260, attack=(180, 210), kind="spoofed", max_detect_s=1, seed=19),
        Scenario("  same, trigger off", [
            background(40_000, pool=500_000), Flow(180, 210, const(120_000), 0.0, None, {443: 1.0})],
                 260, attack=(180, 210), kind="spoofed", max_detect_s=2, cfg=nofast, fast_ceiling=0, seed=19),
    ]


@dataclass
class Run:
    sc: Scenario
    ticks: list[Tick]
    events: list[tuple[float, dict]] = field(default_factory=list)
    mitigations: dict[float, dict] = field(default_factory=dict)
    detector: Detector | None = None

    @property
    def starts(self) -> list[tuple[float, dict]]:
        return [(t, e) for t, e in self.events if e["event"] == "attack_start"]

    @property
    def ends(self) -> list[tuple[float, dict]]:
        return [(t, e) for t, e in self.events if e["event"] == "attack_end"]

    def false_alarms(self) -> int:
        """Starts whose tick does not overlap the true attack."""
        a = self.sc.attack
        return sum(1 for t, e in self.starts if a is None or not (t - 1 < a[1] and t > a[0]))

    def detect_s(self) -> float | None:
        good = [t for t, _ in self.starts if self.sc.attack and self.sc.attack[0] < t]
        return good[0] - self.sc.attack[0] if good else None

    def clear_s(self) -> float | None:
        a = self.sc.attack
        ends = [t for t, _ in self.ends if a and t >= a[1]]
        return ends[0] - a[1] if ends else None


def run(sc: Scenario) -> Run:
    ticks = simulate([dataclasses.replace(f) for f in sc.flows], sc.duration, sc.seed, sc.fast_ceiling)
    r = Run(sc, ticks)
    det = Detector(sc.cfg)
    for tick in ticks:
        for e in det.update(tick):
            r.events.append((tick.t, e))
        r.mitigations[tick.t] = det.mitigation()
    r.detector = det
    return r


@pytest.fixture(scope="module")
def runs() -> dict[str, Run]:
    return {sc.name: run(sc) for sc in scenarios()}


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}s"


def test_scenario_table(runs):
    """Prints the table (pytest -s) and checks it as a whole: every attack detected, no
    quiet scenario alarmed, no false alarm anywhere."""
    rows = [("scenario", "detected", "t_detect", "class", "t_clear", "alarms", "false", "peak_pps")]
    for r in runs.values():
        kinds = ",".join(sorted({e["attack"]["kind"] for _, e in r.starts})) or "-"
        peak = max((e["attack"]["peak_pps"] for _, e in r.events), default=0)
        rows.append((r.sc.name, "yes" if r.detect_s() is not None else "no", _fmt(r.detect_s()), kinds,
                     _fmt(r.clear_s()), str(len(r.starts)), str(r.false_alarms()), f"{peak:.0f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    print()
    print(f"detection defaults: {CFG}")
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)))
    assert len(rows) == len(runs) + 1
    for r in runs.values():
        assert (r.detect_s() is not None) == (r.sc.attack is not None), r.sc.name
        assert r.false_alarms() == 0, r.sc.name


@pytest.mark.parametrize("sc", scenarios(), ids=lambda sc: sc.name.strip())
def test_scenario(runs, sc):
    r = runs[sc.name]
    for _, e in r.events:
        json.dumps(e)
    assert r.false_alarms() == 0, r.events
    if sc.attack is None:
        assert r.events == [] and r.detector.active is None
        assert all(m["protect_ports"] == set() and not m["protect_all"] for m in r.mitigations.values())
        return
    start, stop = sc.attack
    assert len(r.starts) == 1, [(t, e["event"]) for t, e in r.events]
    t_start, ev = r.starts[0]
    limit = sc.max_detect_s if sc.max_detect_s is not None else stop - start
    assert 0 < t_start - start <= limit
    assert ev["attack"]["kind"] == sc.kind
    # ends within clear_ticks + 1 after the flood stops
    assert len(r.ends) == 1 and 0 < r.clear_s() <= sc.cfg.clear_ticks + 1
    end = r.ends[0][1]["attack"]
    assert end["id"] == ev["attack"]["id"] == 1 and end["kind"] == sc.kind
    assert start - 1 <= end["started"] <= t_start and stop <= end["ended"] <= stop + 1
    assert r.detector.attacks_total == {sc.kind: 1}


def test_spoofed_flood_details_and_mitigation(runs):
    r = runs["spoofed 200k"]
    (t0, start), = r.starts
    (t1, end), = r.ends
    a = start["attack"]
    assert t0 == 61 and a["started"] == 60 and a["detected_after_s"] == 1.0 and a["ports"] == [80]
    assert a["detected_after_ticks"] == 1
    assert a["ended"] is None and a["peak_pps"] >= 90_000
    assert a["sources_sample"] == []  # forged addresses: naming one would point at a bystander
    # no update every tick: the peak doubled once (half a tick of flood, then whole ticks)
    updates = [e for _, e in r.events if e["event"] == "attack_update"]
    assert len(updates) <= 2
    e = end["attack"]
    assert e["ended"] == 91 and e["duration_s"] == 31 and e["syns"] >= 5_900_000 and e["peak_pps"] >= 190_000
    # protected while it lasts, then for `hold` after its end, then released
    hold = CFG.hold
    for t, m in r.mitigations.items():
        if t < 61:
            assert m["protect_ports"] == set() and m["protect_until"] is None
        elif t < 91 + hold:
            assert m["protect_ports"] == {80} and not m["protect_all"], (t, m)
            assert m["protect_until"] == min(t, 91) + hold
        else:
            assert m["protect_ports"] == set() and m["protect_until"] is None, (t, m)
        assert m["deny_sources"] == []
    # the baseline was not poisoned by the flood
    assert r.detector.baseline < 200


def test_single_source_is_denied_not_challenged_only(runs):
    r = runs["single-source 50k"]
    (t0, start), = r.starts
    addr = SINGLE.addr(0)
    assert start["attack"]["sources_sample"][0] == addr
    m = r.mitigations[t0]
    assert m["deny_sources"] == [(addr, t0 + CFG.source_deny)] and m["protect_ports"] == {443}
    # refreshed while it attacks, kept after the end until it expires
    last = r.ends[0][1]["attack"]["ended"]
    assert r.mitigations[150]["deny_sources"] == [(addr, last + CFG.source_deny)]
    assert r.mitigations[150]["protect_ports"] == set()  # hold (60 s) over


def test_slow_ramp_detected_early_with_the_excursion_start(runs):
    r = runs["slow ramp 50->50k/5min"]
    (t0, start), = r.starts
    a = start["attack"]
    assert t0 < 90  # far before the end of the ramp (360): ~3k SYN/s
    assert 60 <= a["started"] < t0 and a["detected_after_s"] == t0 - a["started"]
    assert r.detector.baseline < 500  # the ramp did not drag the baseline up


def test_flash_crowds_learn_the_new_rate(runs):
    # healthy traffic is learnt: after two minutes of a crowd the baseline follows it
    assert runs["flash crowd 50x"].detector.baseline < 200  # crowd over, baseline back down
    for name in ("flash crowd 50x", "flash crowd 10x busy", "flash crowd 50x busy"):
        r = runs[name]
        assert r.detector.cusum == 0.0 and r.detector.attacks_total == {}


def test_fast_trigger_saves_a_tick(runs):
    fast, slow = runs["fast trigger, busy site"], runs["  same, trigger off"]
    assert fast.detect_s() == 1 and slow.detect_s() == 2
    assert fast.starts[0][1]["attack"]["ports"] == [443]
    assert slow.starts[0][1]["attack"]["ports"] == [443]


# -- the contract, tick by tick -------------------------------------------------------------

def tk(t, syns=50, completions=None, *, distinct=None, new=None, ports=None, top=(), fast=(), dt=1.0):
    if completions is None:
        completions = syns
    return Tick(t=t, dt=dt, syns=syns, completions=completions,
                distinct=float(syns if distinct is None else distinct),
                new_sources=float((syns if distinct is None else distinct) if new is None else new),
                port_syns={80: syns} if ports is None else ports, top_sources=top, fast_trigger_ports=frozenset(fast))


def feed(det: Detector, ticks) -> list[dict]:
    out = []
    for t in ticks:
        out += det.update(t)
    return out


def warm(det: Detector, until: int = 60) -> None:
    assert feed(det, [tk(t) for t in range(1, until + 1)]) == []


def test_tick_validation():
    with pytest.raises(ValueError, match="dt must be positive"):
        tk(1, dt=0)
    with pytest.raises(ValueError, match="syns must be an integer"):
        Tick(t=1, dt=1, syns=-1, completions=0)
    with pytest.raises(ValueError, match="completions"):
        Tick(t=1, dt=1, syns=1, completions=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="finite"):
        Tick(t=float("nan"), dt=1, syns=1, completions=1)
    t = tk(1, top=[("b", 16), ("a", 32)], ports={80: 5})
    assert t.top_sources == (("a", 32), ("b", 16))  # heaviest first
    with pytest.raises(TypeError):
        t.port_syns[80] = 6  # type: ignore[index]
    det = Detector()
    det.update(tk(5))
    with pytest.raises(ValueError, match="backwards"):
        det.update(tk(4))


def test_baseline_starts_from_the_first_quiet_tick_and_learns_quiet_traffic():
    det = Detector()
    assert det.baseline == 0 and det.cusum == 0 and det.active is None  # gate: floor_pps
    det.update(tk(1, 50, 48))
    assert det.baseline == 48  # warm start: the first learnt tick sets it
    warm(det, 200)
    assert 45 < det.baseline < 60 and det.distinct_last == 50


def test_restart_during_a_flood_is_reported():
    """Issue 19 item 1: a 5,000 SYN/s spoofed flood already running when the daemon starts
    (a restart during an attack). Before: baseline at the floor, gate 6,000 SYN/s, never
    reported. The baseline counts completed handshakes only, so the gate is the floor."""
    det = Detector()
    ev = feed(det, [tk(t, 5020, 20, distinct=5000) for t in range(1, 21)])
    starts = [e for e in ev if e["event"] == "attack_start"]
    assert len(starts) == 1 and starts[0]["attack"]["detected_after_ticks"] <= 2, ev
    assert det.active is not None and det.baseline == 0  # nothing learnt from the flood


def test_trickle_does_not_train_the_gate():
    """Issue 19 item 2: 1,100 spoofed SYN/s that never complete stay under the alarm level
    (x < drift) for two minutes; before, they were learnt as normal (gate 3 x 1,100) and a
    following 2,900 SYN/s flood, 145 x the real 20 connects/s, was never reported."""
    det = Detector()
    assert feed(det, [tk(t, 20, 20) for t in range(1, 61)]) == []
    assert feed(det, [tk(t, 1120, 20, distinct=1100) for t in range(61, 181)]) == []
    assert det.baseline < 25
    ev = feed(det, [tk(t, 2920, 20, distinct=2900) for t in range(181, 201)])
    starts = [e for e in ev if e["event"] == "attack_start"]
    assert len(starts) == 1 and starts[0]["attack"]["kind"] == "spoofed", ev


def test_saturated_evidence_opens_the_gate_on_a_busy_site():
    """A busy site (5,000 handshakes/s) under an 8,000 SYN/s spoofed flood: 13,000 SYN/s stays
    under the volume gate (3 x 5,000), but 8,000 unanswered SYN/s (x = 1.36 >= SATURATED_X) keep S at its cap:
    after SATURATED_TICKS such ticks it is an attack, protected while it lasts, ended after."""
    from synguard.detect import SATURATED_TICKS

    det = Detector()
    assert feed(det, [tk(t, 5000, 4950) for t in range(1, 121)]) == []
    ev = feed(det, [tk(t, 13_000, 4950, distinct=8000) for t in range(121, 241)])
    starts = [e for e in ev if e["event"] == "attack_start"]
    assert len(starts) == 1 and [e for e in ev if e["event"] == "attack_end"] == [], ev
    t0 = 120 + starts[0]["attack"]["detected_after_ticks"]
    assert starts[0]["attack"]["detected_after_ticks"] <= 14 + SATURATED_TICKS
    assert det.mitigation()["protect_ports"] == {80}  # still protected at the flood's last tick
    ev = feed(det, [tk(t, 5000, 4950) for t in range(241, 261)])
    assert [e["event"] for e in ev] == ["attack_end"] and t0 < 240


def test_a_long_server_stall_is_not_an_attack():
    """The server stops answering for two minutes (30 % of SYNs complete, clients keep their
    normal rate): x stays under SATURATED_X, the gate stays closed."""
    det = Detector()
    assert feed(det, [tk(t, 20_000, 19_400) for t in range(1, 121)]) == []
    assert feed(det, [tk(t, 20_000, 6000) for t in range(121, 241)]) == []


def test_initial_gate_is_conservative_but_a_flood_is_still_caught_at_startup():
    det = Detector()
    ev = det.update(tk(1, 200_000, 0, top=[("203.0.113.1", 16)]))
    assert [e["event"] for e in ev] == ["attack_start"] and ev[0]["attack"]["kind"] == "spoofed"


def test_healthy_surge_is_never_an_attack():
    det = Detector()
    warm(det)
    five_ports = {p: 100_000 - 1 for p in range(80, 85)}  # each just under the fast-trigger ceiling
    assert feed(det, [tk(t, 500_000, 450_000, ports=five_ports) for t in range(61, 200)]) == []  # exactly 90 %
    assert det.cusum == 0 and det.baseline > 400_000  # learnt
    assert 90_000 < det.port_baseline[80] < 100_000


def test_just_under_the_allowance_accumulates():
    det = Detector()
    warm(det)
    # 50k SYN/s, 80 % complete: excess gap 5000/s = x 2.5 -> S +2/tick -> alarm on the 2nd tick
    ev = feed(det, [tk(61, 50_000, 40_000), tk(62, 50_000, 40_000)])
    assert [e["event"] for e in ev] == ["attack_start"]
    assert ev[0]["attack"]["started"] == 60 and ev[0]["attack"]["detected_after_s"] == 2
    assert ev[0]["attack"]["detected_after_ticks"] == 2  # counted in ticks, whatever the clock says
    assert ev[0]["attack"]["syns"] == 100_000


CUSUM_LIMIT = 4 * CFG.cusum_threshold


def test_under_the_floor_is_never_an_attack():
    det = Detector()
    warm(det)
    assert feed(det, [tk(t, 1999, 0, distinct=1999) for t in range(61, 400)]) == []
    assert det.cusum <= CUSUM_LIMIT


def test_fast_trigger_flag_alarms_at_once_even_below_everything():
    det = Detector()
    warm(det)
    ev = det.update(tk(61, 3000, 0, ports={80: 100, 443: 2900}, fast={443}))
    assert [e["event"] for e in ev] == ["attack_start"] and ev[0]["attack"]["ports"] == [443]
    assert det.mitigation()["protect_ports"] == {443}


def test_fast_trigger_ceiling_checked_in_user_space_and_off_switch():
    det = Detector()
    warm(det)
    # healthy but over the per-port ceiling: the kernel protects it, so do we
    ev = det.update(tk(61, 150_000, 150_000, ports={443: 150_000}))
    assert ev and ev[0]["attack"]["ports"] == [443]
    off = Detector(dataclasses.replace(CFG, fast_trigger_pps=0))
    warm(off)
    assert off.update(tk(61, 150_000, 150_000, ports={443: 150_000})) == []
    # the kernel's own report is still honoured with the user-space check off
    assert off.update(tk(62, 10, 10, ports={443: 10}, fast={443}))[0]["event"] == "attack_start"


def test_updates_only_on_change_and_end_after_clear_ticks():
    det = Detector()
    warm(det)
    flood = lambda t, n, ports: tk(t, n, 0, ports=ports, top=[(f"1.2.3.{t}", 16)])  # noqa: E731
    evs = [det.update(flood(61, 20_000, {80: 20_000}))]
    evs += [det.update(flood(t, 20_000, {80: 20_000})) for t in range(62, 70)]
    assert [len(e) for e in evs] == [1] + [0] * 8
    # a new port: update
    (u,) = det.update(flood(70, 20_000, {80: 10_000, 443: 10_000}))
    assert u["event"] == "attack_update" and u["attack"]["ports"] == [80, 443]
    # +40 % peak: nothing; +50 % of the reported peak: update
    assert det.update(flood(71, 28_000, {80: 28_000})) == []
    (u,) = det.update(flood(72, 30_000, {80: 30_000}))
    assert u["event"] == "attack_update" and u["attack"]["peak_pps"] == 30_000
    # quiet: ends on the clear_ticks-th quiet tick, ended = last attack tick
    out = [det.update(tk(t)) for t in range(73, 73 + CFG.clear_ticks)]
    assert out[:-1] == [[]] * (CFG.clear_ticks - 1)
    (e,) = out[-1]
    assert e["event"] == "attack_end" and e["attack"]["ended"] == 72 and e["attack"]["duration_s"] == 12
    assert det.active is None and det.cusum == 0
    # a burst inside the quiet streak restarts it
    det2 = Detector()
    warm(det2)
    det2.update(flood(61, 20_000, {80: 20_000}))
    feed(det2, [tk(t) for t in range(62, 62 + CFG.clear_ticks - 1)])
    assert det2.update(flood(66, 20_000, {80: 20_000})) == [] and det2.active is not None
    assert feed(det2, [tk(t) for t in range(67, 67 + CFG.clear_ticks - 1)]) == []
    assert det2.update(tk(67 + CFG.clear_ticks - 1))[0]["event"] == "attack_end"


def test_kind_change_needs_two_ticks():
    det = Detector()
    warm(det)
    spoof = lambda t: tk(t, 100_000, 0, distinct=100_000, new=100_000)  # noqa: E731
    bots = lambda t: tk(t, 100_000, 0, distinct=500, new=10, top=[("100.64.0.1", 320)])  # noqa: E731
    assert det.update(spoof(61))[0]["attack"]["kind"] == "spoofed"
    assert det.update(bots(62)) == []  # one tick is not enough
    assert det.update(spoof(63)) == []
    assert det.update(bots(64)) == []
    (u,) = det.update(bots(65))
    assert u["event"] == "attack_update" and u["attack"]["kind"] == "botnet"
    assert det.attacks_total == {"spoofed": 1}  # counted at the start


def test_classify():
    c = CFG
    assert classify(tk(1, 1000, 0, distinct=950, new=900), c) == "spoofed"
    assert classify(tk(1, 1000, 0, distinct=950, new=100), c) == "botnet"  # distinct but known: a big botnet
    assert classify(tk(1, 1000, 0, distinct=30, top=[("a", 512)]), c) == "single-source"
    assert classify(tk(1, 1000, 0, distinct=2, top=[("a", 400), ("b", 400)]), c) == "single-source"
    assert classify(tk(1, 1000, 0, distinct=300, top=[("a", 16)]), c) == "botnet"
    assert classify(tk(1, 0, 0), c) == "botnet"


def test_two_source_attack_denies_both():
    det = Detector()
    warm(det)
    ev = det.update(tk(61, 40_000, 0, distinct=2, top=[("192.0.2.1", 20_000), ("192.0.2.2", 19_984)]))
    assert ev[0]["attack"]["kind"] == "single-source"
    assert det.mitigation()["deny_sources"] == [("192.0.2.1", 661), ("192.0.2.2", 661)]
    assert det.mitigation(now=700)["deny_sources"] == []


def test_unattributed_attack_protects_every_port_for_hold():
    det = Detector()
    warm(det)
    spread = {p: 1000 for p in range(1000, 1030)}  # 30 ports x 3 %: none is 10 % of the flood
    det.update(tk(61, 30_000, 0, ports=spread))
    assert det.active["ports"] == []
    m = det.mitigation()
    assert m["protect_all"] and m["protect_ports"] == set() and m["protect_until"] == 61 + CFG.hold
    feed(det, [tk(t) for t in range(62, 62 + CFG.clear_ticks)])
    assert det.active is None
    assert det.mitigation(now=100)["protect_all"] and not det.mitigation(now=122)["protect_all"]


def test_ports_of_an_earlier_attack_keep_their_own_deadline():
    det = Detector()
    warm(det)
    det.update(tk(61, 30_000, 0, ports={80: 30_000}))
    feed(det, [tk(t) for t in range(62, 67)])
    assert det.active is None
    det.update(tk(80, 30_000, 0, ports={443: 30_000}))
    m = det.mitigation()
    assert m["protect_ports"] == {80, 443} and m["until_by_port"] == {80: 61 + 60, 443: 80 + 60}
    assert m["protect_until"] == 140
    assert det.active["id"] == 2


def test_reconfigure_keeps_state():
    det = Detector()
    warm(det)
    b = det.baseline
    det.reconfigure(dataclasses.replace(CFG, floor_pps=100_000, fast_trigger_pps=0))
    assert det.baseline == b
    assert det.update(tk(61, 50_000, 0)) == []  # under the new floor


# -- properties -----------------------------------------------------------------------------

configs = st.builds(
    DetectionConfig,
    floor_pps=st.integers(1, 1_000_000),
    baseline_multiple=st.floats(1, 20),
    ewma_alpha=st.floats(0.001, 1),
    cusum_drift=st.floats(0, 10),
    cusum_threshold=st.floats(0.001, 100),
    clear_ticks=st.integers(1, 20),
    fast_trigger_pps=st.sampled_from([0, 0, 100_000]),
)


ADDRS = ["192.0.2.1", "192.0.2.2", "198.51.100.7", "2001:db8::1", "203.0.113.9"]


@st.composite
def healthy_runs(draw):
    """(config, ticks): completions >= 90 % of SYNs every tick, no port at the fast-trigger ceiling."""
    cfg = draw(st.one_of(st.just(CFG), configs))
    ceiling = cfg.fast_trigger_pps
    n = draw(st.integers(1, 40))
    t = draw(st.floats(0, 1e6))
    out = []
    for _ in range(n):
        dt = draw(st.floats(0.05, 5))
        t += dt
        syns = draw(st.one_of(st.integers(0, 100), st.integers(0, 10**8)))
        low = (9 * syns + 9) // 10  # ceil(0.9 * syns), exactly
        completions = draw(st.integers(low, max(low, syns + syns // 5)))
        distinct = draw(st.floats(0, syns + 1))
        ports = draw(st.dictionaries(st.integers(1, 65535), st.integers(0, syns), max_size=4))
        if ceiling:
            ports = {p: min(k, math.ceil(ceiling * dt) - 1) for p, k in ports.items()}
        top = draw(st.lists(st.tuples(st.sampled_from(ADDRS), st.integers(0, syns // 16).map(lambda k: 16 * k)),
                            max_size=5))
        out.append(Tick(t=t, dt=dt, syns=syns, completions=completions, distinct=distinct,
                        new_sources=draw(st.floats(0, distinct)) if distinct else 0.0,
                        port_syns=ports, top_sources=top))
    return cfg, out


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(healthy_runs())
def test_property_healthy_handshakes_never_alarm(run_):
    """completions >= 90 % of SYNs on every tick (and no fast-trigger port): never an alarm."""
    cfg, ticks = run_
    det = Detector(cfg)
    for tick in ticks:
        assert det.update(tick) == []
        assert det.active is None and det.cusum == 0.0 and math.isfinite(det.baseline)
    assert det.mitigation() == {"protect_ports": set(), "protect_until": None, "until_by_port": {},
                                "protect_all": False, "deny_sources": []}


@st.composite
def any_ticks(draw):
    n = draw(st.integers(1, 60))
    t = 0.0
    out = []
    for _ in range(n):
        dt = draw(st.sampled_from([0.5, 1.0, 1.0, 2.0]))
        t += dt
        syns = draw(st.one_of(st.integers(0, 3000), st.integers(0, 10**6)))
        distinct = draw(st.floats(0, syns + 1))
        out.append(Tick(
            t=t, dt=dt, syns=syns, completions=draw(st.integers(0, syns + 10)), distinct=distinct,
            new_sources=draw(st.floats(0, distinct)) if distinct else 0.0,
            port_syns=draw(st.dictionaries(st.sampled_from([22, 80, 443, 8080]), st.integers(0, syns), max_size=4)),
            top_sources=draw(st.lists(st.tuples(st.sampled_from(ADDRS[:3]),
                                                st.integers(0, syns)), max_size=3)),
            fast_trigger_ports=frozenset(draw(st.sets(st.sampled_from([80, 443]), max_size=1)))
            if draw(st.integers(0, 9)) == 0 else frozenset()))
    return out


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.just(CFG), configs), any_ticks())
def test_property_event_stream_is_well_formed_and_quiet_ends_it(cfg, ticks):
    det = Detector(cfg)
    open_id, ids, starts = None, [], 0
    for tick in ticks + [Tick(t=ticks[-1].t + k, dt=1.0, syns=0, completions=0) for k in range(1, cfg.clear_ticks + 1)]:
        for e in det.update(tick):
            json.loads(json.dumps(e))
            a = e["attack"]
            assert a["kind"] in ("spoofed", "single-source", "botnet")
            assert a["ports"] == sorted(set(a["ports"]))
            assert a["started"] <= tick.t and a["detected_after_s"] >= 0 and a["syns"] >= 0
            if e["event"] == "attack_start":
                assert open_id is None and a["ended"] is None
                open_id = a["id"]
                ids.append(a["id"])
                starts += 1
            else:
                assert a["id"] == open_id
                if e["event"] == "attack_end":
                    assert a["started"] <= a["ended"] <= tick.t and a["duration_s"] >= 0
                    open_id = None
        m = det.mitigation()
        if det.active is not None:
            assert set(det.active["ports"]) <= m["protect_ports"] and (m["protect_all"] or det.active["ports"])
            assert m["protect_until"] >= tick.t
        assert m["protect_until"] is None or m["protect_until"] > tick.t
    assert det.active is None and open_id is None  # clear_ticks empty ticks end any attack
    assert ids == list(range(1, starts + 1)) and sum(det.attacks_total.values()) == starts


# -- issue 19 items 3 and 4: the kind of the UNANSWERED SYNs, at the first tick ------------------

def test_random_flood_next_to_a_busy_port_is_spoofed_and_names_nobody():
    """10k random-source SYN/s next to a port with 500 real clients making 5k SYN/s that complete.
    Before: distinct / SYNs = 10.5k / 15k < 0.9: "botnet", and the real clients were named."""
    legit = [(f"10.77.1.{i}", 160) for i in range(10, 20)]
    tick = tk(61, 15_000, 4950, distinct=10_500, new=10_000, ports={80: 10_000, 443: 5000}, top=legit)
    assert classify(tick, CFG) == "spoofed"
    det = Detector()
    warm(det)
    ev = det.update(tick)
    assert ev[0]["attack"]["kind"] == "spoofed" and ev[0]["attack"]["sources_sample"] == []


@pytest.mark.parametrize("pool,pps", [(4096, 50_000), (65_536, 200_000)])
def test_pooled_spoofed_sources_are_spoofed(pool, pps):
    """A pool of thousands of forged addresses repeats each one several times a second: too
    many to name or deny, so "spoofed" (cookies), not "botnet". Before: "botnet"."""
    tick = tk(61, pps, 40, distinct=pool, new=pool, top=[("192.0.2.1", 64), ("192.0.2.2", 48)])
    assert classify(tick, CFG) == "spoofed"


def test_a_few_hundred_repeating_sources_stay_a_botnet():
    tick = tk(61, 30_000, 40, distinct=340, new=300, top=[(f"100.64.0.{i}", 112) for i in range(10)])
    assert classify(tick, CFG) == "botnet"


def test_single_source_among_real_clients_at_the_first_tick():
    """One source at 30k SYN/s while 200 real clients complete 14k handshakes/s: its share of
    the unanswered SYNs decides, and the real clients are not in sources_sample (before, they
    were named beside it)."""
    top = [("35.239.50.62", 29_000)] + [(f"10.77.1.{i}", 80) for i in range(10, 19)]
    tick = tk(61, 44_000, 13_900, distinct=201, new=1, top=top)
    assert classify(tick, CFG) == "single-source"
    det = Detector()
    warm(det)
    ev = det.update(tick)
    a = ev[0]["attack"]
    assert a["kind"] == "single-source" and a["sources_sample"] == ["35.239.50.62"]
    assert det.mitigation()["deny_sources"] == [("35.239.50.62", 61 + CFG.source_deny)]
