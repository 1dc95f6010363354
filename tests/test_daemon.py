"""The daemon for real, in a network namespace: metrics over HTTP, the control
socket and CLI, SIGHUP reloads, and secret rotation across live challenges."""

from __future__ import annotations

import json
import select
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from helpers import needs_tc
from prometheus_client.parser import text_string_to_metric_families

SYNGUARD = [sys.executable, "-m", "synguard.cli"]
PORT = 8080
METRICS = "127.0.0.1:9046"

pytestmark = pytest.mark.netns
sys.path.insert(0, __import__("os").path.dirname(__file__))


@pytest.fixture(autouse=True)
def hard_timeout():
    def boom(signum, frame):
        raise TimeoutError("test exceeded its hard timeout")

    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(180)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


class Running:
    """A `synguard run` process in the lab's server namespace."""

    def __init__(self, lab, tmp_path, config_text: str, args=(), env=None):
        import os

        self.lab = lab
        self.config = tmp_path / "synguard.yaml"
        self.config.write_text(config_text)
        self.socket = f"/tmp/{lab.id}.sock"
        self.proc = lab.popen(lab.server_ns, [*SYNGUARD, "run", "-c", str(self.config), "--control-socket",
                                              self.socket, "--metrics-listen", METRICS, "--interval", "1", *args],
                              stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                              env={**os.environ, **(env or {})})
        self.log: list[str] = []
        self.wait_log("metrics on", 60)

    def wait_log(self, needle: str, timeout: float = 20) -> str:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            r, _, _ = select.select([self.proc.stderr], [], [], 0.2)
            if r:
                line = self.proc.stderr.readline()
                if not line:
                    break
                self.log.append(line)
                if needle in line:
                    return line
        raise AssertionError(f"{needle!r} not logged within {timeout}s; log:\n{''.join(self.log)}")

    def cli(self, *args) -> subprocess.CompletedProcess:
        return self.lab.run(self.lab.server_ns, [*SYNGUARD, *args, "--socket", self.socket], check=False, timeout=30)

    def status(self) -> dict:
        r = self.cli("status", "--json")
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    def scrape(self) -> str:
        with self.lab.netns(self.lab.server_ns):
            t0 = time.perf_counter()
            with urllib.request.urlopen(f"http://{METRICS}/metrics", timeout=10) as resp:
                body = resp.read().decode()
            self.scrape_seconds = time.perf_counter() - t0
        return body


def sample(text: str, name: str, **labels) -> float | None:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return None


@pytest.fixture
def lab():
    from synguard_lab.lab import Lab

    with Lab("sgd") as lab:
        yield lab


def config_text(lab, mode="protect", ports=(PORT,), extra=""):
    return (f"interfaces: [{lab.server_client_if}, {lab.server_attacker_if}]\nmode: {mode}\n"
            f"protect:\n  ports: [{', '.join(map(str, ports))}]\n{extra}")


def test_metrics_status_and_top_under_a_flood(lab, tmp_path):
    lab.tcp_server(PORT, backlog=64)
    d = Running(lab, tmp_path, config_text(lab))
    try:
        before = d.scrape()
        assert sample(before, "synguard_build_info", version=__import__("synguard").__version__) == 1
        assert sample(before, "synguard_mode", mode="protect") == 1
        assert sample(before, "synguard_mode", mode="observe") == 0
        assert sample(before, "synguard_challenges_sent_total", interface=lab.server_attacker_if) == 0
        assert sample(before, "synguard_syn_dropped_total", interface=lab.server_attacker_if, reason="deny") == 0
        assert sample(before, "synguard_listen_backlog", address="::", port=str(PORT)) == 64

        sent = lab.flood(5000, 10, dport=PORT, sources=3)["sent"]
        after = d.scrape()
        challenged = sample(after, "synguard_challenges_sent_total", interface=lab.server_attacker_if)
        assert challenged >= 0.95 * sent
        assert sample(after, "synguard_syn_received_total", interface=lab.server_attacker_if) >= sent
        assert sample(after, "synguard_listen_syn_recv", address="::", port=str(PORT)) == 0

        st = d.status()
        assert st["mode"] == "protect"
        assert {i["name"] for i in st["interfaces"]} == {lab.server_client_if, lab.server_attacker_if}
        assert st["counters"]["challenge_sent"] >= challenged
        # No half-open connection anywhere (the flood never reached the kernel), and our own
        # /metrics listener is never "the worst": status says so instead of naming one.
        assert st["worst_listener"] is None and st["listeners"] >= 2
        text = d.cli("status")
        assert text.returncode == 0 and "challenges sent" in text.stdout
        assert "none with half-open connections" in text.stdout and ":9046" not in text.stdout

        top = json.loads(d.cli("top", "--json", "-N", "3").stdout)
        assert len(top) == 3  # three attacking sources, sampled 1 in 16 per CPU
        assert sum(r["syns"] for r in top) == pytest.approx(sent, rel=0.2)
    finally:
        lab.stop(d.proc)


