"""The kernel's TCP state for the network namespace the caller is in.

Contract:
- Everything here reads the namespace of the *calling thread* at call time:
  each ``listeners()`` call opens its own sock_diag netlink socket (a netlink
  socket stays bound to the netns it was created in), and the /proc files are
  read through ``/proc/thread-self/net`` and ``/proc/sys/net`` (both follow the
  thread, unlike ``/proc/self/net`` which follows the main thread). So
  ``with lab.netns(ns): kernel.listeners()`` sees that namespace.
- ``listeners(port=None)``: one row per TCP LISTEN socket address (IPv4 and
  IPv6) from netlink sock_diag, never /proc/net/tcp:
  * ``accept_queue`` = idiag_rqueue, ``backlog`` = idiag_wqueue of the LISTEN
    socket (what ``ss -lnt`` prints as Recv-Q / Send-Q; the backlog is
    min(listen() backlog, net.core.somaxconn)).
  * ``syn_recv`` = request sockets in SYN_RECV (half-open) matched to their
    listener by local port and local address; a listener on 0.0.0.0 / ::
    takes every address of its family that has no listener of its own.
    The kernel gives a request socket its listener's family, so IPv4 SYNs
    taken by a dual-stack [::] listener come back as AF_INET6 requests with a
    ``::ffff:a.b.c.d`` local address: those are counted for the IPv6
    listener (mapped address, else [::]); only when no IPv6 listener fits
    (cannot normally happen) do they fall back to an IPv4 listener on that
    port. Full sockets in SYN_RECV (TCP Fast Open children) are counted too,
    exactly like ``ss state syn-recv``. While SYN cookies are being sent the
    kernel makes no request sockets, so syn_recv stays low then.
  * Listeners sharing one address and port (SO_REUSEPORT groups, or
    SO_BINDTODEVICE on different devices) are merged into one row with the
    accept queues and backlogs summed: request sockets carry no reference to
    the individual listener, so the half-open count exists only per group.
  * ``port`` restricts the dump in the kernel (an inet_diag bytecode filter on
    the local port), so watching one port costs only that port's sockets.
- ``tcp_counters()``: every field of the TcpExt section of /proc/net/netstat
  and of the Tcp section of /proc/net/snmp as one flat dict keyed
  ``"TcpExt.<Name>"`` / ``"Tcp.<Name>"`` (e.g. ``"TcpExt.SyncookiesSent"``,
  ``"Tcp.PassiveOpens"``); values are ints (``Tcp.MaxConn`` is -1). A counter
  the running kernel does not have is absent, not 0.
- ``sysctls()``: ``net.ipv4.tcp_syncookies``, ``net.ipv4.tcp_max_syn_backlog``,
  ``net.core.somaxconn``, ``net.ipv4.tcp_synack_retries`` as ints, keyed by
  their dotted names; a missing file is omitted. All four are per netns.
- ``synack_settings(mtu)``: (mss4, mss6, wscale, tcp_opts) for DataPath.set_synack:
  what a cookie SYN-ACK may offer given this netns's TCP sysctls (the kernel refuses
  a connection whose cookie offered an option its sysctls disable) and an MTU;
  ``min_mtu(interfaces)``: the smallest MTU among them (1500 if none is readable).
- ``cookie_options(method, tcp_opts)``: what a client answered by XDP keeps, in words;
  ``SyncookiesHold``: tcp_syncookies=2 while the kernel-cookie method protects.
- ``format_listeners(rows)``: an ss-style table (SynQ% descending, then
  address and port); ``to_json(rows)``: plain dicts with keys address, port,
  family, syn_recv, accept_queue, backlog, synq_pct.

Cost: one ``listeners()`` call is two netlink dumps (AF_INET, AF_INET6, each
asking for LISTEN | SYN_RECV at once) parsed with ``struct`` straight from the
receive buffer. See ``_collect`` for why this does not use pyroute2's
DiagSocket decoding, and ``python -m synguard_lab.kernel_bench`` for the figures.
"""

