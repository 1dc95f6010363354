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
