"""Operations: the systemd unit (debian/synguard.service), the unit's capability
set on a real daemon, and recovery from a daemon killed with SIGKILL. The package
that installs the unit: tests/test_deb.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import hard_timeout, needs_tc

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "debian" / "synguard.service"
CAPS = "-all,+bpf,+net_admin,+perfmon"  # CapabilityBoundingSet of the unit


def test_unit_passes_systemd_analyze_verify(tmp_path):
    """The unit as the package installs it (tests/test_deb.py verifies the installed copy);
    here its ExecStart points at this checkout's entry point, which exists, and the
    Documentation=man:synguard(8) check is off (the page is installed by the package)."""
    binary = Path(sys.executable).parent / "synguard"
    unit = tmp_path / "synguard.service"
    unit.write_text(UNIT.read_text().replace("/usr/sbin/synguard", str(binary)))
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr
    text = UNIT.read_text()
    for directive in ("Type=notify", "WatchdogSec=", "ExecStartPre=/usr/sbin/synguard check-config",
                      "ExecReload=/bin/kill -HUP $MAINPID", "Restart=on-failure", "RestartPreventExitStatus=2",
                      "ExecStopPost=", "CapabilityBoundingSet=CAP_BPF CAP_NET_ADMIN CAP_PERFMON",
                      "ProtectSystem=strict", "RuntimeDirectory=synguard", "RestrictAddressFamilies=",
                      "SystemCallFilter=@system-service bpf"):
        assert directive in text, directive


@pytest.fixture
def lab(tmp_path):
    """A lab, and a bpffs for pins: `ip netns exec` remounts /sys, hiding /sys/fs/bpf,
    so the daemons of this test pin under a bpffs mounted elsewhere (SYNGUARD_PIN_DIR)."""
    from synguard_lab.lab import Lab

    pins = tmp_path / "bpffs"
    pins.mkdir()
    subprocess.run(["mount", "-t", "bpf", "bpf", str(pins)], check=True)
    os.environ["SYNGUARD_PIN_DIR"] = str(pins / "synguard")
    try:
        with Lab("sgsys") as lab:
            yield lab
    finally:
        os.environ.pop("SYNGUARD_PIN_DIR", None)
        subprocess.run(["umount", "-l", str(pins)], check=False)


def _daemon(lab, caps=CAPS, *extra):
    argv = ["setpriv", f"--bounding-set={caps}", "--inh-caps=-all", sys.executable, "-m", "synguard.cli", "run",
            "-i", lab.server_client_if, "-i", lab.server_attacker_if, "--mode", "protect", "--ports", "8080", "--control-socket",
            f"/tmp/{lab.id}.sock", *extra]
    log = open(f"/tmp/{lab.id}.{time.monotonic_ns()}.log", "w+")
    p = lab.popen(lab.server_ns, argv, stderr=log, stdout=subprocess.DEVNULL)
    return p, log


def _status(lab) -> dict:
    return json.loads(lab.run(lab.server_ns, [sys.executable, "-m", "synguard.cli", "status", "--json", "--socket",
                                              f"/tmp/{lab.id}.sock"], timeout=30).stdout)


def _wait(log, needle, timeout=60):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        log.seek(0)
        text = log.read()
        if needle in text:
            return text
        time.sleep(0.2)
    log.seek(0)
    raise AssertionError(f"{needle!r} not logged: {log.read()}")


@needs_tc
@pytest.mark.netns
@hard_timeout(240)
def test_unit_capabilities_suffice_and_sigkill_keeps_protection(lab):
    """Under the unit's bounding set: attach and defend; SIGKILL leaves the program
    protecting; a restarted daemon adopts it; `synguard detach` removes an orphan."""
    from synguard.datapath import attached_prog

    lab.tcp_server(8080)
    p, log = _daemon(lab)
    _wait(log, "mode protect")
    with lab.netns(lab.server_ns):
        first = attached_prog(lab.server_client_if)[0]
    assert all(t is not None for t in lab.connect_times(2, 8080))

    before = _status(lab)["counters"]
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=10)
    with lab.netns(lab.server_ns):
        assert attached_prog(lab.server_client_if)[0] == first  # still attached...
    assert all(t is not None for t in lab.connect_times(2, 8080))  # clients still connect
    # ...and still protecting: a spoofed flood after the kill is answered in XDP, none of it
    # reaches the kernel (no kernel syncookies, no half-open), the dead program keeps counting.
    kernel0 = lab.netstat(lab.server_ns)["TcpExt"].get("SyncookiesSent", 0)
    sent = lab.flood(3000, 5, dport=8080, seed=7)["sent"]
    assert sent >= 1000
    assert lab.netstat(lab.server_ns)["TcpExt"].get("SyncookiesSent", 0) == kernel0
    assert lab.syn_recv_count(lab.server_ns, 8080) == 0

    log.seek(0)
    assert "cannot pin" not in log.read()
    p2, log2 = _daemon(lab)
    text = _wait(log2, "mode protect")
    assert "adopted the state of a previous run" in text, text
    with lab.netns(lab.server_ns):
        second = attached_prog(lab.server_client_if)[0]
    assert second != first  # our orphan was replaced, not refused
    st = _status(lab)
    # counters kept across the crash (sg_counters adopted), including what the orphan answered
    grown = st["counters"]["challenge_sent"] - before["challenge_sent"]
    assert grown >= 0.95 * sent, (grown, sent)
    p2.send_signal(signal.SIGKILL)
    p2.wait(timeout=10)

    # systemd's ExecStopPost after a crash it restarts: the program stays.
    r = lab.run(lab.server_ns, [sys.executable, "-m", "synguard.cli", "detach", "-i", lab.server_client_if,
                                "--service-result", "signal"], check=False, timeout=60)
    assert r.returncode == 0 and "leaving our program attached" in r.stdout
    with lab.netns(lab.server_ns):
        assert attached_prog(lab.server_client_if)[0] == second

    r = lab.run(lab.server_ns, ["setpriv", f"--bounding-set={CAPS}", "--inh-caps=-all", sys.executable, "-m",
                                "synguard.cli", "detach", "-i", lab.server_client_if], check=False, timeout=60)
    assert r.returncode == 0 and "detached our program" in r.stdout, r.stderr
    with lab.netns(lab.server_ns):
        assert attached_prog(lab.server_client_if) is None


@pytest.mark.netns
@hard_timeout(120)
def test_without_perfmon_the_kernel_refuses_the_program(lab):
    p, log = _daemon(lab, "-all,+bpf,+net_admin")
    assert p.wait(timeout=60) == 1
    log.seek(0)
    assert "loading synguard.bpf.c failed" in log.read()
