"""The synguard daemon: puts the parts together and runs them.

Main thread: signals and the 1-s tick loop (clock, cookie keys, detection, interface
upkeep, counter log line, reloads). Side threads: the Prometheus HTTP server and
the control socket, both read-only over the maps. Shutdown is idempotent and
detaches only our own program.

The parts, one job each: DataPath (the programs and their maps), secret.SlotKeys
(the cookie-key schedule), mitigation.Mitigation (detection and auto mitigation),
control.ControlServer (the control socket), status (its answers: the status document),
metrics.SynguardCollector (/metrics), ifwatch (interfaces coming and going),
kernel.synack_settings (what a SYN-ACK may offer). The daemon keeps the config:
apply, reload (the last good config stays on failure).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import signal
import socket
import threading
import time
from collections import deque
from pathlib import Path

from prometheus_client import CollectorRegistry, start_http_server

from synguard import abi, config as configmod, ifwatch, kernel, status, view
from synguard.abi import Mode
from synguard.control import ControlError, ControlServer
from synguard.datapath import DataPath, DataPathError
from synguard.datapath.netns import NetnsLocked, netns_lock
from synguard.localaddrs import LocalAddrs
from synguard.log import event
from synguard.metrics import SynguardCollector
from synguard.mitigation import Mitigation
from synguard.preflight import host_problems
from synguard.secret import SlotKeys

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


# ---- the daemon -------------------------------------------------------------------------


class Daemon:
    def __init__(self, cfg: configmod.Config, config_path: str | None = None, datapath: DataPath | None = None):
        """datapath: a loaded DataPath to drive (tests, benchmarks); run() loads its own."""
        self.config = cfg
        self.config_path = config_path
        self.datapath: DataPath | None = None
        self.keys: SlotKeys | None = None  # the parts that drive the data path: see use()
        self.mitigation: Mitigation | None = None
        self.syncookies: kernel.SyncookiesHold | None = None  # method kernel-cookie only
        self.local: LocalAddrs | None = None  # this netns's addresses, the data path's scope
        self.started = time.time()
        self.reloads = {"success": 0, "failure": 0}
        self.last_reload_ok = True
        self.history: deque[tuple[float, dict]] = deque(maxlen=64)  # (time, counters) per tick
        self._stop = threading.Event()
        self._stop_signal = None
        self._hup = threading.Event()
        self._closed = False
        self._http = None
        self._control = None
        self._lock = threading.Lock()
        if datapath is not None:
            self.use(datapath)

    def use(self, datapath: DataPath) -> None:
        """Drive this data path: its cookie-key schedule and its detection/mitigation."""
        self.datapath = datapath
        self.keys = SlotKeys(datapath, self.config.secret.rotate_every)
        self.mitigation = Mitigation(datapath)

    # -- state --------------------------------------------------------------------

    @property
    def protecting(self) -> bool:
        if self.config.mode == Mode.AUTO:
            return self.mitigation.active
        return self.config.mode == Mode.PROTECT

    # -- config application ---------------------------------------------------------

    def _apply(self, cfg, *, first: bool) -> None:
        """Apply cfg to the running data path (no program reload)."""
        dp = self.datapath
        if cfg.mode != Mode.OBSERVE and dp.cookie_method is None:
            raise configmod.ConfigError([f"mode {cfg.mode} needs SYN cookies the kernel can complete: "
                                         f"{dp.tc_unavailable}; use mode observe"], self.config_path or "config")
        self.keys.configure(cfg.secret, force=first)  # a new master or period: both slots re-keyed
        self.config = cfg
        self.keys.advance()
        dp.tick(int(time.time()))
        self._apply_synack()
        dp.set_ports(cfg.protect.ports)
        dp.set_allow_cidrs(cfg.allow)
        if self.local is None:  # scope: our own addresses only, known before the first attach
            self.local = LocalAddrs(dp)
            self.local.sync()
        ifwatch.attach_interfaces(dp, cfg.interfaces, cfg.xdp_mode)
        self.mitigation.configure(cfg)  # detection knobs, watched ports, deny CIDRs
        self._hold_syncookies()  # before protect mode answers its first SYN
        dp.set_mode(cfg.mode)
        ports = ",".join(map(str, cfg.protect.ports)) or "all"
        event("config", f"mode {cfg.mode}, protected ports {ports}, "
              f"allow {len(cfg.allow)} / deny {len(cfg.deny)} CIDRs", mode=cfg.mode.label, ports=list(cfg.protect.ports))
        for line in cfg.warnings:  # keys of earlier versions, ignored (config.REMOVED_KEYS)
            event("config_warning", f"{self.config_path or 'config'}: {line}", level=logging.WARNING)

    def _apply_synack(self) -> None:
        """What the SYN-ACK offers: the server netns's own TCP sysctls and the MTU of
        the attached interfaces (the kernel refuses a connection whose cookie offered
        an option its sysctls disable)."""
        self.datapath.set_synack(*kernel.synack_settings(kernel.min_mtu(self.config.interfaces)))

    def _hold_syncookies(self) -> None:
        """Method kernel-cookie: tcp_syncookies=2 exactly while protecting (kernel.SyncookiesHold)."""
        if self.syncookies is None:
            return
        try:
            change = self.syncookies.set(self.protecting)
        except OSError as e:
            change = f"tcp_syncookies: {e}"
        if change:
            event("syncookies", change, tcp_syncookies_held=self.syncookies.held)

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
                    cfg = dataclasses.replace(cfg, **{key: getattr(self.config, key)})
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

    def rates(self) -> dict[str, float]:
        """Counters per second over the last ticks (the status document, sd_notify STATUS=)."""
        with self._lock:
            return status.rates(list(self.history))

    def rates_window(self) -> float:
        with self._lock:
            return status.rates_window(list(self.history))

    # -- lifecycle ------------------------------------------------------------------------

    def _on_signal(self, signum, frame):
        if signum == signal.SIGHUP:
            self._hup.set()
        else:
            self._stop_signal = signal.Signals(signum).name
            self._stop.set()

    def _start_metrics(self) -> None:
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
        self._control = ControlServer(self.config.control.socket, functools.partial(status.answer, self))

    def run(self, overrides: dict | None = None) -> int:
        self.overrides = overrides or {}
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        problems = host_problems(self.config, starting=True)  # before compiling or touching a crashed run's pins
        if not problems:
            try:  # one daemon per network namespace: the pins there are its alone
                self._netns_lock = netns_lock()
            except (NetnsLocked, OSError) as e:
                problems = [str(e)]
        if problems:
            for line in problems:
                log.error("%s", line)
            return 1
        try:
            self.use(DataPath(keep_state=True, tc=True))
            dp = self.datapath
            if dp.cookie_method == "kernel-cookie":
                self.syncookies = kernel.SyncookiesHold(Path(self.config.control.socket).with_name("tcp_syncookies.saved"))
            if dp.cookie_method == "kfunc":
                event("cookie_method", "SYN cookies: XDP answers SYNs with a cookie SYN-ACK; the tc program "
                      "hands valid cookie ACKs to the kernel (bpf_sk_assign_tcp_reqsk, Linux >= 6.9): one round "
                      f"trip, TCP options kept (method kfunc: {dp.cookie_method_reason})",
                      method=dp.cookie_method, reason=dp.cookie_method_reason)
            elif dp.cookie_method == "kernel-cookie":
                event("cookie_method", "SYN cookies: XDP answers SYNs with the kernel's own cookie "
                      "(bpf_tcp_gen_syncookie; tcp_syncookies=2 while protecting), the kernel completes the "
                      "ACK: one round trip; clients keep "
                      f"{kernel.cookie_options(dp.cookie_method, kernel.synack_settings(1500)[3])} "
                      f"(method kernel-cookie: {dp.cookie_method_reason})",
                      method=dp.cookie_method, reason=dp.cookie_method_reason)
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
            # Tests only (from a checkout): an unexpected error in the loop. An installed
            # daemon ignores it (host.py: the environment knobs).
            fault = os.environ.get("SYNGUARD_TEST_FAULT") if abi.FROM_CHECKOUT else None
            while not self._stop.wait(1.0):
                if fault == "tick":
                    raise RuntimeError("SYNGUARD_TEST_FAULT=tick: injected fault")
                now = time.monotonic()
                # Read the window that ends now before the clock moves on: the program
                # starts a new second's HLL bank at its first SYN after tick(), and when
                # the clock moves by 2 (a tick period just over 1 s) that is the bank
                # of the window that just ended (bank = now_s & 1).
                window_s = self.datapath.config()["now_s"]
                blocks = self.datapath.read_blocks()
                read_at = time.time()  # when these counters were read (the log line comes later)
                wall = int(read_at)
                self.datapath.tick(wall)
                self.keys.advance(wall)
                self.mitigation.tick(now, wall, now - last_tick, blocks, window_s)
                self.local.poll()
                self._hold_syncookies()
                counters = self.datapath.counters(blocks=blocks)
                last_tick = now
                ifwatch.check_interfaces(self.datapath, self.config.interfaces, self.config.xdp_mode)
                if now - last_watch >= 10 and not self.config.protect.ports:
                    self.mitigation.watch_ports()
                    last_watch = now
                with self._lock:
                    self.history.append((now, counters))
                if self._hup.is_set():
                    self._hup.clear()
                    self.reload()
                if now - last_log >= self.log_interval:
                    log.info("%s", view.counters_line(counters, logged, now - last_log), extra={
                        "event": "counters", "fields": {"read_at": round(read_at, 3),
                                                        "counters": {c.key: v for c, v in counters.items()}}})
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
        if self.local is not None:
            self.local.close()
        if self.datapath is not None and detach:
            self.datapath.close(keep_state=keep_state)
            if self.syncookies is not None:  # detached: nothing answers with cookies now
                with contextlib.suppress(OSError):
                    change = self.syncookies.set(False)
                    if change:
                        event("syncookies", change, tcp_syncookies_held=False)
        lock, self._netns_lock = getattr(self, "_netns_lock", None), None
        if lock is not None:
            os.close(lock)

