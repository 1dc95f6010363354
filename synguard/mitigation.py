"""Detection and auto mitigation: the glue between the program's signals, the
Detector (synguard.detect) and the kernel, fed once per tick by the daemon.

Each tick, one read of the counter map (SYNs, validated cookies, per-port SYNs, the
HyperLogLog of last second's sources), the kernel's passive opens and the heaviest
sampled sources become one detect.Tick. The detector runs in every mode so status
shows what it sees; only in mode auto are the ports it names armed in the kernel
(the program's per-port auto_until) and the sources it names denied for a while.
Reads and writes only the data path it was given.
"""

from __future__ import annotations

import ctypes as ct
import ipaddress
import logging
import os
import time
from collections import deque
from typing import TYPE_CHECKING

from synguard import abi, hll, kernel, status
from synguard.ackflood import OOS_COUNTERS, AckFloodDetector
from synguard.abi import Counter, Mode
from synguard.datapath import addr_key
from synguard.detect import Detector, Tick
from synguard.log import event

if TYPE_CHECKING:
    from synguard.config import Config
    from synguard.datapath import DataPath


TOP_SPARE = 22  # sources read beyond the top 10, in case real clients are among the heaviest
PEER_MEMORY_S = 600.0  # a source that completed a handshake is a real client for this long
PEER_MEMORY_MAX = 65536


