"""The in-kernel fast trigger under a real flood (netns lab, real XDP program).

In auto mode a watched port whose SYNs on one CPU reach sg_config.fast_trigger_syns
within one window of the control plane's clock (sg_config.now_s, advanced once a
second like the daemon's tick does) is armed at once, inside XDP. Here a paced
flood well above the per-CPU ceiling runs for 2.5 s while a thread advances the
clock: the port must be armed by the program itself (no control plane decides
anything), only once, after at most two windows' worth of SYNs per CPU reached the
kernel, and every later SYN answered by XDP.

This backs the demo's finding (synguard_lab/demo.py): the trigger works; in the
demo lab it seldom fires because the unprotected flood runs at the kernel's pace.
"""

from __future__ import annotations

import os
import sys
import threading
import time

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from helpers import hard_timeout, needs_lab  # noqa: E402

pytestmark = [pytest.mark.netns, needs_lab]

PORT = 8080
PER_CPU = 4000      # fast_trigger_syns: SYNs per CPU per window
PPS = 20_000        # the flood: 5x the per-CPU ceiling even on one CPU
SECONDS = 2.5


@hard_timeout(180)
def test_fast_trigger_arms_the_port_inside_xdp_under_a_flood():
    from synguard.abi import Counter, Mode
    from synguard.datapath import DataPath
    from synguard_lab.lab import Lab, netns

    ncpu = os.cpu_count() or 1
    with Lab("fasttrg") as lab:
        lab.tcp_server(PORT, backlog=128)
        dp = DataPath()
        stop = threading.Event()
        try:
            dp.set_slot_key(1, os.urandom(16))
            dp.set_slot(1)
            dp.set_synack(1460, 1440, 7, 0xF)
            with netns(lab.server_ns):
                dp.attach(lab.server_attacker_if, "native")
            dp.set_ports({PORT})
            dp.set_watched([PORT])
            dp.arm_port(PORT, 0)
            dp.set_fast_trigger(PER_CPU, 60)
            dp.tick(int(time.time()))
            dp.set_mode(Mode.AUTO)

            def clock():  # the daemon's tick: now_s = wall seconds, once a second
                while not stop.wait(1.0):
                    dp.tick(int(time.time()))

            threading.Thread(target=clock, daemon=True).start()
            c0 = dp.counters()
            sent = lab.flood(int(PPS * SECONDS), SECONDS, dport=PORT, pps=PPS, seed=3)["sent"]
            end = time.monotonic() + 5  # frames still in the veth ring: poll, with a deadline
            while dp.counters()[Counter.SYN_RECEIVED] - c0[Counter.SYN_RECEIVED] < sent and time.monotonic() < end:
                time.sleep(0.01)
            c = {k: v - c0[k] for k, v in dp.counters().items()}
            armed_until = dp.port_auto_until(PORT)
            now_s = dp.config()["now_s"]
        finally:
            stop.set()
            with netns(lab.server_ns):  # interface names resolve in the calling thread's netns
                dp.close()

    assert sent >= 0.9 * PPS * SECONDS
    assert c[Counter.SYN_RECEIVED] == sent
    assert c[Counter.FAST_TRIGGER] == 1  # armed once (re-armed only when half the hold is gone)
    assert armed_until - now_s > 30  # armed for the hold (60 s) from the program's clock
    # Before arming: at most two windows (the first may be partial) below the ceiling per CPU.
    assert 0 < c[Counter.SYN_PASSED] <= 2 * PER_CPU * ncpu, c
    assert c[Counter.CHALLENGE_SENT] == sent - c[Counter.SYN_PASSED]
