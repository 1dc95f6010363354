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
from test_hardening import NOBODY, Daemon, attached, world  # noqa: F401 (world: a fixture)

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


# ---- item 2: "protect all" and the fast trigger reach every port, watched or not ---------


@pytest.fixture
def auto_all(dp):
    """The session program in auto mode protecting every port (protect.ports: []), with
    port 80 watched and 8080 not."""
    from synguard.abi import Mode

    from conftest import NOW_S

    dp.set_ports([])
    dp.set_watched([80])
    for port in (80, 8080):
        dp.arm_port(port, 0)
    dp.set_mode(Mode.AUTO)
    try:
        yield dp
    finally:
        dp.set_fast_trigger(0, 0)
        dp.set_watched([])
        dp.arm_port(8080, 0)
        dp.arm_all(0)
        dp.tick(NOW_S)
        dp.set_ports({80})


def test_protect_all_is_one_switch_for_unwatched_ports(auto_all):
    from frames import XDP_PASS, XDP_TX, syn4

    from conftest import NOW_S

    dp = auto_all
    assert dp.test_run(bytes(syn4(dport=8080))).retval == XDP_PASS  # auto, nothing armed
    dp.arm_all(NOW_S + 30)  # the detector's "protect all"
    assert dp.test_run(bytes(syn4(dport=8080))).retval == XDP_TX  # unwatched: challenged too
    assert dp.test_run(bytes(syn4(dport=80))).retval == XDP_TX
    dp.tick(NOW_S + 30)
    assert dp.test_run(bytes(syn4(dport=8080))).retval == XDP_PASS  # expired


def test_fast_trigger_arms_an_unwatched_port(auto_all):
    from frames import XDP_PASS, XDP_TX, syn4

    from conftest import NOW_S

    dp = auto_all
    now = NOW_S + 7001  # a window no other test counted in
    dp.tick(now)
    dp.set_fast_trigger(5, 60)
    cpu = sorted(os.sched_getaffinity(0))[0]
    old = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})  # the trigger counts per CPU: one CPU for every run
    try:
        verdicts = [dp.test_run(bytes(syn4(dport=8080, sport=40000 + i))).retval for i in range(6)]
    finally:
        os.sched_setaffinity(0, old)
    assert verdicts == [XDP_PASS] * 4 + [XDP_TX] * 2, verdicts  # the 5th SYN armed it (and is answered)
    assert dp.port_auto_until(8080) == now + 60
    assert dp.port_auto_until(80) == 0  # the port that was hit, not another


LISTENERS_CODE = """
import socket, sys, time
socks = []
for port in [int(p) for p in sys.argv[1:]]:
    for fam, addr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        s = socket.socket(fam, socket.SOCK_STREAM)
        if fam == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind((addr, port))
        s.listen(128)
        socks.append(s)
print("ready", flush=True)
time.sleep(600)
"""


