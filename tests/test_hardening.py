"""Issue 11 (hardening): a root daemon that trusts no path a local user can touch,
and keeps what a crashed run left when a later start fails.

Local users are played by `nobody` (setpriv). The bpffs they attack is a private
mount made 1777 for the test (never the host's /sys/fs/bpf), used through
SYNGUARD_PIN_DIR; every daemon runs in a lab namespace and is stopped by PID."""

from __future__ import annotations

import contextlib
import ctypes as ct
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from helpers import hard_timeout, needs_lab

SYNGUARD = [sys.executable, "-m", "synguard.cli"]
NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]

pytestmark = [pytest.mark.netns, needs_lab]


def as_nobody(*argv: str) -> None:
    subprocess.run([*NOBODY, *argv], check=True, capture_output=True, timeout=30)


@pytest.fixture
def world():
    """A root-owned 0755 directory every user can traverse (pytest's tmp_path is 0700)."""
    d = Path(tempfile.mkdtemp(prefix="sg-hard-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def bpffs(world):
    """A private bpffs mounted mode 1777 (what `mount -t bpf bpf DIR` gives): anyone may
    create entries. Unmounted afterwards; the host's /sys/fs/bpf is not touched."""
    mnt = world / "bpffs"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "bpf", "-o", "mode=1777", "bpf", str(mnt)], check=True)
    try:
        assert stat.S_IMODE(mnt.stat().st_mode) == 0o1777
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.fixture
def lab():
    from synguard_lab.lab import Lab

    with Lab("sghard") as lab:
        yield lab


def netns_dir(bpffs: Path, lab) -> Path:
    """What pin_path().parent is inside the lab's server namespace."""
    return bpffs / "synguard" / f"netns-{os.stat(f'/run/netns/{lab.server_ns}').st_ino}"


class Daemon:
    """`synguard run` in the lab's server namespace; log in a private directory."""

    def __init__(self, lab, workdir: Path, *args: str, env: dict | None = None, control: Path | None = None,
                 command: list[str] = SYNGUARD, cwd: Path | None = None):
        from synguard_lab.common import repo_env

        self.lab = lab
        self.socket = str(control or workdir / "control.sock")
        self.log_path = workdir / f"daemon.{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "w")
        self.proc = lab.popen(lab.server_ns, [*command, "run", "--metrics-listen", "", "--control-socket",
                                              self.socket, *args], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=self._log, env=repo_env(env), cwd=cwd)

    def text(self) -> str:
        return self.log_path.read_text()

    def wait(self, needle: str, timeout: float = 90) -> str:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if needle in self.text():
                return self.text()
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        raise AssertionError(f"{needle!r} not logged (exit {self.proc.poll()}):\n{self.text()}")

    def exit_code(self, timeout: float = 90) -> int:
        return self.proc.wait(timeout)

    def stop(self, sig=signal.SIGTERM) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(20)
        self.lab.stop(self.proc)
        self._log.close()
        return self.proc.returncode


def attached(lab, ifname: str):
    from synguard.datapath import attached_prog

    with lab.netns(lab.server_ns):
        return attached_prog(ifname)


# ---- finding 1: logs never at a fixed name in a world-writable TMPDIR --------------------


@hard_timeout(240)
def test_logs_never_follow_a_symlink_planted_in_tmpdir(lab, world):
    """nobody plants the old fixed log names in a 1777 TMPDIR as symlinks to a root file;
    a daemon that loads, attaches and detaches must not write through them."""
    tmpdir = world / "tmp"
    tmpdir.mkdir()
    tmpdir.chmod(0o1777)
    victims = {name: world / f"victim-{name}" for name in ("synguard.verifier.log", "synguard.verifier.attach.log")}
    for name, victim in victims.items():
        victim.write_text("precious\n")
        as_nobody("ln", "-s", str(victim), str(tmpdir / name))
    d = Daemon(lab, world, "-i", lab.server_client_if, env={"TMPDIR": str(tmpdir)})
    try:
        d.wait("attached to")
        logs = [p for p in tmpdir.iterdir() if p.name.startswith("synguard-log-")]
    finally:
        code = d.stop()
    assert code == 0, d.text()
    for name, victim in victims.items():
        assert victim.read_text() == "precious\n", f"the daemon wrote through the planted {name}"
        assert os.readlink(tmpdir / name) == str(victim)  # left alone
    assert len(logs) == 1, logs  # the daemon's own private directory, while it ran
    # An orderly stop removes its log directory: nothing accumulates in TMPDIR.
    assert sorted(p.name for p in tmpdir.iterdir()) == sorted(victims)


