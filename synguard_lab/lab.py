"""Three-namespace test lab: client ↔ server ↔ attacker over two veth pairs.

Contract:
- ``Lab()`` is a context manager: ``__enter__`` builds, ``__exit__``/``close()``
  tear down idempotently (also registered with atexit, and run when the build
  itself fails half way). Teardown kills every process started through the lab
  by PID (SIGTERM, then SIGKILL), detaches the lab's XDP pass programs and
  deletes the namespaces.
- Names: namespaces are ``<prefix>-<pid>-<seq>-{client,server,attacker}`` so
  parallel runs and several labs in one process never clash. Both ends of each
  veth are created directly inside their namespaces, so interface names are the
  plain ``c0``/``s0``/``s1``/``a0`` (≤ 15 chars, nothing ever in the root ns).
- Topology (module constants below)::

      client c0 10.77.1.2 fd77:1::2  ──  s0 10.77.1.1 fd77:1::1  server
      attacker a0 10.77.2.2 fd77:2::2 ──  s1 10.77.2.1 fd77:2::1  server

  The server's default routes (v4 + v6) point at the attacker link, so replies
  to spoofed sources leave through s1 and die in the attacker ns (forwarding
  is off there, which drops them without ICMP). Client and attacker default via
  the server. rp_filter=0 in the server ns. IPv6 without DAD and without router
  solicitations. Forwarding stays off everywhere.
- An XDP_PASS program sits (driver mode) on the peer veths c0 and a0: without a
  program there, frames the server-side XDP program sends back with XDP_TX are
  never delivered (DESIGN.md, "Known pitfalls").
- Safety: only addresses on these veths are targeted; ``flood`` is bounded in
  packets and seconds; ``cleanup_stale()`` removes namespaces this module left
  behind for a process that no longer exists (only names matching its pattern).
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import json
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

CLIENT_IP4 = "10.77.1.2"
CLIENT_IP6 = "fd77:1::2"
SERVER_IP4 = "10.77.1.1"          # server address on the client link (s0)
SERVER_IP6 = "fd77:1::1"
SERVER_ATTACKER_IP4 = "10.77.2.1"  # server address on the attacker link (s1)
SERVER_ATTACKER_IP6 = "fd77:2::1"
ATTACKER_IP4 = "10.77.2.2"
ATTACKER_IP6 = "fd77:2::2"
PREFIX_LEN4 = 24
PREFIX_LEN6 = 64

CLIENT_IF = "c0"
SERVER_CLIENT_IF = "s0"
SERVER_ATTACKER_IF = "s1"
ATTACKER_IF = "a0"

NETNS_DIR = Path("/run/netns")
REPO_ROOT = Path(__file__).resolve().parents[1]
from synguard.datapath.xdp import XDP_FLAGS_DRV_MODE  # noqa: E402  (one definition)


_seq = itertools.count()


@contextlib.contextmanager
def netns(name: str):
    """Run the body with the *current thread* in network namespace `name`.

    Sockets, BPF attachments and /proc/thread-self/net opened inside stay bound
    to that namespace after the body ends. Only this thread moves; note that
    /proc/self/net follows the main thread, so use /proc/thread-self/net.
    """
    from synguard.datapath import in_netns

    fd = os.open(NETNS_DIR / name, os.O_RDONLY | os.O_CLOEXEC)
    try:
        with in_netns(fd):
            yield
    finally:
        os.close(fd)


_xdp_lock = threading.Lock()
_xdp_prog = None   # (BPF object, function) shared by every Lab in the process


def _xdp_pass_fn():
    """Compile the XDP_PASS program once per process (BCC, ~1 s)."""
    global _xdp_prog
    with _xdp_lock:
        if _xdp_prog is None:
            from bcc import BPF   # Debian python3-bpfcc
            # -Wno-ignored-attributes: silence the kernel headers' nocf_check
            # warnings clang prints for every compile on this box.
            b = BPF(src_file=str(REPO_ROOT / "ebpf" / "lab_pass.bpf.c").encode(), cflags=["-Wno-ignored-attributes"])
            _xdp_prog = (b, b.load_func(b"xdp_pass", BPF.XDP))
        return _xdp_prog


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cleanup_stale(prefix: str = "sg", roles: str = "client|server|attacker") -> list[str]:
    """Delete lab namespaces "<prefix>-<pid>-<n>-<role>" whose process is gone (roles: a regex)."""
    pat = re.compile(rf"^{re.escape(prefix)}-(\d+)-\d+-({roles})$")
    removed = []
    try:
        names = os.listdir(NETNS_DIR)
    except FileNotFoundError:
        return removed
    for name in names:
        m = pat.match(name)
        if m and not _pid_alive(int(m.group(1))):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
            removed.append(name)
    return removed


# Subprocess bodies run with sys.executable inside a namespace. Kept small and
# stdlib-only so they start fast and need no PYTHONPATH.
_SERVER_CODE = r"""
import socket, sys, threading
port, backlog, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(("::", port))
s.listen(backlog)
print("ready", flush=True)
def echo(c):
    with c:
        c.settimeout(30)
        try:
            while True:
                d = c.recv(65536)
                if not d:
                    break
                c.sendall(d)
        except OSError:
            pass
