"""This network namespace's own addresses, for the data path's scope (sg_local_addrs,
ebpf/synguard_scope.h): the programs act only on segments to one of them.

Kept from netlink (pyroute2): a socket subscribed to address changes (RTMGRP_IPV4_IFADDR,
RTMGRP_IPV6_IFADDR) is read each daemon tick; any change -- or a lost event, or every
RESYNC_S -- re-reads the whole list and updates the map (new addresses first, then the
gone ones removed). Start-up: the first sync happens before the program is attached, so
there is no moment when the program acts for an address that is not ours.
Gaps, by design fail-open: an address added under a running daemon passes unprotected
until the next tick (<= 1 s; its SYNs count as "not for this host"); a removed one is
still answered for until the next tick.
"""

from __future__ import annotations

import ipaddress
import logging
import select
import time

from synguard.log import event

RESYNC_S = 30.0  # a full re-read even without events (a netlink overflow loses them)


def local_addresses(ipr) -> set:
    """Every address configured in this netns (any interface, any scope)."""
    out = set()
    for msg in ipr.get_addr():
        addr = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")  # IFA_LOCAL: ours on a point-to-point link
        if addr:
            out.add(ipaddress.ip_address(addr.split("%")[0]))
    return out


class LocalAddrs:
    """The data path's sg_local_addrs, kept current. Call sync() once before attaching,
    then poll() every tick; close() at the end."""

    def __init__(self, datapath):
        from pyroute2 import IPRoute
        from pyroute2.netlink.rtnl import RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR

        self.datapath = datapath
        self.addrs: set = set()
        self._dump = IPRoute()
        self._events = IPRoute()
        self._events.bind(groups=RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR)
        self._synced_at = 0.0
        self._left_out: list = []

    def sync(self) -> None:
        addrs = local_addresses(self._dump)
        left_out = self.datapath.set_local_addrs(addrs)
        if addrs != self.addrs:
            added, gone = sorted(map(str, addrs - self.addrs)), sorted(map(str, self.addrs - addrs))
            event("local_addresses", f"acting for {len(addrs)} local addresses"
                  + (f" (+{', '.join(added[:8])})" if added and self.addrs else "")
                  + (f" (-{', '.join(gone[:8])})" if gone else ""), added=added, gone=gone)
        if left_out and left_out != self._left_out:
            event("local_addresses", f"{len(left_out)} local addresses do not fit in sg_local_addrs "
                  f"(SG_LOCAL_ADDRS): traffic to them passes unprotected, e.g. {left_out[0]}",
                  level=logging.WARNING)
        self.addrs, self._left_out = addrs, left_out
        self._synced_at = time.monotonic()

    def poll(self) -> bool:
        """Drain pending address events; re-sync when there were any (or every RESYNC_S).
        Returns whether it re-synced."""
        changed = False
        while select.select([self._events], [], [], 0)[0]:
            try:
                self._events.get()
            except Exception:  # ENOBUFS (events lost) or a parse error: re-read everything
                pass
            changed = True
        if changed or time.monotonic() - self._synced_at >= RESYNC_S:
            self.sync()
            return True
        return False

    def close(self) -> None:
        for ipr in (self._dump, self._events):
            try:
                ipr.close()
            except Exception:
                pass