# ---- finding 2: the bpffs pin directory and pins ---------------------------------------


def _pin_foreign_program(lab, bpffs: Path) -> tuple[int, Path]:
    """A root program that is not synguard's ("xdp_pass"), attached natively to the
    server's client veth and pinned outside synguard's directory. Returns (id, pin)."""
    from synguard.datapath.libbpf import lib, prog_id
    from synguard_lab.lab import _xdp_pass_fn

    lab.attach_xdp_pass(lab.server_ns, lab.server_client_if)
    _, fn = _xdp_pass_fn()
    other = bpffs / "other"
    other.mkdir(mode=0o700)
    pin = other / "xdp_pass"
    assert lib().bpf_obj_pin(fn.fd, str(pin).encode()) == 0, os.strerror(ct.get_errno())
    return prog_id(fn.fd), pin


@hard_timeout(240)
def test_planted_pin_symlink_neither_detaches_nor_replaces_a_foreign_program(lab, bpffs, world):
    foreign_id, foreign_pin = _pin_foreign_program(lab, bpffs)
    assert attached(lab, lab.server_client_if)[0] == foreign_id
    ns_dir = netns_dir(bpffs, lab)
    planted = ns_dir / "xdp_synguard"
    as_nobody("mkdir", "-p", str(ns_dir))
    as_nobody("ln", "-s", str(foreign_pin), str(planted))
    env = {"SYNGUARD_PIN_DIR": str(bpffs / "synguard")}
    from synguard_lab.common import repo_env

    # `synguard detach` (ExecStopPost) must not take the planted pin for ours.
    r = lab.run(lab.server_ns, [*SYNGUARD, "detach", "-i", lab.server_client_if], check=False, env=repo_env(env))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == (f"synguard detach: {lab.server_client_if}: XDP program id {foreign_id} is not "
                                f"synguard's (not our pinned program): left attached")
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "not trusted as synguard's" in lines[0] and str(bpffs / "synguard") in lines[0], lines
    assert attached(lab, lab.server_client_if)[0] == foreign_id
    assert planted.is_symlink()  # not removed either

    # `synguard run` must refuse to replace it ("never replaces another XDP program").
    d = Daemon(lab, world, "-i", lab.server_client_if, env=env)
    try:
        assert d.exit_code() == 1, d.text()
    finally:
        d.stop()
    assert f"already runs XDP program id {foreign_id}" in d.text(), d.text()
    assert attached(lab, lab.server_client_if)[0] == foreign_id
    assert planted.is_symlink()


@hard_timeout(240)
def test_pin_directory_made_by_another_user_is_not_used(lab, bpffs, world):
    """nobody makes synguard/ (so they could later swap our pins for their symlinks): the
    daemon protects anyway, says so in one line, and pins nothing in there."""
    root = bpffs / "synguard"
    as_nobody("mkdir", str(root))
    d = Daemon(lab, world, "-i", lab.server_client_if, "--mode", "protect", "--ports", "8080",
               env={"SYNGUARD_PIN_DIR": str(root)})
    try:
        text = d.wait("mode protect")
        assert attached(lab, lab.server_client_if)[1] == "xdp_synguard"
        note = [line for line in text.splitlines() if "owned by uid" in line]
        assert len(note) == 1 and str(root) in note[0] and "looks foreign" in note[0], text
        assert list(root.iterdir()) == []  # no pin, no kept map under nobody's control
    finally:
        code = d.stop()
    assert code == 0, d.text()
    assert attached(lab, lab.server_client_if) is None  # our own program still detached at stop