from __future__ import annotations

import contextlib
import errno
import heapq
import ipaddress
import os
import socket
import stat
import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from synguard import abi

__all__ = ["Listener", "listeners", "peers", "tcp_counters", "sysctls", "synack_settings", "min_mtu",
           "format_listeners", "to_json", "SYSCTLS"]

# linux/netlink.h, linux/sock_diag.h, linux/inet_diag.h, net/tcp_states.h
NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x01
NLM_F_DUMP = 0x300            # NLM_F_ROOT | NLM_F_MATCH
TCP_SYN_RECV = 3
TCP_LISTEN = 10
INET_DIAG_REQ_BYTECODE = 1
INET_DIAG_BC_S_EQ = 11

_NLMSGHDR = struct.Struct("=IHHII")            # len, type, flags, seq, pid
# inet_diag_req_v2: family, protocol, ext, pad, states, then inet_diag_sockid
# (sport, dport big-endian; src, dst 16 bytes each; if; cookie[2]).
_REQ_V2 = struct.Struct("=BBBxI")
_SOCKID = struct.Struct(">HH16s16sIII")
_NLA = struct.Struct("=HH")
_BC_OP = struct.Struct("=BBH")                 # inet_diag_bc_op: code, yes, no
_NLMSGERR = struct.Struct("=i")

# Offsets inside one message (nlmsghdr is 16 bytes, inet_diag_msg follows):
# +16 family, +17 state, +20 sport (BE), +24 src[16], +72 rqueue, +76 wqueue.
_OFF_FAMILY = 16
_OFF_STATE = 17
_SPORT_SRC = struct.Struct(">4xH2x16s")        # read at +16: (sport, src16)
_QUEUES = struct.Struct("=II")                 # read at +72: (rqueue, wqueue)
_UID = struct.Struct("=I")                     # read at +80: idiag_uid
_MSG_MIN = 16 + 72

_RECV_BUF = 1 << 16   # the kernel fills at most ~32 KiB per dump skb
_V4_MAPPED = b"\x00" * 10 + b"\xff\xff"
_ANY4 = b"\x00" * 4
_ANY6 = b"\x00" * 16

SYSCTLS = (
    "net.ipv4.tcp_syncookies",
    "net.ipv4.tcp_max_syn_backlog",
    "net.core.somaxconn",
    "net.ipv4.tcp_synack_retries",
)


@dataclass(frozen=True)
class Listener:
    """One TCP listening address and its queues (see the module docstring)."""

    address: str        # "0.0.0.0", "10.0.0.1", "::", "fd00::1"
    port: int
    family: int         # 4 or 6
    syn_recv: int       # half-open request sockets (SYN queue length)
    accept_queue: int   # established, not yet accept()ed
    backlog: int        # sk_max_ack_backlog = min(listen backlog, somaxconn)
    uid: int = 0        # owner of the socket (of the lowest uid in a SO_REUSEPORT group)

    @property
    def synq_pct(self) -> float:
        """SYN queue fill: 100 * syn_recv / backlog (0 when backlog is 0)."""
        return 100.0 * self.syn_recv / self.backlog if self.backlog else 0.0

    @property
    def key(self) -> str:
        """"addr:port", IPv6 in brackets: "0.0.0.0:80", "[::]:443"."""
        if self.family == 6:
            return f"[{self.address}]:{self.port}"
        return f"{self.address}:{self.port}"


# --- sock_diag ---------------------------------------------------------------

def _request(family: int, states: int, port: int | None, seq: int) -> bytes:
    body = _REQ_V2.pack(family, socket.IPPROTO_TCP, 0, states)
    body += _SOCKID.pack(0, 0, _ANY6, _ANY6, 0, 0, 0)
    if port is not None:
        # "local port == port", the same program `ss sport = :PORT` sends:
        # condition true -> jump to the end (accept), false -> past it (reject).
        bc = _BC_OP.pack(INET_DIAG_BC_S_EQ, 8, 12) + _BC_OP.pack(0, 0, port)
        body += _NLA.pack(_NLA.size + len(bc), INET_DIAG_REQ_BYTECODE) + bc
    hdr = _NLMSGHDR.pack(_NLMSGHDR.size + len(body), SOCK_DIAG_BY_FAMILY,
                         NLM_F_REQUEST | NLM_F_DUMP, seq, 0)
    return hdr + body


