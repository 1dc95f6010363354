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


TS2 = "with `tcp_timestamps=2`:"


def options_bits(cell: str) -> int:
    """tcpi_options bits of an "options a client keeps" cell ("MSS, timestamps, SACK"),
    at default sysctls: the part before any "; with `tcp_timestamps=2`: ..."."""
    return _bits(cell.split(";")[0])


def options_bits_ts2(cell: str) -> int:
    """The same with net.ipv4.tcp_timestamps=2, for a client that sends timestamps (the
    cell's "; with `tcp_timestamps=2`: ..." part; the default part if it has none)."""
    return _bits(cell.split(TS2, 1)[1]) if TS2 in cell else options_bits(cell)


def _bits(text: str) -> int:
    words = [w.strip() for w in re.split(r",|\band\b", text.split("(")[0]) if w.strip()]
    bits = 0
    for w in words:
        if w == "MSS":
            continue
        if w not in OPTION_BITS:
            raise ValueError(f"unknown option {w!r} in {text!r} (known: MSS, {', '.join(OPTION_BITS)})")
        bits |= OPTION_BITS[w]
    return bits


def _fmt_opts(bits) -> str:
    if bits is None:
        return "-"
    names = ["MSS"] + [n for n, b in OPTION_BITS.items() if bits & b]
    return "+".join("TS" if n == "timestamps" else "WS" if n == "window scaling" else n for n in names)


TESTS = ("programs", "flood", "clients", "clients_ts2", "forged_acks_v4", "forged_acks_v6", "sigkill")
PROGRAM_COLUMNS = ("xdp_synguard", "xdp_synguard_optscan", "xdp_synguard_kcookie", "xdp_synguard_oos", "tc:tc_synguard")


def report(out_dir: Path, say=print) -> int:
    """Print the matrix's table from out_dir; returns how many kernels have no results."""
    runs = [json.loads(p.read_text()) for p in sorted(out_dir.glob("run-*.json"))]
    runs.sort(key=lambda r: r.get("order", 0))
    res = {d["kver"]: d for d in (json.loads(p.read_text()) for p in out_dir.glob("kernel-*.json"))}
    missing = 0
    say("")
    say("kernel matrix (tests/test_kernel_matrix.py; timings in TCG guests mean little, verdicts and counters do)")
    say(f"{'kernel':<32} {'exit':>4} {'wall s':>6} {'start s':>7}  {'method':<13} "
        f"{'verified insns: main optscan kcookie oos tc':<50} {'flood: sent XDP-answered to-kernel SYN_RECV':<44}"
        f" first contacts")
    for r in runs:
        kver = r["kernel"]
        d = res.get(kver)
        if d is None:
            missing += 1
            say(f"{kver:<32} {r.get('exit', '?'):>4} {r.get('wall_s', 0):>6}  no results (the tests did not get as far)")
            continue
        name = f"host ({d.get('release', '')})" if kver == "host" else kver
        progs = d.get("programs") or {}
        insns = " ".join(f"{progs[k]['verified_insns'] if k in progs else '-':>8}" for k in PROGRAM_COLUMNS)
        fl = d.get("flood") or {}
        flood = f"{fl['sent']:>7} {fl['challenge_sent']:>7} {fl['syn_passed']:>7} {fl['syn_recv_max']:>5}" if fl else "-"
        cl = d.get("clients") or {}
        worst = max((c["ms_max"] for c in cl.values() if c.get("ms_max") is not None), default=None)
        opts = sorted({_fmt_opts(c.get("options")) if isinstance(c.get("options"), int) else str(c.get("options"))
                       for k, c in cl.items() if not k.startswith("natbare")})
        clients = "-" if not cl else (f"{sum(c['ok'] for c in cl.values())}/{sum(c['tried'] for c in cl.values())} ok, "
                                      f"max {worst if worst is None else round(worst, 1)} ms, {' '.join(opts)}")
        start = d.get("start_s")
        say(f"{name:<32} {r.get('exit', '?'):>4} {r.get('wall_s', 0):>6} {start if start is not None else '-':>7}  "
            f"{d.get('method') or '-':<13} {insns:<50} {flood:<44} {clients}")
        tests = d.get("tests") or {}
        for t in TESTS:
            v = tests.get(t, "FAILED (or not run)")
            if isinstance(v, list):
                v = f"FAILED: {len(v)} problems: " + "; ".join(v[:3]) + (" ..." if len(v) > 3 else "")
            say(f"{'':<4}{t:<16} {v}")
        if d.get("start_error"):
            say(f"{'':<4}start error: {d['start_error'][-600:]}")
    return missing


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m synguard_lab.kernelmatrix RESULTS_DIR", file=sys.stderr)
        return 2
    return 1 if report(Path(argv[0])) else 0


if __name__ == "__main__":
    sys.exit(main())