if mode == "hold":
    threading.Event().wait()
if mode == "reply":  # one request, its echo, then the server closes first (HTTP/1.0-like)
    import selectors
    sel = selectors.DefaultSelector()
    s.setblocking(False)
    sel.register(s, selectors.EVENT_READ)
    while True:
        for key, _ in sel.select():
            if key.fileobj is s:
                try:
                    c, _ = s.accept()
                except OSError:
                    continue
                c.setblocking(False)
                sel.register(c, selectors.EVENT_READ)
                continue
            c = key.fileobj
            sel.unregister(c)
            try:
                d = c.recv(65536)
                if d:
                    c.send(d)
            except OSError:
                pass
            c.close()
while True:
    c, _ = s.accept()
    if mode == "echo":
        threading.Thread(target=echo, args=(c,), daemon=True).start()
    else:
        c.close()
"""

_CONNECT_CODE = r"""
import json, socket, sys, time
host, port, n, timeout, fam = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
af = socket.AF_INET6 if fam == 6 else socket.AF_INET
out = []
for _ in range(n):
    s = socket.socket(af, socket.SOCK_STREAM)
    s.settimeout(timeout)
    t0 = time.perf_counter()
    try:
        s.connect((host, port))
        out.append(time.perf_counter() - t0)
    except OSError:
        out.append(None)
    finally:
        s.close()
