"""SYN-flood detector: one Tick in per second, attack events and a mitigation out.

Pure: no I/O, no kernel, no clock. Time arrives in the ticks (Tick.t is the
monotonic time at the END of the tick, which covers (t - dt, t]). The daemon
builds a Tick from the data path's counters once per tick, calls
Detector.update(tick) and logs the events it returns, then enforces
Detector.mitigation().

Per tick, with c = DetectionConfig and b = the baseline before this tick (completed
handshakes per second, see Baseline):

  rate  = syns / dt                                   (SYN/s, all ports)
  norm  = max(b, c.floor_pps)
  gap   = max(0, 0.9 * syns - completions) / dt        (SYN/s that did not complete,
                                                       beyond a 10 % allowance)
  x     = gap / norm                                   (normalised gap)
  gate  = rate >= max(c.floor_pps, c.baseline_multiple * b)          (volume gate)
          or the evidence is saturated: S has sat at its cap with x >= SATURATED_X
          for SATURATED_TICKS ticks in a row (a flood under the volume gate of a
          busy site is reported late, never not at all); during an attack also
          x >= SATURATED_X (it stays an attack while the evidence is that strong)
  fast  = tick.fast_trigger_ports, plus, when c.fast_trigger_pps > 0, every port
          with port_syns / dt >= c.fast_trigger_pps                  (hard ceiling)

NP-CUSUM: S = min(4 * c.cusum_threshold, max(0, S + x - c.cusum_drift)).
  - The 10 % allowance: normal traffic loses some handshakes (retransmitted
    SYNs, scans of closed ports, clients giving up). A tick where completions
    >= 90 % of SYNs has x = 0 exactly (integer arithmetic), so however big and
    new it is (a flash crowd), it never pushes S up, and it cannot alarm (the
    alarm needs x > drift). That is the guarantee tests/test_detect.py checks
    with hypothesis; a fast-trigger port (below) is the only exception.
  - The cap (4 x threshold) bounds old evidence: S returns to 0 at most
    4 * threshold / drift ticks after the gap closes (drift > 0).
  - While an attack is active, a tick under the gate (and with no fast port) restarts S from that tick
    alone (S = max(0, x - drift)): the attack is tracked by its state from then
    on, and a long flood's huge sum must not delay its end.

Alarm (no attack active): (gate and x > c.cusum_drift and S > c.cusum_threshold)
  or fast is not empty (the kernel already protects those ports; the alarm is
  at once, whatever the handshakes say). One tick whose gap exceeds
  (threshold + drift) x norm alarms on its own: 7000 SYN/s with the defaults
  (floor 2000, drift 0.5, threshold 3) on a site whose normal rate is under
  the floor. A big spoofed flood is thus reported in its first tick, or in its
  second if it began at the very end of the first.
  A slow ramp alarms soon after it crosses the floor if handshakes do not
  follow it (S grows by x - drift each tick, and x grows with the ramp).

Baseline: b is an EWMA of the rate of COMPLETED handshakes, done = min(completions,
  syns) / dt: b += c.ewma_alpha * (done - b). SYNs that never complete (a spoofed
  flood, a trickle under the alarm level, scans of closed ports) cannot train it,
  so neither a long trickle nor a flood raises the gate. Warm start: the first
  learnt tick sets b (until then b = 0 and the gate is c.floor_pps), so a daemon
  started during a flood (a restart, a reboot) alarms like one that saw it begin.
  Updated only while no attack is active and on ticks that do not look suspicious
  (x <= drift, no fast port), while a healthy rise in traffic (more users, a
  flash crowd whose handshakes complete) is learnt. Known blind spot: a botnet
  that completes its handshakes is a flash crowd here (x = 0).

Attack start: the attack "started" at the beginning of the CUSUM excursion that
  led to the alarm (the start of the first tick since S was last 0; the classic
  CUSUM change-point estimate), or at the start of the alarm tick.
  detected_after_s = alarm tick's t - started; detected_after_ticks = the ticks of the
  excursion up to and including the alarm tick (what tests bound: a busy machine
  stretches seconds, not ticks).

Classification (at the start, then on each active tick with gate open and
  x > drift, or a fast port; a change needs 2 consecutive ticks agreeing), on the
  tick's UNANSWERED SYNs, u = syns - completions (a busy neighbour port's real
  clients must not change the kind), decided by what the mitigation can do:
  - "single-source": the top source's estimated SYNs / u >= c.single_source_share,
    or distinct <= 2: the source itself is denied (XDP drops its SYNs). The
    daemon leaves sources that completed handshakes out of top_sources, and
    re-reads the heavy hitters on the first tick over the floor, so this is
    known at the alarm tick;
  - "spoofed": too many sources to name: new_sources >= BLOCKABLE_SOURCES in the
    tick (a random flood, or a pool of thousands of addresses), or
    distinct / u >= c.spoofed_distinct_ratio and new_sources / distinct >=
    c.spoofed_new_ratio. Blocking by address is pointless: cookies answer it;
  - otherwise "botnet": fewer than BLOCKABLE_SOURCES repeating sources that do
    not complete handshakes; sources_sample is worth blocking upstream.

Ports attacked: each watched port has its own baseline (an EWMA of its SYN
  rate, updated on the same ticks as b, from 0). A port is attacked when its
  excess over its baseline is >= 10 % of the tick's excess over b and
  >= c.floor_pps / 10 SYN/s, so a busy port carrying normal traffic is not
  blamed for a flood on its neighbour. Ports = the union over the attack's
  ticks (gate open, or a fast port) plus the fast ports. An attack no watched
  port accounts for has ports [] and mitigation() says protect_all.

End (hysteresis): a tick is quiet when the gate is closed, no port is fast and
  S < c.cusum_threshold / 2 (after the restart above). The attack ends at the
  c.clear_ticks-th consecutive quiet tick; "ended" is the t of its last
  non-quiet tick, so ended - started is the attack's duration. The end is
  decided on volume, not on handshakes: once challenged, a botnet may complete
  handshakes (cookies count as completions) while it still floods.

Events (Detector.update's return value), JSON-ready:
  {"event": "attack_start" | "attack_update" | "attack_end", "attack": {
     "id": int (1, 2, ...), "kind": str, "ports": [sorted ints],
     "started": t, "detected_after_s": s, "detected_after_ticks": n, "peak_pps": max SYN/s over the attack's ticks,
     "syns": SYNs of the excursion and of the attack's ticks,
     "sources_sample": up to 5 heaviest sources of the last attack tick (sources_sample():
                       none for "spoofed"; those with >= 10 % of the heaviest one's SYNs),
     "ended": t or None, "duration_s": ended (or last tick) - started}}
  attack_update only when the kind or the ports change or the peak reaches
  1.5 x the peak last reported.

Mitigation (Detector.mitigation(now=None); now defaults to the last tick's t):
  {"protect_ports": set of ports, "protect_until": t or None (nothing protected),
   "until_by_port": {port: t}, "protect_all": bool,
   "deny_sources": [(address, until t), ...]}
  - active attack: its ports, until the last attack tick + c.hold (so re-read
    each tick: the deadline moves with the attack);
  - ended attack: its ports until ended + c.hold; then they drop out;
  - single-source attack: its source (the sources at or above
    single_source_share, and with distinct <= 2 the top two) is denied until
    the last tick it was seen attacking + c.source_deny, instead of challenged.

State worth exporting: Detector.active (the current attack dict or None),
.cusum, .baseline, .port_baseline, .attacks_total (Counter by kind, counted at the start),
.distinct_last, .gate_open, .x_last.
"""