@hard_timeout(240)
def test_pin_directories_are_ours_and_private(lab, bpffs, world):
    """On a fresh (1777) bpffs the daemon creates its directories 0700 and its pins 0600, root's."""
    d = Daemon(lab, world, "-i", lab.server_client_if, env={"SYNGUARD_PIN_DIR": str(bpffs / "synguard")})
    try:
        d.wait("attached to")
        ns_dir = netns_dir(bpffs, lab)
        for path in (bpffs / "synguard", ns_dir):
            st = path.lstat()
            assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == 0, path
        pins = sorted(p.name for p in ns_dir.iterdir())
        assert {"xdp_synguard", "sg_counters", "sg_src_syns"} <= set(pins), pins
        for p in ns_dir.iterdir():
            st = p.lstat()
            assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == 0, p
    finally:
        assert d.stop() == 0, d.text()


# ---- finding 3: a kept map of another layout is never copied -------------------------------


def _pin_map(path: Path, map_type: int, key_size: int, value_size: int, max_entries: int,
             entry: tuple[bytes, bytes] | None = None) -> None:
    from synguard.datapath.libbpf import lib

    lib_ = lib()
    lib_.bpf_map_create.argtypes = [ct.c_int, ct.c_char_p, ct.c_uint32, ct.c_uint32, ct.c_uint32, ct.c_void_p]
    fd = lib_.bpf_map_create(map_type, path.name.encode()[:15], key_size, value_size, max_entries, None)
    assert fd >= 0, os.strerror(ct.get_errno())
    try:
        if entry is not None:
            key, value = (ct.create_string_buffer(b, len(b)) for b in entry)
            assert lib_.bpf_map_update_elem(fd, key, value, 0) == 0, os.strerror(ct.get_errno())
        assert lib_.bpf_obj_pin(fd, str(path).encode()) == 0, os.strerror(ct.get_errno())
    finally:
        os.close(fd)


@hard_timeout(240)
def test_kept_map_of_another_layout_is_not_adopted(lab, world):
    """A pinned sg_src_syns with 64 KiB values (an upgrade that changed the struct, or a
    planted map) and an sg_counters with 8-byte values: noted, not read, no crash."""
    from synguard import abi

    mnt = world / "bpffs"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "bpf", "-o", "mode=0700", "bpf", str(mnt)], check=True)
    try:
        ns_dir = netns_dir(mnt, lab)
        ns_dir.mkdir(parents=True, mode=0o700)
        (mnt / "synguard").chmod(0o700)
        # BPF_MAP_TYPE_LRU_HASH = 9, BPF_MAP_TYPE_PERCPU_ARRAY = 6
        _pin_map(ns_dir / "sg_src_syns", 9, 16, 65536, 64, (bytes(range(16)), b"\xab" * 65536))
        _pin_map(ns_dir / "sg_counters", 6, 4, 8, abi.IFACE_SLOTS)
        d = Daemon(lab, world, "-i", lab.server_client_if, "--log-format", "json",
                   env={"SYNGUARD_PIN_DIR": str(mnt / "synguard")})
        try:
            text = d.wait('"event": "config"')
            assert d.proc.poll() is None
            notes = [line for line in text.splitlines() if "layout differs" in line]
            assert len(notes) == 1 and "not adopted" in notes[0], text  # one note: the last map refused
            assert "adopted the state" not in text or "sg_src_syns" not in text.split("adopted the state")[1]
        finally:
            code = d.stop()
        assert code == 0, d.text()
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


# ---- finding 6: a failed start after a crash keeps the kept state --------------------------


