"""Helpers shared by the test modules."""

import functools
import struct
import os
import shutil
import signal

import pytest


def hard_timeout(seconds: float):
    """Fail the test with TimeoutError after `seconds` (main thread only)."""
    def deco(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            def on_alarm(signum, frame):
                raise TimeoutError(f"{fn.__name__}: hard timeout {seconds}s")
            old = signal.signal(signal.SIGALRM, on_alarm)
            signal.setitimer(signal.ITIMER_REAL, seconds)
            try:
                return fn(*args, **kwargs)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, old)
        return wrapper
    return deco


def _have_lab() -> str | None:
    """Why the netns lab cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("ip", "ss", "tc"):
        if not shutil.which(tool):
            return f"needs {tool} (iproute2)"
    try:
        import bcc  # noqa: F401
    except ImportError:
        return "needs BCC (python3-bpfcc)"
    return None


_why_not = _have_lab()
needs_lab = pytest.mark.skipif(_why_not is not None, reason=str(_why_not))


def ones_sum(data: bytes) -> int:
    """Folded RFC 1071 one's complement sum (0xFFFF over a correctly checksummed
    header). The tests' checksum oracle, written independently of the code under test."""
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def _tc_program_missing() -> bool:
    from synguard.abi import EBPF_DIR_DEFAULT

    return not (EBPF_DIR_DEFAULT / "synguard_tc.bpf.c").exists()


# Since ABI 2 a client connects through protect mode only when the tc program turns its
# cookie ACK into a connection (XDP alone answers the SYN; the kernel resets the ACK).
needs_tc = pytest.mark.skipif(_tc_program_missing(),
                              reason="needs the tc program (ebpf/synguard_tc.bpf.c): clients connect through "
                                     "protect mode only with it")


class Listener:
    """A dual-stack TCP listener on port in a lab namespace (default: the server's),
    owned by the test process."""

    def __init__(self, lab, port: int, ns: str | None = None, backlog: int = 64, v6only: bool = False):
        import socket

        with lab.netns(ns or lab.server_ns):
            self.sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("::", port))
        self.sock.listen(backlog)

    def accept(self, timeout: float):
        import select

        r, _, _ = select.select([self.sock], [], [], timeout)
        return self.sock.accept()[0] if r else None

    def queued(self) -> int:
        """Connections waiting in the accept queue (drained and closed)."""
        n = 0
        self.sock.setblocking(False)
        try:
            while True:
                try:
                    conn, _ = self.sock.accept()
                except BlockingIOError:
                    return n
                conn.close()
                n += 1
        finally:
            self.sock.setblocking(True)

    def close(self):
        self.sock.close()