def _collect(sock: socket.socket, family: int, port: int | None,
             listen: dict, synq: Counter, seq: int) -> None:
    """Dump LISTEN + SYN_RECV TCP sockets of `family` into listen / synq.

    listen[(family, src16, port)] = [rqueue, wqueue, uid]  (merged per address)
    synq[(family, port, src16)] += 1                  (per local address)

    Why not pyroute2's DiagSocket: decoding every message into an nlmsg object
    is what costs. Measured with 100k SYN_RECV request sockets in a lab netns
    (2 vCPUs, kernel 6.18, pyroute2 0.9.7): ``DiagSocket.get_sock_stats`` for
    AF_INET + AF_INET6 took 4.1-4.6 s (~40 us per message); the same
    DiagSocket with a minimal parse_one_message (one struct.unpack per
    message) still 1.1 s, spent in its asyncio queue and per-message header
    handling. This loop over a plain AF_NETLINK socket's receive buffer: 0.08 s
    per listeners() call, of which ~0.05 s is the kernel's dump (recv_into).
    (pyroute2 0.9.7's ``nlm_request(parser=...)`` is also silently dropped
    before it reaches the request.) The request is a fixed 56-byte struct plus
    an optional 8-byte bytecode filter, packed by hand above; pyroute2's
    inet_diag_req has no NLA map for the bytecode attribute.
    ``python -m synguard_lab.kernel_bench`` re-measures the first and last figure.
    """
    states = (1 << TCP_LISTEN) | (1 << TCP_SYN_RECV)
    sock.send(_request(family, states, port, seq))
    buf = bytearray(_RECV_BUF)
    view = memoryview(buf)
    unpack_hdr = _NLMSGHDR.unpack_from
    sport_src = _SPORT_SRC.unpack_from
    queues = _QUEUES.unpack_from
    keys: list = []       # (sport, src16) per request socket, counted at the end
    append = keys.append
    while True:
        n = sock.recv_into(view)
        if n <= 0:
            raise OSError("sock_diag: empty read")
        off = 0
        while off + 16 <= n:
            mlen, mtype, _flags, mseq, _pid = unpack_hdr(buf, off)
            if mlen < 16 or off + mlen > n:
                raise OSError(f"sock_diag: malformed message (len {mlen})")
            if mseq != seq:
                off += (mlen + 3) & ~3
                continue
            if mtype == SOCK_DIAG_BY_FAMILY and mlen >= _MSG_MIN:
                state = buf[off + _OFF_STATE]
                if state == TCP_SYN_RECV:
                    append(sport_src(buf, off + 16))
                elif state == TCP_LISTEN:
                    p, src = sport_src(buf, off + 16)
                    rq, wq = queues(buf, off + 72)
                    (uid,) = _UID.unpack_from(buf, off + 80)
                    k = (buf[off + _OFF_FAMILY], src, p)
                    cur = listen.get(k)
                    if cur is None:
                        listen[k] = [rq, wq, uid]
                    else:            # SO_REUSEPORT group: one row
                        cur[0] += rq
                        cur[1] += wq
                        cur[2] = min(cur[2], uid)
            elif mtype == NLMSG_DONE:
                # Count once at the end: Counter() over a list runs in C.
                for (p, src), c in Counter(keys).items():
                    synq[(family, p, src)] += c
                return
            elif mtype == NLMSG_ERROR:
                (err,) = _NLMSGERR.unpack_from(buf, off + 16)
                if err:
                    raise OSError(-err, f"sock_diag: {os.strerror(-err)}")
            off += (mlen + 3) & ~3


