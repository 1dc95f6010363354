"""Interfaces coming and going under a running daemon: a removed, re-created or
renamed device is noticed each tick, said so, and attached again when it is back."""

from __future__ import annotations

import logging
import socket

from synguard.datapath import DataPathError
from synguard.log import event


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
