"""The synguard daemon: data path + config + secrets + metrics + control socket.

Main thread: signals and the 1-s tick loop (clock, secret rotation, filter
upkeep, counter log line, reloads). Side threads: the Prometheus HTTP server and
the control socket, both read-only over the maps. Shutdown is idempotent and
detaches only our own program.

Secrets: a 128-bit master (random at start, or secret.file shared by a fleet)
derives the secret of each epoch = floor(wall clock / rotate_every) with keyed
BLAKE2b, so every node sharing the file switches at the same instant without
talking to the others. The program keys each cookie slot (wall clock >>
SLOT_SHIFT) with the secret of the epoch containing the slot's start
(sg_secrets[slot & 1]); the previous slot's key stays for the ACK check.
"""

from __future__ import annotations

import ctypes as ct
import logging
import os
import signal
import socket
import threading
import time
from pathlib import Path
from collections import deque

from synguard import __version__, abi, config as configmod, hll, secret, view
from synguard.abi import Counter, Mode
from synguard import status
from synguard.log import event
from synguard.control import ControlError, ControlServer
from synguard.ifwatch import check_interfaces
from synguard.datapath import DataPath, DataPathError

log = logging.getLogger("synguard")


# ---- systemd notify (the protocol is one datagram; no library needed for it) --------


def sd_notify(state: str) -> bool:
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(addr)
            s.sendall(state.encode())
        return True
    except OSError:
        return False


# ---- secrets -----------------------------------------------------------------------


def _sysctl(name: str, default: str) -> str:
    try:
        return Path("/proc/sys/" + name.replace(".", "/")).read_text()
    except OSError:
        return default


def synack_settings(mtu: int) -> tuple[int, int, int, int]:
    """(mss4, mss6, wscale, tcp_opts) for DataPath.set_synack from this netns's sysctls:
    tcp_timestamps, tcp_sack, tcp_window_scaling, tcp_ecn == 1 -> SG_OPT_*; our window
    scale as the kernel picks it, ilog2(max(tcp_rmem[2], rmem_max)) - 15 in 0..14; the
    MSS from the MTU (IPv4 MTU - 40, IPv6 MTU - 60)."""
    def num(name, default):
        try:
            return int(_sysctl(name, str(default)).split()[0])
        except (ValueError, IndexError):
            return default

    opts = 0
    if num("net.ipv4.tcp_timestamps", 1):
        opts |= abi.OPT_TS
    if num("net.ipv4.tcp_sack", 1):
        opts |= abi.OPT_SACK
    if num("net.ipv4.tcp_window_scaling", 1):
        opts |= abi.OPT_WSCALE
    if num("net.ipv4.tcp_ecn", 2) == 1:
        opts |= abi.OPT_ECN
    try:
        rmem = int(_sysctl("net.ipv4.tcp_rmem", "4096 131072 6291456").split()[2])
    except (ValueError, IndexError):
        rmem = 6291456
    space = max(rmem, num("net.core.rmem_max", 212992), 1)
    wscale = min(max(space.bit_length() - 1 - 15, 0), 14)
    return max(mtu - 40, 536), max(mtu - 60, 1220), wscale, opts


# ---- the daemon -------------------------------------------------------------------------


