"""Network namespaces: an attachment remembers the namespace it was made in, so the
daemon can detach from the right one (the lab borrows these too)."""

from __future__ import annotations

import contextlib
import ctypes as ct
import os

_CLONE_NEWNET = 0x40000000
_libc = ct.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ct.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def current_netns_fd() -> int:
    """An fd of the calling thread's network namespace (caller closes it)."""
    return os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)


@contextlib.contextmanager
def in_netns(fd: int):
    """Run the body with the current thread in the namespace of fd, then return."""
    old = current_netns_fd()
    try:
        _setns(fd)
        try:
            yield
        finally:
            _setns(old)
    finally:
        os.close(old)