def test_listeners_matches_ss_for_real_half_open_sockets(lab, tmp_path):
    """Observe mode: spoofed SYNs become SYN_RECV request sockets (their SYN-ACKs go nowhere)."""
    lab.run(lab.server_ns, ["sysctl", "-qw", "net.ipv4.tcp_syncookies=0"])
    lab.tcp_server(PORT, backlog=1024)
    d = Running(lab, tmp_path, config_text(lab, mode="observe"))
    try:
        lab.flood(300, 10, dport=PORT)
        for _ in range(20):  # the kernel settles within a few ms; retry if a SYN is in flight
            ss = lab.syn_recv_count(lab.server_ns, PORT)
            rows = json.loads(d.cli("listeners", "--json", "--port", str(PORT)).stdout)
            if rows and rows[0]["syn_recv"] == ss:
                break
            time.sleep(0.2)
        assert ss > 0 and rows[0]["syn_recv"] == ss
        assert sample(d.scrape(), "synguard_listen_syn_recv", address="::", port=str(PORT)) == ss
    finally:
        lab.stop(d.proc)


def test_sighup_keeps_the_running_config_on_errors(lab, tmp_path):
    d = Running(lab, tmp_path, config_text(lab))
    try:
        lab.tcp_server(PORT)

        d.config.write_text(config_text(lab) + "protect:\n  ports: [70000]\nbogus_key: 1\n")
        d.proc.send_signal(signal.SIGHUP)
        d.wait_log("config NOT reloaded")
        st = d.status()
        assert st["mode"] == "protect" and st["ports"] == [PORT] and st["config"]["failure"] == 1
        assert sample(d.scrape(), "synguard_config_last_reload_successful") == 0

        d.config.write_text(config_text(lab, ports=(PORT, 9999)))
        d.proc.send_signal(signal.SIGHUP)
        d.wait_log("config reloaded")
        st = d.status()
        assert st["ports"] == [PORT, 9999]
        assert sample(d.scrape(), "synguard_config_reloads_total", result="success") == 1
    finally:
        lab.stop(d.proc)


def test_removed_allow_ttl_is_logged_once_and_ignored(lab, tmp_path):
    """An upgraded conffile still saying protect.allow_ttl: the daemon starts in protect mode
    and logs one warning naming the line; reloaded without it, it warns no more."""
    old = config_text(lab).replace("protect:\n", "protect:\n  allow_ttl: 1h\n")
    d = Running(lab, tmp_path, old)
    try:
        warned = [line for line in d.log if f"{d.config}: protect.allow_ttl (line 4): removed with the RST "
                  f"challenge" in line]
        assert len(warned) == 1, d.log
        st = d.status()
        assert st["mode"] == "protect" and st["ports"] == [PORT]
        seen = len(d.log)
        d.config.write_text(config_text(lab))
        d.proc.send_signal(signal.SIGHUP)
        d.wait_log("config reloaded")
        assert not any("removed with the RST challenge" in line for line in d.log[seen:]), d.log[seen:]
    finally:
        lab.stop(d.proc)