from __future__ import annotations

import copy
import math
import types
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from synguard.config import DetectionConfig

KINDS = ("spoofed", "single-source", "botnet")

ALLOWANCE_NUM, ALLOWANCE_DEN = 9, 10  # a tick with completions >= 9/10 of its SYNs has no gap
CUSUM_CAP = 4.0  # x cusum_threshold
SATURATED_X = 1.0  # a tick feeds the saturation count when x >= this (unanswered SYN/s >= the normal handshake rate)
SATURATED_TICKS = 10  # ... and S sits at its cap, this many ticks in a row: the volume gate opens
PORT_SHARE = 0.10  # a port is attacked if it gets >= 10 % of the tick's excess SYN/s ...
PORT_FLOOR_FRACTION = 0.10  # ... and >= floor_pps / 10 SYN/s over its own baseline
PORT_BASELINE_DROP = 0.01  # a port baseline under this (SYN/s) is forgotten
KIND_CONFIRM_TICKS = 2  # consecutive ticks that must agree to change an attack's kind
PEAK_UPDATE_GROWTH = 1.5  # attack_update when the peak reaches 1.5 x the last reported peak
SOURCES_SAMPLE = 5
SAMPLE_REL = 0.1  # sources_sample: a source with >= this share of the heaviest source's SYNs
FEW_SOURCES = 2.5  # distinct < this: at most two sources (HLL estimates 2 sources as ~2.002)
BLOCKABLE_SOURCES = 1000  # new sources in one tick from this many on: too many to name and block: "spoofed"


