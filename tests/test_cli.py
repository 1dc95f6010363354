"""CLI smoke runs under timeout: argument errors, operator errors, and a real
`synguard run` in a network namespace that attaches, defends, and detaches."""

from __future__ import annotations

import os
import platform
import select
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import needs_tc

SYNGUARD = [sys.executable, "-m", "synguard.cli"]


def synguard(*args, timeout=60, env=None):
    return subprocess.run([*SYNGUARD, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def test_version():
    r = synguard("--version")
    assert r.returncode == 0 and r.stdout.startswith("synguard ")


@pytest.mark.parametrize("args, message", [
    (["run"], "no interface: give -i IFACE"),
    (["run", "-i", "lo", "--ports", "80,99999"], "invalid port '99999'"),
    (["run", "-i", "lo", "--ports", "http"], "invalid port 'http'"),
    # An empty list or entry is not a silent "every port" (issue 11, finding 9). No real
    # interface: a parser that accepted them must fail on the interface, not attach.
    (["run", "-i", "nosuchif0", "--metrics-listen", "", "--ports", ""], "invalid port list '': an empty entry"),
    (["run", "-i", "nosuchif0", "--metrics-listen", "", "--ports", "80,,443"],
     "invalid port list '80,,443': an empty entry"),
    (["run", "-i", "nosuchif0", "--metrics-listen", "", "--ports", "80,"], "invalid port list '80,': an empty entry"),
    (["run", "-i", "lo", "--mode", "block"], "invalid choice: 'block'"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_arguments(args, message):
    r = synguard(*args)
    assert r.returncode == 2
    assert message in r.stderr


def test_removed_allow_ttl_flag_warns_and_does_not_stop_a_start(tmp_path):
    """An old command line (a systemd drop-in) with --allow-ttl still starts: one warning."""
    r = synguard("run", "-i", "nosuchif0", "--allow-ttl", "1h", "--control-socket", str(tmp_path / "ctl.sock"),
                 "--metrics-listen", "")
    assert r.returncode == 1  # the interface, not the flag
    assert r.stderr.strip().splitlines() == [
        "synguard run: warning: --allow-ttl removed with the RST challenge (no source is remembered any more: "
        "every new connection completes through its own SYN cookie); ignored, delete the line",
        "synguard: interfaces: 'nosuchif0' does not exist (in this network namespace)"]
    assert "--allow-ttl" not in synguard("run", "--help").stdout


def test_missing_interface_is_one_clear_line(tmp_path):
    r = synguard("run", "-i", "nosuchif0", "--control-socket", str(tmp_path / "ctl.sock"), "--metrics-listen", "")
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert lines == ["synguard: interfaces: 'nosuchif0' does not exist (in this network namespace)"]


def test_ebpf_flag_prints_the_c():
    r = synguard("run", "--ebpf")
    assert r.returncode == 0
    assert "int xdp_synguard(struct xdp_md *ctx)" in r.stdout and "enum sg_counter" in r.stdout


def test_verifier_rejection_keeps_the_log(tmp_path):
    broken = tmp_path / "ebpf"
    broken.mkdir()
    shutil.copy(Path(__file__).parents[1] / "ebpf" / "synguard_abi.h", broken)
    # Reads a byte without a bounds check: the verifier must refuse it.
    (broken / "synguard.bpf.c").write_text(
        "#include <uapi/linux/bpf.h>\n"
        "int xdp_synguard(struct xdp_md *ctx) { return *(unsigned char *)(long)ctx->data; }\n")
    r = synguard("run", "-i", "lo", "--control-socket", str(tmp_path / "ctl.sock"),
                 env={"SYNGUARD_EBPF_DIR": str(broken), "TMPDIR": str(tmp_path)})
    assert r.returncode == 1
    assert "verifier log kept in" in r.stderr
    # In a fresh private directory under TMPDIR, never a fixed name in it (issue 11, finding 1).
    log = Path(r.stderr.split("verifier log kept in ", 1)[1].split()[0])
    assert log.parent.parent == tmp_path and log.parent.name.startswith("synguard-log-")
    st = log.parent.lstat()
    assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == os.geteuid()
    assert "invalid access to packet" in log.read_text()


def test_missing_headers_message(monkeypatch):
    from synguard import datapath

    monkeypatch.setattr(platform, "release", lambda: "0.0.0-no-such-kernel")
    with pytest.raises(datapath.DataPathError, match="kernel headers missing.*make setup"):
        from synguard.datapath.host import check_kernel_headers
        check_kernel_headers()


@pytest.fixture
def lab():
    from synguard_lab.lab import Lab

    with Lab("sgcli") as lab:
        yield lab


def _wait_for(proc, needle, timeout):
    """Read proc's stderr until a line contains needle; returns the lines read."""
    lines, end = [], time.monotonic() + timeout
    while time.monotonic() < end:
        r, _, _ = select.select([proc.stderr], [], [], 0.5)
        if r:
            line = proc.stderr.readline()
            if not line:
                break
            lines.append(line)
            if needle in line:
                return lines
    raise AssertionError(f"{needle!r} not seen in {timeout}s: {''.join(lines)}")


@pytest.mark.netns
@needs_tc
def test_run_defends_and_detaches_on_sigterm(lab):
    from synguard.datapath import attached_prog

    lab.tcp_server(8080)
    proc = lab.popen(lab.server_ns, [*SYNGUARD, "run", "-i", lab.server_client_if, "-i", lab.server_attacker_if,
                                     "--mode", "protect", "--ports", "8080", "--interval", "1",
                                     "--control-socket", f"/tmp/{lab.id}.sock"],
                     stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        _wait_for(proc, "mode protect", 60)
        with lab.netns(lab.server_ns):
            assert attached_prog(lab.server_client_if)[1] == "xdp_synguard"
        assert all(t is not None for t in lab.connect_times(3, 8080))
        lines = _wait_for(proc, "cookies validated 3", 15)  # ABI 2: every first contact is a cookie
        assert "challenges sent 3" in lines[-1] and "cookies validated 3" in lines[-1]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        assert "SIGTERM: detaching" in proc.stderr.read()
        with lab.netns(lab.server_ns):
            assert attached_prog(lab.server_client_if) is None
            assert attached_prog(lab.server_attacker_if) is None
    finally:
        lab.stop(proc)


@pytest.mark.netns
def test_run_refuses_to_replace_a_foreign_program(lab):
    from synguard.datapath import attached_prog

    lab.attach_xdp_pass(lab.server_ns, lab.server_client_if)
    r = lab.run(lab.server_ns, [*SYNGUARD, "run", "-i", lab.server_client_if, "--control-socket",
                                f"/tmp/{lab.id}.sock"], check=False, timeout=60)
    assert r.returncode == 1
    assert "already runs XDP program" in r.stderr and "xdp_pass" in r.stderr
    with lab.netns(lab.server_ns):
        assert attached_prog(lab.server_client_if)[1] == "xdp_pass"  # left alone


@pytest.mark.netns
@needs_tc
def test_first_run_output_reads_right(lab, tmp_path):
    """What a first run showed wrong (issue 12), read from the real CLI against a real daemon:
    status/top find the socket from -c FILE; status says what protect does and never names
    our own /metrics listener or an idle one as "worst"; top shows ages; listeners ends its
    last row with a newline."""
    import re

    lab.tcp_server(8080)
    sock = tmp_path / "ctl" / "control.sock"
    cfg = tmp_path / "synguard.yaml"
    cfg.write_text(f"interfaces: [{lab.server_client_if}, {lab.server_attacker_if}]\nmode: protect\n"
                   f"protect:\n  ports: [8080]\ncontrol:\n  socket: {sock}\n")
    proc = lab.popen(lab.server_ns, [*SYNGUARD, "run", "-c", str(cfg), "--interval", "1"],
                     stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        _wait_for(proc, "metrics on", 90)
        lab.flood(300, 5, dport=8080, sources=3)

        def cli(*args):
            r = lab.run(lab.server_ns, [*SYNGUARD, *args], check=False, timeout=30)
            assert r.returncode == 0, (args, r.stderr)
            return r.stdout

        status = cli("status", "-c", str(cfg))  # no --socket: taken from the config
        assert "|- protect:     every SYN to ports 8080 is answered in XDP" in status
        assert "armed ports" not in status
        assert status.rstrip().splitlines()[-1].startswith("`- listeners:   ")  # none half-open: no "worst"
        assert ":9046" not in status
        top = cli("top", "-c", str(cfg)).splitlines()
        assert len(top) >= 2 and all(re.search(r"\d+s ago$", row) for row in top[1:]), top
        listeners = cli("listeners")
        assert listeners.endswith("\n") and ":8080" in listeners
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