class Mitigation:
    def __init__(self, datapath: DataPath):
        self.datapath = datapath
        self.cfg: Config | None = None
        self.detector: Detector | None = None  # made by the first configure()
        self.ackflood: AckFloodDetector | None = None  # out-of-state floods (synguard/ackflood.py)
        self._oos_until = 0  # auto mode: wall-clock second out-of-state drops stay on until (0: off)
        self.hll_history = hll.History()
        self.events: deque[dict] = deque(maxlen=20)  # the detector's last events, for status
        self.sources_distinct = 0.0
        self._prev = None  # (counters, kernel passive opens, port syns) of the last tick
        self._temp_deny: dict[str, float] = {}
        self._armed: dict[int, int] = {}  # port -> wall-clock second it stays armed until
        self._top_at = 0.0
        self._hh: dict[str, int] = {}  # heavy-hitter source -> its sampled SYN count last tick
        self._snap: dict[str, int] = {}  # the sources of the last full read -> their counts then
        self._loud = False  # the previous tick was over the floor (top sources were read)
        self._gappy = False  # ... and had a gap between SYNs and handshakes
        self._peers: dict[str, float] = {}  # address that completed a handshake -> when last seen (mono)

    @property
    def active(self) -> bool:
        """A port or every port ("protect all") is armed, or an attack is on (what
        "protecting" means in mode auto), out-of-state floods included."""
        return (bool(self._armed) or self.datapath.all_until() > time.time()
                or bool(self.detector and self.detector.active)
                or bool(self.ackflood and self.ackflood.active) or bool(self._oos_until))

    def configure(self, cfg: Config) -> None:
        """New detection knobs, watched ports and static denies (start and SIGHUP); the
        detector keeps its baseline and the attack in progress."""
        self.cfg = cfg
        if self.detector is None:
            self.detector = Detector(cfg.detection)
            self.ackflood = AckFloodDetector(cfg.detection)
        else:
            self.detector.reconfigure(cfg.detection)
            self.ackflood.reconfigure(cfg.detection)
        if cfg.mode != Mode.AUTO and self._oos_until:
            self._oos_until = 0
            self.datapath.set_oos_until(0)
        ncpu = os.cpu_count() or 1
        self.datapath.set_fast_trigger(
            -(-cfg.detection.fast_trigger_pps // ncpu) if cfg.detection.fast_trigger_pps else 0, cfg.detection.hold)
        self.watch_ports()
        self._apply_deny()

    def watch_ports(self) -> None:
        """Ports with their own SYN counters: the protected ones, else the listening ones,
        those a local user cannot open first (below 1024, or a socket of root), then by
        port: a user's listeners never push a service's port out of the PORT_SLOTS - 1
        slots. An unwatched port is still protected by "protect all" and armed by the
        fast trigger (the program counts unwatched ports together)."""
        ports = set(self.cfg.protect.ports)
        if ports:
            chosen = sorted(ports)
        else:
            rank: dict[int, int] = {}
            for r in kernel.listeners():
                rank[r.port] = min(rank.get(r.port, 1), 0 if r.port < 1024 or r.uid == 0 else 1)
            chosen = sorted(rank, key=lambda p: (rank[p], p))
        self.datapath.set_watched(chosen[: abi.PORT_SLOTS - 1])

    def _apply_deny(self) -> None:
        temp = [f"{a}/{32 if ':' not in a else 128}" for a in self._temp_deny]
        self.datapath.set_deny_cidrs([*self.cfg.deny, *temp])

    def _completed(self, now: float) -> set[str]:
        """Addresses that completed a handshake with this host (a socket past the handshake,
        TIME_WAIT included) in the last PEER_MEMORY_S seconds: real clients, never named
        as attackers (sources_sample) nor denied."""
        try:
            fresh = kernel.peers()
        except OSError:
            fresh = set()
        for a in fresh:
            self._peers[a] = now
        if len(self._peers) > PEER_MEMORY_MAX or fresh:
            self._peers = {a: t for a, t in self._peers.items() if now - t < PEER_MEMORY_S}
            if len(self._peers) > PEER_MEMORY_MAX:  # keep the most recently seen
                keep = sorted(self._peers.items(), key=lambda at: at[1])[-PEER_MEMORY_MAX:]
                self._peers = dict(keep)
        return set(self._peers)

    def _top_sources(self, now: float, fresh: bool = False) -> list[tuple[str, int]]:
        """SYNs of the heaviest sampled sources that never completed a handshake, during
        the last tick.

        A full read of the per-source map costs ~0.1 s when it is full, so the
        heavy hitters are re-chosen from a full read at most every 5 s, on the first
        tick over the floor, and on the first tick with a gap between SYNs and
        handshakes (`fresh`: a real crowd may have made the ticks loud before), so a
        source that began flooding in the alarm tick is a heavy hitter at once;
        every tick, only those few entries are looked up and their growth since the
        previous tick is reported (so shares compare with this tick's SYNs). A source chosen in a full read grows from its count
        in the previous full read (0 if it was not there: all its SYNs are recent).
        Sources that completed handshakes (kernel.peers) are left out: the tick's
        kind and sources_sample speak of the unanswered SYNs only."""
        table = self.datapath.map("sg_src_syns")
        if now - self._top_at >= 5 or not self._hh or not self._loud or fresh:
            self._top_at = now
            done = self._completed(now)
            rows = [r for r in status.top_sources(self.datapath, 10 + TOP_SPARE) if r["source"] not in done][:10]
            self._hh = {r["source"]: self._hh.get(r["source"], self._snap.get(r["source"], 0)) for r in rows}
            self._snap = {r["source"]: r["syns"] for r in rows}
        out = []
        for addr, before in list(self._hh.items()):
            key = table.Key()
            ct.memmove(key.addr, addr_key(ipaddress.ip_address(addr)), 16)
            try:
                count = int(table[key].syns)
            except KeyError:
                count = before
            self._hh[addr] = count
            if count > before:
                out.append((addr, count - before))
        return sorted(out, key=lambda r: r[1], reverse=True)

    def tick(self, mono: float, wall: int, dt: float, blocks: list, window_s: int | None = None) -> list[dict]:
        """One detector step from the program's signals (blocks: this tick's one read of
        the counter map, see DataPath.read_blocks; window_s: the program's clock,
        sg_config.now_s, while they were counted, default wall - 1); applies auto mitigation."""
        dp = self.datapath
        counters = dp.counters(blocks=blocks)
        opens = kernel.tcp_counters().get("Tcp.PassiveOpens", 0)
        port_syns = dp.port_syns(blocks)
        window_s = wall - 1 if window_s is None else window_s
        regs = dp.hll_registers(window_s, blocks)
        distinct, new = self.hll_history.novelty(regs)
        self.sources_distinct = distinct
        prev, self._prev = self._prev, (counters, opens, port_syns)
        if prev is None:
            return []
        c0, opens0, ports0 = prev
        syns = counters[Counter.SYN_RECEIVED] - c0[Counter.SYN_RECEIVED]
        completions = (counters[Counter.COOKIE_VALIDATED] - c0[Counter.COOKIE_VALIDATED]) + max(0, opens - opens0)
        fast = set()
        if counters[Counter.FAST_TRIGGER] != c0[Counter.FAST_TRIGGER] or self._armed:
            fast = {p for p in port_syns if (dp.port_auto_until(p) - wall) > 0 and p not in self._armed}
        dc = self.cfg.detection
        gate_hint = syns / max(dt, 1e-3) >= dc.floor_pps
        # A gap between SYNs and handshakes (about x > drift): the heavy hitters are re-read
        # on the first such tick, so a source that began flooding in it is known at once.
        gap_hint = gate_hint and (0.9 * syns - completions) / max(dt, 1e-3) > dc.cusum_drift * dc.floor_pps
        top = self._top_sources(mono, fresh=gap_hint and not self._gappy) if gate_hint else []
        self._loud, self._gappy = gate_hint, gap_hint
        tick = Tick(t=mono, dt=dt, syns=max(0, syns), completions=completions, distinct=distinct,
                    new_sources=new, port_syns={p: max(0, n - ports0.get(p, 0)) for p, n in port_syns.items()},
                    top_sources=top, fast_trigger_ports=frozenset(fast))
        events = self.detector.update(tick)
        if self.detector.active is None and self.detector.x_last <= dc.cusum_drift:
            # The history is what normal looks like: an attack's sources (from its alarm tick
            # on, and the suspicious ticks before it) stay out of it, or a flood from a pool of
            # addresses would look "already seen" from its second tick.
            self.hll_history.add(regs, window_s)
        for ev in events:
            a = ev["attack"]
            self.events.append(ev)
            event(ev["event"], f"{ev['event'].replace('_', ' ')}: {a['kind']} on ports "
                  f"{','.join(map(str, a['ports'])) or 'all'}, peak {a['peak_pps']:.0f} SYN/s, "
                  f"sources e.g. {', '.join(a['sources_sample'][:3]) or '-'}",
                  level=logging.WARNING if ev["event"] == "attack_start" else logging.INFO, attack=a)
        events += self._ackflood_tick(mono, wall, dt, {k: max(0, counters[k] - c0[k]) for k in OOS_COUNTERS})
        if self.cfg.mode == Mode.AUTO:
            self._enforce(self.detector.mitigation(mono), mono, wall)
        return events

    def _ackflood_tick(self, mono: float, wall: int, dt: float, oos: dict) -> list[dict]:
        """Out-of-state floods: detect (every mode), and in auto mode drop them in the
        programs (sg_config.oos_until_s) while the detector says so."""
        events = self.ackflood.update(mono, dt, oos)
        for ev in events:
            a = ev["attack"]
            self.events.append(ev)
            event(ev["event"], f"{ev['event'].replace('_', ' ')}: {a['kind']} at the protected ports, "
                  f"peak {a['peak_pps']:.0f} out-of-state segments/s"
                  + (" (auto mode: dropped before the TCP stack)" if self.cfg.mode == Mode.AUTO
                     and ev["event"] != "attack_end" else ""),
                  level=logging.WARNING if ev["event"] == "attack_start" else logging.INFO, attack=a)
        if self.cfg.mode == Mode.AUTO:
            until = self.ackflood.drop_until()
            until_wall = wall + int(round(until - mono)) if until is not None and until > mono else 0
            if until_wall != self._oos_until:
                self._oos_until = until_wall
                self.datapath.set_oos_until(until_wall)
        return events

    def _enforce(self, m: dict, mono: float, wall: int) -> None:
        """Arm the attacked ports in the kernel (auto mode) and keep temporary denies."""
        dp = self.datapath
        wall_of = lambda t: wall + int(round(t - mono))  # noqa: E731
        wanted = {p: wall_of(u) for p, u in m["until_by_port"].items()}
        # "Protect all": one switch the program checks for every protected port, watched
        # or not (arming the watched ports one by one left the others unprotected).
        dp.arm_all(wall_of(m["protect_until"]) if m["protect_all"] and m["protect_until"] is not None else 0)
        for port, until in wanted.items():
            if self._armed.get(port) != until:
                dp.arm_port(port, max(until, dp.port_auto_until(port)))
        for port in set(self._armed) - set(wanted):
            if dp.port_auto_until(port) <= self._armed[port] + 1:
                dp.arm_port(port, 0)  # the fast trigger may have re-armed it meanwhile: keep that
        self._armed = wanted
        deny = {a: u for a, u in m["deny_sources"]}
        if deny.keys() != self._temp_deny.keys():
            self._temp_deny = deny
            self._apply_deny()
