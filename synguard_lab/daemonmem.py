"""What a running `synguard run` costs an operator: resident memory at idle and start-up time.

``python -m synguard_lab.daemonmem [--settle 10] [--runs 3]`` (root; builds its own netns
lab). Starts a real daemon in the lab's server namespace (mode protect, both server
interfaces, port 80), times spawn -> ready (status answers, protecting, both interfaces
attached), waits ``--settle`` seconds, then reads /proc/<pid>/status (VmRSS) and
/proc/<pid>/smaps (resident memory by mapping: which libraries and how much heap).
It asserts nothing; `make bench` prints its figures beside the target.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

from synguard_lab.common import LabDaemon
from synguard_lab.lab import Lab

MIB = 1 << 20
RSS_TARGET_MIB = 64  # issue 12: the long-running daemon's idle RSS


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def smaps_by_mapping(pid: int) -> dict[str, int]:
    """Resident bytes per mapping name ([heap], a library's path, [anon] for nameless)."""
    out: dict[str, int] = defaultdict(int)
    name = "[anon]"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split(None, 5)
        if len(head) >= 5 and "-" in head[0] and ":" not in head[0]:  # a mapping's first line
            name = head[5].strip() if len(head) == 6 and head[5].strip() else "[anon]"
        elif line.startswith("Rss:"):
            out[name] += int(line.split()[1]) * 1024
    return dict(out)


def measure(settle: float = 10.0, prefix: str = "sgmem") -> dict:
    """One daemon in a fresh lab: start-up seconds, idle RSS, the largest mappings."""
    with Lab(prefix) as lab:
        want = {lab.server_client_if, lab.server_attacker_if}
        t0 = time.monotonic()
        d = LabDaemon(lab, f"interfaces: [{lab.server_client_if}, {lab.server_attacker_if}]\nmode: protect\n"
                           f"protect:\n  ports: [80]\n")
        try:
            d.wait_ready(lambda st: st.get("protecting") and {i["name"] for i in st["interfaces"]} >= want, 120)
            startup = time.monotonic() - t0
            time.sleep(settle)
            d.wait_ready(timeout=10)  # still alive and answering
            rss = rss_bytes(d.pid)
            maps = smaps_by_mapping(d.pid)
        finally:
            d.stop()
    top = sorted(maps.items(), key=lambda kv: kv[1], reverse=True)[:8]
    return {"startup_s": startup, "rss": rss, "top": top}


def run(runs: int = 3, settle: float = 10.0, out=sys.stdout) -> dict:
    results = [measure(settle) for _ in range(runs)]
    summary = {
        "runs": runs,
        "settle_s": settle,
        "rss_mib": [r["rss"] / MIB for r in results],
        "rss_mib_median": statistics.median(r["rss"] / MIB for r in results),
        "startup_s": [r["startup_s"] for r in results],
        "startup_s_median": statistics.median(r["startup_s"] for r in results),
        "target_mib": RSS_TARGET_MIB,
        "top_mib": [(name, b / MIB) for name, b in results[-1]["top"]],
    }
    if out is not None:
        print(json.dumps(summary, indent=1), file=out)
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m synguard_lab.daemonmem", description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--settle", type=float, default=10.0, help="seconds after ready before reading RSS")
    a = p.parse_args(argv)
    run(a.runs, a.settle)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
