"""The interfaces the program is attached to: the configured set attached (start and
SIGHUP), and interfaces coming and going under a running daemon: a removed, re-created
or renamed device is noticed each tick, said so, and attached again when it is back."""

from __future__ import annotations

import logging
import socket

from synguard.datapath import DataPathError
from synguard.log import event


def attach_interfaces(dp, wanted, xdp_mode: str) -> None:
    """Detach from the interfaces not wanted, attach to the wanted ones (DataPathError if
    one cannot be), and say what the tc program and the pins ran into."""
    wanted = list(wanted)
    for ifname in list(dp.attached):
        if ifname not in wanted:
            dp.detach(ifname)
            event("detached", f"detached from {ifname}", interface=ifname)
    for ifname in wanted:
        if ifname not in dp.attached:
            how = dp.attach(ifname, xdp_mode)
            _report_tc(dp, ifname)
            event("attached", f"attached to {ifname} ({how} XDP)", interface=ifname, xdp_mode=how)
            if dp.pin_error and dp.pin_error != dp.state_note:  # a foreign directory: said once
                event("pin_failed", f"cannot pin the program ({dp.pin_error}): after a crash, a restarted "
                      f"daemon will not recognise its leftover program", level=logging.WARNING)
                dp.pin_error = None


def _report_tc(dp, ifname: str) -> None:
    """What attaching the tc program beside the XDP one (DataPath.attach) ran into."""
    if dp.tc_problem:
        consequence = ("protect mode leaves every SYN to the kernel" if dp.cookie_method == "kernel-cookie"
                       else "protect mode refuses every new connection")
        event("syncookies_off", f"{ifname}: {dp.tc_problem}; until then {consequence}", level=logging.ERROR,
              interface=ifname)
        dp.tc_problem = None
    if dp.tc is not None and dp.tc.pin_error and dp.tc.pin_error not in (dp.state_note, dp.pin_error):
        event("pin_failed", f"cannot pin the tc program ({dp.tc.pin_error}): after a crash, a restarted "
              f"daemon recognises its leftover filter by name only", level=logging.WARNING)
        dp.tc.pin_error = None


def check_interfaces(dp, wanted, xdp_mode: str) -> None:
    """Notice a removed, re-created or renamed interface; re-attach when it is back."""
    for ifname, idx in list(dp.ifindexes.items()):
        try:
            now_idx = socket.if_nametoindex(ifname)
        except OSError:
            now_idx = None
        if now_idx == idx:
            continue
        try:
            new_name = socket.if_indextoname(idx)
        except OSError:
            new_name = None
        if new_name and new_name != ifname:
            dp.rename(ifname, new_name)
            event("interface_renamed", f"{ifname} was renamed {new_name}: the program followed the device "
                  f"and still protects it; {ifname} is protected again if it reappears",
                  level=logging.WARNING, interface=ifname, new_name=new_name)
        else:
            dp.forget(ifname)
            event("interface_lost", f"{ifname} is gone (the kernel detached the program with the device); "
                  f"waiting for it to come back", level=logging.ERROR, interface=ifname)
    for ifname in wanted:
        if ifname in dp.attached:
            continue
        try:
            socket.if_nametoindex(ifname)
        except OSError:
            continue
        try:
            how = dp.attach(ifname, xdp_mode)
        except DataPathError as e:
            event("interface_lost", f"{ifname} is back but cannot be attached: {e}", level=logging.ERROR)
            continue
        event("interface_restored", f"{ifname} is back: attached ({how} XDP)", interface=ifname, xdp_mode=how)