def _sock() -> socket.socket:
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                      NETLINK_SOCK_DIAG)
    try:
        s.bind((0, 0))
    except BaseException:
        s.close()
        raise
    return s


# Sockets past the handshake: ESTABLISHED, FIN_WAIT1/2, TIME_WAIT, CLOSE_WAIT, LAST_ACK, CLOSING.
_PEER_STATES = sum(1 << s for s in (1, 4, 5, 6, 8, 9, 11))
_OFF_DST = 16 + 4 + 4 + 16  # inet_diag_msg: family, state, timer, retrans, sport, dport, src[16], dst[16]


def _collect_peers(sock: socket.socket, family: int, out: set, seq: int) -> None:
    """Add the remote address (16 raw bytes) of every socket past the handshake to `out`."""
    sock.send(_request(family, _PEER_STATES, None, seq))
    buf = bytearray(_RECV_BUF)
    view = memoryview(buf)
    while True:
        n = sock.recv_into(view)
        if n <= 0:
            raise OSError("sock_diag: empty read")
        off = 0
        while off + 16 <= n:
            mlen, mtype, _flags, mseq, _pid = _NLMSGHDR.unpack_from(buf, off)
            if mlen < 16 or off + mlen > n:
                raise OSError(f"sock_diag: malformed message (len {mlen})")
            if mseq == seq:
                if mtype == SOCK_DIAG_BY_FAMILY and mlen >= _MSG_MIN:
                    dst = bytes(buf[off + _OFF_DST:off + _OFF_DST + 16])
                    out.add(dst[:4] if family == socket.AF_INET else dst)
                elif mtype == NLMSG_DONE:
                    return
                elif mtype == NLMSG_ERROR:
                    (err,) = _NLMSGERR.unpack_from(buf, off + 16)
                    if err:
                        raise OSError(-err, f"sock_diag: {os.strerror(-err)}")
            off += (mlen + 3) & ~3


def peers() -> set[str]:
    """Remote addresses of the caller's netns' TCP sockets past the handshake (established,
    closing or in TIME_WAIT): clients that completed a handshake. IPv4-mapped IPv6 peers
    (a dual-stack listener's IPv4 clients) are given as IPv4."""
    raw: set[bytes] = set()
    with _sock() as s:
        _collect_peers(s, socket.AF_INET, raw, 1)
        try:
            _collect_peers(s, socket.AF_INET6, raw, 2)
        except OSError as e:   # no inet6 diag handler
            if e.errno != errno.ENOENT:
                raise
    out = set()
    for a in raw:
        if len(a) == 4:
            out.add(_ntop(4, a))
        elif a.startswith(_V4_MAPPED):
            out.add(_ntop(4, a[12:]))
        else:
            out.add(_ntop(6, a))
    return out


def _ntop(family: int, src: bytes) -> str:
    if family == 4:
        return socket.inet_ntop(socket.AF_INET, src[:4])
    return socket.inet_ntop(socket.AF_INET6, src)


def listeners(port: int | None = None) -> list[Listener]:
    """TCP listeners of the caller's netns with SYN/accept queue lengths.

    Rows come in kernel order (use format_listeners to sort). See the module
    docstring for how half-open sockets are attributed.
    """
    listen, counts = _dump(port)
    return [_row(k, v, counts) for k, v in listen.items()]


def worst_listeners(limit: int) -> tuple[int, list[Listener]]:
    """(how many listeners there are, the `limit` worst of them, worst first): fullest
    SYN queue, then most half-open, then fullest accept queue; among equals, those a
    local user cannot open (below 1024, or root's) and the lower port first. Rows are
    built for those only: a local user's tens of thousands of idle listeners cost one
    netlink dump, not a Listener object, a status line or three metric series each."""
    listen, counts = _dump(None)

    def badness(item):
        k, (rq, wq, uid) = item
        n = counts.get(k, 0)
        return (n / wq if wq else 0.0, n, rq / wq if wq else 0.0, -int(k[2] >= 1024 and uid != 0), -k[2])

    return len(listen), [_row(k, v, counts) for k, v in heapq.nlargest(limit, listen.items(), key=badness)]


