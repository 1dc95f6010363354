"""Client matrix: real Linux clients of several kinds, each first contact from a
fresh address, against the lab's server ("test like the Internet").

Contract:
- ``ClientMatrix(lab)`` is a context manager on top of a built ``synguard_lab.lab.Lab``.
  ``__enter__`` adds, per client kind, one veth link into the lab's server
  namespace and the kind's own namespace(s); ``__exit__``/``close()`` detach the
  XDP pass programs, close the in-process sockets and delete every namespace it
  made, idempotently, also when the build failed half way (and at exit).
  Deleting a namespace deletes its veths, so the server-side ends (``k1``..)
  go with it.
- Kinds (``KINDS``): ``plain`` (no filter), ``fw`` (host firewall:
  ``ct state invalid drop`` on input), ``nat`` (client behind a masquerading
  router, NAT44 and NAT66), ``natfw`` (the same router also dropping INVALID in
  forward), ``natbare`` (behind ``nat``'s router, a client stack with
  tcp_timestamps=0, tcp_sack=0, tcp_window_scaling=0). Every kind does IPv4 and
  IPv6.
- Fresh address: before every contact the kind's *edge* interface (``w0``: the
  client's own for plain/fw, the router's WAN side for the NAT kinds) gets a
  never-used address (add new, delete old). The server sees a new source each
  time: no tcp_metrics, no neighbour entry, no conntrack
  state carried over. The server reaches each kind's pool over the kind's own
  link (10.<80+i>.0.0/16, fd80:<i>::/64; server .1 / ::1 on ``k<i>``).
- Clients connect with real kernel sockets made in the client namespace (setns
  in the calling thread, ``synguard_lab.lab.netns``); timings are connect() only.
- XDP_TX replies from a program on ``k<i>`` reach the edge only because the edge
  veth ``w0`` carries the lab's XDP_PASS program (DESIGN.md, known pitfalls).
- Safety: only addresses on veths made here and the lab's server are used.

Topology of one kind (NAT kinds; plain/fw have the client on w0 directly)::

    client c0 192.168.<i>.2 fdc0:<i>::2 ── l0 router w0 <fresh> ── k<i> server
                                          (forwarding, masquerade)   10.<80+i>.0.1
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import os
import socket
import struct
import subprocess
import threading
import time

from synguard_lab import lab as labmod
from synguard_lab.lab import NETNS_DIR, Lab, netns

EDGE_IF = "w0"          # kind's veth facing the server (client or router side)
LAN_ROUTER_IF = "l0"    # NAT router, LAN side
LAN_CLIENT_IF = "c0"    # client behind the router

# tcp_info.tcpi_options bits (include/uapi/linux/tcp.h)
TCPI_OPT_TIMESTAMPS = 1
TCPI_OPT_SACK = 2
TCPI_OPT_WSCALE = 4
TCPI_OPT_ECN = 8
ALL_OPTS = TCPI_OPT_TIMESTAMPS | TCPI_OPT_SACK | TCPI_OPT_WSCALE


@dataclasses.dataclass(frozen=True)
class Kind:
    name: str
    doc: str
    families: tuple[int, ...] = (4, 6)
    nat: bool = False                  # behind a masquerading router netns
    client_drop_invalid: bool = False  # nft input: ct state invalid drop (client)
    router_drop_invalid: bool = False  # nft forward: ct state invalid drop (router)
    bare_stack: bool = False           # client: no timestamps, SACK, window scaling

    @property
    def expected_options(self) -> int:
        """tcpi_options the server socket should end up with (server stack default)."""
        return 0 if self.bare_stack else ALL_OPTS


KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("plain", "plain Linux client"),
    Kind("fw", "host firewall dropping conntrack INVALID on input",
         client_drop_invalid=True),
    Kind("nat", "behind a masquerading router (NAT44, NAT66)", nat=True),
    Kind("natfw", "behind a masquerading router that drops INVALID in forward",
         nat=True, router_drop_invalid=True),
    Kind("natbare", "no timestamps/SACK/window scaling, behind a masquerading router",
         nat=True, bare_stack=True),
)}


@dataclasses.dataclass(frozen=True)
class TcpInfo:
    """The fields of struct tcp_info the handshake decides."""
    state: int
    options: int
    snd_wscale: int
    rcv_wscale: int
    rto_us: int
    snd_mss: int
    rcv_mss: int
    rtt_us: int

    @property
    def timestamps(self) -> bool:
        return bool(self.options & TCPI_OPT_TIMESTAMPS)

    @property
    def sack(self) -> bool:
        return bool(self.options & TCPI_OPT_SACK)

    @property
    def wscale(self) -> bool:
        return bool(self.options & TCPI_OPT_WSCALE)

    @classmethod
    def of(cls, sock: socket.socket) -> "TcpInfo":
        raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
        state, _ca, _retr, _probes, _backoff, options, wsc = struct.unpack_from("7B", raw, 0)
        rto, _ato, snd_mss, rcv_mss = struct.unpack_from("=4I", raw, 8)
        (rtt,) = struct.unpack_from("=I", raw, 68)
        # snd_wscale:4 then rcv_wscale:4 -- the first bitfield is the low nibble (LE).
        return cls(state, options, wsc & 0x0F, wsc >> 4, rto, snd_mss, rcv_mss, rtt)


@dataclasses.dataclass(frozen=True)
class Contact:
    """One first contact: connect() time and what each end negotiated."""
    kind: str
    family: int
    source: str                     # the fresh edge address used
    ms: float | None                # connect() duration, None: failed
    server: TcpInfo | None = None   # accepted socket on the server
    client: TcpInfo | None = None
    server_peer: str | None = None  # the client address the server saw

    @property
    def ok(self) -> bool:
        return self.ms is not None


def _af(family: int) -> int:
    if family == 4:
        return socket.AF_INET
    if family == 6:
        return socket.AF_INET6
    raise ValueError("family must be 4 or 6")


# --- in-process listener in the server namespace ----------------------------------

_TOKEN_LEN = 16
_CMD_INFO = b"i"   # keep the socket, record its TCP_INFO under the token
_CMD_SINK = b"s"   # read to EOF, answer the byte count (8 bytes), close


class Listener:
    """Dual-stack listener on [::]:port in the server namespace, served by threads.

    A connection that sends nothing is closed once the client closes; one that
    sends _CMD_INFO + token has its server-side TCP_INFO recorded under the
    token; _CMD_SINK + token reads to EOF and answers the byte count."""

    def __init__(self, server_ns: str, port: int, backlog: int = 128):
        with netns(server_ns):
            s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            s.bind(("::", port))
            s.listen(backlog)
            s.settimeout(0.2)
        except BaseException:
            s.close()
            raise
        self.port = port
        self._sock = s
        self._stop = threading.Event()
        self._cond = threading.Condition()
        self._infos: dict[bytes, tuple[TcpInfo, str]] = {}
        self._conns: set[socket.socket] = set()
        self._thread = threading.Thread(target=self._accept_loop, daemon=True,
                                        name=f"clientlab-listen-{port}")
        self._thread.start()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                c, _peer = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._cond:
                self._conns.add(c)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _recv_exact(self, c: socket.socket, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            d = c.recv(n - len(buf))
            if not d:
                break
            buf += d
        return buf

    def _serve(self, c: socket.socket) -> None:
        try:
            c.settimeout(60)
            head = self._recv_exact(c, 1 + _TOKEN_LEN)
            if len(head) != 1 + _TOKEN_LEN:
                return
            cmd, token = head[:1], head[1:]
            if cmd == _CMD_INFO:
                peer = c.getpeername()[0]
                if peer.startswith("::ffff:"):   # IPv4-mapped on the dual-stack socket
                    peer = peer[7:]
                with self._cond:
                    self._infos[token] = (TcpInfo.of(c), peer)
                    self._cond.notify_all()
                self._recv_exact(c, 1)   # hold until the client closes
            elif cmd == _CMD_SINK:
                buf = bytearray(1 << 20)
                view = memoryview(buf)
                total = 0
                while True:
                    n = c.recv_into(view)
                    if not n:
                        break
                    total += n
                c.sendall(struct.pack("!Q", total))
        except OSError:
            pass
        finally:
            with self._cond:
                self._conns.discard(c)
            c.close()

    def info(self, token: bytes, timeout: float) -> tuple[TcpInfo, str] | None:
        with self._cond:
            self._cond.wait_for(lambda: token in self._infos, timeout)
            return self._infos.pop(token, None)

    def close(self) -> None:
        self._stop.set()
        self._sock.close()
        self._thread.join(5)
        with self._cond:
            conns = list(self._conns)
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)


# --- the matrix ------------------------------------------------------------------------

def cleanup_stale(prefix: str = "sg") -> list[str]:
    """Delete namespaces this module made for processes that are gone."""
    return labmod.cleanup_stale(prefix, roles=r"k\d+(?:client|router)")


@dataclasses.dataclass
class _Built:
    kind: Kind
    index: int
    client_ns: str
    router_ns: str | None
    server_if: str
    next_host: dict[int, int] = dataclasses.field(default_factory=lambda: {4: 3, 6: 3})
    edge_addr: dict[int, str] = dataclasses.field(default_factory=dict)

    @property
    def edge_ns(self) -> str:
        return self.router_ns or self.client_ns

    def server_ip(self, family: int) -> str:
        return f"10.{80 + self.index}.0.1" if family == 4 else f"fd80:{self.index}::1"

    def host_ip(self, family: int, n: int) -> str:
        if family == 4:
            return f"10.{80 + self.index}.{n >> 8}.{n & 0xFF}"
        return f"fd80:{self.index}::{n:x}"


class ClientMatrix:
    """Client kinds routed to a Lab's server (see module docstring)."""

    def __init__(self, lab: Lab, kinds: list[str] | tuple[str, ...] | None = None):
        names = list(kinds) if kinds is not None else list(KINDS)
        unknown = [k for k in names if k not in KINDS]
        if unknown:
            raise ValueError(f"unknown client kinds {unknown}; known: {sorted(KINDS)}")
        self.lab = lab
        self._names = names
        self._built: dict[str, _Built] = {}
        self._created: list[str] = []
        self._xdp: list[tuple[str, str]] = []
        self._listeners: dict[int, Listener] = {}
        self._closed = False
        self._lock = threading.RLock()

    # --- lifecycle ---------------------------------------------------------------

    def __enter__(self) -> "ClientMatrix":
        atexit.register(self.close)
        try:
            cleanup_stale(self.lab.prefix)
            for i, name in enumerate(self._names, start=1):
                self._build_kind(KINDS[name], i)
            self._wait_ipv6_ready()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Tear everything down; safe to call more than once."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        with contextlib.suppress(Exception):
            atexit.unregister(self.close)
        errors: list[BaseException] = []
        for lst in list(self._listeners.values()):
            try:
                lst.close()
            except Exception as e:
                errors.append(e)
        self._listeners.clear()
        for ns, ifname in list(self._xdp):
            try:
                self.lab.detach_xdp(ns, ifname)
            except Exception as e:
                errors.append(e)
        self._xdp.clear()
        for ns in reversed(self._created):
            r = subprocess.run(["ip", "netns", "del", ns], capture_output=True, text=True)
            if r.returncode != 0 and (NETNS_DIR / ns).exists():
                errors.append(RuntimeError(f"ip netns del {ns}: {r.stderr.strip()}"))
        self._created.clear()
        if errors:
            raise errors[0]

    @property
    def kinds(self) -> list[Kind]:
        return [KINDS[n] for n in self._names]

    @property
    def namespaces(self) -> list[str]:
        return list(self._created)

    @property
    def server_ifs(self) -> list[str]:
        """Server-side interfaces (in lab.server_ns) the clients arrive on:
        attach the defense under test here."""
        return [b.server_if for b in self._built.values()]

    def cases(self) -> list[tuple[str, int]]:
        return [(k.name, f) for k in self.kinds for f in k.families]

    # --- build -------------------------------------------------------------------

    def _add_ns(self, name: str) -> str:
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True,
                       text=True)
        self._created.append(name)
        self.lab._sysctls(name, {
            # before any link exists, so new interfaces inherit them
            "net/ipv6/conf/all/accept_dad": 0,
            "net/ipv6/conf/default/accept_dad": 0,
            "net/ipv6/conf/all/router_solicitations": 0,
            "net/ipv6/conf/default/router_solicitations": 0,
            "net/ipv6/conf/all/accept_ra": 0,
            "net/ipv6/conf/default/accept_ra": 0,
            "net/ipv4/conf/all/rp_filter": 0,
            "net/ipv4/conf/default/rp_filter": 0,
        })
        return name

    def _nft(self, ns: str, ruleset: str) -> None:
        r = subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=ruleset,
                           capture_output=True, text=True, timeout=30)
        if r.returncode:
            raise RuntimeError(f"nft in {ns}: {r.stderr.strip()}")

    def _build_kind(self, kind: Kind, i: int) -> None:
        lab = self.lab
        base = f"{lab.id}-k{i}"
        client = self._add_ns(f"{base}client")
        router = self._add_ns(f"{base}router") if kind.nat else None
        b = _Built(kind, i, client, router, f"k{i}")
        edge = b.edge_ns
        lab._ip(edge, ["link", "add", EDGE_IF, "type", "veth", "peer", "name",
                       b.server_if, "netns", lab.server_ns])
        # .1 is the server; .2 the build-time address, never used for a contact
        first4, first6 = b.host_ip(4, 2), b.host_ip(6, 2)
        lab._batch(lab.server_ns, [
            f"link set {b.server_if} up",
            f"addr add {b.server_ip(4)}/16 dev {b.server_if}",
            f"addr add {b.server_ip(6)}/64 dev {b.server_if} nodad",
        ])
        lab._batch(edge, [
            "link set lo up",
            f"link set {EDGE_IF} up",
            f"addr add {first4}/32 dev {EDGE_IF}",
            f"addr add {first6}/128 dev {EDGE_IF} nodad",
            f"route add {b.server_ip(4)}/32 dev {EDGE_IF}",
            f"route add default via {b.server_ip(4)} dev {EDGE_IF}",
            f"route add {b.server_ip(6)}/128 dev {EDGE_IF}",
            f"route add ::/0 via {b.server_ip(6)} dev {EDGE_IF}",
        ])
        b.edge_addr = {4: first4, 6: first6}
        if router:
            lab._ip(router, ["link", "add", LAN_ROUTER_IF, "type", "veth", "peer", "name",
                             LAN_CLIENT_IF, "netns", client])
            lab._batch(router, [
                f"link set {LAN_ROUTER_IF} up",
                f"addr add 192.168.{i}.1/24 dev {LAN_ROUTER_IF}",
                f"addr add fdc0:{i}::1/64 dev {LAN_ROUTER_IF} nodad",
            ])
            lab._batch(client, [
                "link set lo up",
                f"link set {LAN_CLIENT_IF} up",
                f"addr add 192.168.{i}.2/24 dev {LAN_CLIENT_IF}",
                f"addr add fdc0:{i}::2/64 dev {LAN_CLIENT_IF} nodad",
                f"route add default via 192.168.{i}.1 dev {LAN_CLIENT_IF}",
                f"route add ::/0 via fdc0:{i}::1 dev {LAN_CLIENT_IF}",
            ])
            lab._sysctls(router, {"net/ipv4/ip_forward": 1,
                                  "net/ipv6/conf/all/forwarding": 1})
            rules = ["table inet clientlab {",
                     "  chain postrouting { type nat hook postrouting priority srcnat;",
                     f'    oifname "{EDGE_IF}" masquerade; }}']
            if kind.router_drop_invalid:
                rules += ["  chain forward { type filter hook forward priority filter;",
                          "    ct state invalid drop; }"]
            self._nft(router, "\n".join(rules + ["}"]) + "\n")
        if kind.client_drop_invalid:
            self._nft(client, "table inet clientlab {\n"
                              "  chain input { type filter hook input priority filter;\n"
                              "    ct state invalid drop; }\n}\n")
        if kind.bare_stack:
            lab._sysctls(client, {"net/ipv4/tcp_timestamps": 0,
                                  "net/ipv4/tcp_sack": 0,
                                  "net/ipv4/tcp_window_scaling": 0})
        if lab.want_xdp_pass:
            lab.attach_xdp_pass(edge, EDGE_IF)
            self._xdp.append((edge, EDGE_IF))
        self._built[kind.name] = b

    def _wait_ipv6_ready(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        for ns in self._created + [self.lab.server_ns]:
            while self.lab._ip(ns, ["-6", "addr", "show", "tentative"]).strip():
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{ns}: IPv6 addresses still tentative")
                time.sleep(0.02)

    # --- addresses -------------------------------------------------------------------

    def _kind(self, kind: str, family: int) -> _Built:
        if self._closed:
            raise RuntimeError("client matrix is closed")
        b = self._built.get(kind)
        if b is None:
            raise ValueError(f"kind {kind!r} not in this matrix ({self._names})")
        if family not in b.kind.families:
            raise ValueError(f"kind {kind!r} has no IPv{family}")
        return b

    def server_ip(self, kind: str, family: int) -> str:
        """The server address this kind's clients connect to."""
        return self._kind(kind, family).server_ip(family)

    def edge_address(self, kind: str, family: int) -> str:
        """The source address the server sees now for this kind."""
        return self._kind(kind, family).edge_addr[family]

    def fresh_address(self, kind: str, family: int) -> str:
        """Give the kind's edge a never-used address (the old one goes); returns it."""
        b = self._kind(kind, family)
        n = b.next_host[family]
        if n > 0xFFFE:
            raise RuntimeError(f"{kind}: IPv{family} address pool exhausted")
        b.next_host[family] = n + 1
        new, old = b.host_ip(family, n), b.edge_addr[family]
        plen = 32 if family == 4 else 128
        extra = "" if family == 4 else " nodad"
        # Add first, then delete: an interface left without IPv4 addresses
        # loses its routes. Deleting the old address also makes it the only
        # candidate for the client's (or masquerade's) source selection.
        self.lab._batch(b.edge_ns, [f"addr add {new}/{plen} dev {EDGE_IF}{extra}",
                                    f"addr del {old}/{plen} dev {EDGE_IF}"])
        b.edge_addr[family] = new
        if family == 6:
            self._wait_v6_usable(b.edge_ns, new)
        return new

    @staticmethod
    def _wait_v6_usable(ns: str, addr: str, timeout: float = 3.0) -> None:
        """Wait until `addr` is no longer tentative and its solicited-node group
        is joined. Both happen in a kernel work item after `ip addr add` (even
        with nodad); until then the server's first neighbour solicitation for
        the new address is dropped and its SYN-ACK waits 1 s for the retry
        (seen as a 1.01 s connect about once in 100 contacts)."""
        packed = socket.inet_pton(socket.AF_INET6, addr)
        want_addr = packed.hex()
        want_group = (socket.inet_pton(socket.AF_INET6, "ff02::1:ff00:0")[:13]
                      + packed[13:]).hex()
        deadline = time.monotonic() + timeout
        with netns(ns):
            while True:
                with open("/proc/thread-self/net/if_inet6") as f:
                    flags = [int(line.split()[4], 16) for line in f
                             if line.split()[0] == want_addr]
                with open("/proc/thread-self/net/igmp6") as f:
                    joined = any(line.split()[2] == want_group for line in f)
                if flags and not flags[0] & 0x40 and joined:   # 0x40: IFA_F_TENTATIVE
                    return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{ns}: {addr} not usable after {timeout} s "
                                       f"(flags {flags}, solicited-node joined {joined})")
                time.sleep(0.001)

    # --- clients -------------------------------------------------------------------------

    def _client_socket(self, b: _Built, family: int) -> socket.socket:
        with netns(b.client_ns):
            return socket.socket(_af(family), socket.SOCK_STREAM)

    def _connect(self, kind: str, family: int, port: int, timeout: float
                 ) -> tuple[socket.socket | None, float | None]:
        b = self._kind(kind, family)
        self.fresh_address(kind, family)
        s = self._client_socket(b, family)
        s.settimeout(timeout)
        t0 = time.perf_counter()
        try:
            s.connect((b.server_ip(family), port))
        except OSError:
            s.close()
            return None, None
        return s, (time.perf_counter() - t0) * 1000.0

    def first_contact(self, kind: str, family: int, port: int,
                      timeout: float = 10.0) -> float | None:
        """connect() from a fresh address of `kind`: milliseconds, None on failure."""
        s, ms = self._connect(kind, family, port, timeout)
        if s is not None:
            s.close()
        return ms

    def listen(self, port: int, backlog: int = 128) -> Listener:
        """An in-process listener on [::]:port in the server ns (needed by
        first_contact_info and throughput); closed at teardown."""
        if port in self._listeners:
            return self._listeners[port]
        lst = Listener(self.lab.server_ns, port, backlog)
        self._listeners[port] = lst
        return lst

    def _listener(self, port: int) -> Listener:
        try:
            return self._listeners[port]
        except KeyError:
            raise RuntimeError(f"no listener on port {port}: call listen({port}) first") from None

    def first_contact_info(self, kind: str, family: int, port: int,
                           timeout: float = 10.0) -> Contact:
        """first_contact plus what both ends negotiated. The server side is
        the accepted socket on listen(port)'s listener."""
        lst = self._listener(port)
        s, ms = self._connect(kind, family, port, timeout)
        source = self._kind(kind, family).edge_addr[family]
        if s is None:
            return Contact(kind, family, source, None)
        with s:
            token = os.urandom(_TOKEN_LEN)
            s.sendall(_CMD_INFO + token)
            got = lst.info(token, timeout)
            client = TcpInfo.of(s)
        server, peer = got if got else (None, None)
        return Contact(kind, family, source, ms, server, client, peer)

    def throughput(self, kind: str, family: int, port: int, megabytes: int = 64,
                   timeout: float = 60.0) -> float:
        """Send `megabytes` MB (10^6 B) over one connection to listen(port)'s
        sink; MB/s from connect() to the server's byte count (all data read)."""
        self._listener(port)
        chunk = bytes(1 << 20)
        total = megabytes * 1_000_000
        s, _ = self._connect(kind, family, port, timeout)
        if s is None:
            raise RuntimeError(f"{kind} IPv{family}: connect failed")
        with s:
            t0 = time.perf_counter()
            s.sendall(_CMD_SINK + os.urandom(_TOKEN_LEN))
            left = total
            view = memoryview(chunk)
            while left:
                n = min(left, len(chunk))
                s.sendall(view[:n])
                left -= n
            s.shutdown(socket.SHUT_WR)
            got = b""
            while len(got) < 8:
                d = s.recv(8 - len(got))
                if not d:
                    break
                got += d
            elapsed = time.perf_counter() - t0
        if len(got) != 8 or struct.unpack("!Q", got)[0] != total:
            raise RuntimeError(f"{kind} IPv{family}: server did not read {total} bytes "
                               f"(answer {got!r})")
        return megabytes / elapsed