def test_sighup_applies_mode_lists_and_interfaces(lab, tmp_path):
    """A reload applies every key it documents: mode, allow and deny lists, interfaces
    (each checked by its effect on real traffic or on the attachments, not by status)."""
    from synguard.datapath import attached_prog
    from synguard_lab.lab import CLIENT_IP4

    s0, s1 = lab.server_client_if, lab.server_attacker_if
    client = f"{CLIENT_IP4}/32"

    def reload(text: str) -> dict:
        n = d.status()["config"]["success"]
        d.config.write_text(text)
        d.proc.send_signal(signal.SIGHUP)
        d.wait_log("config reloaded")
        st = d.status()
        assert st["config"]["success"] == n + 1
        return st

    def connect() -> bool:
        return lab.connect_times(1, PORT, timeout=1)[0] is not None

    def delta(before, key):
        return d.status()["counters"][key] - before[key]

    d = Running(lab, tmp_path, config_text(lab, mode="observe"))
    try:
        lab.tcp_server(PORT)
        c0 = d.status()["counters"]
        assert connect() and delta(c0, "challenge_sent") == 0  # observe: counted, not answered

        st = reload(config_text(lab, mode="protect", extra=f"allow: [{client}]\n"))
        assert st["mode"] == "protect"
        c0 = st["counters"]
        assert connect()
        assert delta(c0, "syn_allow_cidr") == 1 and delta(c0, "challenge_sent") == 0  # allow list applied

        st = reload(f"interfaces: [{s0}]\nmode: protect\nprotect:\n  ports: [{PORT}]\ndeny: [{client}]\n")
        assert [i["name"] for i in st["interfaces"]] == [s0]
        with lab.netns(lab.server_ns):
            assert attached_prog(s1) is None and attached_prog(s0) is not None  # interfaces applied
        c0 = st["counters"]
        assert not connect()
        assert delta(c0, "syn_dropped_deny") >= 1 and delta(c0, "syn_allow_cidr") == 0  # deny applied

        st = reload(f"interfaces: [{s0}]\nmode: protect\nprotect:\n  ports: [{PORT}]\n")
        c0 = st["counters"]
        assert connect()
        assert delta(c0, "challenge_sent") == 1 and delta(c0, "cookie_validated") == 1  # protect: one cookie

        st = reload(config_text(lab, mode="observe"))
        assert st["mode"] == "observe" and {i["name"] for i in st["interfaces"]} == {s0, s1}
        c0 = st["counters"]
        assert connect() and delta(c0, "challenge_sent") == 0  # back to observe
    finally:
        lab.stop(d.proc)


def test_unexpected_error_leaves_the_programs_attached_and_protecting(lab, tmp_path):
    """The README's promise for a crash: the daemon exits 1 with a "crash" line, our XDP and
    tc programs stay attached (protection continues: a client still connects through a
    cookie, SYNs still answered in XDP), the state stays pinned for the next start."""
    from synguard.datapath import attached_prog
    from synguard.datapath import tc as tcprog
    from synguard.datapath.libbpf import prog_name_by_id

    lab.tcp_server(PORT)
    d = Running(lab, tmp_path, config_text(lab), env={"SYNGUARD_TEST_FAULT": "tick"})
    try:
        d.wait_log("unexpected error")
        assert d.proc.wait(timeout=30) == 1
        d.wait_log("leaving the XDP program attached", timeout=5)
        with lab.netns(lab.server_ns):  # (`ip netns exec` hides the daemon's pins: names identify ours)
            xdp = attached_prog(lab.server_client_if)
            assert xdp is not None and xdp[1] == "xdp_synguard"
            tc_id = tcprog.filter_prog_id(lab.server_client_if)
            assert tc_id is not None and prog_name_by_id(tc_id) == tcprog.PROG_NAME
        k0 = lab.netstat(lab.server_ns)
        assert lab.connect_times(1, PORT, timeout=3)[0] is not None  # one round trip through the orphans
        k1 = lab.netstat(lab.server_ns)
        assert k1["TcpExt"].get("SyncookiesSent", 0) == k0["TcpExt"].get("SyncookiesSent", 0)
        assert k1["Tcp"]["PassiveOpens"] == k0["Tcp"]["PassiveOpens"] + 1
    finally:
        lab.stop(d.proc)
        r = lab.run(lab.server_ns, [*SYNGUARD, "detach", "-i", lab.server_client_if, "-i",
                                    lab.server_attacker_if], check=False, timeout=60)
        assert r.returncode == 0, r.stderr


