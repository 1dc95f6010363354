"""XDP attachment: which program is on an interface, and detaching only ours."""

from __future__ import annotations

import contextlib

from synguard.datapath.host import ifindex
from synguard.datapath.libbpf import prog_name_by_id
from synguard.datapath.pins import pinned_prog_id

PROG_NAME = "xdp_synguard"

# linux/if_link.h
XDP_FLAGS_UPDATE_IF_NOEXIST = 1 << 0
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
XDP_MODES = ("auto", "native", "generic")
MODE_FLAGS = {"native": XDP_FLAGS_DRV_MODE, "generic": XDP_FLAGS_SKB_MODE}


def attached_prog(ifname: str) -> tuple[int, str] | None:
    """(prog id, prog name) of the XDP program on ifname, or None."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        link = ipr.get_links(ifindex(ifname))[0]
    xdp = link.get_attr("IFLA_XDP")
    if not xdp:
        return None
    pid = xdp.get_attr("IFLA_XDP_PROG_ID")
    if not pid:
        return None
    return pid, prog_name_by_id(pid)


def is_ours(current: tuple[int, str] | None) -> bool:
    return current is not None and (current[1] == PROG_NAME or current[0] == pinned_prog_id())


def detach_orphan(ifname: str) -> tuple[bool, tuple[int, str] | None]:
    """Detach a synguard program left on ifname by a daemon that died (ExecStopPost).

    Returns (detached, the program found there). Only ours is removed: named
    xdp_synguard, or the id of our (trusted) pin; a foreign pin never counts."""
    from bcc import BPF

    current = attached_prog(ifname)
    if not is_ours(current):
        return False, current
    for flag in MODE_FLAGS.values():
        with contextlib.suppress(Exception):
            BPF.remove_xdp(ifname.encode(), flag)
    return True, current