def user_listeners(lab, ports) -> subprocess.Popen:
    """nobody's listeners on ports in the server namespace (stopped by the lab, by PID)."""
    p = lab.popen(lab.server_ns, [*NOBODY, sys.executable, "-I", "-c", LISTENERS_CODE, *map(str, ports)],
                  stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    return p


@hard_timeout(240)
def test_local_users_listeners_leave_no_port_unprotected_in_auto_mode(lab, world):  # noqa: F811
    """The issue's reproduction: protect.ports [] (every port), auto mode; nobody opens 70
    listeners on 1024-1093 and one on 8080 (so 8080 is not among the 63 watched ports); a
    spoofed flood to 8080 is detected and must then be answered in XDP, not by the kernel.
    The fast trigger is off here: "protect all" alone must cover the unwatched port."""
    from synguard import view

    user_listeners(lab, [*range(1024, 1094), 8080])
    cfg = world / "auto.yaml"
    cfg.write_text(f"interfaces: [{lab.server_client_if}, {lab.server_attacker_if}]\nmode: auto\n"
                   f"detection:\n  hold: 60s\n  fast_trigger_pps: 0\n")
    d = Daemon(lab, world, "-c", str(cfg))
    try:
        d.wait("mode auto")
        time.sleep(3)  # quiet ticks: the baseline
        lab.flood(60000, 4, dport=8080, pps=15000, seed=5)
        st = view.request(d.socket, {"cmd": "status"})
        assert st["detection"]["attack"] is not None, st["detection"]
        before = tcp_in_segs(lab)
        sent = lab.flood(15000, 1, dport=8080, pps=15000, seed=6)["sent"]
        time.sleep(0.5)
        reached = tcp_in_segs(lab) - before
        assert reached <= 0.01 * sent, f"{reached} of {sent} SYNs to 8080 reached the kernel while protecting"
    finally:
        assert d.stop() == 0, d.text()


@hard_timeout(120)
def test_watched_ports_are_not_a_local_users_choice(lab, datapath):
    """protect.ports [] watches the listening ports, at most 63: a service's port (root's
    socket, or below 1024) keeps its slot however many listeners a local user opens."""
    import pwd
    from types import SimpleNamespace

    from synguard import kernel
    from synguard.mitigation import Mitigation

    user_listeners(lab, range(1024, 1094))
    lab.tcp_server(8080)  # root's service
    m = Mitigation(datapath)
    m.cfg = SimpleNamespace(protect=SimpleNamespace(ports=[]))
    try:
        with lab.netns(lab.server_ns):
            uids = {r.port: r.uid for r in kernel.listeners()}
            m.watch_ports()
        watched = set(datapath._watch)
    finally:
        datapath.set_watched([])
    assert uids[8080] == 0 and uids[1024] == pwd.getpwnam("nobody").pw_uid
    assert len(watched) == 63 and 8080 in watched, sorted(watched)


# ---- item 9: environment knobs of a root daemon ----------------------------------------


def as_nobody(*argv: str) -> None:
    subprocess.run([*NOBODY, *argv], check=True, capture_output=True, timeout=30)


@hard_timeout(240)
def test_knobs_naming_another_users_files_are_refused(lab, world):  # noqa: F811
    """SYNGUARD_EBPF_DIR and SYNGUARD_CLANG are root-only knobs: naming C or a compiler that
    nobody owns, the root daemon compiles and runs neither (one line, exit 1)."""
    theirs = world / "theirs"
    theirs.mkdir()
    theirs.chmod(0o777)
    as_nobody("mkdir", str(theirs / "ebpf"))
    for src in (ROOT / "ebpf").glob("synguard*"):
        as_nobody("cp", str(src), str(theirs / "ebpf" / src.name))
    d = Daemon(lab, world, "-i", lab.server_client_if, env={"SYNGUARD_EBPF_DIR": str(theirs / "ebpf")})
    try:
        assert d.exit_code() == 1, d.text()
    finally:
        d.stop()
    assert f"SYNGUARD_EBPF_DIR={theirs / 'ebpf'}: {theirs / 'ebpf'} is owned by uid 65534" in d.text(), d.text()
    assert attached(lab, lab.server_client_if) is None

    marker = theirs / "clang-ran"
    clang = theirs / "clang"
    as_nobody("sh", "-c", f"printf '#!/bin/sh\\nid -u > {marker}\\nexec clang \"$@\"\\n' > {clang} && chmod 755 {clang}")
    d = Daemon(lab, world, "-i", lab.server_client_if, env={"SYNGUARD_CLANG": str(clang),
                                                            "SYNGUARD_COOKIE_METHOD": "kfunc"})
    try:
        with contextlib.suppress(AssertionError):
            d.wait("attached to", timeout=60)
    finally:
        d.stop()
    assert not marker.exists(), f"nobody's compiler ran as uid {marker.read_text().strip()}"
    assert f"SYNGUARD_CLANG={clang}: {clang} is owned by uid 65534" in d.text(), d.text()


@hard_timeout(240)
def test_installed_daemon_ignores_the_test_fault_hook(lab, world):  # noqa: F811
    """SYNGUARD_TEST_FAULT is a test hook: a synguard installed apart from its checkout (no
    ebpf/ beside the package) keeps running with it set."""
    import shutil

    site = world / "site"
    shutil.copytree(ROOT / "synguard", site / "synguard", ignore=shutil.ignore_patterns("__pycache__"))
    code = "import sys; sys.path.insert(0, sys.argv.pop(1)); from synguard.cli import main; sys.exit(main())"
    d = Daemon(lab, world, "-i", lab.server_client_if, "--mode", "protect", "--ports", "8080",
               command=[sys.executable, "-I", "-c", code, str(site)],
               env={"SYNGUARD_TEST_FAULT": "tick", "SYNGUARD_EBPF_DIR": str(ROOT / "ebpf")})
    try:
        d.wait("mode protect")
        time.sleep(3)  # the hook raises in the first tick (after 1 s)
        assert d.proc.poll() is None, d.text()
    finally:
        code_ = d.stop()
    assert "injected fault" not in d.text()
    assert code_ == 0, d.text()


# ---- item 10: postrm purge never follows a link ---------------------------------------------


def _postrm(bpffs: Path, world: Path) -> Path:
    """debian/synguard.postrm with its paths moved under the test's own directories (its
    real targets, /etc/synguard and /sys/fs/bpf, are never touched)."""
    text = (ROOT / "debian" / "synguard.postrm").read_text()
    for path in ("/etc/synguard", "/var/lib/synguard", "/run/synguard"):
        assert path in text
        text = text.replace(path, str(world / "sys" / path.strip("/").replace("/", "-")))
    assert "/sys/fs/bpf/synguard" in text
    text = text.replace("/sys/fs/bpf/synguard", str(bpffs / "synguard"))
    script = world / "postrm"
    script.write_text(text)
    return script


@hard_timeout(60)
def test_postrm_purge_never_follows_a_planted_link(world):  # noqa: F811
    """nobody plants synguard -> a directory of root's on a 1777 bpffs; purge must not
    delete through it. A real pin directory of root's is still cleaned."""
    mnt = world / "bpffs"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "bpf", "-o", "mode=1777", "bpf", str(mnt)], check=True)
    try:
        ns = os.stat("/proc/self/ns/net").st_ino
        victim = world / "victim"
        (victim / f"netns-{ns}").mkdir(parents=True)
        (victim / f"netns-{ns}" / "precious").write_text("keep\n")
        as_nobody("ln", "-s", str(victim), str(mnt / "synguard"))
        script = _postrm(mnt, world)
        r = subprocess.run(["sh", str(script), "purge"], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        assert (victim / f"netns-{ns}" / "precious").read_text() == "keep\n"
        assert (mnt / "synguard").is_symlink()  # not ours: left alone

        # nobody's own directory with a link inside: not entered either.
        (mnt / "synguard").unlink()
        as_nobody("mkdir", "-m", "0755", str(mnt / "synguard"))
        as_nobody("ln", "-s", str(victim / f"netns-{ns}"), str(mnt / "synguard" / f"netns-{ns}"))
        r = subprocess.run(["sh", str(script), "purge"], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        assert (victim / f"netns-{ns}" / "precious").read_text() == "keep\n"
        subprocess.run(["rm", "-rf", str(mnt / "synguard")], check=True)

        # Ours (what the daemon makes: 0700 directories of root's, a pin): removed.
        from synguard.datapath.libbpf import lib

        (mnt / "synguard" / f"netns-{ns}").mkdir(parents=True, mode=0o700)
        (mnt / "synguard").chmod(0o700)
        fd = lib().bpf_map_create(2, b"sg_test", 4, 4, 1, None)
        assert fd >= 0
        try:
            assert lib().bpf_obj_pin(fd, str(mnt / "synguard" / f"netns-{ns}" / "sg_test").encode()) == 0
        finally:
            os.close(fd)
        r = subprocess.run(["sh", str(script), "purge"], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        assert not (mnt / "synguard").exists()
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


# ---- item 6: one daemon per network namespace --------------------------------------------


def _pinned_ids(ns_dir: Path) -> dict[str, int]:
    from test_hardening import _pinned_map_id

    return {name: _pinned_map_id(ns_dir / name) for name in ("sg_src_syns", "sg_counters")}


@hard_timeout(240)
def test_second_daemon_in_the_namespace_leaves_the_first_alone(lab, world, bpffs0700):  # noqa: F811
    """A second `synguard run` in the same namespace with another control socket: refused
    before compiling (the first one's lock), so it neither adopts nor removes the first
    one's pins; the lock goes with the first daemon, even a SIGKILLed one."""
    from synguard import view
    from test_hardening import netns_dir

    env = {"SYNGUARD_PIN_DIR": str(bpffs0700 / "synguard")}
    a = Daemon(lab, world, "-i", lab.server_client_if, env=env, control=world / "a.sock")
    try:
        a.wait("attached to")
        ns_dir = netns_dir(bpffs0700, lab)
        ids = _pinned_ids(ns_dir)
        b = Daemon(lab, world, "-i", lab.server_attacker_if, env=env, control=world / "b.sock")
        try:
            assert b.exit_code(timeout=30) == 1, b.text()
        finally:
            b.stop()
        assert f"another synguard (pid {a.proc.pid}) runs in this network namespace" in b.text(), b.text()
        assert "adopted" not in b.text()
        assert _pinned_ids(ns_dir) == ids and (ns_dir / "xdp_synguard").exists()
        assert view.request(a.socket, {"cmd": "ping"})["ok"]
    finally:
        a.stop(signal.SIGKILL)
    c = Daemon(lab, world, "-i", lab.server_client_if, env=env, control=world / "c.sock")
    try:
        assert "adopted the state" in c.wait("attached to")  # the dead one's lock went with it
    finally:
        assert c.stop() == 0, c.text()


# ---- item 7: a deadline per request on the control socket --------------------------------


@hard_timeout(120)
def test_slow_clients_cannot_hold_the_control_socket(lab, world):  # noqa: F811
    """MAX_CLIENTS clients each sending a byte every 0.3 s (a timeout per read never
    fires): each is dropped at the request deadline, and `status` gets in meanwhile."""
    import threading

    from synguard import control, view

    d = Daemon(lab, world, "-i", lab.server_client_if)
    held: list[float] = []
    start = threading.Event()

    def slow():
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(d.socket)
            start.wait()
            t0 = time.monotonic()
            try:
                while time.monotonic() - t0 < 12:
                    s.send(b" ")
                    time.sleep(0.3)
            except OSError:
                pass  # closed by the daemon
            held.append(time.monotonic() - t0)

    try:
        d.wait("attached to")
        view.request(d.socket, {"cmd": "ping"})
        threads = [threading.Thread(target=slow) for _ in range(control.MAX_CLIENTS)]
        for t in threads:
            t.start()
        time.sleep(0.5)  # every slot taken
        start.set()
        t0 = time.monotonic()
        st = {}
        while "pid" not in st and time.monotonic() - t0 < 10:
            with contextlib.suppress(view.DaemonUnavailable, OSError):
                st = view.request(d.socket, {"cmd": "status"}, timeout=5)
            time.sleep(0.1)
        waited = time.monotonic() - t0
        for t in threads:
            t.join(20)
    finally:
        assert d.stop() == 0, d.text()
    assert st.get("pid") == d.proc.pid, f"status got no answer in {waited:.1f} s"
    assert len(held) == control.MAX_CLIENTS and max(held) < control.READ_TIMEOUT_S + 3, held


# ---- item 8: changing the deny set never opens a window without a rule that stays ----------


def test_deny_set_changes_never_drop_a_rule_that_stays(dp, monkeypatch):
    """After every single write to sg_deny_cidrs while the deny set changes (a reload, a
    temporary deny added or expired), a SYN from a network denied before and after is
    still dropped (before the fix: the trie was cleared, then refilled)."""
    from frames import XDP_DROP, syn4
    from synguard.datapath.maps import Map

    trie = dp.map("sg_deny_cidrs")
    syn = bytes(syn4(src="203.0.113.7", dport=80))
    probes = []

    def probe(name):
        def wrapped(self, *a):
            out = getattr(Map, f"_orig_{name}")(self, *a)
            if self is trie:
                probes.append((name, dp.test_run(syn).retval))
            return out
        return wrapped

    dp.set_deny_cidrs(["203.0.113.0/24", "198.18.0.0/15"])
    try:
        for name in ("__setitem__", "__delitem__", "clear"):
            monkeypatch.setattr(Map, f"_orig_{name}", getattr(Map, name), raising=False)
            monkeypatch.setattr(Map, name, probe(name))
        for nets in (["203.0.113.0/24", "2001:db8::/32"], ["203.0.113.0/24"],
                     ["192.0.2.128/25", "203.0.113.0/24", "10.0.0.0/8"], ["203.0.113.0/24"]):
            dp.set_deny_cidrs(nets)
            assert dp.test_run(syn).retval == XDP_DROP
    finally:
        monkeypatch.undo()
        dp.set_deny_cidrs([])
    assert len(probes) >= 6 and all(v == XDP_DROP for _, v in probes), probes


# ---- item 5: bounded listener series, the worst kept; status does not build every row -----


MANY_CODE = """
import socket, sys, time
socks = []
for port in range(int(sys.argv[1]), int(sys.argv[2])):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("0.0.0.0", port))
    s.listen(8)
    socks.append(s)
print("ready", flush=True)
time.sleep(600)
"""


@hard_timeout(300)
def test_many_listeners_of_a_user_keep_the_series_bounded_and_the_worst(lab, world):  # noqa: F811
    """nobody opens up to 20,000 listeners (its fd limit); root's 8080 has half-open connections. /metrics has
    at most MAX_LISTENER_SERIES series per listener family, 8080 among them, and the total
    in synguard_listeners; status counts them all and names 8080 the worst."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    from synguard import metrics, view

    import resource

    n = min(20000, resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 200)  # the user's fds (inherited limit)
    assert n >= 5000
    p = lab.popen(lab.server_ns, [*NOBODY, sys.executable, "-I", "-c", MANY_CODE, "20000", str(20000 + n)],
                  stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    lab.tcp_server(8080, backlog=64)
    d = Daemon(lab, world, "-i", lab.server_client_if, "-i", lab.server_attacker_if, "--mode", "observe",
               "--metrics-listen", "127.0.0.1:9046")
    try:
        d.wait("metrics on")
        lab.flood(200, 1, dport=8080, seed=9)  # observe mode: the kernel queues them (SYN_RECV)
        t0 = time.monotonic()
        st = view.request(d.socket, {"cmd": "status"}, timeout=30)
        status_s = time.monotonic() - t0
        with lab.netns(lab.server_ns):
            t0 = time.monotonic()
            body = urllib.request.urlopen("http://127.0.0.1:9046/metrics", timeout=30).read().decode()
            scrape_s = time.monotonic() - t0
    finally:
        assert d.stop() == 0, d.text()
    print(f"\n{n} listeners: status {status_s:.3f} s, scrape {scrape_s:.3f} s, {len(body)} bytes")
    assert st["listeners"] >= n and st["worst_listener"]["port"] == 8080, (st["listeners"], st["worst_listener"])
    fams = {f.name: f for f in text_string_to_metric_families(body)}
    assert fams["synguard_listeners"].samples[0].value >= n
    for name in ("synguard_listen_syn_recv", "synguard_listen_accept_queue", "synguard_listen_backlog"):
        assert len(fams[name].samples) <= metrics.MAX_LISTENER_SERIES, (name, len(fams[name].samples))
    worst = fams["synguard_listen_syn_recv"].samples[0]
    assert worst.labels["port"] == "8080" and worst.value > 0, worst