def test_sighup_survives_hostile_configs(lab, tmp_path):
    """Issue 11, finding 4/5: a reload of a 5,001-digit integer, a merge-key bomb, a FIFO
    or /dev/zero is a logged failure; the daemon keeps running with its last good config."""
    import os

    from test_config import merge_bomb

    d = Running(lab, tmp_path, config_text(lab))
    try:
        good = d.config.read_text()
        fifo = tmp_path / "fifo"
        os.mkfifo(fifo, 0o600)
        hostile = {
            "5001 digits": lambda: d.config.write_text(good + "detection:\n  floor_pps: " + "9" * 5001 + "\n"),
            "merge bomb": lambda: d.config.write_text(merge_bomb(7, 9, 484)),
            "fifo": lambda: (d.config.unlink(), d.config.symlink_to(fifo)),
            "/dev/zero": lambda: (d.config.unlink(), d.config.symlink_to("/dev/zero")),
        }
        for n, (what, make) in enumerate(hostile.items(), 1):
            make()
            d.proc.send_signal(signal.SIGHUP)
            d.wait_log("config NOT reloaded", timeout=20)
            assert d.proc.poll() is None, f"{what}: the daemon exited"
            st = d.status()
            assert st["mode"] == "protect" and st["ports"] == [PORT], what
            assert st["config"]["failure"] == n and st["config"]["success"] == 0, (what, st["config"])
        assert not any("Traceback" in line for line in d.log), "".join(d.log)
        d.config.unlink()
        d.config.write_text(config_text(lab, ports=(PORT, 9999)))
        d.proc.send_signal(signal.SIGHUP)
        d.wait_log("config reloaded")
        assert d.status()["ports"] == [PORT, 9999]
    finally:
        lab.stop(d.proc)


def test_sigterm_detaches_and_cli_reports_no_daemon(lab, tmp_path):
    from synguard.datapath import attached_prog

    d = Running(lab, tmp_path, config_text(lab))
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(timeout=20) == 0
    with lab.netns(lab.server_ns):
        assert attached_prog(lab.server_client_if) is None
    r = d.cli("status")
    assert r.returncode == 1 and "the daemon is not running" in r.stderr


def test_systemd_notify_and_json_logs(lab, tmp_path):
    import socket as so

    notify = tmp_path / "notify.sock"
    sink = so.socket(so.AF_UNIX, so.SOCK_DGRAM)
    sink.bind(str(notify))
    sink.settimeout(30)
    d = Running(lab, tmp_path, config_text(lab), args=("--log-format", "json"),
                env={"NOTIFY_SOCKET": str(notify), "WATCHDOG_USEC": "2000000"})
    try:
        messages = [sink.recv(4096).decode() for _ in range(2)]
        assert messages[0].startswith("READY=1\nSTATUS=mode protect")
        assert messages[1].startswith("WATCHDOG=1")
        d.wait_log('"event": "counters"', 10)
        for line in d.log:
            doc = json.loads(line)
            assert {"ts", "level", "event", "msg"} <= doc.keys()
        assert any(json.loads(line)["event"] == "attached" for line in d.log)
    finally:
        lab.stop(d.proc)
        sink.close()


