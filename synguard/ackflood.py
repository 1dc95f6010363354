"""Out-of-state flood detection: attack kinds "ack-flood" (pure ACKs or data),
"rst-flood" and "fin-flood" (the kind with most segments names the attack).

Kept apart from synguard.detect (the SYN detector, its baseline and its kinds): this
one reads only the programs' out-of-state counters (SG_CNT_OOS_*, ebpf/synguard_scope.h),
one delta per daemon tick, and says when to drop them in auto mode.

Rule: out-of-state segments at protected ports are ~0/s on a healthy server (each is
one the kernel would answer with a RST or discard: a segment after its socket's
TIME_WAIT ended, a peer that rebooted), so a fixed floor needs no baseline:
  start: one tick at or above detection.ack_flood_pps (detected <= 1 tick after the
         flood crosses it: <= 2 s with the 1-s tick);
  end:   detection.clear_ticks consecutive ticks below it;
  drop:  from the start until the last tick at or above the floor + detection.hold.
ack_flood_pps = 0 turns the detector off (auto mode then never drops them; protect
mode always does).

Events are shaped like synguard.detect's (event, attack{id, kind, ports, started,
detected_after_s, peak_pps, ...}) so status, logs and metrics show both alike;
"ports" is [] (every protected port) and "peak_pps" counts segments, not SYNs.
"""

from __future__ import annotations

import collections

from synguard.abi import Counter

KINDS = ("ack-flood", "rst-flood", "fin-flood")
KIND_OF = {Counter.OOS_ACK: "ack-flood", Counter.OOS_DATA: "ack-flood", Counter.OOS_RST: "rst-flood",
           Counter.OOS_FIN: "fin-flood"}
OOS_COUNTERS = tuple(KIND_OF)


class AckFloodDetector:
    def __init__(self, cfg):
        self.cfg = cfg  # DetectionConfig: ack_flood_pps, clear_ticks, hold
        self.active: dict | None = None
        self.attacks_total: collections.Counter = collections.Counter()
        self.last_attack_t: float | None = None  # the last tick at or above the floor
        self._quiet = 0
        self._next_id = 1

    def reconfigure(self, cfg) -> None:
        self.cfg = cfg

    @staticmethod
    def kind_of(oos: dict) -> str:
        by_kind = collections.Counter()
        for c, n in oos.items():
            by_kind[KIND_OF[c]] += n
        return by_kind.most_common(1)[0][0] if by_kind else "ack-flood"

    def update(self, t: float, dt: float, oos: dict) -> list[dict]:
        """One tick: oos = out-of-state segments per Counter.OOS_* since the last tick."""
        floor = self.cfg.ack_flood_pps
        total = sum(oos.values())
        rate = total / max(dt, 1e-3)
        above = bool(floor) and rate >= floor
        a = self.active
        if a is None:
            if not above:
                return []
            kind = self.kind_of(oos)
            self.active = {"id": self._next_id, "kind": kind, "ports": [], "started": t - dt,
                           "detected_after_s": round(dt, 3), "detected_after_ticks": 1, "peak_pps": round(rate, 1),
                           "segments": total, "sources_sample": [], "ended": None, "duration_s": round(dt, 3)}
            self._next_id += 1
            self.attacks_total[kind] += 1
            self.last_attack_t, self._quiet = t, 0
            return [{"event": "attack_start", "attack": dict(self.active)}]
        a["segments"] += total
        a["duration_s"] = round(t - a["started"], 3)
        if above:
            self.last_attack_t, self._quiet = t, 0
            kind = self.kind_of(oos)
            if kind != a["kind"] or rate >= 1.5 * a["peak_pps"]:
                a["kind"], a["peak_pps"] = kind, round(max(rate, a["peak_pps"]), 1)
                return [{"event": "attack_update", "attack": dict(a)}]
            return []
        self._quiet += 1
        if self._quiet < self.cfg.clear_ticks:
            return []
        a["ended"] = self.last_attack_t
        a["duration_s"] = round(self.last_attack_t - a["started"], 3)
        self.active = None
        return [{"event": "attack_end", "attack": a}]

    def drop_until(self) -> float | None:
        """Until when out-of-state segments are dropped (auto mode), or None."""
        if self.last_attack_t is None or (self.active is None and not self.cfg.ack_flood_pps):
            return None
        return self.last_attack_t + self.cfg.hold
