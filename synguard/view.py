"""CLI side of the control socket: requests and the human-readable views."""

from __future__ import annotations

import json
import socket

from synguard.abi import Counter

# Counters in the order `synguard status` shows them (words: synguard.abi.COUNTER_NAMES).
STATUS_COUNTERS = (Counter.SYN_RECEIVED, Counter.CHALLENGE_SENT, Counter.ACK_CHECKED, Counter.COOKIE_VALIDATED,
                   Counter.COOKIE_REFUSED, Counter.SYN_PASSED, Counter.SYN_ALLOW_CIDR, Counter.SYN_DROPPED_DENY,
                   Counter.MALFORMED)
# The daemon's periodic log line.
LOG_COUNTERS = (Counter.SYN_RECEIVED, Counter.CHALLENGE_SENT, Counter.COOKIE_VALIDATED, Counter.COOKIE_REFUSED,
                Counter.SYN_PASSED, Counter.SYN_DROPPED_DENY, Counter.MALFORMED)
COOKIE_METHOD_LINES = {
    "kfunc": "kfunc: XDP SYN-ACK + tc bpf_sk_assign_tcp_reqsk, one round trip, options kept",
    "kernel-cookie": "kernel-cookie: XDP answers with the kernel's cookie (bpf_tcp_gen_syncookie), "
                     "tcp_syncookies=2 while protecting, one round trip",
    None: "unavailable on this kernel (observe only)",
}
KERNEL_COUNTERS = ("TcpExt.SyncookiesSent", "TcpExt.SyncookiesRecv", "TcpExt.SyncookiesFailed",
                   "TcpExt.ListenOverflows", "TcpExt.ListenDrops", "TcpExt.TCPReqQFullDoCookies",
                   "TcpExt.TCPReqQFullDrop")


class DaemonUnavailable(RuntimeError):
    pass


def request(path: str, doc: dict, timeout: float = 5.0) -> dict:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(path)
            s.sendall(json.dumps(doc).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
    except (FileNotFoundError, ConnectionRefusedError):
        raise DaemonUnavailable(f"the daemon is not running (no answer on {path}); start it with "
                                f"`synguard run` or `systemctl start synguard`") from None
    except PermissionError:
        raise DaemonUnavailable(f"permission denied on {path}: run as root") from None
    except OSError as e:
        raise DaemonUnavailable(f"control socket {path}: {e}") from None
    reply = json.loads(data or b"{}")
    if "error" in reply:
        raise DaemonUnavailable(f"daemon error: {reply['error']}")
    return reply


def human(value: float, numeric: bool = False) -> str:
    if numeric or abs(value) < 10_000:
        return f"{value:.0f}" if isinstance(value, float) else str(value)
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.1f}{unit}"
    return str(value)


