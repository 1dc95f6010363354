"""The daemon's control socket: one JSON request line, one JSON reply line.

The CLI (`synguard status`, `top`) is the client (synguard.view). The socket is
0660 root; requests are answered by a callable the daemon gives, so this module
knows nothing of the daemon. A client gets READ_TIMEOUT_S in all to send its line
(a deadline for the whole request, not a timeout per read: a client sending a byte
a second is dropped too), as long again to take the reply, and at most MAX_CLIENTS
are served at once (more are closed at once): half-sent requests cannot pile up
threads or hold the socket. A path that holds anything but a stale socket of ours is
never removed.
"""

from __future__ import annotations

import json
import os
import socket
import socketserver
import stat
import threading
import time
from pathlib import Path
from typing import Callable

READ_TIMEOUT_S = 2.0
MAX_CLIENTS = 8
MAX_REQUEST = 65536


class ControlError(RuntimeError):
    """One line for the operator."""


def _read_line(sock: socket.socket, deadline: float) -> bytes:
    """The request line (up to MAX_REQUEST bytes), read before the monotonic deadline;
    TimeoutError past it."""
    buf = bytearray()
    while b"\n" not in buf and len(buf) < MAX_REQUEST:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("request deadline")
        sock.settimeout(left)
        chunk = sock.recv(min(4096, MAX_REQUEST - len(buf)))
        if not chunk:
            break
        buf += chunk
    return bytes(buf.split(b"\n", 1)[0])


class _Handler(socketserver.BaseRequestHandler):
    def handle(self):
        sock = self.request
        try:
            line = _read_line(sock, time.monotonic() + READ_TIMEOUT_S)
            request = json.loads(line or b"{}")
            if not isinstance(request, dict):
                raise ValueError("a request is a JSON object")
            reply = self.server.answer(request)
        except (socket.timeout, TimeoutError):
            return  # a client that never finished its line: drop it
        except Exception as e:  # a bad request must never hurt the daemon
            reply = {"error": f"{type(e).__name__}: {e}"}
        try:
            sock.settimeout(READ_TIMEOUT_S)  # sendall: one deadline for the whole reply
            sock.sendall(json.dumps(reply).encode() + b"\n")
        except OSError:
            pass  # the client went away, or does not read


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: str, answer: Callable[[dict], dict]):
        self.answer = answer
        self._slots = threading.BoundedSemaphore(MAX_CLIENTS)
        super().__init__(path, _Handler)

    def process_request(self, request, client_address):
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # at the cap: close, do not queue a thread
            return
        try:
            super().process_request(request, client_address)
        except Exception:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


def _clear_stale(path: Path) -> None:
    """Remove a stale socket at path (a crashed daemon's); refuse anything else."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ControlError(f"control socket {path}: exists and is not a socket; not touching it "
                           f"(set control.socket to another path, or remove it yourself)")
    if st.st_uid != os.geteuid():
        raise ControlError(f"control socket {path}: a socket owned by uid {st.st_uid}, not us; not touching it")
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            path.unlink(missing_ok=True)  # nobody answers: a crashed daemon's
            return
    raise ControlError(f"another synguard is running (control socket {path} answers)")


class ControlServer:
    """Serves answer(request) on the Unix socket at path, in a background thread."""

    def __init__(self, path: str | os.PathLike, answer: Callable[[dict], dict]):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
            _clear_stale(self.path)
            old = os.umask(0o117)  # the socket is born 0660: no window with wider access
            try:
                self._server = _Server(str(self.path), answer)
            finally:
                os.umask(old)
        except OSError as e:
            raise ControlError(f"control socket {self.path}: {e.strerror or e}") from None
        self._ino = self.path.lstat().st_ino
        threading.Thread(target=self._server.serve_forever, name="control", daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        try:
            if self.path.lstat().st_ino == self._ino:  # only the socket we made
                self.path.unlink()
        except OSError:
            pass
