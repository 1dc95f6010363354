"""`make bench`'s XDP figures are sane, not only printed: the harness subtraction agrees
with a direct measurement, nothing costs less than the empty program, the verdicts the
figures belong to were checked, and the report states what was measured in this run."""

from __future__ import annotations

import io
import re

import pytest


@pytest.fixture(scope="module")
def rows():
    from synguard_lab import bench

    out = io.StringIO()
    r = bench.run(repeat=100_000, rounds=7, out=out)
    print(out.getvalue())
    return {row["path"]: row for row in r}


def test_harness_cross_check_agrees_with_the_direct_row(rows):
    """The same ACK measured directly and through the rewrite harness (its own cost
    subtracted): if the subtraction were wrong, every SYN-ACK figure would be too. The
    harness itself costs 60-80 ns here, so a wrong subtraction is off by that much; the
    bound leaves room for a shared box's noise (the rounds' spread is printed)."""
    direct = rows["pass: established ACK+data"]["ns"]
    via = rows["cross-check: ACK via harness"]["ns"]
    assert abs(via - direct) <= max(25.0, 0.4 * direct), (via, direct, rows["floor"])


def test_no_path_is_cheaper_than_the_empty_program(rows):
    floor = rows["floor"]["ns"]
    assert 0 < floor < 1000
    for name, r in rows.items():
        assert r["ns"] >= 0.8 * floor, (name, r["ns"], floor)
    # a SYN-ACK does strictly more work than letting an ACK pass
    assert rows["SYN-ACK: IPv4, Linux options"]["ns"] > rows["pass: established ACK+data"]["ns"]
    assert rows["SYN-ACK: IPv6, Linux options"]["ns"] > rows["pass: established ACK+data"]["ns"]


def test_report_prints_this_runs_spread_not_a_constant():
    from synguard_lab import benchreport

    text = benchreport.bench_md(short=True)
    m = re.search(r"rounds in this run: ([0-9.]+) ns", text)
    assert m and "±10 ns" not in text, text


def test_stale_report_is_named(tmp_path):
    from synguard_lab import benchreport

    report = tmp_path / "BENCH.md"
    report.write_text(f"x\nMade from data path sources sha256 {benchreport.sources_digest()} (...)\n")
    assert benchreport.stale_note(report) is None
    report.write_text("x\nMade from data path sources sha256 000000000000 (...)\n")
    assert "other data-path sources" in benchreport.stale_note(report)
    report.write_text("an old report\n")
    assert "does not say" in benchreport.stale_note(report)
