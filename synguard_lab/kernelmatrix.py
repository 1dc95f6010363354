"""The kernel matrix (`make test-kernels`, scripts/kernels.sh): what tests/test_kernel_matrix.py
measured on each kernel, and the README's "Supported kernels" table it is checked against.

- ``supported_kernels(readme)``: the rows of that table (kernel, shipped by, method,
  options a client keeps, tested by);
- ``row_for(rows, kver)``: the row of a kernel release ("host" or a release no row
  names: the row of the running kernel, ``host``);
- ``options_bits(cell)``: a row's "options a client keeps" as tcpi_options bits;
- ``python -m synguard_lab.kernelmatrix DIR``: the table of DIR's per-kernel JSON files
  (written by the tests, one per kernel) printed after the matrix ran.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
TABLE_HEADING = "### Supported kernels"
COLUMNS = ("kernel", "shipped by", "method", "options a client keeps", "tested by")
# tcpi_options bits (linux/tcp.h) by the names the README uses; MSS is always kept.
OPTION_BITS = {"timestamps": 1, "SACK": 2, "window scaling": 4}


def supported_kernels(readme: str | None = None) -> list[dict[str, str]]:
    """The rows of the README's "Supported kernels" table, cells stripped of backticks."""
    text = README.read_text() if readme is None else readme
    if TABLE_HEADING not in text:
        raise LookupError(f"README has no {TABLE_HEADING!r} section")
    section = text.split(TABLE_HEADING, 1)[1]
    rows = [line for line in section.splitlines()[1:] if line.startswith("|")]
    out = []
    for line in rows:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if [c.lower() for c in cells] == list(COLUMNS) or set("".join(cells)) <= set("-: "):
            continue
        if len(cells) != len(COLUMNS):
            raise ValueError(f"Supported kernels: a row of {len(cells)} cells, not {len(COLUMNS)}: {line}")
        out.append({k: v for k, v in zip(COLUMNS, cells)})
    if not out:
        raise LookupError("README's Supported kernels table has no rows")
    return out


def kernel_of(row: dict[str, str]) -> str:
    """The kernel release a row names: its first `code` word ("host" for the running kernel)."""
    m = re.match(r"`([^`]+)`", row["kernel"])
    if not m:
        raise ValueError(f"Supported kernels: {row['kernel']!r} does not start with a `release`")
    return m.group(1)


def row_for(rows: list[dict[str, str]], kver: str) -> dict[str, str]:
    by = {kernel_of(r): r for r in rows}
    return by.get(kver) or by["host"]


def method_of(row: dict[str, str]) -> str:
    return row["method"].strip("`").split("`")[0].strip()


def options_bits(cell: str) -> int:
    """tcpi_options bits of an "options a client keeps" cell ("MSS, timestamps, SACK")."""
    words = [w.strip() for w in re.split(r",|\band\b", cell.split("(")[0]) if w.strip()]
    bits = 0
    for w in words:
        if w == "MSS":
            continue
        if w not in OPTION_BITS:
            raise ValueError(f"unknown option {w!r} in {cell!r} (known: MSS, {', '.join(OPTION_BITS)})")
        bits |= OPTION_BITS[w]
    return bits


def _fmt_opts(bits) -> str:
    if bits is None:
        return "-"
    names = ["MSS"] + [n for n, b in OPTION_BITS.items() if bits & b]
    return "+".join("TS" if n == "timestamps" else "WS" if n == "window scaling" else n for n in names)


def report(out_dir: Path, say=print) -> int:
    """Print the matrix's table from out_dir; returns how many kernels have no results."""
    runs = {json.loads(p.read_text())["kernel"]: json.loads(p.read_text()) for p in sorted(out_dir.glob("run-*.json"))}
    res = {}
    for p in sorted(out_dir.glob("kernel-*.json")):
        d = json.loads(p.read_text())
        res[d["kver"]] = d
    missing = 0
    say("")
    say("kernel matrix (tests/test_kernel_matrix.py; timings inside TCG guests mean little, verdicts and counters do)")
    say(f"{'kernel':<22} {'exit':>4} {'wall':>6} {'start':>6}  {'method':<14} {'verified insns (XDP main / tail / tc)':<40}"
        f" {'flood: sent answered to-kernel synq':<38} clients (ms max, options)")
    for kver in runs or res:
        r, d = runs.get(kver, {}), res.get(kver)
        if d is None:
            missing += 1
            say(f"{kver:<22} {r.get('exit', '?'):>4} {r.get('wall_s', 0):>5}s  no results (the tests did not get as far)")
            continue
        name = f"{kver} ({d.get('release', '')})" if kver == "host" else kver
        progs = d.get("programs") or {}
        insns = " / ".join(str(progs[k].get("verified_insns")) for k in sorted(progs)) if progs else "-"
        fl = d.get("flood") or {}
        flood = (f"{fl['sent']} {fl['challenge_sent']} {fl['syn_passed']} {fl['syn_recv_max']}" if fl else "-")
        cl = d.get("clients") or {}
        worst = max((c["ms_max"] for c in cl.values() if c.get("ms_max") is not None), default=None)
        opts = sorted({_fmt_opts(c.get("options")) for k, c in cl.items() if not k.startswith("natbare")})
        clients = "-" if not cl else (f"{sum(c['ok'] for c in cl.values())}/{sum(c['tried'] for c in cl.values())} ok, "
                                      f"max {worst if worst is None else round(worst, 1)} ms, {','.join(opts)}")
        start = d.get("start_s")
        say(f"{name:<22} {r.get('exit', '?'):>4} {r.get('wall_s', 0):>5}s {start if start is not None else '-':>6}  "
            f"{d.get('method') or '-':<14} {insns:<40} {flood:<38} {clients}")
        for k in sorted(progs):
            say(f"{'':<22}   program {k}: id {progs[k].get('id')}, verified_insns {progs[k].get('verified_insns')}, "
                f"xlated {progs[k].get('bytes_xlated')} B")
        for t, v in sorted((d.get("tests") or {}).items()):
            say(f"{'':<22}   {t}: {v}")
    return missing


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m synguard_lab.kernelmatrix RESULTS_DIR", file=sys.stderr)
        return 2
    return 1 if report(Path(argv[0])) else 0


if __name__ == "__main__":
    sys.exit(main())