def _row(k, v, counts) -> Listener:
    fam, src, p = k
    rq, wq, uid = v
    f = 4 if fam == socket.AF_INET else 6
    return Listener(address=_ntop(f, src), port=p, family=f, syn_recv=counts.get(k, 0), accept_queue=rq,
                    backlog=wq, uid=uid)


def _dump(port: int | None):
    """One sock_diag dump: ({listener key: [rqueue, wqueue, uid]}, {listener key: half-open})."""
    if port is not None and not 0 < int(port) < 65536:
        raise ValueError(f"bad port {port!r}")
    listen: dict[tuple[int, bytes, int], list[int]] = {}
    synq: Counter = Counter()
    with _sock() as s:
        _collect(s, socket.AF_INET, port, listen, synq, 1)
        try:
            _collect(s, socket.AF_INET6, port, listen, synq, 2)
        except OSError as e:   # no inet6 diag handler (IPv6 not built/loaded)
            if e.errno != errno.ENOENT:
                raise

    # Listener keys with the family as 4/6 and v4 addresses cut to 4 bytes.
    index: dict[tuple[int, bytes, int], tuple[int, bytes, int]] = {}
    for fam, src, p in listen:
        f = 4 if fam == socket.AF_INET else 6
        index[(f, src[:4] if f == 4 else src, p)] = (fam, src, p)
    counts: dict[tuple[int, bytes, int], int] = {}
    for (fam, p, src), n in synq.items():
        k = _match(index, fam, p, src)
        if k is not None:
            counts[k] = counts.get(k, 0) + n
        # else: its listener closed during the dump; nothing to show.
    return listen, counts


def _match(index: dict, fam: int, port: int, src: bytes):
    """The listener key a request socket (family, local port, address) is for."""
    if fam == socket.AF_INET:
        return index.get((4, src[:4], port)) or index.get((4, _ANY4, port))
    k = index.get((6, src, port)) or index.get((6, _ANY6, port))
    if k is None and src[:12] == _V4_MAPPED:
        return index.get((4, src[12:], port)) or index.get((4, _ANY4, port))
    return k


# --- counters and sysctls ------------------------------------------------------

def _proc_net(name: str) -> str:
    for base in ("/proc/thread-self/net", "/proc/net"):
        try:
            with open(f"{base}/{name}") as f:
                return f.read()
        except FileNotFoundError:
            continue
    return ""