@hard_timeout(300)
def test_failed_start_after_a_crash_keeps_state_and_pins(lab, world):
    from synguard.datapath import attached_prog

    mnt = world / "bpffs"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "bpf", "-o", "mode=0700", "bpf", str(mnt)], check=True)
    try:
        env = {"SYNGUARD_PIN_DIR": str(mnt / "synguard")}
        secret_file = world / "secret"
        secret_file.write_bytes(os.urandom(16))
        secret_file.chmod(0o600)
        cfg = world / "synguard.yaml"
        cfg.write_text(f"interfaces: [{lab.server_client_if}]\nmode: protect\nprotect:\n  ports: [8080]\n"
                       f"secret:\n  file: {secret_file}\nmetrics:\n  listen: ''\n")
        lab.tcp_server(8080)
        a = Daemon(lab, world, "-c", str(cfg), env=env)
        a.wait("mode protect")
        assert all(t is not None for t in lab.connect_times(2, 8080))  # clients through the cookie
        a.stop(signal.SIGKILL)  # a crash
        orphan = attached(lab, lab.server_client_if)[0]
        ns_dir = netns_dir(mnt, lab)
        kept = sorted(p.name for p in ns_dir.iterdir())
        assert {"xdp_synguard", "sg_counters", "sg_src_syns"} <= set(kept), kept

        secret_file.chmod(0o644)  # the next start must fail
        t0 = time.monotonic()
        b = Daemon(lab, world, "-c", str(cfg), env=env)
        assert b.exit_code() == 1
        took = time.monotonic() - t0
        b.stop()
        assert "secret file has mode 0644" in b.text(), b.text()
        assert took < 20, took  # before compiling (measured ~0.4 s; a compile is ~4 s)
        assert sorted(p.name for p in ns_dir.iterdir()) == kept  # nothing deleted
        with lab.netns(lab.server_ns):
            assert attached_prog(lab.server_client_if)[0] == orphan  # still protecting
        assert all(t is not None for t in lab.connect_times(2, 8080))

        secret_file.chmod(0o600)
        c = Daemon(lab, world, "-c", str(cfg), env=env)
        try:
            text = c.wait("mode protect")
            assert "adopted the state of a previous run (" in text and "sg_src_syns" in text, text
        finally:
            assert c.stop() == 0, c.text()
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_check_config_checks_the_host_fast(world):
    """The unit's ExecStartPre: secret file, interfaces, control socket path, without
    compiling anything; one line each, under a second."""
    secret_file = world / "secret"
    secret_file.write_bytes(os.urandom(16))
    secret_file.chmod(0o644)
    (world / "file").write_text("not a directory\n")
    cfg = world / "c.yaml"
    cfg.write_text(f"interfaces: [lo, nosuchif0]\nsecret:\n  file: {secret_file}\n"
                   f"control:\n  socket: {world}/file/control.sock\n")
    t0 = time.monotonic()
    r = subprocess.run([*SYNGUARD, "check-config", str(cfg)], capture_output=True, text=True, timeout=30)
    took = time.monotonic() - t0
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 3, r.stderr
    assert lines[0].startswith(f"{cfg}: secret.file ({secret_file}): secret file has mode 0644")
    assert lines[1] == f"{cfg}: interfaces: 'nosuchif0' does not exist (in this network namespace)"
    assert lines[2] == f"{cfg}: control.socket: {world}/file/control.sock: {world}/file is not a directory"
    assert took < 3, took  # measured ~0.2 s (interpreter start included); a compile would be ~4 s

    secret_file.chmod(0o600)
    cfg.write_text(f"interfaces: [lo]\nsecret:\n  file: {secret_file}\ncontrol:\n  socket: {world}/file\n")
    r = subprocess.run([*SYNGUARD, "check-config", str(cfg)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and r.stderr.strip() == (
        f"{cfg}: control.socket: {world}/file exists and is not a socket; synguard will not touch it "
        f"(choose another path)")
    cfg.write_text(f"interfaces: [lo]\nsecret:\n  file: {secret_file}\ncontrol:\n  socket: {world}/new/c.sock\n")
    r = subprocess.run([*SYNGUARD, "check-config", str(cfg)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr


# ---- findings 7 and 8: the control socket ---------------------------------------------


@hard_timeout(240)
def test_control_socket_path_naming_a_regular_file_is_refused(lab, world):
    """control.socket naming an existing regular file: a clear error, the file untouched
    (before: unlinked on ECONNREFUSED and replaced by a socket)."""
    precious = world / "precious"
    precious.write_text("keep me\n")
    d = Daemon(lab, world, "-i", lab.server_client_if, control=precious)
    try:
        assert d.exit_code() == 1, d.text()
    finally:
        d.stop()
    assert "is not a socket" in d.text() and str(precious) in d.text(), d.text()
    assert precious.read_text() == "keep me\n" and stat.S_ISREG(precious.lstat().st_mode)
    assert attached(lab, lab.server_client_if) is None  # nothing left attached


@hard_timeout(240)
def test_half_sent_requests_do_not_pile_up_threads(lab, world):
    from synguard import view

    d = Daemon(lab, world, "-i", lab.server_client_if)
    conns = []
    try:
        d.wait("attached to")
        end = time.monotonic() + 30
        while not os.path.exists(d.socket) and time.monotonic() < end:
            time.sleep(0.1)
        view.request(d.socket, {"cmd": "ping"})
        pid = d.proc.pid
        before = len(os.listdir(f"/proc/{pid}/task"))
        turned_away = 0
        for _ in range(50):  # each sends half a request line and waits
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            conns.append(s)
            s.connect(d.socket)
            try:
                s.sendall(b'{"cmd": "sta')
            except (BrokenPipeError, ConnectionResetError):
                turned_away += 1  # past the client cap the daemon closes at once: by design
        time.sleep(0.5)
        during = len(os.listdir(f"/proc/{pid}/task"))
        t0 = time.monotonic()
        st = {}
        while "pid" not in st:  # turned away (closed) at the cap; gets in within the read timeout
            assert time.monotonic() - t0 < 10, "status got no answer within 10 s"
            with contextlib.suppress(view.DaemonUnavailable):
                st = view.request(d.socket, {"cmd": "status"}, timeout=5)
            time.sleep(0.1)
        assert time.monotonic() - t0 < 10 and st["pid"] == pid
        assert during <= before + 10, (before, during, turned_away)  # before the fix: 3 -> 53 threads
    finally:
        for s in conns:
            s.close()
        assert d.stop() == 0, d.text()


def _pinned_map_id(path: Path) -> int:
    from synguard.datapath.libbpf import lib

    fd = lib().bpf_obj_get(str(path).encode())
    assert fd >= 0, os.strerror(ct.get_errno())
    try:
        info = (ct.c_uint32 * 2)()
        size = ct.c_uint32(ct.sizeof(info))
        assert lib().bpf_obj_get_info_by_fd(fd, info, ct.byref(size)) == 0
        return info[1]  # struct bpf_map_info: type, id
    finally:
        os.close(fd)


@hard_timeout(240)
def test_second_daemon_leaves_the_running_ones_state_alone(lab, world):
    """A second `synguard run` on the same control socket refuses before compiling, and
    before copying and re-pinning the kept maps the running daemon still writes."""
    from synguard import view

    mnt = world / "bpffs"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "bpf", "-o", "mode=0700", "bpf", str(mnt)], check=True)
    a = None
    try:
        env = {"SYNGUARD_PIN_DIR": str(mnt / "synguard")}
        a = Daemon(lab, world, "-i", lab.server_client_if, env=env)
        a.wait("attached to")
        ns_dir = netns_dir(mnt, lab)
        ids = {name: _pinned_map_id(ns_dir / name) for name in ("sg_src_syns", "sg_counters")}
        b = Daemon(lab, world, "-i", lab.server_client_if, env=env)
        try:
            assert b.exit_code(timeout=30) == 1, b.text()
        finally:
            b.stop()
        assert f"another synguard is running (control socket {a.socket} answers)" in b.text(), b.text()
        assert {name: _pinned_map_id(ns_dir / name) for name in ids} == ids
        assert view.request(a.socket, {"cmd": "ping"})["ok"]
    finally:
        if a is not None:
            assert a.stop() == 0, a.text()
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@hard_timeout(240)
def test_close_unpins_a_program_pinned_in_another_namespace(lab, bpffs, monkeypatch):
    """DataPath.close() from the namespace it was made in removes the pin it made while
    attaching in a lab namespace (the trust check looks at that pin's directory)."""
    from synguard.datapath import DataPath

    monkeypatch.setenv("SYNGUARD_PIN_DIR", str(bpffs / "synguard"))
    dp = DataPath()
    try:
        with lab.netns(lab.server_ns):
            dp.attach(lab.server_client_if, "generic")
        pin = netns_dir(bpffs, lab) / "xdp_synguard"
        assert pin.exists() and dp.pin_error is None
    finally:
        dp.close()
    assert not pin.exists()
    assert attached(lab, lab.server_client_if) is None
