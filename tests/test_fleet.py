"""A fleet sharing `secret.file`: a cookie that one daemon's XDP program put in a
SYN-ACK is taken by another daemon's tc program, at the same instant and across a
secret rotation, and refused by a daemon with another secret.

Three real data paths (XDP + tc programs, each with its own maps), keyed by the
daemon's own code (the SlotKeys schedule a Daemon drives its data path with) from the
secret files; the clock is the only input the test sets. The tc program runs
under BPF_PROG_TEST_RUN in a namespace with a listener, where reaching the kfunc
counts COOKIE_REFUSED (the kfunc returns -EINVAL outside real tc ingress; see
tests/test_tc.py) and a cookie that does not check counts only ACK_CHECKED."""

from __future__ import annotations

import os

import pytest
from scapy.layers.inet import TCP

from frames import CLIENT4, SERVER4, ack4, syn4
from synguard.abi import Counter, Mode
from test_tc import _why_not, listen_ns, new_netns, run_in  # noqa: F401  (listen_ns: fixture)

ROTATE = 240  # a multiple of the 16-s slot: the epoch boundary is also a slot boundary
BOUNDARY = 7_000_000 * ROTATE  # a wall-clock second where a new epoch (a new secret) starts


def secret_file(tmp_path, name: str, data: bytes) -> str:
    p = tmp_path / name
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return str(p)


@pytest.fixture
def fleet(tmp_path):
    """Daemons a and b share one secret file, c has another."""
    why = _why_not()
    if why:
        pytest.skip(why)
    from synguard import config as configmod
    from synguard.daemon import Daemon
    from synguard.datapath import DataPath

    shared = secret_file(tmp_path, "fleet.key", os.urandom(16))
    other = secret_file(tmp_path, "other.key", os.urandom(16))
    daemons = {}
    try:
        for name, path in (("a", shared), ("b", shared), ("c", other)):
            cfg = configmod.parse(f"mode: protect\nprotect:\n  ports: [80]\nsecret:\n  file: {path}\n"
                                  f"  rotate_every: {ROTATE}\n")
            d = Daemon(cfg, datapath=DataPath(tc=True))
            d.keys.configure(cfg.secret)  # reads the secret file, as Daemon._apply does
            d.datapath.set_ports({80})
            d.datapath.set_synack(1460, 1440, 10, 0xF)
            d.datapath.set_mode(Mode.PROTECT)
            daemons[name] = d
        yield daemons
    finally:
        for d in daemons.values():
            d.datapath.close()


def at(daemons, wall: int) -> None:
    for d in daemons.values():
        d.datapath.tick(wall)
        d.keys.advance(wall)


def cookie_ack(d, isn: int, sport: int):
    """SYN through d's XDP program -> its SYN-ACK -> the client's ACK (with timestamps)."""
    out = d.datapath.test_run(bytes(syn4(sport=sport, seq=isn)))
    assert out.retval == 3, "XDP_TX: the program answered the SYN"
    from scapy.layers.l2 import Ether

    synack = Ether(out.data)[TCP]
    assert synack.flags == "SA" and synack.ack == isn + 1
    tsval = dict(synack.options)["Timestamp"][0]
    return ack4(isn + 1, (synack.seq + 1) & 0xFFFFFFFF, sport=sport, src=CLIENT4, dst=SERVER4,
                options=[("NOP", None), ("NOP", None), ("Timestamp", (4242, tsval))])


def checked(d, ns_fd, frame) -> dict:
    before = d.datapath.counters()
    run_in(ns_fd, d.datapath.tc, frame)
    after = d.datapath.counters()
    return {c: after[c] - before[c] for c in Counter if after[c] != before[c]}


VALID = {Counter.ACK_CHECKED: 1, Counter.COOKIE_REFUSED: 1}  # reached the kfunc (test-run: -EINVAL)
INVALID = {Counter.ACK_CHECKED: 1, Counter.OOS_ACK: 1, Counter.OOS_DROPPED: 1}  # not ours: out of state, dropped (protect)


def test_fleet_members_take_each_others_cookies_across_a_rotation(fleet, listen_ns):
    a, b, c = fleet["a"], fleet["b"], fleet["c"]
    at(fleet, BOUNDARY - 16)  # the last slot of an epoch
    before = cookie_ack(a, isn=1000, sport=41000)
    assert checked(b, listen_ns, before) == VALID
    assert checked(a, listen_ns, before) == VALID
    assert checked(c, listen_ns, before) == INVALID

    at(fleet, BOUNDARY)  # every member switches to the next epoch's secret at the same second
    assert a.keys.epoch == b.keys.epoch == BOUNDARY // ROTATE and a.keys.rotations == b.keys.rotations == 1
    after = cookie_ack(a, isn=2000, sport=41001)
    assert checked(b, listen_ns, after) == VALID
    assert checked(b, listen_ns, before) == VALID  # made before the rotation: the previous slot's key
    assert checked(c, listen_ns, after) == INVALID

    at(fleet, BOUNDARY + 32)  # two slots later the old cookie has expired everywhere
    assert checked(b, listen_ns, before) == INVALID
    assert checked(a, listen_ns, before) == INVALID


def test_a_member_on_another_epoch_refuses_the_cookie(fleet, listen_ns):
    """The switch must be simultaneous: a member whose clock is two slots behind does not
    take a cookie from the new epoch (what a fleet without a shared clock would see)."""
    a, b = fleet["a"], fleet["b"]
    at({"a": a}, BOUNDARY + 16)
    at({"b": b}, BOUNDARY - 16)
    assert checked(b, listen_ns, cookie_ack(a, isn=3000, sport=41002)) == INVALID