@dataclass(frozen=True)
class Tick:
    """What the data path saw during (t - dt, t]. Validated; containers made read-only."""

    t: float
    dt: float
    syns: int
    completions: int
    distinct: float = 0.0
    new_sources: float = 0.0
    port_syns: Mapping[int, int] = field(default_factory=dict)
    top_sources: Sequence[tuple[str, int]] = ()
    fast_trigger_ports: frozenset[int] = frozenset()

    def __post_init__(self):
        for name in ("t", "dt", "distinct", "new_sources"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"Tick.{name} must be a finite number, got {v!r}")
        if self.dt <= 0:
            raise ValueError(f"Tick.dt must be positive, got {self.dt!r}")
        for name in ("syns", "completions"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"Tick.{name} must be an integer >= 0, got {v!r}")
        if self.distinct < 0 or self.new_sources < 0:
            raise ValueError("Tick.distinct and Tick.new_sources must be >= 0")
        ports = {int(p): int(n) for p, n in dict(self.port_syns).items()}
        if any(n < 0 for n in ports.values()):
            raise ValueError("Tick.port_syns counts must be >= 0")
        top = tuple(sorted(((str(a), int(n)) for a, n in self.top_sources), key=lambda an: -an[1]))
        object.__setattr__(self, "port_syns", types.MappingProxyType(ports))
        object.__setattr__(self, "top_sources", top)
        object.__setattr__(self, "fast_trigger_ports", frozenset(int(p) for p in self.fast_trigger_ports))

    __hash__ = None  # type: ignore[assignment]  # holds a mapping


def classify(tick: Tick, cfg: DetectionConfig) -> str:
    """The kind of attack this tick's UNANSWERED SYNs look like (see the module docstring)."""
    unanswered = tick.syns - min(tick.completions, tick.syns)
    if unanswered <= 0:
        return "botnet"
    distinct = tick.distinct
    top = tick.top_sources[0][1] if tick.top_sources else 0
    if top / unanswered >= cfg.single_source_share or distinct < FEW_SOURCES:
        return "single-source"
    if tick.new_sources >= BLOCKABLE_SOURCES or (
            distinct / unanswered >= cfg.spoofed_distinct_ratio and distinct > 0
            and tick.new_sources / distinct >= cfg.spoofed_new_ratio):
        return "spoofed"
    return "botnet"


def sources_sample(tick: Tick, kind: str) -> list[str]:
    """The sources worth naming for an attack of `kind`: none for "spoofed" (forged or too
    many to block: an address there would point the operator at a bystander), else up to
    SOURCES_SAMPLE heaviest sources sending at least SAMPLE_REL of the heaviest one's SYNs
    (a real client among a single source's SYNs is not named)."""
    if kind == "spoofed" or not tick.top_sources:
        return []
    top = tick.top_sources[0][1]
    return [a for a, n in tick.top_sources[:SOURCES_SAMPLE] if n >= SAMPLE_REL * top]


def _round(x: float, nd: int) -> float:
    return float(round(x, nd))


