"""XDP attachment through libbpf (bpf_xdp_attach/detach/query): which program is on an
interface, attaching over only our own program, and detaching only ours.

"Only ours" is enforced by the kernel where we can name the program we expect:
XDP_FLAGS_REPLACE with the expected program's fd (IFLA_XDP_EXPECTED_FD) makes the
change fail with EEXIST if anything else sits there by then."""

from __future__ import annotations

import contextlib
import ctypes as ct
import os

from synguard.datapath.host import DataPathError, ifindex
from synguard.datapath.libbpf import XdpAttachOpts, XdpQueryOpts, errno_of, lib as _lib, prog_id, prog_name_by_id
from synguard.datapath.pins import ForeignPin, pinned_prog_fd_checked, pinned_prog_id, trusted_pin_dir

PROG_NAME = "xdp_synguard"

# linux/if_link.h
XDP_FLAGS_UPDATE_IF_NOEXIST = 1 << 0
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
XDP_FLAGS_REPLACE = 1 << 4
XDP_MODES = ("auto", "native", "generic")
MODE_FLAGS = {"native": XDP_FLAGS_DRV_MODE, "generic": XDP_FLAGS_SKB_MODE}
# enum XDP_ATTACHED_* (bpf_xdp_query's attach_mode)
_ATTACHED_MODE = {1: "native", 2: "generic"}


def attached_prog(ifname: str) -> tuple[int, str] | None:
    """(prog id, prog name) of the XDP program on ifname, or None."""
    pid = query(ifindex(ifname)).prog_id
    if not pid:
        return None
    return pid, prog_name_by_id(pid)


def query(idx: int) -> XdpQueryOpts:
    """The XDP programs on ifindex idx: prog_id, drv_prog_id, skb_prog_id, attach_mode."""
    opts = XdpQueryOpts(sz=ct.sizeof(XdpQueryOpts))
    ret = _lib().bpf_xdp_query(idx, 0, ct.byref(opts))
    if ret != 0:
        raise DataPathError(f"cannot query XDP on ifindex {idx}: {os.strerror(errno_of(ret))}")
    return opts


def mode_of(idx: int, pid: int) -> str | None:
    """"native" or "generic": where program pid sits on ifindex idx (None: not there)."""
    q = query(idx)
    if q.drv_prog_id == pid:
        return "native"
    if q.skb_prog_id == pid:
        return "generic"
    return None


def is_ours(current: tuple[int, str] | None) -> bool:
    return current is not None and (current[1] == PROG_NAME or current[0] == pinned_prog_id())


def fd_of(pid: int) -> int | None:
    """An fd of program pid, to name it as the expected one: from our trusted pin, else by
    id (CAP_SYS_ADMIN only); None if neither works. The caller closes it."""
    with contextlib.suppress(ForeignPin, OSError):
        d = trusted_pin_dir()
        fd = pinned_prog_fd_checked(d / PROG_NAME) if d is not None else None
        if fd is not None:
            if prog_id(fd) == pid:
                return fd
            os.close(fd)
    fd = _lib().bpf_prog_get_fd_by_id(pid)
    return fd if fd >= 0 else None


def attach_fd(idx: int, prog_fd: int, mode: str, expected_fd: int | None = None, replace_any: bool = False) -> int:
    """bpf_xdp_attach in `mode`: over nothing (UPDATE_IF_NOEXIST), over exactly the program
    of expected_fd (REPLACE), or (replace_any) over whatever sits in that mode. Returns 0 or -errno."""
    flags = MODE_FLAGS[mode]
    opts = XdpAttachOpts(sz=ct.sizeof(XdpAttachOpts))
    if expected_fd is not None:
        flags |= XDP_FLAGS_REPLACE
        opts.old_prog_fd = expected_fd
    elif not replace_any:
        flags |= XDP_FLAGS_UPDATE_IF_NOEXIST
    ret = _lib().bpf_xdp_attach(idx, prog_fd, flags, ct.byref(opts))
    return -errno_of(ret) if ret != 0 else 0


def detach_fd(idx: int, mode: str, expected_fd: int | None) -> int:
    """bpf_xdp_detach in `mode`, only if the program of expected_fd is the one there (when
    given). Returns 0 or -errno (EEXIST: another program sits there now)."""
    flags = MODE_FLAGS[mode]
    opts = XdpAttachOpts(sz=ct.sizeof(XdpAttachOpts))
    if expected_fd is not None:
        flags |= XDP_FLAGS_REPLACE
        opts.old_prog_fd = expected_fd
    ret = _lib().bpf_xdp_detach(idx, flags, ct.byref(opts))
    return -errno_of(ret) if ret != 0 else 0


def detach_prog(idx: int, pid: int) -> bool:
    """Detach program pid from ifindex idx in whichever mode it sits, naming it as the
    expected program when we can get an fd of it. True if it was detached."""
    mode = mode_of(idx, pid)
    if mode is None:
        return False
    fd = fd_of(pid)
    try:
        return detach_fd(idx, mode, fd) == 0
    finally:
        if fd is not None:
            os.close(fd)


def detach_orphan(ifname: str) -> tuple[bool, tuple[int, str] | None]:
    """Detach a synguard program left on ifname by a daemon that died (ExecStopPost).

    Returns (detached, the program found there). Only ours is removed: named
    xdp_synguard, or the id of our (trusted) pin; a foreign pin never counts."""
    current = attached_prog(ifname)
    if not is_ours(current):
        return False, current
    return detach_prog(ifindex(ifname), current[0]), current
