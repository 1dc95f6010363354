"""floodbench, short: the same 2 s spoofed flood against the kernel alone and
against a real `synguard run`. Only what must hold on any machine is asserted
(no rates, no timings): synguard keeps every legit connect, lets no spoofed SYN
reach the kernel, and answers what its program saw; the kernel run really sent
its own SYN cookies (so the comparison compares something)."""

from __future__ import annotations

import io
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from helpers import hard_timeout, needs_lab, needs_tc  # noqa: E402

pytestmark = [pytest.mark.netns, needs_lab]


@hard_timeout(300)
def _short_run() -> dict:
    from synguard_lab import floodbench

    out = io.StringIO()
    res = floodbench.run(seconds=2, short=True, out=out, log=None)
    res["_markdown"] = out.getvalue()
    return res


@pytest.fixture(scope="module")
def result():
    return _short_run()


@needs_tc
def test_synguard_keeps_every_legit_connect(result):
    legit = result["synguard"]["legit"]
    assert legit["tried"] > 0
    assert legit["ok"] == legit["tried"], legit


def test_no_spoofed_syn_reaches_the_kernel_behind_synguard(result):
    s = result["synguard"]
    assert s["xdp"]["s1_syn_received"] > 0
    assert s["reached_kernel"] == 0, (s["xdp"], s["passive_opens"], s["syncookies_sent"])
    assert s["syncookies_sent"] == 0
    assert s["half_open_peak"] == 0


def test_synguard_answers_what_its_program_saw(result):
    s = result["synguard"]
    assert s["answered"] >= 0.95 * s["xdp"]["s1_syn_received"], (s["answered"], s["xdp"])
    assert s["xdp"]["s1_challenge_sent"] >= 0.95 * s["xdp"]["s1_syn_received"]


def test_the_kernel_run_answered_with_its_own_syncookies(result):
    k = result["kernel"]
    assert k["sent"] > 0
    assert k["syncookies_sent"] > 0
    assert k["reached_kernel"] > 0


def test_same_flood_both_runs_and_a_table(result):
    k, s = result["kernel"], result["synguard"]
    for key in ("senders", "flood_seconds_bound", "flood_count_bound"):
        assert k[key] == s[key]
    assert k["sent"] <= k["flood_count_bound"] and s["sent"] <= s["flood_count_bound"]
    assert s["daemon_exit"] == 0
    md = result["_markdown"]
    assert "| answered" in md and "A: kernel alone" in md and "B: synguard" in md


def test_labs_and_programs_are_gone(result):
    names = os.listdir("/run/netns") if os.path.isdir("/run/netns") else []
    assert not [n for n in names if n.startswith(f"fbench-{os.getpid()}-")]