class Detector:
    """Feed update() once per tick; see the module docstring."""

    def __init__(self, cfg: DetectionConfig | None = None):
        self.cfg = cfg if cfg is not None else DetectionConfig()
        self.baseline = 0.0  # completed handshakes/s (nothing learnt yet: the gate is floor_pps)
        self.baseline_ticks = 0  # ticks learnt
        self._saturated = 0  # consecutive ticks with S at its cap and x >= SATURATED_X
        self.port_baseline: dict[int, float] = {}
        self.cusum = 0.0
        self.active: dict[str, Any] | None = None
        self.attacks_total: Counter[str] = Counter()
        self.distinct_last = 0.0
        self.gate_open = False
        self.x_last = 0.0
        self.last_t: float | None = None
        self._next_id = 1
        self._exc_start: float | None = None  # start of the current CUSUM excursion
        self._exc_syns = 0
        self._exc_peak = 0.0
        self._quiet = 0
        self._last_attack_t = 0.0
        self._reported_peak = 0.0
        self._pending_kind: str | None = None
        self._pending_n = 0
        self._held: dict[int, float] = {}  # port -> protected until (ended attacks)
        self._held_all_until: float | None = None
        self._denied: dict[str, float] = {}  # address -> denied until

    def reconfigure(self, cfg: DetectionConfig) -> None:
        """New knobs (SIGHUP); baseline, CUSUM and the attack in progress are kept."""
        self.cfg = cfg

    # -- per tick ---------------------------------------------------------------------

    def update(self, tick: Tick) -> list[dict]:
        """Process one tick; returns the events it caused (usually none)."""
        if self.last_t is not None and tick.t < self.last_t:
            raise ValueError(f"tick time went backwards: {tick.t} < {self.last_t}")
        c = self.cfg
        self.last_t = tick.t
        self.distinct_last = float(tick.distinct)
        rate = tick.syns / tick.dt
        norm = max(self.baseline, float(c.floor_pps))
        gap = max(0, ALLOWANCE_NUM * tick.syns - ALLOWANCE_DEN * tick.completions) / ALLOWANCE_DEN / tick.dt
        x = gap / norm
        gate = rate >= max(float(c.floor_pps), c.baseline_multiple * self.baseline)
        if self.active is not None and x >= SATURATED_X:
            gate = True  # an attack under the volume gate stays an attack while the evidence is this strong
        fast = set(tick.fast_trigger_ports)
        if c.fast_trigger_pps > 0:
            fast |= {p for p, n in tick.port_syns.items() if n / tick.dt >= c.fast_trigger_pps}
        self.gate_open, self.x_last = gate, x

        prev = self.cusum
        if self.active is not None and not gate and not fast:
            s = max(0.0, x - c.cusum_drift)
        else:
            s = max(0.0, prev + x - c.cusum_drift)
        self.cusum = min(s, CUSUM_CAP * c.cusum_threshold)
        cap = CUSUM_CAP * c.cusum_threshold
        self._saturated = self._saturated + 1 if self.cusum >= cap and x >= SATURATED_X else 0
        if not gate and self._saturated >= SATURATED_TICKS:
            gate = self.gate_open = True

        self._expire(tick.t)
        if self.active is None:
            return self._idle_tick(tick, rate, x, gate, fast)
        return self._active_tick(tick, rate, x, gate, fast)

    def _idle_tick(self, tick: Tick, rate: float, x: float, gate: bool, fast: set[int]) -> list[dict]:
        c = self.cfg
        if self.cusum > 0:
            if self._exc_start is None:
                self._exc_start, self._exc_syns, self._exc_peak, self._exc_ticks = tick.t - tick.dt, 0, 0.0, 0
            self._exc_syns += tick.syns
            self._exc_ticks += 1
            self._exc_peak = max(self._exc_peak, rate)
        else:
            self._exc_start = None
        alarm = bool(fast) or (gate and x > c.cusum_drift and self.cusum > c.cusum_threshold)
        if not alarm:
            if x <= c.cusum_drift and not fast:
                self._learn(tick, rate)
            return []
        if self._exc_start is not None:
            started, syns, peak, ticks = self._exc_start, self._exc_syns, max(self._exc_peak, rate), self._exc_ticks
        else:
            started, syns, peak, ticks = tick.t - tick.dt, tick.syns, rate, 1
        kind = classify(tick, c)
        ports = self._attacked_ports(tick, rate) | fast
        self.active = {
            "id": self._next_id,
            "kind": kind,
            "ports": sorted(ports),
            "started": started,
            "detected_after_s": _round(tick.t - started, 3),
            "detected_after_ticks": ticks,
            "peak_pps": _round(peak, 1),
            "syns": syns,
            "sources_sample": sources_sample(tick, kind),
            "ended": None,
            "duration_s": _round(tick.t - started, 3),
        }
        self._next_id += 1
        self.attacks_total[kind] += 1
        self._quiet = 0
        self._last_attack_t = tick.t
        self._reported_peak = peak
        self._pending_kind, self._pending_n = None, 0
        self._exc_start = None
        if kind == "single-source":
            self._deny(tick)
        return [self._event("attack_start")]

    def _active_tick(self, tick: Tick, rate: float, x: float, gate: bool, fast: set[int]) -> list[dict]:
        c = self.cfg
        a = self.active
        assert a is not None
        if not gate and not fast:
            self._quiet = self._quiet + 1 if self.cusum < c.cusum_threshold / 2 else 0
            if self._quiet >= c.clear_ticks:
                return [self._end()]
            return []
        self._quiet = 0
        self._last_attack_t = tick.t
        a["syns"] += tick.syns
        a["duration_s"] = _round(tick.t - a["started"], 3)
        peak = max(a["peak_pps"], rate)
        a["peak_pps"] = _round(peak, 1)
        changed = False
        ports = set(a["ports"]) | self._attacked_ports(tick, rate) | fast
        if ports != set(a["ports"]):
            a["ports"] = sorted(ports)
            changed = True
        if x > c.cusum_drift or fast:
            kind = classify(tick, c)
            if kind == a["kind"]:
                self._pending_kind, self._pending_n = None, 0
            else:
                self._pending_n = self._pending_n + 1 if kind == self._pending_kind else 1
                self._pending_kind = kind
                if self._pending_n >= KIND_CONFIRM_TICKS:
                    a["kind"] = kind
                    self._pending_kind, self._pending_n = None, 0
                    changed = True
            if tick.top_sources:
                a["sources_sample"] = sources_sample(tick, a["kind"])
            if a["kind"] == "single-source" and kind == "single-source":
                self._deny(tick)
        if peak > self._reported_peak and peak >= PEAK_UPDATE_GROWTH * self._reported_peak:
            changed = True
        if not changed:
            return []
        self._reported_peak = peak
        return [self._event("attack_update")]

    def _end(self) -> dict:
        c = self.cfg
        a = self.active
        assert a is not None
        a["ended"] = self._last_attack_t
        a["duration_s"] = _round(a["ended"] - a["started"], 3)
        until = a["ended"] + c.hold
        for p in a["ports"]:
            self._held[p] = max(self._held.get(p, until), until)
        if not a["ports"]:
            self._held_all_until = max(self._held_all_until or until, until)
        event = self._event("attack_end")
        self.active = None
        self.cusum = 0.0
        self._quiet = 0
        self._exc_start = None
        self._pending_kind, self._pending_n = None, 0
        return event

    # -- helpers ---------------------------------------------------------------------------

    def _learn(self, tick: Tick, rate: float) -> None:
        """One EWMA step of the baseline (completed handshakes/s; the first step sets it)
        and of every port's baseline (SYN/s)."""
        alpha = self.cfg.ewma_alpha
        done = min(tick.completions, tick.syns) / tick.dt
        self.baseline = done if self.baseline_ticks == 0 else self.baseline + alpha * (done - self.baseline)
        self.baseline_ticks += 1
        pb = self.port_baseline
        for p in set(pb) | set(tick.port_syns):
            v = pb.get(p, 0.0)
            v += alpha * (tick.port_syns.get(p, 0) / tick.dt - v)
            if v < PORT_BASELINE_DROP:
                pb.pop(p, None)
            else:
                pb[p] = v

    def _attacked_ports(self, tick: Tick, rate: float) -> set[int]:
        excess = max(0.0, rate - self.baseline)
        need = max(PORT_SHARE * excess, PORT_FLOOR_FRACTION * self.cfg.floor_pps)
        return {p for p, n in tick.port_syns.items()
                if n > 0 and n / tick.dt - self.port_baseline.get(p, 0.0) >= need}

    def _deny(self, tick: Tick) -> None:
        c = self.cfg
        # Shares of the unanswered SYNs, as the kind is decided (classify): a busy port's real
        # clients complete their handshakes and must not dilute the flooder's share.
        unanswered = tick.syns - min(tick.completions, tick.syns)
        if not tick.top_sources or unanswered <= 0:
            return
        heavy = [a for a, n in tick.top_sources if n > 0 and n / unanswered >= c.single_source_share]
        if tick.distinct < FEW_SOURCES:
            # Few sources: deny the heavy ones only (>= a quarter of the SYNs each), never a
            # light source that merely shares the tick with the attacker (a real client).
            heavy += [a for a, n in tick.top_sources[:2] if n > 0 and n / unanswered >= 0.25 and a not in heavy]
        for addr in heavy:
            self._denied[addr] = tick.t + c.source_deny

    def _expire(self, now: float) -> None:
        self._held = {p: u for p, u in self._held.items() if u > now}
        if self._held_all_until is not None and self._held_all_until <= now:
            self._held_all_until = None
        self._denied = {a: u for a, u in self._denied.items() if u > now}

    def _event(self, name: str) -> dict:
        assert self.active is not None
        return {"event": name, "attack": copy.deepcopy(self.active)}

    # -- what to enforce ---------------------------------------------------------------

    def mitigation(self, now: float | None = None) -> dict:
        """What the daemon should enforce at `now` (default: the last tick's t)."""
        if now is None:
            now = self.last_t if self.last_t is not None else 0.0
        until = {p: u for p, u in self._held.items() if u > now}
        protect_all = self._held_all_until is not None and self._held_all_until > now
        all_until = self._held_all_until if protect_all else None
        if self.active is not None:
            live = self._last_attack_t + self.cfg.hold
            for p in self.active["ports"]:
                until[p] = max(until.get(p, live), live)
            if not self.active["ports"]:
                protect_all = True
                all_until = max(all_until or live, live)
        ends = list(until.values()) + ([all_until] if all_until is not None else [])
        return {
            "protect_ports": set(until),
            "protect_until": max(ends) if ends else None,
            "until_by_port": dict(sorted(until.items())),
            "protect_all": protect_all,
            "deny_sources": sorted((a, u) for a, u in self._denied.items() if u > now),
        }
