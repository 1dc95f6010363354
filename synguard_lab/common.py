"""What the demo, the evaluation, the benchmarks and the tests share.

- ``percentile``: one definition (nearest rank) for every latency figure printed.
- ``repo_env``: the environment for a child Python that must import this checkout.
- ``LabDaemon``: a real ``synguard run`` in a lab namespace, with its config, JSON
  log and control socket in a private directory (mkdtemp, 0700: no fixed /tmp names
  that another user could plant), polled until ready, stopped by PID.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SYNGUARD = [sys.executable, "-m", "synguard.cli"]


def percentile(values, q: float) -> float | None:
    """Nearest-rank percentile, q in 0..1 (None for no values)."""
    v = sorted(values)
    if not v:
        return None
    return v[max(0, math.ceil(q * len(v)) - 1)]


def repo_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """os.environ with this checkout first on PYTHONPATH (children import synguard_lab too)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.update(extra or {})
    return env


class LabDaemon:
    """`synguard run -c <config>` in namespace ns (default: the lab's server)."""

    def __init__(self, lab, config_text: str, *, ns: str | None = None, args: tuple[str, ...] = ()):
        self.lab = lab
        self.dir = Path(tempfile.mkdtemp(prefix="synguard-lab-"))
        self.config = self.dir / "synguard.yaml"
        self.config.write_text(config_text)
        self.socket = str(self.dir / "control.sock")
        self.log_path = self.dir / "daemon.log"
        self._log = open(self.log_path, "w")
        self.proc = lab.popen(ns or lab.server_ns,
                              [*SYNGUARD, "run", "-c", str(self.config), "--control-socket", self.socket,
                               "--log-format", "json", *args],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._log, env=repo_env())
        self.exit_code: int | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def status(self, timeout: float = 10) -> dict:
        from synguard import view

        return view.request(self.socket, {"cmd": "status"}, timeout=timeout)

    def wait_ready(self, pred=None, timeout: float = 90) -> dict:
        """Poll status until the daemon answers (and pred(status) holds); raise if it dies."""
        from synguard import view

        end = time.monotonic() + timeout
        while True:
            try:
                st = self.status()
                if pred is None or pred(st):
                    return st
            except view.DaemonUnavailable:
                pass
            self._check_alive("start")
            if time.monotonic() > end:
                raise TimeoutError(f"synguard run not ready within {timeout:.0f} s:\n{self.tail()}")
            time.sleep(0.2)

    def events(self) -> list[dict]:
        out = []
        with open(self.log_path) as f:
            for line in f:
                if line.startswith("{"):
                    try:
                        out.append(json.loads(line))
                    except ValueError:
                        pass  # a line being written
        return out

    def wait_event(self, pred, timeout: float, what: str) -> dict | None:
        """First logged event matching pred within timeout (None); raises if the daemon dies."""
        end = time.monotonic() + timeout
        while True:
            for e in self.events():
                if pred(e):
                    return e
            self._check_alive(what)
            if time.monotonic() >= end:
                return None
            time.sleep(0.1)

    def ticks_after(self, ts: float, n: int) -> None:
        """Wait until n counter lines (one per tick) were logged after wall time ts."""
        end = time.monotonic() + n * 3 + 10
        while time.monotonic() < end:
            if sum(1 for e in self.events() if e.get("event") == "counters" and e["ts"] > ts) >= n:
                return
            self._check_alive(f"{n} ticks")
            time.sleep(0.1)
        raise TimeoutError(f"daemon logged fewer than {n} ticks in {n * 3 + 10} s")

    def tail(self, n: int = 20) -> str:
        return "".join(self.log_path.read_text().splitlines(True)[-n:])

    def _check_alive(self, what: str) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"synguard run exited ({self.proc.returncode}) waiting for {what}:\n{self.tail()}")

    def stop(self, grace: float = 10, keep_log: Path | None = None) -> list[dict]:
        """Stop the daemon (SIGTERM, then SIGKILL after grace), remove its directory (the
        log is copied to keep_log first, if given); returns every event it logged."""
        self.lab.stop(self.proc, grace=grace)
        self.exit_code = self.proc.returncode
        self._log.close()
        events = self.events() if self.log_path.exists() else []
        if keep_log is not None and self.log_path.exists():
            shutil.copyfile(self.log_path, keep_log)
        shutil.rmtree(self.dir, ignore_errors=True)
        return events
