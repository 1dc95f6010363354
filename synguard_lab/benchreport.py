"""One benchmark report (BENCH.md): XDP cost, control-plane cost, flood comparison.

XDP cost per path, control-plane cost under a backlog, and the same spoofed
flood against the kernel alone and against synguard.

``python -m synguard_lab.benchreport [--short] [--out BENCH.md]`` (root; `make bench`)

Runs, in order:
1. ``synguard_lab.bench``: ns per packet per XDP path (BPF_PROG_TEST_RUN), as a
   multiple of an empty XDP program measured in the same run;
2. ``synguard_lab.kernel_bench``: ``kernel.listeners()`` and a whole /metrics
   scrape with 1,000 listeners and 100,000 half-open connections;
3. ``synguard_lab.floodbench``: kernel SYN cookies vs. synguard under the same
   flood (answered, CPU per SYN, legit connects, what reached the kernel);
4. ``synguard_lab.daemonmem``: a real ``synguard run`` (protect, both lab
   interfaces): start-up time and resident memory 10 s after it is ready,
   against the 64 MiB target, with the largest mappings.

Writes one markdown file (default BENCH.md in the repository root) with the
three tables, the machine, the date and the command that reproduces each
table, and prints it. A section that fails is reported as such; the others
still run (exit status 1 then).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

from synguard.datapath.host import TC_SOURCE, XDP_SOURCES

REPO_ROOT = Path(__file__).resolve().parents[1]

# (full, short) parameters of each section.
BENCH = {False: {"repeat": 200_000, "rounds": 7}, True: {"repeat": 20_000, "rounds": 3}}
KBENCH = {False: {"n_listeners": 1000, "half_open": 100_000, "repeat": 5},
          True: {"n_listeners": 1000, "half_open": 10_000, "repeat": 3}}
FLOOD = {False: {"seconds": 10.0}, True: {"seconds": 2.0}}
DAEMONMEM = {False: {"runs": 3, "settle": 10.0}, True: {"runs": 1, "settle": 10.0}}


def commands(short: bool) -> dict[str, str]:
    b, k = BENCH[short], KBENCH[short]
    return {
        "bench": f".venv/bin/python -m synguard_lab.bench --repeat {b['repeat']} --rounds {b['rounds']}",
        "tcbench": f".venv/bin/python -m synguard_lab.tcbench --repeat {b['repeat']} --rounds {b['rounds']}",
        "kernel_bench": (f".venv/bin/python -m synguard_lab.kernel_bench --listeners {k['n_listeners']} "
                         f"--half-open {k['half_open']} --repeat {k['repeat']} --no-pyroute2"),
        "floodbench": (".venv/bin/python -m synguard_lab.floodbench --short" if short
                       else f".venv/bin/python -m synguard_lab.floodbench --seconds {FLOOD[short]['seconds']:g}"),
        "daemonmem": (f".venv/bin/python -m synguard_lab.daemonmem --runs {DAEMONMEM[short]['runs']} "
                      f"--settle {DAEMONMEM[short]['settle']:g}"),
        "all": "make bench" + (" ARGS=--short" if short else "") + "   # = .venv/bin/python -m synguard_lab.benchreport"
               + (" --short" if short else ""),
    }


def _git() -> str:
    try:
        rev = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (rev or "unknown") + (" (with uncommitted changes)" if dirty else "")


def machine_md() -> str:
    from synguard_lab.floodbench import machine

    m = machine()
    load = ["?"]
    with contextlib.suppress(OSError):
        load = Path("/proc/loadavg").read_text().split()[:3]
    return (f"- kernel {m['kernel']}, {m['cpus']} CPUs ({m['cpu_model'] or 'unknown model'}), "
            f"{m['memory']} RAM, Python {m['python']}\n"
            f"- synguard commit {_git()}\n"
            f"- load average at start {' '.join(load)} (the host may run other jobs; see \"foreign\" below)\n")


# ---- sections ------------------------------------------------------------------------------


def bench_md(short: bool) -> str:
    from synguard_lab import bench

    p = BENCH[short]
    buf = io.StringIO()
    rows = bench.run(repeat=p["repeat"], rounds=p["rounds"], out=buf)
    floor = rows[0]["ns"]
    lines = [f"BPF_PROG_TEST_RUN, repeat={p['repeat']}, median (and minimum) of {p['rounds']} rounds; "
             f"floor = empty XDP program, {floor:.1f} ns/packet in this run (minimum {rows[0]['min_ns']:.1f}).",
             "", "| path | verdict | ns/packet | × empty program | target | minimum ns | × minimum |",
             "|---|---|---:|---:|---|---:|---:|"]
    for r in rows[1:]:
        target = ""
        if r.get("target"):
            target = f"≤ {r['target']} " + ("✔" if r["ratio"] <= r["target"] else "✘")
        lines.append(f"| {r['path']} | {r['verdict']} | {r['ns']:.1f} | {r['ratio']:.2f} | {target} "
                     f"| {r['min_ns']:.0f} | {r['min_ratio']:.2f} |")
    lines.append("")
    lines.append("Rewriting paths (challenge, cross-check) run behind a harness that restores the frame "
                 "and tail-calls the program; the harness's own cost, measured the same way with an empty "
                 f"program, is subtracted. Spread of the empty program over the rounds in this run: "
                 f"{rows[0].get('spread_ns', float('nan')):.1f} ns (max - min of the round medians): compare ratios. "
                 "The minimum is the program's own cost on a quiet CPU, the median what a busy shared one sees; "
                 "targets are judged on the median.")
    return "\n".join(lines) + "\n"


# tc paths with a target: ns added over the empty tc program on a protected port (≤ 60),
# ratio on an unprotected one (≤ 1.5).
TC_ADDED_TARGET, TC_RATIO_TARGET = 60.0, 1.5


def tcbench_md(short: bool) -> str:
    from synguard_lab import tcbench

    p = BENCH[short]
    rows = tcbench.run(repeat=p["repeat"], rounds=p["rounds"], out=io.StringIO())
    lines = [f"BPF_PROG_TEST_RUN, repeat={p['repeat']}, median and minimum of {p['rounds']} rounds, rounds "
             "interleaved with an empty tc program (the floor). The kfunc returns -EINVAL under "
             "BPF_PROG_TEST_RUN (not tc ingress), so the valid-cookie rows stop at its entry.", "",
             "| path | median ns | added | × empty | minimum ns | added | target |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        target = ""
        if r["path"].startswith("established data segment, protected port, v"):
            target = f"≤ {TC_ADDED_TARGET:.0f} ns added " + _tick(r["added_ns"] <= TC_ADDED_TARGET)
        elif r["path"].startswith("established ACK, unprotected port"):
            target = f"≤ {TC_RATIO_TARGET} × " + _tick(r["ratio"] <= TC_RATIO_TARGET)
        lines.append(f"| {r['path']} | {r['ns']:.1f} | {r['added_ns']:.1f} | {r['ratio']:.2f} | {r['min_ns']:.0f} "
                     f"| {r['min_added_ns']:.0f} | {target} |")
    return "\n".join(lines) + "\n"


def _tick(ok: bool) -> str:
    return "✔" if ok else "✘"


def kernel_bench_md(short: bool) -> str:
    from synguard_lab import kernel_bench

    p = KBENCH[short]
    r = kernel_bench.run(p["n_listeners"], p["half_open"], p["repeat"], use_pyroute2=False)
    ms = lambda s: f"{s * 1000:.1f} ms"   # noqa: E731
    rows = [
        ("listeners found (created)", f"{r['listeners_found']:,} ({r['listeners_created']:,})"),
        ("half-open counted by sock_diag (ss -Htn state syn-recv)",
         f"{r['half_open_counted']:,} ({r['half_open_ss']:,}); target {r['half_open_target']:,}"),
        (f"`kernel.listeners()`, median of {p['repeat']} (min–max)",
         f"{ms(r['collect_seconds_median'])} ({ms(r['collect_seconds_min'])}–{ms(r['collect_seconds_max'])})"),
        ("`kernel.listeners(port)` (kernel-side filter)",
         f"{ms(r['collect_one_port_seconds'])} ({r['one_port_syn_recv']:,} half-open on that port)"),
        ("`ss -ltn` + `ss -tn state syn-recv`, median (for comparison)",
         f"{ms(r['ss_total_seconds_median'])} ({ms(r['ss_ltn_seconds_median'])} + "
         f"{ms(r['ss_synrecv_seconds_median'])})"),
        ("whole `/metrics` scrape (maps + listeners), median",
         f"{ms(r['scrape_seconds_median'])} ({r['scrape_bytes']:,} bytes)"),
        ("fill (bounded spoofed floods, syncookies off in the lab)",
         f"{r['syns_sent']:,} SYNs in {r['fill_seconds']} s"),
    ]
    lines = ["| measurement | value |", "|---|---:|"] + [f"| {a} | {b} |" for a, b in rows]
    return "\n".join(lines) + "\n"


def floodbench_md(short: bool) -> str:
    from synguard_lab import floodbench

    res = floodbench.run(seconds=FLOOD[short]["seconds"], short=short, out=None, log=sys.stderr)
    return (floodbench.markdown(res) +
            f"\nFlood runs took {res['seconds_total']:.0f} s (labs built and torn down per run).\n")


DATA_PATH_SOURCES = tuple(f"ebpf/{name}" for name in (*XDP_SOURCES, TC_SOURCE))


def sources_digest(root: Path = REPO_ROOT) -> str:
    """sha256 (12 hex) of the data path's C as it is now: what a report's figures describe."""
    import hashlib

    h = hashlib.sha256()
    for name in DATA_PATH_SOURCES:
        path = root / name
        h.update(name.encode() + b"\0" + (path.read_bytes() if path.exists() else b"") + b"\0")
    return h.hexdigest()[:12]


def stale_note(report: Path, root: Path = REPO_ROOT) -> str | None:
    """Why report does not describe this code (one line), or None when it does."""
    try:
        text = report.read_text()
    except OSError:
        return f"{report.name}: missing"
    import re

    m = re.search(r"data path sources sha256 ([0-9a-f]{12})", text)
    now = sources_digest(root)
    if m is None:
        return f"{report.name} does not say which data-path sources it measured: its figures may be stale"
    if m.group(1) != now:
        return (f"{report.name} was made from other data-path sources ({m.group(1)}; now {now}): "
                f"its figures do not describe this code; run make bench")
    return None
def daemonmem_md(short: bool) -> str:
    from synguard_lab import daemonmem

    p = DAEMONMEM[short]
    r = daemonmem.run(runs=p["runs"], settle=p["settle"], out=None)
    ok = "✔" if r["rss_mib_median"] <= r["target_mib"] else "✘"
    each = lambda xs, f: ", ".join(f.format(x) for x in xs)  # noqa: E731
    rows = [
        (f"daemon idle RSS ({p['settle']:g} s after ready), median of {r['runs']}",
         f"{r['rss_mib_median']:.1f} MiB ({each(r['rss_mib'], '{:.1f}')})", f"≤ {r['target_mib']} MiB {ok}"),
        ("daemon start-up (spawn → protecting on both interfaces), median",
         f"{r['startup_s_median']:.1f} s ({each(r['startup_s'], '{:.1f}')})", ""),
    ]
    lines = ["| measurement | value | target |", "|---|---:|---|"] + [f"| {a} | {b} | {c} |" for a, b, c in rows]
    lines += ["", "Largest resident mappings of the last run (/proc/PID/smaps): "
              + ", ".join(f"{name} {mib:.1f} MiB" for name, mib in r["top_mib"][:6]) + ".", "",
              "BCC compiles and loads the XDP program in a short-lived child (synguard/datapath/loader.py); "
              "the daemon keeps only the program and map fds, so BCC's compiler (libLLVM, libclang-cpp, "
              "its heap) is never mapped in the long-running process."]
    return "\n".join(lines) + "\n"


SECTIONS = [
    ("bench", "XDP cost per path", bench_md),
    ("tcbench", "tc cost per path (the ACK side)", tcbench_md),
    ("kernel_bench", "Control plane: listener collection and /metrics scrape under a backlog", kernel_bench_md),
    ("floodbench", "Under a spoofed SYN flood: kernel SYN cookies vs. synguard", floodbench_md),
    ("daemonmem", "Daemon footprint: idle RSS and start-up", daemonmem_md),
]


def run(short: bool = False, out_path: Path | None = None, stream=sys.stdout) -> tuple[str, bool]:
    """Run every section; write and print the markdown. Returns (text, all sections ok)."""
    t0 = time.monotonic()
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    cmds = commands(short)
    head = machine_md()
    parts, ok = [], True
    for key, title, fn in SECTIONS:
        print(f"benchreport: {key} ...", file=sys.stderr, flush=True)
        s0 = time.monotonic()
        try:
            body = fn(short)
        except Exception as e:   # report it, run the rest
            ok = False
            body = f"**FAILED**: `{type(e).__name__}: {e}`\n\n```\n{traceback.format_exc()}```\n"
        took = time.monotonic() - s0
        parts.append(f"## {title}\n\nReproduce: `{cmds[key]}` ({took:.0f} s here)\n\n{body}")
    total = time.monotonic() - t0
    text = (f"# synguard benchmarks{' (short)' if short else ''}\n\n"
            f"{started}, {total:.0f} s in total. Reproduce everything: `{cmds['all']}` (root).\n"
            f"Made from data path sources sha256 {sources_digest()} ({', '.join(DATA_PATH_SOURCES)}).\n\n"
            f"{head}\n" + "\n".join(parts))
    if out_path is not None:
        out_path.write_text(text)
    if stream is not None:
        print(text, file=stream, flush=True)
    return text, ok


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m synguard_lab.benchreport", description=__doc__.splitlines()[0])
    p.add_argument("--short", action="store_true", help="smaller runs (a quick check, not figures to quote)")
    p.add_argument("--out", default=str(REPO_ROOT / "BENCH.md"), help="markdown file to write (default BENCH.md)")
    p.add_argument("--check", action="store_true", help="only say whether the report describes this code's C")
    a = p.parse_args(argv)
    if os.geteuid() != 0:
        print("benchreport: needs root (BPF, XDP, network namespaces)", file=sys.stderr)
        return 1
    out = Path(a.out)
    if a.check:
        note = stale_note(out)
        print(f"benchreport: {note or f'{out.name} describes this code'}", file=sys.stderr)
        return 1 if note else 0
    note = stale_note(out)
    if note:
        print(f"benchreport: {note} (regenerating it now)", file=sys.stderr)
    _, ok = run(short=a.short, out_path=out)
    print(f"benchreport: wrote {out}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