def test_slot_and_secret_rotation_keep_fresh_cookies_valid(dp, monkeypatch):
    """200 SYN-ACKs sent just before the first slot keyed by a new secret epoch
    (a slot's key is the secret of the epoch containing its start): their ACKs still validate just after it (cookie.check_ack with the keys
    the daemon installed, read back from sg_secrets); two slots later they do not."""
    from scapy.layers.inet import TCP
    from scapy.layers.l2 import Ether

    from synguard import abi, cookie
    from synguard import config as configmod
    from synguard.daemon import Daemon
    from frames import SERVER4, syn4

    cfg = configmod.override(configmod.Config(), mode="protect", ports=[80])
    d = Daemon(cfg, datapath=dp)
    d.keys.configure(cfg.secret)  # as Daemon._apply does: a random master (no secret.file)
    every = cfg.secret.rotate_every
    epoch_start = 1_800_000_000 // every * every + every
    slot_len = 1 << abi.SLOT_SHIFT
    boundary = -(-epoch_start // slot_len) * slot_len  # the first slot keyed with the new epoch's secret

    import ctypes as ct

    def keys():
        table = dp.map("sg_secrets")
        return [b"".join(int(getattr(table[ct.c_int(i)], k)).to_bytes(8, "little") for k in ("k0", "k1"))
                for i in (0, 1)]

    monkeypatch.setattr(time, "time", lambda: boundary - 0.4)
    d.keys.advance()  # the tick loop's call
    slot = dp.config()["slot"]
    assert slot == (boundary - 1) >> abi.SLOT_SHIFT and keys()[slot & 1] == derive(d, slot)
    acks = []
    for i in range(200):
        src, sport = f"203.0.113.{i % 250}", 20000 + i
        out = dp.test_run(bytes(syn4(src=src, sport=sport, seq=i)))
        assert out.retval == 3
        tcp = Ether(out.data)[TCP]
        acks.append((src, sport, i + 1, tcp.seq + 1, dict(tcp.options)["Timestamp"][0]))
    monkeypatch.setattr(time, "time", lambda: boundary + 0.6)
    d.keys.advance()
    assert d.keys.rotations == 1 and dp.config()["slot"] == slot + 1
    assert keys()[(slot + 1) & 1] == derive(d, slot + 1)  # the first slot of the new epoch
    for src, sport, seq, ack, tsecr in acks:
        assert cookie.check_ack(keys(), src, SERVER4, sport, 80, seq, ack, tsecr) is not None
    monkeypatch.setattr(time, "time", lambda: boundary + (1 << abi.SLOT_SHIFT) + 0.6)
    d.keys.advance()
    src, sport, seq, ack, tsecr = acks[0]
    assert cookie.check_ack(keys(), src, SERVER4, sport, 80, seq, ack, tsecr) is None


def derive(d, slot):
    from synguard.secret import slot_key

    return slot_key(d.keys.master, d.config.secret.rotate_every, slot)


def test_a_new_secret_file_rekeys_both_slots_and_a_bad_one_changes_nothing(dp, tmp_path):
    """SlotKeys.configure (what Daemon._apply calls on start and SIGHUP): a new master
    re-derives both sg_secrets entries at the next advance without counting a rotation;
    an unusable secret file raises and leaves the master and the installed keys alone."""
    import ctypes as ct
    import os

    from synguard import abi
    from synguard import config as configmod
    from synguard.daemon import Daemon
    from synguard.secret import slot_key

    def secret_cfg(name, data, mode=0o600):
        path = tmp_path / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(path, mode)
        return configmod.parse(f"mode: protect\nsecret:\n  file: {path}\n  rotate_every: 240\n").secret

    def installed():
        table = dp.map("sg_secrets")
        return [b"".join(int(getattr(table[ct.c_int(i)], k)).to_bytes(8, "little") for k in ("k0", "k1"))
                for i in (0, 1)]

    def expected(master, slot):
        return {s & 1: slot_key(master, 240, s) for s in (slot - 1, slot)}

    d = Daemon(configmod.Config(), datapath=dp)
    wall = 7_000_000 * 240 + 100
    slot = wall >> abi.SLOT_SHIFT
    a, b = os.urandom(16), os.urandom(16)
    d.keys.configure(secret_cfg("a.key", a))
    d.keys.advance(wall)
    assert dict(enumerate(installed())) == expected(a, slot)
    d.keys.configure(secret_cfg("b.key", b))
    d.keys.advance(wall)  # same slot: only the new master makes it write
    assert dict(enumerate(installed())) == expected(b, slot) and d.keys.rotations == 0
    with pytest.raises(configmod.ConfigError, match="mode 0644"):
        d.keys.configure(secret_cfg("loose.key", os.urandom(16), 0o644))
    d.keys.advance(wall)
    assert d.keys.master == b and dict(enumerate(installed())) == expected(b, slot)


@needs_tc
def test_auto_mode_detects_a_spoofed_flood_and_protects(lab, tmp_path):
    lab.tcp_server(PORT, backlog=256)
    d = Running(lab, tmp_path, config_text(lab, mode="auto") +
                "detection:\n  hold: 5s\n  clear_ticks: 2\n", args=("--log-format", "json"))
    try:
        d.wait_log('"event": "counters"', 10)  # two quiet ticks logged: the baseline
        d.wait_log('"event": "counters"', 10)
        p = lab.flood_start(3_000_000, 6, dport=PORT, seed=3)
        start = json.loads(d.wait_log('"attack_start"', 15))
        flood = lab.flood_result(p, timeout=30)
        attack = start["attack"]
        assert attack["kind"] == "spoofed" and attack["ports"] == [PORT]
        assert attack["detected_after_ticks"] <= 2  # (seconds are a printed figure: make bench, evaluate)
        st = d.status()
        assert st["counters"]["challenge_sent"] > 0.5 * flood["sent"]
        assert all(t is not None for t in lab.connect_times(3, PORT))
        end = json.loads(d.wait_log('"attack_end"', 30))
        assert end["attack"]["id"] == attack["id"]
        deadline = time.monotonic() + 30  # hold (5 s) passes: the port is released
        while (st := d.status())["detection"]["protected_ports"] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert st["detection"]["attack"] is None and st["detection"]["protected_ports"] == []
        assert sample(d.scrape(), "synguard_attacks_total", kind="spoofed") == 1
    finally:
        lab.stop(d.proc)


def test_interface_removed_readded_and_renamed(lab, tmp_path):
    """A veth pair inside the server ns comes and goes; the daemon says so and recovers."""
    from synguard.datapath import attached_prog

    ip = lambda *a: lab.run(lab.server_ns, ["ip", *a])  # noqa: E731
    ip("link", "add", "dum0", "type", "veth", "peer", "name", "dumpeer")
    d = Running(lab, tmp_path, "interfaces: [dum0]\nmode: protect\n", args=("--log-format", "json"))
    try:
        assert d.status()["interfaces"][0]["name"] == "dum0"
        ip("link", "del", "dum0")
        json.loads(d.wait_log('"interface_lost"', 10))
        ip("link", "add", "dum0", "type", "veth", "peer", "name", "dumpeer")
        json.loads(d.wait_log('"interface_restored"', 10))
        with lab.netns(lab.server_ns):
            assert attached_prog("dum0")[1] == "xdp_synguard"
        ip("link", "set", "dum0", "down")
        ip("link", "set", "dum0", "name", "dum1")
        doc = json.loads(d.wait_log('"interface_renamed"', 10))
        assert doc["new_name"] == "dum1"
        st = d.status()
        assert [i["name"] for i in st["interfaces"]] == ["dum1"]
    finally:
        lab.stop(d.proc)


def test_synack_settings_follow_the_server_sysctls(lab):
    """What the SYN-ACK offers comes from the server netns's own sysctls: an option the
    kernel would refuse when it makes the connection is never offered."""
    from synguard import abi
    from synguard.kernel import synack_settings

    for cmd in ("net.ipv4.tcp_sack=0", "net.ipv4.tcp_ecn=1", "net.ipv4.tcp_timestamps=1",
                "net.ipv4.tcp_window_scaling=1", "net.ipv4.tcp_rmem=4096 131072 33554432"):
        lab.run(lab.server_ns, ["sysctl", "-qw", cmd])
    with lab.netns(lab.server_ns):
        rmem_max = int(open("/proc/sys/net/core/rmem_max").read())
        mss4, mss6, wscale, opts = synack_settings(1500)
    assert (mss4, mss6) == (1460, 1440)
    assert opts == abi.OPT_TS | abi.OPT_WSCALE | abi.OPT_ECN
    assert wscale == min(max(max(33554432, rmem_max).bit_length() - 1 - 15, 0), 14) >= 10  # 2^25: 10
    lab.run(lab.server_ns, ["sysctl", "-qw", "net.ipv4.tcp_timestamps=0"])
    lab.run(lab.server_ns, ["sysctl", "-qw", "net.ipv4.tcp_ecn=2"])
    with lab.netns(lab.server_ns):
        assert synack_settings(9000)[::3] == (8960, abi.OPT_WSCALE)