def _sections(text: str, wanted: Iterable[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    lines = text.splitlines()
    wanted = set(wanted)
    for head, vals in zip(lines[0::2], lines[1::2]):
        sect, _, names = head.partition(":")
        vsect, _, nums = vals.partition(":")
        if sect != vsect or sect not in wanted:
            continue
        for name, num in zip(names.split(), nums.split()):
            try:
                out[f"{sect}.{name}"] = int(num)
            except ValueError:
                pass
    return out


def tcp_counters() -> dict[str, int]:
    """All TcpExt (/proc/net/netstat) and Tcp (/proc/net/snmp) counters.

    Flat keys "TcpExt.SyncookiesSent", "Tcp.PassiveOpens", ... (ints).
    """
    out = _sections(_proc_net("netstat"), ("TcpExt",))
    out.update(_sections(_proc_net("snmp"), ("Tcp",)))
    return out


def sysctls() -> dict[str, int]:
    """The SYN-handling sysctls of the caller's netns; missing ones omitted."""
    out = {}
    for name in SYSCTLS:
        try:
            with open("/proc/sys/" + name.replace(".", "/")) as f:
                out[name] = int(f.read().split()[0])
        except (FileNotFoundError, IndexError, ValueError):
            continue
    return out


# --- what a SYN-ACK may offer ------------------------------------------------------

def _sysctl(name: str, default: str) -> str:
    try:
        return Path("/proc/sys/" + name.replace(".", "/")).read_text()
    except OSError:
        return default


def synack_settings(mtu: int) -> tuple[int, int, int, int]:
    """(mss4, mss6, wscale, tcp_opts) for DataPath.set_synack from this netns's sysctls:
    tcp_timestamps, tcp_sack, tcp_window_scaling, tcp_ecn == 1 -> SG_OPT_* (tcp_timestamps
    == 2 also SG_OPT_TS_NO_OFFSET); our window
    scale as the kernel picks it, ilog2(max(tcp_rmem[2], rmem_max)) - 15 in 0..14; the
    MSS from the MTU (IPv4 MTU - 40, IPv6 MTU - 60)."""
    def num(name, default):
        try:
            return int(_sysctl(name, str(default)).split()[0])
        except (ValueError, IndexError):
            return default

    opts = 0
    timestamps = num("net.ipv4.tcp_timestamps", 1)
    if timestamps:
        opts |= abi.OPT_TS
    if timestamps == 2:
        opts |= abi.OPT_TS_NO_OFFSET
    if num("net.ipv4.tcp_sack", 1):
        opts |= abi.OPT_SACK
    if num("net.ipv4.tcp_window_scaling", 1):
        opts |= abi.OPT_WSCALE
    if num("net.ipv4.tcp_ecn", 2) == 1:
        opts |= abi.OPT_ECN
    try:
        rmem = int(_sysctl("net.ipv4.tcp_rmem", "4096 131072 6291456").split()[2])
    except (ValueError, IndexError):
        rmem = 6291456
    space = max(rmem, num("net.core.rmem_max", 212992), 1)
    wscale = min(max(space.bit_length() - 1 - 15, 0), 14)
    return max(mtu - 40, 536), max(mtu - 60, 1220), wscale, opts


def cookie_options(method: str | None, tcp_opts: int) -> str:
    """What a client whose SYN XDP answers keeps, with this method and these SG_OPT_*
    (synack_settings), and the sysctl that gives back what it loses, in words."""
    if method == "kfunc":
        kept = [name for bit, name in ((abi.OPT_WSCALE, "window scaling"), (abi.OPT_SACK, "SACK"),
                                       (abi.OPT_TS, "timestamps"), (abi.OPT_ECN, "ECN")) if tcp_opts & bit]
        return "MSS" + "".join(f", {k}" for k in kept) + " (what the client and this server's sysctls allow)"
    if method == "kernel-cookie":
        if tcp_opts & abi.OPT_TS_NO_OFFSET:
            return ("MSS; window scaling, SACK, timestamps and ECN only for clients that send timestamps "
                    "(carried in the kernel's TS cookie: tcp_timestamps=2)")
        return ("MSS only: no window scaling, SACK or timestamps (sysctl -w net.ipv4.tcp_timestamps=2 keeps them "
                "for clients that send timestamps; it drops the per-connection TS offset)")
    return "-"


class SyncookiesHold:
    """Method kernel-cookie: net.ipv4.tcp_syncookies=2 while synguard protects.

    bpf_tcp_gen_syncookie() makes no cookie while the listener's SYN queue has room
    unless tcp_syncookies is 2, so with the default 1 the first backlog's worth of a
    flood's SYNs would reach the SYN queue before XDP could answer. While it holds,
    SYNs that still reach the kernel (unprotected ports, allowed sources) are answered
    with the kernel's own cookies too (no request sockets, no TCP Fast Open).
    The operator's value is written to saved_path (a root-only directory) before 2 is:
    a daemon killed while holding leaves both, and the next run puts the value back
    when it lets go. Reads and writes the calling thread's network namespace."""

    SYSCTL = "net/ipv4/tcp_syncookies"

    def __init__(self, saved_path: Path):
        self.saved_path = saved_path
        self.saved = self._read_saved()  # the operator's value while we hold, else None

    @property
    def held(self) -> bool:
        return self.saved is not None

    def _read_saved(self) -> int | None:
        try:
            fd = os.open(self.saved_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return None
        with os.fdopen(fd) as f:
            if os.fstat(f.fileno()).st_uid != os.geteuid():
                return None
            try:
                value = int(f.read(16))
            except ValueError:
                return None
        return value if value in (0, 1, 2) else None

    def set(self, protecting: bool) -> str | None:
        """Hold 2 while protecting, give the operator's value back after. Returns what
        changed, for the event log, or None."""
        path = Path("/proc/sys") / self.SYSCTL
        if protecting and not self.held:
            current = int(path.read_text())
            if current != 1:  # 2: nothing to do; 0: the kernel makes no cookies (kernel_cookie_problem)
                return None
            parent = self.saved_path.parent
            st = parent.lstat()
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
                return (f"not setting tcp_syncookies=2: {parent} is not a root-only directory to keep the "
                        f"operator's value in; SYNs reach the SYN queue until it is full")
            fd = os.open(self.saved_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(f"{current}\n")
            self.saved = current
            path.write_text("2")
            return "net.ipv4.tcp_syncookies 1 -> 2 while protecting (kernel-cookie method: cookies from the first SYN)"
        if not protecting and self.held:
            value, self.saved = self.saved, None
            if int(path.read_text()) == 2:  # an operator who changed it meanwhile wins
                path.write_text(str(value))
            with contextlib.suppress(FileNotFoundError):
                self.saved_path.unlink()
            return f"net.ipv4.tcp_syncookies 2 -> {value} (protection off)"
        return None


def min_mtu(interfaces: Iterable[str]) -> int:
    """The smallest MTU of these interfaces (/sys/class/net), 1500 if none is readable."""
    mtus = []
    for ifname in interfaces:
        try:
            mtus.append(int(Path(f"/sys/class/net/{ifname}/mtu").read_text()))
        except (OSError, ValueError):
            continue
    return min(mtus) if mtus else 1500


# --- presentation ----------------------------------------------------------------

_COLUMNS = ("Local Address:Port", "SynRecv", "Backlog", "SynQ%", "AcceptQ")


def _sort_key(r: Listener):
    try:
        addr = ipaddress.ip_address(r.address).packed
    except ValueError:
        addr = r.address.encode()
    return (-r.synq_pct, r.family, addr, r.port)


def format_listeners(rows: Iterable[Listener], *, header: bool = True) -> str:
    """ss-style table; no trailing newline.

    Sorted by SynQ% descending, then address (IPv4 before IPv6, numeric
    order), then port. Address column left-aligned, numbers right-aligned,
    SynQ% with one decimal. header=False leaves out the column titles.

    Local Address:Port  SynRecv  Backlog  SynQ%  AcceptQ
    0.0.0.0:80              512     1024   50.0        0
    """
    cells = [(r.key, str(r.syn_recv), str(r.backlog), f"{r.synq_pct:.1f}",
              str(r.accept_queue)) for r in sorted(rows, key=_sort_key)]
    # Widths include the titles even without them, so a header printed
    # separately (header=True on an empty list) lines up with the rows.
    widths = [max(len(row[i]) for row in [_COLUMNS, *cells])
              for i in range(len(_COLUMNS))]
    table = ([_COLUMNS] if header else []) + cells
    lines = []
    for row in table:
        parts = [row[0].ljust(widths[0])]
        parts += [c.rjust(w) for c, w in zip(row[1:], widths[1:])]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def to_json(rows: Iterable[Listener]) -> list[dict]:
    """JSON-ready dicts, same order as given; synq_pct rounded to 2 places."""
    return [{"address": r.address, "port": r.port, "family": r.family,
             "syn_recv": r.syn_recv, "accept_queue": r.accept_queue,
             "backlog": r.backlog, "synq_pct": round(r.synq_pct, 2)}
            for r in rows]