def duration(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def format_status(st: dict, numeric: bool = False) -> str:
    """A fail2ban-style tree of the daemon's state."""
    n = lambda v: human(v, numeric)  # noqa: E731
    mode = st["mode"] + (" (answering SYNs with cookies)" if st["protecting"] else " (counting only)")
    out = [f"synguard {st['version']}  pid {st['pid']}  up {duration(st['uptime_s'])}",
           f"|- mode:        {mode}",
           f"|- ports:       {','.join(map(str, st['ports'])) or 'all'}",
           "|- cookies:     " + COOKIE_METHOD_LINES.get(st.get("cookie_method"), COOKIE_METHOD_LINES[None])
           + (f" ({st['cookie_method_reason']})" if st.get("cookie_method_reason") else ""),
           "|- clients keep: " + st.get("cookie_options", "-")
           + ("; tcp_syncookies=2 held by synguard" if st.get("tcp_syncookies_held") else ""),
           "|- interfaces:"]
    for i, iface in enumerate(st["interfaces"]):
        branch = "`-" if i == len(st["interfaces"]) - 1 else "|-"
        out.append(f"|  {branch} {iface['name']:<12} {iface['xdp_mode']} XDP")
    out.append(f"|- counters:{'':15}{'total':>10} {'/s, last tick':>14}")
    for c in STATUS_COUNTERS:
        out.append(f"|  |- {c.words:<22} {n(st['counters'][c.key]):>10} {n(st['rates'][c.key]):>14}")
    sec = st["secret"]
    out.append(f"|- secret:      generation {sec['generation']}, age {duration(sec['age_s'])}, "
               f"rotates every {duration(sec['rotate_every_s'])} ({sec['source']})")
    k = st["kernel"]["counters"]
    sysctl = st["kernel"]["sysctls"]
    out.append("|- kernel:      " + ", ".join(f"{name.split('.', 1)[1]} {n(k.get(name, 0))}"
                                             for name in KERNEL_COUNTERS[:5]))
    out.append("|  `- sysctls:  " + ", ".join(f"{name.rsplit('.', 1)[-1]}={v}" for name, v in sysctl.items()))
    det = st.get("detection")
    if det:
        a = det["attack"]
        if a:
            sample = a["sources_sample"][:3]
            sources = (f"heaviest sources {', '.join(sample)}" if sample else
                       f"top sampled sources {', '.join(r['source'] for r in st.get('top_sources', [])[:3]) or '-'}")
            out.append(f"|- ATTACK:      {a['kind']} on ports {','.join(map(str, a['ports'])) or 'all'}, "
                       f"peak {n(a['peak_pps'])} SYN/s, detected after {a['detected_after_s']:.1f}s, {sources}")
        else:
            out.append("|- attack:      none detected")
        prot = ",".join(map(str, det["protected_ports"])) or "-"
        out.append(f"|  |- detector:  baseline {n(det['baseline_pps'])} handshakes/s, distinct sources "
                   f"{n(det['sources_distinct'])}/s, cusum {det['cusum']:.2f}")
        so_far = ", ".join(f"{k} {v}" for k, v in det["attacks_total"].items()) or "0"
        if st["mode"] == "auto":
            out.append(f"|  `- auto:      armed ports {prot}; denied sources {len(det['denied_sources'])}; "
                       f"attacks so far {so_far}")
        else:
            out.append(f"|  `- attacks so far {so_far}")
        out.append(oos_line(st, det, n))
    if st["mode"] == "protect":
        which = "attack or not"
        out.append(f"|- protect:     every SYN to ports {','.join(map(str, st['ports'])) or 'all'} is answered "
                   f"in XDP, {which} (the detector only reports)")
    elif st["mode"] == "observe":
        out.append("|- observe:     counting only: nothing is answered or dropped")
    w = st.get("worst_listener")
    if w:
        addr = f"[{w['address']}]" if ":" in w["address"] else w["address"]
        out.append(f"`- worst listener: {addr}:{w['port']}  SynRecv {w['syn_recv']}/{w['backlog']} "
                   f"({w['synq_pct']:.1f}%)  AcceptQ {w['accept_queue']}  of {st['listeners']} listeners")
    elif st["listeners"]:
        out.append(f"`- listeners:   {st['listeners']}, none with half-open connections")
    else:
        out.append("`- worst listener: (no TCP listeners)")
    return "\n".join(out)


def oos_line(st: dict, det: dict, n) -> str:
    """Out-of-state segments at protected ports (ebpf/synguard_scope.h) and the ack-flood detector."""
    c, r = st["counters"], st["rates"]
    kinds = ", ".join(f"{word} {n(c.get(key, 0))} ({n(r.get(key, 0))}/s)" for word, key in
                      (("ACK", "oos_ack"), ("RST", "oos_rst"), ("FIN", "oos_fin"), ("data", "oos_data")))
    a = det.get("ack_flood")
    state = (f"ATTACK {a['kind']}, peak {n(a['peak_pps'])} segments/s, detected after "
             f"{a['detected_after_s']:.1f}s; " if a else "")
    verdict = "dropped before the TCP stack" if det.get("oos_dropping") else "counted, passed to the kernel"
    return f"|- out of state: {state}{kinds}; {verdict} ({n(c.get('oos_dropped', 0))} dropped)"


def ago(now_s: int | None, then_s: int) -> str:
    """"3s ago" from two readings of the program's clock (sg_config.now_s)."""
    if now_s is None:
        return "?"
    return f"{duration(max(0, now_s - then_s))} ago"


def format_top(rows: list[dict], header: bool = True, numeric: bool = False, now_s: int | None = None) -> str:
    lines = [f"{'Source':<40} {'SYNs(est)':>10} {'LastPort':>8} {'LastSeen':>10}"] if header else []
    for r in rows:
        lines.append(f"{r['source']:<40} {human(r['syns'], numeric):>10} {r['last_dport']:>8} "
                     f"{ago(now_s, r['last_seen_s']):>10}")
    if not rows and header:
        lines.append("(no SYNs sampled yet: one SYN in 16 per CPU is recorded)")
    return "\n".join(lines)


def counters_line(now: dict, before: dict | None, seconds: float) -> str:
    """The daemon's counter log line: "SYNs received 10 (2/s), challenges sent ..."."""
    parts = []
    for c in LOG_COUNTERS:
        rate = "" if before is None else f" ({(now[c] - before[c]) / max(seconds, 1e-9):.0f}/s)"
        parts.append(f"{c.words} {now[c]}{rate}")
    return ", ".join(parts)