class Daemon:
    def __init__(self, cfg: configmod.Config, config_path: str | None = None):
        self.config = cfg
        self.config_path = config_path
        self.datapath: DataPath | None = None
        self.started = time.time()
        self.master = b""
        self.epoch = -1
        self.secret_since = time.time()
        self.secret_rotations = 0
        self.reloads = {"success": 0, "failure": 0}
        self.last_reload_ok = True
        self.slot = -1  # the cookie slot the program signs with (sg_config.slot)
        self.history: deque[tuple[float, dict]] = deque(maxlen=64)  # (time, counters) per tick
        self._stop = threading.Event()
        self._stop_signal = None
        self._hup = threading.Event()
        self._closed = False
        self._http = None
        self._control = None
        self._lock = threading.Lock()
        # detection (mode auto); the detector runs in every mode so status shows it
        self.detector = None
        self.hll_history = hll.History()
        self.events: deque[dict] = deque(maxlen=20)
        self.sources_distinct = 0.0
        self._prev = None  # (counters, kernel passive opens, port syns) of the last tick
        self._temp_deny: dict[str, float] = {}
        self._armed: dict[int, int] = {}
        self._top_at = 0.0
        self._hh: dict[str, int] = {}  # heavy-hitter source -> its sampled SYN count last tick

    # -- state --------------------------------------------------------------------

    @property
    def protecting(self) -> bool:
        if self.config.mode == Mode.AUTO:
            return bool(self._armed) or bool(self.detector and self.detector.active)
        return self.config.mode == Mode.PROTECT

    # -- config application ---------------------------------------------------------

    def _load_master(self, cfg) -> bytes:
        if cfg.secret.file:
            return secret.secret_file_check(cfg.secret.file)
        return self.master or secret.random_master()

    def _apply(self, cfg, *, first: bool) -> None:
        """Apply cfg to the running data path (no program reload)."""
        dp = self.datapath
        if cfg.mode != Mode.OBSERVE and dp.cookie_method is None:
            raise configmod.ConfigError([f"mode {cfg.mode} needs SYN cookies the kernel can complete: "
                                         f"{dp.tc_unavailable}; use mode observe"], self.config_path or "config")
        master = self._load_master(cfg)
        if master != self.master or cfg.secret.rotate_every != self.config.secret.rotate_every or first:
            self.master = master
            self.epoch = -1  # force a (re)derivation with the new master/period
            self.slot = -1
        self.config = cfg
        self._rotate_if_due()
        dp.tick(int(time.time()))
        self._apply_synack()
        dp.set_ports(cfg.protect.ports)
        dp.set_allow_cidrs(cfg.allow)
        self.static_deny = list(cfg.deny)
        wanted = list(cfg.interfaces)
        for ifname in list(dp.attached):
            if ifname not in wanted:
                dp.detach(ifname)
                event("detached", f"detached from {ifname}", interface=ifname)
        for ifname in wanted:
            if ifname not in dp.attached:
                how = dp.attach(ifname, cfg.xdp_mode)
                self._report_tc(ifname)
                event("attached", f"attached to {ifname} ({how} XDP)", interface=ifname, xdp_mode=how)
                if dp.pin_error and dp.pin_error != dp.state_note:  # a foreign directory: said once
                    event("pin_failed", f"cannot pin the program ({dp.pin_error}): after a crash, a restarted "
                          f"daemon will not recognise its leftover program", level=logging.WARNING)
                    dp.pin_error = None
        from synguard.detect import Detector

        if self.detector is None:
            self.detector = Detector(cfg.detection)
        else:
            self.detector.reconfigure(cfg.detection)
        ncpu = os.cpu_count() or 1
        dp.set_fast_trigger(-(-cfg.detection.fast_trigger_pps // ncpu) if cfg.detection.fast_trigger_pps else 0,
                            cfg.detection.hold)
        self._watch_ports()
        self._apply_deny()
        dp.set_mode(cfg.mode)
        ports = ",".join(map(str, cfg.protect.ports)) or "all"
        event("config", f"mode {cfg.mode}, protected ports {ports}, "
              f"allow {len(cfg.allow)} / deny {len(cfg.deny)} CIDRs", mode=cfg.mode.label, ports=list(cfg.protect.ports))

    def _report_tc(self, ifname: str) -> None:
        """What attaching the tc program beside the XDP one (DataPath.attach) ran into."""
        dp = self.datapath
        if dp.tc_problem:
            event("syncookies_off", f"{ifname}: {dp.tc_problem}; until then protect mode refuses every new "
                  f"connection", level=logging.ERROR, interface=ifname)
            dp.tc_problem = None
        # A foreign pin directory is said once (state_note); the tc pin fails for the same reason.
        if dp.tc is not None and dp.tc.pin_error and dp.tc.pin_error != dp.state_note:
            event("pin_failed", f"cannot pin the tc program ({dp.tc.pin_error}): after a crash, a restarted "
                  f"daemon recognises its leftover filter by name only", level=logging.WARNING)
            dp.tc.pin_error = None

    def slot_key(self, slot: int) -> bytes:
        """The key of a cookie slot: the secret of the epoch containing the slot's start."""
        return secret.derive_secret(self.master, (slot << abi.SLOT_SHIFT) // self.config.secret.rotate_every)

    def _rotate_if_due(self) -> None:
        """Advance the cookie slot: the new slot's key is written before the program
        signs with it; the other entry keeps the previous slot's key."""
        wall = int(time.time())
        slot = (wall & 0xFFFFFFFF) >> abi.SLOT_SHIFT
        if slot == self.slot:
            return
        dp = self.datapath
        if slot != self.slot + 1:  # first slot, a jump of the clock, or a new master
            dp.set_slot_key(slot - 1, self.slot_key(slot - 1))
        dp.set_slot_key(slot, self.slot_key(slot))
        dp.set_slot(slot)
        self.slot = slot
        epoch = (slot << abi.SLOT_SHIFT) // self.config.secret.rotate_every
        if epoch == self.epoch:
            return
        first = self.epoch < 0
        self.epoch = epoch
        self.secret_since = epoch * self.config.secret.rotate_every
        if not first:
            self.secret_rotations += 1
            event("secret_rotated", f"cookie secret rotated (generation {epoch})", generation=epoch)

    def _apply_synack(self) -> None:
        """What the SYN-ACK offers: the server netns's own TCP sysctls and the MTU of
        the attached interfaces (the kernel refuses a connection whose cookie offered
        an option its sysctls disable)."""
        mtus = []
        for ifname in self.config.interfaces:
            try:
                mtus.append(int(Path(f"/sys/class/net/{ifname}/mtu").read_text()))
            except (OSError, ValueError):
                continue
        mss4, mss6, wscale, tcp_opts = synack_settings(min(mtus) if mtus else 1500)
        self.datapath.set_synack(mss4, mss6, wscale, tcp_opts)

    def reload(self) -> bool:
        if not self.config_path:
            event("reload", "SIGHUP: no config file to reload (started without -c)", level=logging.WARNING)
            return False
        try:
            try:
                cfg = configmod.load(self.config_path)
            except configmod.ConfigError:
                raise
            except Exception as e:  # a parser bug must never stop a running daemon
                raise configmod.ConfigError([f"cannot load: {type(e).__name__}: {str(e)[:200]}"],
                                            source=self.config_path) from None
            cfg = configmod.override(cfg, **self.overrides)
            for key in ("metrics", "control"):
                if getattr(cfg, key) != getattr(self.config, key):
                    event("reload", f"{key} settings change only on restart; keeping the running ones",
                          level=logging.WARNING)
                    cfg = _replace(cfg, **{key: getattr(self.config, key)})
            old = self.config
            try:
                self._apply(cfg, first=False)
            except (DataPathError, configmod.ConfigError, OSError, ValueError) as e:
                self._apply(old, first=False)  # back to the last good config
                raise configmod.ConfigError([str(e)], source=self.config_path) from None
        except configmod.ConfigError as e:
            self.reloads["failure"] += 1
            self.last_reload_ok = False
            for line in str(e).splitlines():
                event("reload_failed", line, level=logging.ERROR)
            event("reload_failed", "config NOT reloaded: the running config stays in force", level=logging.ERROR)
            return False
        self.reloads["success"] += 1
        self.last_reload_ok = True
        event("reloaded", f"config reloaded from {self.config_path}")
        return True

    # -- interfaces coming and going ---------------------------------------------------

    def check_interfaces(self) -> None:
        check_interfaces(self.datapath, self.config.interfaces, self.config.xdp_mode)

    # -- detection and auto mitigation -------------------------------------------------

    def _watch_ports(self) -> None:
        """Ports with their own SYN counters: the protected ones, else the listening ones."""
        from synguard import kernel

        ports = set(self.config.protect.ports)
        if not ports:
            ports = {r.port for r in kernel.listeners()}
        self.datapath.set_watched(sorted(ports)[: abi.PORT_SLOTS - 1])

    def _apply_deny(self) -> None:
        temp = [f"{a}/{32 if ':' not in a else 128}" for a in self._temp_deny]
        self.datapath.set_deny_cidrs([*self.static_deny, *temp])

    def _top_sources(self, now: float) -> list[tuple[str, int]]:
        """SYNs of the heaviest sampled sources during the last tick.

        A full read of the per-source map costs ~0.1 s when it is full, so the
        heavy hitters are re-chosen from a full read at most every 5 s; every
        tick, only those few entries are looked up and their growth since the
        previous tick is reported (so shares compare with this tick's SYNs)."""
        import ipaddress

        from synguard.datapath import addr_key

        table = self.datapath.map("sg_src_syns")
        if now - self._top_at >= 5 or not self._hh:
            self._top_at = now
            rows = self.top(10)
            self._hh = {r["source"]: self._hh.get(r["source"], r["syns"]) for r in rows}
        out = []
        for addr, before in list(self._hh.items()):
            key = table.Key()
            ct.memmove(key.addr, addr_key(ipaddress.ip_address(addr)), 16)
            try:
                count = int(table[key].syns)
            except KeyError:
                count = before
            self._hh[addr] = count
            if count > before:
                out.append((addr, count - before))
        return sorted(out, key=lambda r: r[1], reverse=True)

    def detect_tick(self, mono: float, wall: int, dt: float, blocks: list) -> list[dict]:
        """One detector step from the program's signals (blocks: this tick's one read of
        the counter map, see DataPath.read_blocks); applies auto mitigation."""
        from synguard import kernel
        from synguard.detect import Tick

        dp = self.datapath
        counters = dp.counters(blocks=blocks)
        opens = kernel.tcp_counters().get("Tcp.PassiveOpens", 0)
        port_syns = dp.port_syns(blocks)
        regs = dp.hll_registers(wall - 1, blocks)
        distinct, new = self.hll_history.novelty(regs)
        if self.detector.active is None:
            # The history is what normal looks like: an attack's sources stay out
            # of it, or a long random flood would soon look "already seen".
            self.hll_history.add(regs, wall - 1)
        self.sources_distinct = distinct
        prev, self._prev = self._prev, (counters, opens, port_syns)
        if prev is None:
            return []
        c0, opens0, ports0 = prev
        syns = counters[Counter.SYN_RECEIVED] - c0[Counter.SYN_RECEIVED]
        completions = (counters[Counter.COOKIE_VALIDATED] - c0[Counter.COOKIE_VALIDATED]) + max(0, opens - opens0)
        fast = set()
        if counters[Counter.FAST_TRIGGER] != c0[Counter.FAST_TRIGGER] or self._armed:
            fast = {p for p in port_syns if (dp.port_auto_until(p) - wall) > 0 and p not in self._armed}
        gate_hint = syns / max(dt, 1e-3) >= self.config.detection.floor_pps
        top = self._top_sources(mono) if gate_hint else []
        tick = Tick(t=mono, dt=dt, syns=max(0, syns), completions=completions, distinct=distinct,
                    new_sources=new, port_syns={p: max(0, n - ports0.get(p, 0)) for p, n in port_syns.items()},
                    top_sources=top, fast_trigger_ports=frozenset(fast))
        events = self.detector.update(tick)
        for ev in events:
            a = ev["attack"]
            self.events.append(ev)
            event(ev["event"], f"{ev['event'].replace('_', ' ')}: {a['kind']} on ports "
                  f"{','.join(map(str, a['ports'])) or 'all'}, peak {a['peak_pps']:.0f} SYN/s, "
                  f"sources e.g. {', '.join(a['sources_sample'][:3]) or '-'}",
                  level=logging.WARNING if ev["event"] == "attack_start" else logging.INFO, attack=a)
        if self.config.mode == Mode.AUTO:
            self._enforce(self.detector.mitigation(mono), mono, wall)
        return events

    def _enforce(self, m: dict, mono: float, wall: int) -> None:
        """Arm the attacked ports in the kernel (auto mode) and keep temporary denies."""
        dp = self.datapath
        wall_of = lambda t: wall + int(round(t - mono))  # noqa: E731
        wanted = {p: wall_of(u) for p, u in m["until_by_port"].items()}
        if m["protect_all"] and m["protect_until"] is not None:
            for p in dp.set_watched(sorted(dp._watch)):  # every watched port
                wanted[p] = max(wanted.get(p, 0), wall_of(m["protect_until"]))
        for port, until in wanted.items():
            if self._armed.get(port) != until:
                dp.arm_port(port, max(until, dp.port_auto_until(port)))
        for port in set(self._armed) - set(wanted):
            if dp.port_auto_until(port) <= self._armed[port] + 1:
                dp.arm_port(port, 0)  # the fast trigger may have re-armed it meanwhile: keep that
        self._armed = wanted
        deny = {a: u for a, u in m["deny_sources"]}
        if deny.keys() != self._temp_deny.keys():
            self._temp_deny = deny
            self._apply_deny()

    # -- control socket requests --------------------------------------------------------

    def control(self, request: dict) -> dict:
        cmd = request.get("cmd")
        if cmd == "status":
            return status.document(self)
        if cmd == "top":
            return {"sources": self.top(int(request.get("n", 10))), "now_s": self.datapath.config()["now_s"]}
        if cmd == "ping":
            return {"ok": True, "version": __version__}
        return {"error": f"unknown command {cmd!r}"}

    def rates(self) -> dict[str, float]:
        with self._lock:
            return status.rates(list(self.history))

    def status(self) -> dict:
        return status.document(self)

    def top(self, n: int = 10) -> list[dict]:
        return status.top_sources(self.datapath, n)

    # -- lifecycle ------------------------------------------------------------------------

    def _on_signal(self, signum, frame):
        if signum == signal.SIGHUP:
            self._hup.set()
        else:
            self._stop_signal = signal.Signals(signum).name
            self._stop.set()

    def _start_metrics(self) -> None:
        from prometheus_client import CollectorRegistry, start_http_server

        from synguard.metrics import SynguardCollector

        m = self.config.metrics
        if not m.listen:
            return
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(SynguardCollector(self))
        try:
            self._http = start_http_server(m.port, addr=m.host, registry=self.registry)
        except OSError as e:
            raise DataPathError(f"metrics: cannot listen on {m.listen}: {e.strerror}") from None
        event("metrics", f"metrics on http://{m.listen}/metrics", listen=m.listen)

    def _start_control(self) -> None:
        self._control = ControlServer(self.config.control.socket, self.control)

    def run(self, overrides: dict | None = None) -> int:
        self.overrides = overrides or {}
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        from synguard.preflight import host_problems

        problems = host_problems(self.config, starting=True)  # before compiling or touching a crashed run's pins
        if problems:
            for line in problems:
                log.error("%s", line)
            return 1
        try:
            self.datapath = DataPath(keep_state=True, tc=True)
            dp = self.datapath
            if dp.cookie_method:
                event("cookie_method", "SYN cookies: XDP answers SYNs with a cookie SYN-ACK; the tc program "
                      "hands valid cookie ACKs to the kernel (bpf_sk_assign_tcp_reqsk, Linux >= 6.9): one round "
                      "trip, TCP options kept", method=dp.cookie_method)
            else:
                event("cookie_method", f"SYN cookies unavailable: {dp.tc_unavailable}; only mode observe works",
                      level=logging.WARNING, method=None)
            if dp.state_note:
                event("state", dp.state_note, level=logging.WARNING)
            if dp.adopted:
                event("state", f"adopted the state of a previous run ({', '.join(dp.adopted)})",
                      adopted=dp.adopted)
            self._start_control()
            self._apply(self.config, first=True)
            self._start_metrics()
        except (DataPathError, ControlError, configmod.ConfigError) as e:
            for line in str(e).splitlines():
                log.error("%s", line)
            self.close(keep_state=True)  # a failed start never deletes what a crashed run kept
            return 1
        sd_notify("READY=1\nSTATUS=" + self._status_line())
        watchdog_s = int(os.environ.get("WATCHDOG_USEC", "0")) / 1e6
        last_log = last_dog = last_watch = last_tick = time.monotonic()
        logged = self.datapath.counters()
        try:
            while not self._stop.wait(1.0):
                now = time.monotonic()
                wall = int(time.time())
                self.datapath.tick(wall)
                self._rotate_if_due()
                blocks = self.datapath.read_blocks()
                self.detect_tick(now, wall, now - last_tick, blocks)
                counters = self.datapath.counters(blocks=blocks)
                last_tick = now
                self.check_interfaces()
                if now - last_watch >= 10 and not self.config.protect.ports:
                    self._watch_ports()
                    last_watch = now
                with self._lock:
                    self.history.append((now, counters))
                if self._hup.is_set():
                    self._hup.clear()
                    self.reload()
                if now - last_log >= self.log_interval:

                    log.info("%s", view.counters_line(counters, logged, now - last_log), extra={
                        "event": "counters", "fields": {"counters": {c.name.lower(): v for c, v in counters.items()}}})
                    last_log, logged = now, counters
                if watchdog_s and now - last_dog >= watchdog_s / 2:
                    sd_notify("WATCHDOG=1\nSTATUS=" + self._status_line())
                    last_dog = now
            event("stopping", f"{self._stop_signal}: detaching and exiting")
            return 0
        except Exception as e:  # a crash: keep protecting, let the restarted daemon adopt
            log.exception("unexpected error", extra={"event": "crash", "fields": {}})
            event("crash", f"{type(e).__name__}: {e}; leaving the XDP program attached and its state pinned "
                  f"(protection continues); a restarted synguard adopts them", level=logging.CRITICAL)
            self.close(detach=False)
            return 1
        finally:
            sd_notify("STOPPING=1")
            self.close()

    log_interval = 5

    def _status_line(self) -> str:
        r = self.rates()
        return (f"mode {self.config.mode}; SYN {r['syn_received']:.0f}/s, challenges "
                f"{r['challenge_sent']:.0f}/s, validated {r['cookie_validated']:.0f}/s")

    def close(self, detach: bool = True, keep_state: bool = False) -> None:
        """Idempotent: stop servers, remove the socket, detach our program (orderly stop).

        detach=False (a crash) leaves the program attached and the state pinned;
        keep_state (a failed start) detaches what this run attached but leaves the
        kept maps pinned for the next start."""
        if self._closed:
            return
        self._closed = True
        if self._control is not None:
            self._control.close()
        if self._http is not None:
            server = self._http[0] if isinstance(self._http, tuple) else None
            if server is not None:
                server.shutdown()
        if self.datapath is not None and detach:
            self.datapath.close(keep_state=keep_state)


def _replace(cfg, **kw):
    import dataclasses

    return dataclasses.replace(cfg, **kw)
