"""The Debian package, on this machine: `make deb`, lintian, `dpkg -i`, the installed
program run with Debian's own Python packages (python3-prometheus-client 0.16,
python3-pyroute2 0.7.2, python3-bpfcc), `systemd-analyze verify` of the installed
unit, `man -l` of the installed page, then `dpkg --purge` and nothing left: no file,
no config, no pin, no XDP program (a daemon killed with SIGKILL leaves one attached;
the purge must remove it).

The machine is left as it was found, also when the test fails: the package is purged
and the veth pair deleted in `finally`. A machine where synguard is already
installed, or has an /etc/synguard of its own, is skipped: the test would purge it.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from synguard import __version__
from synguard.abi import Counter
from synguard.datapath import attached_prog

ROOT = Path(__file__).resolve().parents[1]
ARCH = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True).stdout.strip()
DEB = ROOT / f"synguard_{__version__}_{ARCH}.deb"
EXE = "/usr/sbin/synguard"
UNIT = "/lib/systemd/system/synguard.service"
CONF = "/etc/synguard/synguard.yaml"
PAGE = "/usr/share/man/man8/synguard.8.gz"
# One package test at a time on this machine (several worktrees run `make test`): a lock
# in /run, writable by root only.
LOCK = "/run/synguard-test-deb.lock"
# What the package and its daemon create outside dpkg's file list; purge removes them.
CREATED = ("/etc/synguard", "/var/lib/synguard", "/run/synguard")


def sh(argv: list[str], timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd="/", **kw)


def dpkg(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """dpkg, waiting while another apt/dpkg (a parallel `make setup`) holds the lock."""
    end = time.monotonic() + timeout
    while True:
        r = sh(["dpkg", *args], timeout=timeout)
        if r.returncode == 0 or "lock" not in r.stderr or time.monotonic() > end:
            return r
        time.sleep(2)


def installed() -> bool:
    r = sh(["dpkg-query", "-W", "-f=${Status}", "synguard"])
    return r.returncode == 0 and r.stdout.strip() not in ("", "unknown ok not-installed")


def root_pin_dir() -> Path:
    return Path("/sys/fs/bpf/synguard") / f"netns-{os.stat('/proc/self/ns/net').st_ino}"


@pytest.fixture(scope="module")
def package() -> Path:
    r = subprocess.run(["make", "--no-print-directory", "deb"], cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert DEB.is_file(), r.stdout
    return DEB


def test_lintian_reports_no_errors(package):
    r = sh(["lintian", "--pedantic", "--display-info", str(package)], timeout=300)
    tags = [line for line in r.stdout.splitlines() if re.match(r"^[EWIPX]: ", line)]
    print("lintian:", *tags or ["(no tags)"], sep="\n  ")
    errors = [t for t in tags if t.startswith("E: ")]
    assert not errors, "\n".join(tags)
    assert r.returncode == 0, r.stdout + r.stderr


def test_package_contents(package):
    """The product only: the synguard package, its kernel sources, no lab, no byte-code."""
    files = sh(["dpkg-deb", "-c", str(package)]).stdout
    paths = [line.split()[-1].lstrip(".") for line in files.splitlines()]
    for path in (EXE, UNIT, CONF, "/usr/share/synguard/synguard/daemon.py", "/usr/share/synguard/ebpf/synguard.bpf.c",
                 "/usr/share/synguard/ebpf/synguard_abi.h", "/usr/share/bash-completion/completions/synguard", PAGE,
                 "/usr/share/doc/synguard/prometheus/synguard.rules.yml", "/usr/share/doc/synguard/grafana/synguard.json"):
        assert path in paths, path
    assert not [p for p in paths if "synguard_lab" in p or "__pycache__" in p or p.endswith(".pyc")], paths
    ebpf = sorted(Path(p).name for p in paths if p.startswith("/usr/share/synguard/ebpf/") and not p.endswith("/"))
    assert not [n for n in ebpf if n.startswith(("lab_", "bench"))], ebpf
    # The tc program, when the checkout has it: its C beside the other, its object (built by
    # `make ebpf` at package build time, arch-dependent) under /usr/lib.
    tc = (ROOT / "ebpf" / "synguard_tc.bpf.c").exists()
    assert ("synguard_tc.bpf.c" in ebpf) == tc, ebpf
    assert ("/usr/lib/synguard/ebpf/synguard_tc.bpf.o" in paths) == tc, paths
    assert not [p for p in paths if p.endswith(".o") and not p.startswith("/usr/lib/synguard/ebpf/")], paths
    conffiles = sh(["sh", "-c", f"dpkg-deb --ctrl-tarfile {package} | tar -xOf - ./conffiles"]).stdout.split()
    assert conffiles == [CONF]
    control = sh(["dpkg-deb", "-f", str(package), "Depends"]).stdout
    for dep in ("python3-bpfcc", "python3-prometheus-client (>= 0.16)", "python3-pyroute2 (>= 0.7.2)", "python3-yaml"):
        assert dep in control, control


def _debian_versions() -> dict[str, str]:
    """Versions the installed program imports (Debian's: /usr/bin/python3 -I, no venv)."""
    code = ("import importlib.metadata as m, json; "
            "print(json.dumps({p: m.version(p) for p in ('prometheus_client', 'pyroute2', 'PyYAML')}))")
    r = sh(["/usr/bin/python3", "-I", "-c", code])
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_log(log: Path, needle: str, proc: subprocess.Popen, timeout: float = 120) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        text = log.read_text()
        if needle in text:
            return text
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    raise AssertionError(f"{needle!r} not logged (exit {proc.poll()}): {log.read_text()[-3000:]}")


@pytest.fixture
def machine_lock():
    fd = os.open(LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def test_install_run_and_purge(package, tmp_path, machine_lock):
    if installed():
        pytest.skip("a synguard package is installed on this machine: the test would purge it")
    if Path("/etc/synguard").exists():
        pytest.skip("/etc/synguard exists (not from the package): the test would purge it")
    dummy = f"sgdeb{os.getpid() % 100000}"  # veth pair sgdebN / sgdebNp
    daemon = None
    listed: list[str] = []
    try:
        r = dpkg("-i", str(package))
        assert r.returncode == 0, r.stdout + r.stderr
        listed = [p for p in sh(["dpkg", "-L", "synguard"]).stdout.splitlines() if p and p != "/."]

        # Debian's Python packages, not the test venv's newer ones.
        versions = _debian_versions()
        assert versions["prometheus_client"].startswith("0.16") and versions["pyroute2"].startswith("0.7.2"), versions

        r = sh([EXE, "--version"])
        assert r.returncode == 0 and r.stdout.strip() == f"synguard {__version__}", r.stdout + r.stderr
        r = sh([EXE, "check-config", CONF])
        assert r.returncode == 0 and "0 interface(s)" in r.stdout, r.stdout + r.stderr  # attaches to nothing
        r = sh([EXE, "run", "-c", CONF])  # the service's command, as shipped: refuses clearly, exit 2
        assert r.returncode == 2 and "no interface" in r.stderr, r.stdout + r.stderr
        r = sh([EXE, "run", "--ebpf"])  # the installed C, found without a checkout
        assert r.returncode == 0 and "int xdp_synguard(struct xdp_md *ctx)" in r.stdout, r.stderr
        r = sh(["/usr/bin/python3", "-I", "-c", "import sys; sys.path.insert(0, '/usr/share/synguard'); "
                "from synguard import abi; print(abi.EBPF_DIR_DEFAULT, abi.EBPF_OBJ_DIR_DEFAULT)"])
        assert r.stdout.split() == ["/usr/share/synguard/ebpf", "/usr/lib/synguard/ebpf"], r.stdout + r.stderr

        # The unit: valid for systemd, installed disabled (nothing starts before the admin enables it).
        r = sh(["systemd-analyze", "verify", UNIT])
        assert r.returncode == 0 and not r.stderr.strip(), r.stderr
        unit = Path(UNIT).read_text()
        assert f"ExecStart={EXE} run -c {CONF}" in unit and "/usr/local" not in unit
        wants = Path("/etc/systemd/system/multi-user.target.wants/synguard.service")
        assert not wants.exists(), "the package enabled the service"

        # The manual page renders without warnings, and man finds it.
        r = sh(["man", "--warnings", "-l", PAGE], env={**os.environ, "MANWIDTH": "80", "MANPAGER": "cat"})
        assert r.returncode == 0 and not r.stderr.strip(), r.stderr
        assert "EXIT STATUS" in r.stdout and "check-config" in r.stdout
        assert sh(["man", "-w", "8", "synguard"]).stdout.strip() == PAGE

        # The installed daemon, with Debian's libraries, on a veth of this namespace (the
        # service's: prerm detaches here), without addresses or traffic: attach, control
        # socket, /metrics; then SIGKILL leaves its program attached.
        r = sh(["ip", "link", "add", dummy, "type", "veth", "peer", "name", dummy + "p"])
        assert r.returncode == 0, r.stderr
        sh(["ip", "link", "set", dummy, "up"])
        port = _free_port()
        sock = tmp_path / "control.sock"
        log = tmp_path / "daemon.log"
        with open(log, "w") as err:
            daemon = subprocess.Popen([EXE, "run", "-c", CONF, "-i", dummy, "--xdp-mode", "generic", "--mode", "protect",
                                       "--ports", "8080", "--metrics-listen", f"127.0.0.1:{port}",
                                       "--control-socket", str(sock)], stdout=subprocess.DEVNULL, stderr=err, cwd="/",
                                      env={**os.environ, "TMPDIR": str(tmp_path)})
        _wait_log(log, "mode protect", daemon)
        r = sh([EXE, "status", "--json", "--socket", str(sock)], timeout=30)
        assert r.returncode == 0 and json.loads(r.stdout)["mode"] == "protect", r.stdout + r.stderr
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            metrics = resp.read().decode()
        assert Counter.SYN_RECEIVED.metric in metrics, metrics[:2000]
        prog = attached_prog(dummy)
        assert prog is not None and prog[1] == "xdp_synguard", prog
        daemon.send_signal(signal.SIGKILL)
        daemon.wait(timeout=10)
        assert attached_prog(dummy) == prog  # still protecting, pinned

        # An upgrade (here: the same version again) keeps the admin's config and leaves
        # the attached program alone: prerm detaches on removal only.
        with open(CONF, "a") as f:
            f.write("# edited by the admin\n")
        r = dpkg("-i", str(package))
        assert r.returncode == 0, r.stdout + r.stderr
        assert Path(CONF).read_text().endswith("# edited by the admin\n")
        assert attached_prog(dummy) == prog, "an upgrade detached the program"

        r = dpkg("--purge", "synguard")
        assert r.returncode == 0, r.stdout + r.stderr
        assert attached_prog(dummy) is None, "purge left our XDP program attached"
        assert not root_pin_dir().exists()
        left = [p for p in listed if Path(p).is_file() or (Path(p).is_dir() and p.startswith(
            ("/usr/share/synguard", "/usr/share/doc/synguard", "/etc/synguard")))]
        assert not left, left
        assert not [p for p in CREATED if Path(p).exists()]
        assert not installed()
        assert sh(["bash", "-c", "command -v synguard"]).stdout.strip() in ("", str(ROOT / ".venv/bin/synguard"))
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.kill()
            daemon.wait(timeout=10)
        if installed():
            dpkg("--purge", "synguard")
        sh(["ip", "link", "del", dummy])