print(json.dumps(out), flush=True)
"""


class Lab:
    """client ↔ server ↔ attacker network namespaces (see module docstring)."""

    def __init__(self, prefix: str = "sg", *, xdp_pass: bool = True,
                 kill_grace: float = 3.0):
        if not re.fullmatch(r"[a-z][a-z0-9]{0,7}", prefix):
            raise ValueError("prefix: 1-8 lower-case letters/digits")
        self.prefix = prefix
        self.id = f"{prefix}-{os.getpid()}-{next(_seq)}"
        self.client_ns = f"{self.id}-client"
        self.server_ns = f"{self.id}-server"
        self.attacker_ns = f"{self.id}-attacker"
        self.client_if = CLIENT_IF
        self.server_client_if = SERVER_CLIENT_IF
        self.server_attacker_if = SERVER_ATTACKER_IF
        self.attacker_if = ATTACKER_IF
        self.want_xdp_pass = xdp_pass
        self.kill_grace = kill_grace   # SIGTERM → SIGKILL delay at teardown
        self._procs: list[subprocess.Popen] = []
        self._xdp_attached: list[tuple[str, str]] = []
        self._created: list[str] = []
        self._macs: dict[tuple[str, str], str] = {}
        self._closed = False
        self._lock = threading.RLock()

    # --- lifecycle ---------------------------------------------------------

    @property
    def namespaces(self) -> tuple[str, str, str]:
        return (self.client_ns, self.server_ns, self.attacker_ns)

    def __enter__(self) -> "Lab":
        atexit.register(self.close)
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _build(self) -> None:
        cleanup_stale(self.prefix)
        for ns in self.namespaces:
            subprocess.run(["ip", "netns", "add", ns], check=True,
                           capture_output=True, text=True)
            self._created.append(ns)
            self._sysctls(ns, {
                # Set before any link exists so new interfaces inherit them.
                "net/ipv6/conf/all/accept_dad": 0,
                "net/ipv6/conf/default/accept_dad": 0,
                "net/ipv6/conf/all/router_solicitations": 0,
                "net/ipv6/conf/default/router_solicitations": 0,
                "net/ipv6/conf/all/accept_ra": 0,
                "net/ipv6/conf/default/accept_ra": 0,
                "net/ipv4/ip_forward": 0,
                "net/ipv6/conf/all/forwarding": 0,
            })
        c, s, a = self.namespaces
        # Both ends created in place: the names never exist in the root ns.
        self._ip(c, ["link", "add", CLIENT_IF, "type", "veth", "peer", "name",
                     SERVER_CLIENT_IF, "netns", s])
        self._ip(a, ["link", "add", ATTACKER_IF, "type", "veth", "peer", "name",
                     SERVER_ATTACKER_IF, "netns", s])
        self._batch(c, [
            "link set lo up",
            f"link set {CLIENT_IF} up",
            f"addr add {CLIENT_IP4}/{PREFIX_LEN4} dev {CLIENT_IF}",
            f"addr add {CLIENT_IP6}/{PREFIX_LEN6} dev {CLIENT_IF} nodad",
        ])
        self._batch(a, [
            "link set lo up",
            f"link set {ATTACKER_IF} up",
            f"addr add {ATTACKER_IP4}/{PREFIX_LEN4} dev {ATTACKER_IF}",
            f"addr add {ATTACKER_IP6}/{PREFIX_LEN6} dev {ATTACKER_IF} nodad",
        ])
        self._batch(s, [
            "link set lo up",
            f"link set {SERVER_CLIENT_IF} up",
            f"link set {SERVER_ATTACKER_IF} up",
            f"addr add {SERVER_IP4}/{PREFIX_LEN4} dev {SERVER_CLIENT_IF}",
            f"addr add {SERVER_IP6}/{PREFIX_LEN6} dev {SERVER_CLIENT_IF} nodad",
            f"addr add {SERVER_ATTACKER_IP4}/{PREFIX_LEN4} dev {SERVER_ATTACKER_IF}",
            f"addr add {SERVER_ATTACKER_IP6}/{PREFIX_LEN6} dev {SERVER_ATTACKER_IF} nodad",
        ])
        # Routes last: every link is up (carrier on both ends) by now.
        self._batch(s, [
            f"route add default via {ATTACKER_IP4} dev {SERVER_ATTACKER_IF}",
            f"route add ::/0 via {ATTACKER_IP6} dev {SERVER_ATTACKER_IF}",
        ])
        self._batch(c, [
            f"route add default via {SERVER_IP4} dev {CLIENT_IF}",
            f"route add ::/0 via {SERVER_IP6} dev {CLIENT_IF}",
        ])
        self._batch(a, [
            f"route add default via {SERVER_ATTACKER_IP4} dev {ATTACKER_IF}",
            f"route add ::/0 via {SERVER_ATTACKER_IP6} dev {ATTACKER_IF}",
        ])
        # Spoofed sources arrive on s1 while the default route also points
        # there, but replies to the client leave via s0: strict or loose
        # reverse-path filtering would bite somewhere, so switch it off.
        self._sysctls(s, {
            f"net/ipv4/conf/{k}/rp_filter": 0
            for k in ("all", "default", SERVER_CLIENT_IF, SERVER_ATTACKER_IF, "lo")
        })
        if self.want_xdp_pass:
            self.attach_xdp_pass(c, CLIENT_IF)
            self.attach_xdp_pass(a, ATTACKER_IF)
        self._wait_ipv6_ready()

    def close(self) -> None:
        """Tear everything down; safe to call more than once."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            atexit.unregister(self.close)
        except Exception:
            pass
        errors = []
        for p in list(self._procs):
            try:
                self._kill(p)
            except Exception as e:   # keep tearing down
                errors.append(e)
        self._procs.clear()
        for ns, ifname in list(self._xdp_attached):
            try:
                self.detach_xdp(ns, ifname)
            except Exception as e:
                errors.append(e)
        for ns in reversed(self._created):
            r = subprocess.run(["ip", "netns", "del", ns], capture_output=True,
                               text=True)
            if r.returncode != 0 and (NETNS_DIR / ns).exists():
                errors.append(RuntimeError(f"ip netns del {ns}: {r.stderr.strip()}"))
        self._created.clear()
        if errors:
            raise errors[0]

    # --- plumbing ----------------------------------------------------------

    def _ip(self, ns: str, args: list[str]) -> str:
        r = subprocess.run(["ip", "-n", ns, *args], capture_output=True,
                           text=True, timeout=30)
        if r.returncode:
            raise RuntimeError(f"ip -n {ns} {' '.join(args)}: {r.stderr.strip()}")
        return r.stdout

    def _batch(self, ns: str, cmds: list[str]) -> None:
        r = subprocess.run(["ip", "-n", ns, "-batch", "-"], input="\n".join(cmds) + "\n",
                           capture_output=True, text=True, timeout=30)
        if r.returncode:
            raise RuntimeError(f"ip -n {ns} -batch: {r.stderr.strip()}")

    def _sysctls(self, ns: str, values: dict[str, int]) -> None:
        # /proc/sys/net follows the writing thread's netns.
        with netns(ns):
            for key, val in values.items():
                with open(f"/proc/sys/{key}", "w") as f:
                    f.write(f"{val}\n")

    def _wait_ipv6_ready(self, timeout: float = 5.0) -> None:
        """No tentative (DAD) addresses left, so v6 works right away."""
        deadline = time.monotonic() + timeout
        for ns in self.namespaces:
            while self._ip(ns, ["-6", "addr", "show", "tentative"]).strip():
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{ns}: IPv6 addresses still tentative")
                time.sleep(0.02)

    def netns(self, name: str):
        """Context manager: current thread into namespace `name` and back."""
        return netns(name)

    # --- XDP -----------------------------------------------------------------

    def attach_xdp_pass(self, ns: str, ifname: str) -> None:
        from bcc import BPF
        _, fn = _xdp_pass_fn()
        with netns(ns):
            BPF.attach_xdp(ifname.encode(), fn, XDP_FLAGS_DRV_MODE)
        self._xdp_attached.append((ns, ifname))

    def detach_xdp(self, ns: str, ifname: str) -> None:
        from bcc import BPF
        if (NETNS_DIR / ns).exists():
            with netns(ns):
                BPF.remove_xdp(ifname.encode(), XDP_FLAGS_DRV_MODE)
        with contextlib.suppress(ValueError):
            self._xdp_attached.remove((ns, ifname))

    # --- processes -----------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("lab is closed")

    def popen(self, ns: str, argv: list[str], **kw) -> subprocess.Popen:
        """Start argv in `ns`; tracked and killed by PID on teardown."""
        self._check_open()
        # `ip netns exec` execs argv, so the PID is argv's own.
        p = subprocess.Popen(["ip", "netns", "exec", ns, *argv], **kw)
        self._procs.append(p)
        return p

    def run(self, ns: str, argv: list[str], check: bool = True,
            timeout: float = 60, **kw) -> subprocess.CompletedProcess:
        """Run argv in `ns` to completion; output captured as text."""
        self._check_open()
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        return subprocess.run(["ip", "netns", "exec", ns, *argv], check=check,
                              timeout=timeout, **kw)

    def _kill(self, p: subprocess.Popen, grace: float | None = None) -> None:
        if grace is None:
            grace = self.kill_grace
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
            try:
                p.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    p.kill()
                p.wait(grace)
        for f in (p.stdin, p.stdout, p.stderr):
            if f:
                with contextlib.suppress(Exception):
                    f.close()

    def stop(self, p: subprocess.Popen, grace: float | None = None) -> None:
        """Stop one tracked process now (SIGTERM, SIGKILL after `grace` s)."""
        self._kill(p, grace)
        with contextlib.suppress(ValueError):
            self._procs.remove(p)

    # --- helpers ---------------------------------------------------------------

    def tcp_server(self, port: int, ns: str | None = None, backlog: int = 128,
                   mode: str = "close", ready_timeout: float = 10.0) -> subprocess.Popen:
        """Dual-stack listener on [::]:port in `ns` (default: server).

        mode: "close" accepts and closes, "echo" echoes each connection,
        "reply" echoes one request and closes (the server closes first, so it
        keeps the TIME_WAIT socket), "hold" listens and never accepts (fills
        the accept queue).
        Returns once the socket is listening.
        """
        if mode not in ("close", "echo", "reply", "hold"):
            raise ValueError(f"bad mode {mode!r}")
        p = self.popen(ns or self.server_ns,
                       [sys.executable, "-c", _SERVER_CODE, str(port),
                        str(backlog), mode],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        r, _, _ = select.select([p.stdout], [], [], ready_timeout)
        line = p.stdout.readline() if r else ""
        if line.strip() != "ready":
            err = ""
            if p.poll() is not None:
                err = p.stderr.read()
            self.stop(p)
            raise RuntimeError(f"tcp_server on port {port} did not start: {err.strip()}")
        return p

    def connect_times(self, n: int, port: int, family: int = 4,
                      timeout: float = 3, host: str | None = None,
                      ns: str | None = None) -> list[float | None]:
        """n sequential connects from `ns` (default client) to the server.

        Returns each connect() duration in seconds, None for failures.
        """
        if family not in (4, 6):
            raise ValueError("family must be 4 or 6")
        host = host or (SERVER_IP6 if family == 6 else SERVER_IP4)
        r = self.run(ns or self.client_ns,
                     [sys.executable, "-c", _CONNECT_CODE, host, str(port),
                      str(n), str(timeout), str(family)],
                     timeout=n * (timeout + 1) + 10)
        return json.loads(r.stdout)

    def add_client_addresses(self, n: int, first: int = 10) -> list[str]:
        """Add n extra IPv4 addresses 10.77.1.<first>... (as /32s) to the client's
        veth, for many-source legit traffic (bind() to them). The server reaches
        them through its connected 10.77.1.0/24 route on s0. Returns them."""
        base = CLIENT_IP4.rsplit(".", 1)[0]
        last = first + n - 1
        reserved = {int(SERVER_IP4.rsplit(".", 1)[1]), int(CLIENT_IP4.rsplit(".", 1)[1])}
        if n <= 0 or first < 1 or last > 254 or reserved & set(range(first, last + 1)):
            raise ValueError(f"client addresses .{first}-.{last}: must lie in .1-.254 "
                             f"and avoid {sorted(reserved)}")
        addrs = [f"{base}.{i}" for i in range(first, last + 1)]
        self._batch(self.client_ns, [f"addr add {a}/32 dev {CLIENT_IF}" for a in addrs])
        return addrs

    def netstat(self, ns: str) -> dict[str, dict[str, int]]:
        """Counters of /proc/net/netstat + /proc/net/snmp in `ns`.

        {"TcpExt": {"SyncookiesSent": ..}, "Tcp": {"InSegs": ..}, "Ip": ..., ...}
        """
        out: dict[str, dict[str, int]] = {}
        with netns(ns):
            for fname in ("/proc/thread-self/net/netstat",
                          "/proc/thread-self/net/snmp"):
                with open(fname) as f:
                    lines = f.read().splitlines()
                for head, vals in zip(lines[0::2], lines[1::2]):
                    sect, _, names = head.partition(":")
                    _, _, nums = vals.partition(":")
                    out.setdefault(sect, {}).update(
                        zip(names.split(), (int(v) for v in nums.split())))
        return out

    def syn_recv_count(self, ns: str, port: int) -> int:
        """Request sockets in SYN_RECV for local port `port` (ss)."""
        r = self.run(ns, ["ss", "-Htn", "state", "syn-recv", "sport", "=",
                          f":{port}"], timeout=30)
        return sum(1 for line in r.stdout.splitlines() if line.strip())

    def mac(self, ns: str, ifname: str) -> str:
        key = (ns, ifname)
        if key not in self._macs:
            info = json.loads(self._ip(ns, ["-j", "link", "show", "dev", ifname]))
            self._macs[key] = info[0]["address"]
        return self._macs[key]

    # --- flood -------------------------------------------------------------------

    def _flood_argv(self, count: int, seconds: float, dport: int, seed: int,
                    sources: int | None, ipv6: bool, dst: str | None,
                    pool: int | None, pps: float | None = None,
                    ramp_to: float | None = None,
                    ramp: str | None = None) -> list[str]:
        if count <= 0 or seconds <= 0:
            raise ValueError("a flood needs a positive count and seconds")
        if dst is None:
            dst = SERVER_ATTACKER_IP6 if ipv6 else SERVER_ATTACKER_IP4
        if dst not in (SERVER_IP4, SERVER_IP6, SERVER_ATTACKER_IP4,
                       SERVER_ATTACKER_IP6):
            # Safety: only ever target the lab server's own addresses.
            raise ValueError(f"flood target {dst} is not a lab server address")
        argv = [sys.executable, "-m", "synguard_lab.flood",
                "--iface", self.attacker_if,
                "--src-mac", self.mac(self.attacker_ns, self.attacker_if),
                "--dst-mac", self.mac(self.server_ns, self.server_attacker_if),
                "--dst", dst, "--dport", str(dport), "--count", str(count),
                "--seconds", str(seconds), "--seed", str(seed)]
        if sources is not None:
            argv += ["--sources", str(sources)]
        if ipv6:
            argv.append("--ipv6")
        if pool is not None:
            argv += ["--pool", str(pool)]
        if pps is not None:
            argv += ["--pps", str(pps)]
        if ramp_to is not None:
            argv += ["--ramp-to", str(ramp_to)]
        if ramp is not None:
            argv += ["--ramp", ramp]
        return argv

    def _flood_env(self) -> dict[str, str]:
        from synguard_lab.common import repo_env

        return repo_env()

    def flood(self, count: int, seconds: float, *, dport: int = 80, seed: int = 0,
              sources: int | None = None, ipv6: bool = False,
              dst: str | None = None, pool: int | None = None,
              pps: float | None = None, ramp_to: float | None = None,
              ramp: str | None = None) -> dict:
        """Blocking bounded SYN flood from the attacker ns into s1.

        dst defaults to the server's s1 address; frames always enter via s1.
        pps paces the sender (frames/s); with ramp_to it climbs from pps to
        ramp_to over `seconds` (ramp "linear" or "exp"; synguard/flood.py).
        Returns the sender's JSON result ({"sent", "seconds", "pps", ...}).
        """
        argv = self._flood_argv(count, seconds, dport, seed, sources, ipv6, dst, pool,
                                pps, ramp_to, ramp)
        # Generous limit: building the pool plus `seconds` of sending.
        r = self.run(self.attacker_ns, argv, timeout=seconds + 60,
                     env=self._flood_env())
        return json.loads(r.stdout.strip().splitlines()[-1])

    def flood_start(self, count: int, seconds: float, **kw) -> subprocess.Popen:
        """Background version of flood(); collect with flood_result(proc)."""
        argv = self._flood_argv(count, seconds, kw.pop("dport", 80),
                                kw.pop("seed", 0), kw.pop("sources", None),
                                kw.pop("ipv6", False), kw.pop("dst", None),
                                kw.pop("pool", None), kw.pop("pps", None),
                                kw.pop("ramp_to", None), kw.pop("ramp", None))
        if kw:
            raise TypeError(f"unexpected arguments {sorted(kw)}")
        p = self.popen(self.attacker_ns, argv, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, env=self._flood_env())
        p.flood_seconds = seconds   # for flood_result's default timeout
        return p

    def flood_result(self, p: subprocess.Popen, timeout: float | None = None) -> dict:
        """Wait for a flood_start() process and return its JSON result."""
        if timeout is None:
            timeout = getattr(p, "flood_seconds", 0) + 60
        out, err = p.communicate(timeout=timeout)
        with contextlib.suppress(ValueError):
            self._procs.remove(p)
        if p.returncode != 0:
            raise RuntimeError(f"flood failed ({p.returncode}): {err.strip()}")
        return json.loads(out.strip().splitlines()[-1])
