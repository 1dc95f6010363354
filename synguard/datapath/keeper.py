"""Keeps the XDP program's tail-call table (sg_progs) filled after the daemon dies,
where no bpffs pin holds it.

The kernel empties a prog_array when its last user reference goes (an fd or a bpffs
pin). The daemon pins sg_progs beside its program; where it cannot (no bpffs at the pin
directory, as under `ip netns exec`, or a directory another user made), a daemon killed
with SIGKILL would leave its program attached and counting but passing every SYN that
needs a tail call -- every layout off the fast path, every SYN of the kernel-cookie
method -- to the kernel: failing open. So the daemon then starts this process
(DataPath.attach, in the namespace of the interface), which holds an fd of sg_progs and
nothing else, polls each second whether the program is still attached to an interface
of its network namespace, and exits once it is not: an orderly stop detaches it (and
ends this process at once), a restarted daemon replaces it, `synguard detach` removes it.

Run isolated like the loader (loader.child_argv): `keeper.main([fd, prog_id])`.
Under the systemd unit (KillMode=control-group) systemd ends it with the daemon; the
unit's /sys/fs/bpf pin is what keeps the table there.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time

POLL_S = 1.0


def attached_here(prog_id: int) -> bool:
    """Is XDP program prog_id attached (either mode) to an interface of this namespace?"""
    from synguard.datapath.xdp import query

    for idx, _name in socket.if_nameindex():
        try:
            q = query(idx)
        except Exception:  # the interface went meanwhile
            continue
        if prog_id in (q.prog_id, q.drv_prog_id, q.skb_prog_id):
            return True
    return False


def start(progs_fd: int, prog_id: int) -> subprocess.Popen:
    """A keeper for the table progs_fd of program prog_id, in the caller's namespace."""
    from synguard.datapath.loader import CHILD_ENV, child_argv

    return subprocess.Popen(child_argv("synguard.datapath.keeper", str(progs_fd), str(prog_id)),
                            pass_fds=[progs_fd], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL,  # never the daemon's stderr: it outlives the daemon
                            env=dict(CHILD_ENV), cwd="/", start_new_session=True)


def main(argv: list[str]) -> int:
    fd, prog_id = int(argv[0]), int(argv[1])
    os.set_inheritable(fd, False)
    while attached_here(prog_id):
        time.sleep(POLL_S)
    return 0
