"""Issue 20 (hardening v3): no code from the working directory, no port left
unwatched, a crash never fails open, and the smaller findings (per-netns lock,
per-request deadline, atomic deny swap, bounded series, test hooks, postrm).

Local users are played by `nobody` (setpriv). Every daemon runs in a lab namespace
and is stopped by PID; bpffs mounts are private to each test."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import hard_timeout, needs_lab, needs_tc
from test_hardening import NOBODY, SYNGUARD, Daemon, attached, world  # noqa: F401 (fixture)

pytestmark = [pytest.mark.netns, needs_lab]

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def lab():
    from synguard_lab.lab import Lab

    with Lab("sgh3") as lab:
        yield lab


@pytest.fixture
def bpffs0700(world):  # noqa: F811
    """A private bpffs mounted 0700 (what the README asks of /sys/fs/bpf)."""
    mnt = world / "bpffs"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "bpf", "-o", "mode=0700", "bpf", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


# ---- SYNs of every option layout, sent raw from the attacker namespace ---------------

# The fast path reads none, Linux, Windows (and Apple); every other layout needs the
# tail-called option scan, and the kernel-cookie method tail-calls for every SYN.
LAYOUTS = {
    "none": b"",
    "mss": b"\x02\x04\x05\xb4",
    "linux": b"\x02\x04\x05\xb4\x04\x02\x08\x0a\x00\x00\x00\x01\x00\x00\x00\x00\x01\x03\x03\x07",
    "windows": b"\x02\x04\x05\xb4\x01\x03\x03\x08\x01\x01\x04\x02",
    "odd": b"\x01\x03\x03\x07\x02\x04\x05\xb4\x04\x02\x01\x01",  # window scale first
}


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return 0xFFFF - s


def syn_frames(lab, layout: bytes, n: int, dport: int, seed: int) -> list[bytes]:
    """n spoofed IPv4 SYNs to the server's attacker-side address with the given options."""
    from synguard_lab.flood import mac_bytes
    from synguard_lab.lab import SERVER_ATTACKER_IP4

    rng = random.Random(seed)
    dst = socket.inet_aton(SERVER_ATTACKER_IP4)
    eth = (mac_bytes(lab.mac(lab.server_ns, lab.server_attacker_if))
           + mac_bytes(lab.mac(lab.attacker_ns, lab.attacker_if)) + b"\x08\x00")
    out = []
    for _ in range(n):
        src = bytes([rng.randrange(11, 200), rng.randrange(256), rng.randrange(256), rng.randrange(1, 255)])
        tcp_len = 20 + len(layout)
        ip = bytearray(b"\x45\x00" + (20 + tcp_len).to_bytes(2, "big") + rng.randrange(65536).to_bytes(2, "big")
                       + b"\x40\x00\x40\x06\x00\x00" + src + dst)
        ip[10:12] = _csum(bytes(ip)).to_bytes(2, "big")
        tcp = bytearray(rng.randrange(1024, 65536).to_bytes(2, "big") + dport.to_bytes(2, "big")
                        + rng.randrange(1 << 32).to_bytes(4, "big") + bytes(4)
                        + bytes([(tcp_len // 4) << 4, 0x02]) + (64240).to_bytes(2, "big") + bytes(4) + layout)
        pseudo = src + dst + b"\x00\x06" + tcp_len.to_bytes(2, "big")
        tcp[16:18] = _csum(pseudo + bytes(tcp)).to_bytes(2, "big")
        out.append(eth + bytes(ip) + bytes(tcp))
    return out


def send_frames(lab, frames: list[bytes]) -> None:
    with lab.netns(lab.attacker_ns):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    try:
        s.bind((lab.attacker_if, 0))
        for i, f in enumerate(frames):
            s.send(f)
            if i % 200 == 199:
                time.sleep(0.01)  # bounded and gentle: the veth's queue never overflows
    finally:
        s.close()


def tcp_in_segs(lab) -> int:
    return lab.netstat(lab.server_ns)["Tcp"]["InSegs"]


def layouts_reaching_kernel(lab, dport: int, n: int = 300) -> dict[str, int]:
    """For each layout: how many of n spoofed SYNs the server's TCP stack received (XDP
    answered the others). The lab carries no other TCP to the server meanwhile."""
    out = {}
    for i, (name, layout) in enumerate(LAYOUTS.items()):
        frames = syn_frames(lab, layout, n, dport, seed=100 + i)
        before = tcp_in_segs(lab)
        send_frames(lab, frames)
        time.sleep(0.3)
        out[name] = tcp_in_segs(lab) - before
    return out


# ---- item 1: the loader child imports nothing from the working directory ----------------


@hard_timeout(240)
def test_loader_child_runs_no_code_from_the_working_directory(lab, world):  # noqa: F811
    """nobody owns a directory holding a package named synguard whose import writes a file;
    root starts `synguard run` (the installed entry point) from there, as the README's
    by-hand flows do. Nothing of it may run: the daemon loads, attaches, protects."""
    planted = world / "home"
    planted.mkdir()
    planted.chmod(0o777)
    marker = world / "home" / "ran-as-root"
    code = f"import os\nopen({str(marker)!r}, 'w').write(str(os.geteuid()))\n"
    subprocess.run([*NOBODY, "sh", "-c", f"mkdir -p {planted}/synguard/datapath && "
                    f"printf '%s' \"$0\" > {planted}/synguard/__init__.py && "
                    f"printf '%s' \"$0\" > {planted}/synguard/datapath/__init__.py", code], check=True, timeout=30)
    entry = [str(Path(sys.executable).parent / "synguard")]  # sys.path[0]: the script's directory
    d = Daemon(lab, world, "-i", lab.server_client_if, "--mode", "protect", "--ports", "8080", command=entry,
               cwd=planted, env={"PYTHONPATH": "", "PYTHONSTARTUP": str(planted / "synguard" / "__init__.py")})
    try:
        with contextlib.suppress(AssertionError):  # judged below, after the marker
            d.wait("mode protect")
        running = attached(lab, lab.server_client_if)
    finally:
        code_ = d.stop()
    assert not marker.exists(), f"planted code ran as uid {marker.read_text()}"
    assert running is not None and running[1] == "xdp_synguard", d.text()
    assert code_ == 0, d.text()


# ---- item 4: a daemon killed with SIGKILL leaves a program that still answers every SYN ----


def keeper_pids(prog_id: int) -> list[int]:
    """Processes holding a dead daemon's tail-call table for program prog_id."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError):
                argv = (d / "cmdline").read_bytes().split(b"\0")
                if b"synguard.datapath.keeper" in argv and str(prog_id).encode() in argv:
                    out.append(int(d.name))
    return out


@needs_tc
@hard_timeout(300)
@pytest.mark.parametrize("pins", ["bpffs", "none"])
@pytest.mark.parametrize("method", ["kfunc", "kernel-cookie"])
def test_sigkill_never_fails_open_for_any_syn_layout(lab, world, bpffs0700, method, pins):  # noqa: F811
    """SIGKILL, then spoofed SYNs of every option layout: none reaches the server's TCP stack
    (each is answered in XDP), with the tail-call table pinned on a bpffs or, where there is
    no bpffs (`ip netns exec` hides /sys/fs/bpf), held by the keeper; a restarted daemon
    replaces the orphan and the keeper goes."""
    from synguard.datapath import tc as tcmod

    if method == "kfunc" and not tcmod.kernel_has_kfunc():
        pytest.skip("the kfunc method needs bpf_sk_assign_tcp_reqsk()")
    env = {"SYNGUARD_COOKIE_METHOD": method}
    if method == "kernel-cookie":
        # The kernel makes a cookie for XDP to send only once the listener's queue is full,
        # or for every SYN with tcp_syncookies=2 (README "kernel-cookie method"): every SYN
        # is then XDP's to answer, and one that reaches the stack is one the tail call missed.
        lab._sysctls(lab.server_ns, {"net/ipv4/tcp_syncookies": 2})
    if pins == "bpffs":
        env["SYNGUARD_PIN_DIR"] = str(bpffs0700 / "synguard")
    lab.tcp_server(8080)
    args = ("-i", lab.server_client_if, "-i", lab.server_attacker_if, "--mode", "protect", "--ports", "8080")
    a = Daemon(lab, world, *args, env=env)
    try:
        a.wait("mode protect")
        assert layouts_reaching_kernel(lab, 8080) == dict.fromkeys(LAYOUTS, 0)
        orphan = attached(lab, lab.server_attacker_if)[0]
    finally:
        a.stop(signal.SIGKILL)
    try:
        time.sleep(1)  # the kernel clears a prog array's entries from a work queue
        assert attached(lab, lab.server_attacker_if)[0] == orphan
        after = layouts_reaching_kernel(lab, 8080)
        assert after == dict.fromkeys(LAYOUTS, 0), f"SYNs that reached the kernel after SIGKILL: {after}"
        assert all(t is not None for t in lab.connect_times(2, 8080))
        assert len(keeper_pids(orphan)) == (1 if pins == "none" else 0)

        b = Daemon(lab, world, *args, env=env)
        try:
            b.wait("mode protect")
            assert attached(lab, lab.server_attacker_if)[0] != orphan
            end = time.monotonic() + 10
            while keeper_pids(orphan) and time.monotonic() < end:
                time.sleep(0.2)
            assert keeper_pids(orphan) == []  # the orphan is replaced everywhere: its keeper ended
            assert layouts_reaching_kernel(lab, 8080) == dict.fromkeys(LAYOUTS, 0)
        finally:
            assert b.stop() == 0, b.text()
    finally:
        for pid in keeper_pids(orphan):
            os.kill(pid, signal.SIGKILL)  # only on failure: a keeper this test's daemon started


@needs_tc
@hard_timeout(300)
@pytest.mark.parametrize("pins", ["bpffs", "none"])
def test_restart_keeps_the_orphans_table_where_the_orphan_stays(lab, world, bpffs0700, pins):  # noqa: F811
    """A restarted daemon that no longer takes one interface over replaces the crashed
    run's pins; the orphan left on that interface must still answer every layout (its
    table is held, not emptied when its pin goes)."""
    env = {"SYNGUARD_PIN_DIR": str(bpffs0700 / "synguard")} if pins == "bpffs" else {}
    lab.tcp_server(8080)
    a = Daemon(lab, world, "-i", lab.server_client_if, "-i", lab.server_attacker_if, "--mode", "protect",
               "--ports", "8080", env=env)
    try:
        a.wait("mode protect")
        orphan = attached(lab, lab.server_attacker_if)[0]
    finally:
        a.stop(signal.SIGKILL)
    b = Daemon(lab, world, "-i", lab.server_client_if, "--mode", "protect", "--ports", "8080", env=env)
    try:
        b.wait("mode protect")
        assert attached(lab, lab.server_client_if)[0] != orphan
        assert attached(lab, lab.server_attacker_if)[0] == orphan
        time.sleep(1)  # the kernel clears a prog array's entries from a work queue
        after = layouts_reaching_kernel(lab, 8080)
        assert after == dict.fromkeys(LAYOUTS, 0), f"SYNs the orphan passed to the kernel: {after}"
    finally:
        assert b.stop() == 0, b.text()
        for pid in keeper_pids(orphan):
            os.kill(pid, signal.SIGKILL)  # a keeper this test's first daemon started
