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


# ---- One daemon per network namespace ---------------------------------------------
# The pins (synguard/datapath/pins.py) are per namespace: a second daemon there (with
# another control socket) would adopt the first one's kept maps, replace its program and
# remove the whole pin directory when it stops. So `synguard run` holds an exclusive
# flock on LOCK_DIR/netns-<inode>.lock for its lifetime (released by the kernel however
# it ends, SIGKILL included). LOCK_DIR is root's runtime directory (the unit's
# RuntimeDirectory): a real directory of our uid closed to group/other, made 0700 if missing.
LOCK_DIR = "/run/synguard"


class NetnsLocked(Exception):
    """Another synguard holds this namespace (str: the one-line reason)."""


def netns_lock(lock_dir: str = LOCK_DIR) -> int:
    """Take this namespace's lock; returns its fd (keep it open). NetnsLocked if another
    daemon holds it; OSError/NetnsLocked if the lock directory is not trustworthy."""
    import fcntl
    import stat

    with contextlib.suppress(FileExistsError):
        os.mkdir(lock_dir, 0o700)
    st = os.lstat(lock_dir)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise NetnsLocked(f"{lock_dir}: not a directory of uid {os.geteuid()} closed to group/other writes; "
                          f"synguard takes no lock there")
    path = f"{lock_dir}/netns-{os.stat('/proc/thread-self/ns/net').st_ino}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise NetnsLocked(f"another synguard (pid {holder}) runs in this network namespace ({path} is locked); "
                          f"one daemon per namespace: stop that one first") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
