"""The control socket's answers (`synguard status --json`, `synguard top`): the status
document, the per-second rates and top sources it shows. Read-only over the daemon and maps."""

from __future__ import annotations

import heapq
import os
import time

from synguard import __version__, kernel
from synguard.abi import Counter, Mode
from synguard.datapath import addr_of_key


def rates(history: list) -> dict[str, float]:
    """Counters per second over the last tick of history [(monotonic time, counters)].

    The last tick only (about 1 s): an average over several ticks would show a
    flood's first seconds at a fraction of its real rate."""
    if len(history) < 2:
        return {c.key: 0.0 for c in Counter}
    (t0, c0), (t1, c1) = history[-2], history[-1]
    dt = max(t1 - t0, 1e-9)
    return {c.key: (c1[c] - c0[c]) / dt for c in Counter}


def rates_window(history: list) -> float:
    """Seconds the rates of rates(history) are averaged over (0: none yet)."""
    return round(history[-1][0] - history[-2][0], 3) if len(history) >= 2 else 0.0


def answer(d, request: dict) -> dict:
    """The reply to one control-socket request (synguard.control) to daemon d."""
    cmd = request.get("cmd")
    if cmd == "status":
        return document(d)
    if cmd == "top":
        return {"sources": top_sources(d.datapath, int(request.get("n", 10))), "now_s": d.datapath.config()["now_s"]}
    if cmd == "ping":
        return {"ok": True, "version": __version__}
    return {"error": f"unknown command {cmd!r}"}


def document(d) -> dict:
    """The status of daemon d (synguard.daemon.Daemon)."""
    dp = d.datapath
    total, rows = kernel.worst_listeners(2)  # rows for the worst two only: fast with many listeners
    m = d.config.metrics
    ours = [r for r in rows if m.enabled and r.port == m.port and r.address == m.host]  # our own /metrics
    worst = next((r for r in rows if r not in ours and r.syn_recv > 0), None)
    return {
        "version": __version__,
        "pid": os.getpid(),
        "uptime_s": round(time.time() - d.started, 1),
        "mode": d.config.mode.label,
        "cookie_method": dp.cookie_method,
        "cookie_method_reason": getattr(dp, "cookie_method_reason", None),
        "cookie_method_why": getattr(dp, "cookie_method_why", None),
        "cookie_options": kernel.cookie_options(dp.cookie_method, dp.config()["tcp_opts"]),
        "tcp_syncookies_held": bool(d.syncookies and d.syncookies.held),
        "protecting": d.protecting,
        "ports": list(d.config.protect.ports),
        "interfaces": [{"name": n, "xdp_mode": m, "counters": {c.key: v for c, v in dp.counters(n).items()}}
                       for n, m in dp.attached.items()],
        "counters": {c.key: v for c, v in dp.counters().items()},
        "rates": d.rates(),
        "rates_window_s": d.rates_window(),
        "secret": {"generation": d.keys.epoch, "age_s": round(time.time() - d.keys.since, 1),
                   "rotate_every_s": d.config.secret.rotate_every,
                   "source": "file" if d.config.secret.file else "random"},
        "kernel": {"counters": kernel.tcp_counters(), "sysctls": kernel.sysctls()},
        "worst_listener": None if worst is None else kernel.to_json([worst])[0],
        "listeners": total,
        "config": {"path": d.config_path, "last_reload_ok": d.last_reload_ok, **d.reloads},
        "detection": detection(d),
        "top_sources": top_sources(dp, 3) if d.mitigation.detector and d.mitigation.detector.active else [],
    }


def detection(d) -> dict:
    det = d.mitigation.detector
    m = det.mitigation() if det else {"protect_ports": set(), "deny_sources": []}
    return {
        "attack": det.active if det else None,
        "attacks_total": dict(det.attacks_total) if det else {},
        "cusum": round(det.cusum, 3) if det else 0.0,
        "baseline_pps": round(det.baseline, 1) if det else 0.0,
        "sources_distinct": round(d.mitigation.sources_distinct),
        "protected_ports": sorted(m["protect_ports"]),
        "denied_sources": [a for a, _ in m["deny_sources"]],
        "events": list(d.mitigation.events),
        "ack_flood": d.mitigation.ackflood.active if d.mitigation.ackflood else None,
        "oos_dropping": d.config.mode == Mode.PROTECT or bool(d.mitigation._oos_until),
    }


def top_sources(dp, n: int = 10) -> list[dict]:
    """The n heaviest sources of sg_src_syns; only the n largest are kept while reading
    (bounded memory)."""
    rows = (_src_row(key, leaf) for key, leaf in dp.entries("sg_src_syns"))
    return [{"source": str(addr_of_key(raw)), "syns": syns, "last_seen_s": last_seen, "last_dport": last_dport}
            for syns, raw, last_seen, last_dport in heapq.nlargest(n, rows, key=lambda r: r[0])]


def _src_row(key, leaf) -> tuple[int, bytes, int, int]:
    """(syns, 16-byte address, last_seen_s, last_dport), copied out of the batch read's buffers."""
    return int(leaf.syns), bytes(key.addr), int(leaf.last_seen_s), int(leaf.last_dport)
