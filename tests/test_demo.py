"""`make demo`, short: the demo runs in its own netns lab with the real daemon, and
what it prints is checked against the daemon's own per-tick counters log (kept
with --keep-log), recomputed here independently of synguard_lab.demo.judge.

- auto mode: the defense must hold, and every figure of the report (per-tick
  rates, SYNs that reached the kernel before and after protection, who engaged
  it, cookies validated) must be what the counters say;
- observe mode (negative control): the same flood reaches the kernel; the
  verdict must say DEFENSE FAILED because protection never engaged;
- judge() on made-up counters: each way the defense can fail is reported.
"""

from __future__ import annotations

import io
import json
import os
import re
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from helpers import hard_timeout, needs_lab, needs_tc  # noqa: E402

from synguard_lab import demo  # noqa: E402

SHORT = dict(flood=400_000, seconds=2.0, connects=10, quiet=1.0)


@hard_timeout(240)
def _run(tmp_path, mode: str) -> dict:
    out = io.StringIO()
    log = tmp_path / f"daemon-{mode}.log"
    js = tmp_path / f"demo-{mode}.json"
    rc = demo.run(**SHORT, mode=mode, out=out, keep_log=str(log), json_out=str(js))
    events = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    return {"rc": rc, "text": out.getvalue(), "events": events, "res": json.loads(js.read_text())}


@pytest.fixture(scope="module")
def auto_run(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("demo-auto"), "auto")


@pytest.fixture(scope="module")
def observe_run(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("demo-observe"), "observe")


def num(s: str) -> int:
    return int(s.replace(",", ""))


def line(text: str, label: str) -> str:
    found = [ln for ln in text.splitlines() if ln.strip().startswith(label)]
    assert found, f"no '{label}' line in:\n{text}"
    return found[0]


def counters_log(events: list[dict], started_at: float) -> dict:
    """From the daemon's log alone: the baseline tick (last read before the flood's
    first SYN), the tick that first shows cookies, and the per-tick rates."""
    ticks = [(e["read_at"], e["counters"]) for e in events if e.get("event") == "counters"]
    assert ticks == sorted(ticks, key=lambda t: t[0])
    base = max(i for i, (t, _) in enumerate(ticks) if t <= started_at)
    rows = []
    for (ta, a), (tb, b) in zip(ticks[base:], ticks[base + 1:]):
        rows.append((round(tb - started_at, 2),
                     *(round((b[k] - a[k]) / (tb - ta)) for k in ("syn_received", "challenge_sent", "syn_passed"))))
    first = next((i for i in range(base + 1, len(ticks))
                  if ticks[i][1]["challenge_sent"] > ticks[i - 1][1]["challenge_sent"]), None)
    return {"ticks": ticks, "base": base, "first_cookies": first, "rows": rows}


def printed_rows(text: str) -> list[tuple]:
    rows = []
    for ln in text.splitlines():
        m = re.fullmatch(r"\s+([+-]\d+\.\d\d)\s+([\d,]+)\s+([\d,]+)\s+([\d,]+)", ln)
        if m:
            rows.append((float(m.group(1)), *(num(g) for g in m.groups()[1:])))
    return rows


def check_rows(text: str, log: dict) -> None:
    got = printed_rows(text)
    assert len(got) == len(log["rows"]) >= 3, (got, log["rows"])
    for p, c in zip(got, log["rows"]):
        assert p[0] == pytest.approx(c[0], abs=0.011)
        for a, b in zip(p[1:], c[1:]):
            assert a == pytest.approx(b, abs=1), (p, c)


@needs_lab
@needs_tc
@pytest.mark.netns
def test_demo_holds_and_its_report_is_what_the_counters_say(auto_run):
    text, res, ev = auto_run["text"], auto_run["res"], auto_run["events"]
    log = counters_log(ev, res["flood"]["started_at"])
    ticks, base, e = log["ticks"], log["base"], log["first_cookies"]
    assert e is not None, text
    c0, ce, last = ticks[base][1], ticks[e][1], ticks[-1][1]
    assert ticks[-1][0] > res["flood"]["ended_at"]  # the log goes past the flood's last SYN

    check_rows(text, log)
    peak = max(r[1] for r in log["rows"])
    assert num(re.search(r"peak tick ([\d,]+) SYN/s", line(text, "flood ")).group(1)) == pytest.approx(peak, abs=1)
    assert num(re.search(r"XDP saw ([\d,]+) SYNs", line(text, "flood ")).group(1)) == \
        last["syn_received"] - c0["syn_received"]

    prot = line(text, "protection")
    before = ce["syn_passed"] - c0["syn_passed"]
    assert num(re.search(r"; ([\d,]+) SYNs reached the kernel before", prot).group(1)) == before
    by = "fast trigger" if ce["fast_trigger"] > c0["fast_trigger"] else "detector"
    assert f"by the {by} " in prot
    proves = float(re.search(r"counters prove ≤ ([\d.]+) s", prot).group(1))
    assert proves == pytest.approx(ticks[e][0] - res["flood"]["started_at"], abs=0.051)
    engaged = float(re.search(r"on ≈ ([\d.]+) s after", prot).group(1))
    assert 0 <= engaged <= proves + 0.01

    once = line(text, "once on")
    after = last["syn_passed"] - ce["syn_passed"]
    assert num(re.search(r"([\d,]+) SYNs passed to the kernel", once).group(1)) == after
    kernel_after = num(re.search(r"kernel syncookies \+([\d,]+)", once).group(1))

    legit = line(text, "legit client")
    ok, tried = map(int, re.search(r"(\d+)/(\d+) connected", legit).groups())
    retrans = int(re.search(r"SYN retransmissions (\d+)", legit).group(1))
    protected = int(re.search(r"; (\d+) while protection was on", legit).group(1))
    validated = num(re.search(r"cookies validated \+([\d,]+)", legit).group(1))
    assert validated == last["cookie_validated"] - ce["cookie_validated"]
    assert protected <= validated <= protected + 1  # each connect made under protection: one valid cookie ACK

    starts = [x for x in ev if x.get("event") == "attack_start"]
    kinds = [x["attack"]["kind"] for x in ev if x.get("event", "").startswith("attack_")
             and starts and x["attack"]["id"] == starts[0]["attack"]["id"]]
    spoofed = bool(starts) and set(kinds) == {"spoofed"}
    held = (after == 0 and kernel_after == 0 and ok == tried == SHORT["connects"] and retrans == 0
            and engaged <= demo.ENGAGE_WITHIN_S and spoofed)
    verdict = line(text, "verdict")
    assert ("DEFENSE HELD" in verdict) == held and (auto_run["rc"] == 0) == held, text
    # The product claim, on this machine: it held, and the flood was answered.
    assert held, text
    assert before > 0  # the flood did reach the kernel before protection: the check above can fail
    assert last["challenge_sent"] - ce["challenge_sent"] >= 0.9 * (last["syn_received"] - ce["syn_received"])


@needs_lab
@needs_tc
@pytest.mark.netns
def test_demo_in_observe_mode_says_the_flood_reached_the_kernel(observe_run):
    text, res, ev = observe_run["text"], observe_run["res"], observe_run["events"]
    log = counters_log(ev, res["flood"]["started_at"])
    ticks, base = log["ticks"], log["base"]
    c0, last = ticks[base][1], ticks[-1][1]
    assert log["first_cookies"] is None and last["challenge_sent"] == c0["challenge_sent"]
    assert last["syn_passed"] - c0["syn_passed"] == last["syn_received"] - c0["syn_received"] > 10_000
    check_rows(text, log)
    assert "NEVER ENGAGED" in line(text, "protection")
    verdict = line(text, "verdict")
    assert "DEFENSE FAILED" in verdict and "protection never engaged" in verdict
    assert observe_run["rc"] == 1


# -- judge() on made-up counters --------------------------------------------------------

def _ticks(rows):
    """rows: (t, syn_received, challenge_sent, syn_passed, fast_trigger) cumulative."""
    return [(t, {"syn_received": r, "challenge_sent": c, "syn_passed": p, "fast_trigger": f,
                 "cookie_validated": 0}) for t, r, c, p, f in rows]


FLOOD = {"sent": 300_000, "seconds": 3.0, "pps": 100_000.0, "started_at": 100.5, "ended_at": 103.5}
LEGIT = [{"at": 100.6 + i * 0.3, "s": 0.0004} for i in range(10)]
ATTACK = [{"ts": 101.0, "attack": {"kind": "spoofed", "ports": [8080]}}]
GOOD = [(100.0, 0, 0, 0, 0), (101.0, 50_000, 0, 50_000, 0), (102.0, 150_000, 99_000, 51_000, 0),
        (103.0, 250_000, 199_000, 51_000, 0), (104.0, 300_000, 249_000, 51_000, 0)]
POLLS = [(99.0, 0), (101.5, 900), (102.5, 900), (104.5, 900)]


def test_judge_holds_on_good_counters():
    r = demo.judge(_ticks(GOOD), FLOOD, LEGIT, 10, POLLS, 0, ATTACK)
    assert r["held"], r["failures"]
    p = r["protection"]
    assert p["passed_before"] == 51_000 and p["passed_after"] == 0 and p["by"] == "detector"
    assert p["engaged_s"] == pytest.approx(0.51, abs=0.01)  # 1,000 of the tick's 100,000 SYNs passed
    assert r["flood"]["tick_peak_pps"] == 100_000


@pytest.mark.parametrize("change, why", [
    (lambda t, l, p, rt, a: (t[:3] + [(103.0, 250_000, 190_000, 60_000, 0), (104.0, 300_000, 240_000, 60_000, 0)],
                             l, p, rt, a), "9000 SYNs reached the kernel after protection was on"),
    (lambda t, l, p, rt, a: (t, l, p[:3] + [(104.5, 950)], rt, a), "the kernel sent 50 syncookies"),
    (lambda t, l, p, rt, a: (t, l[:9] + [{"at": 103.3, "s": None}], p, rt, a), "legit clients: 9/10 connected"),
    (lambda t, l, p, rt, a: (t, l, p, 1, a), "1 SYN retransmission"),
    (lambda t, l, p, rt, a: (t, l, p, rt, []), "did not report the attack"),
    (lambda t, l, p, rt, a: (t, l, p, rt, [{"ts": 101.0, "attack": {"kind": "botnet", "ports": []}}]),
     "classified botnet"),
    (lambda t, l, p, rt, a: (t, l, p, rt, [{"event": "attack_start", "ts": 101.0,
                                            "attack": {"id": 1, "kind": "spoofed", "ports": [8080]}},
                                           {"event": "attack_update", "ts": 103.0,
                                            "attack": {"id": 1, "kind": "botnet", "ports": [8080]}}]),
     "classified spoofed -> botnet"),
    (lambda t, l, p, rt, a: ([(x[0], x[1], 0, x[1], 0) for x in t], l, p, rt, a), "protection never engaged"),
    (lambda t, l, p, rt, a: (t[:2] + [(102.0, 150_000, 0, 150_000, 0), (103.0, 250_000, 25_000, 225_000, 0),
                                      (104.0, 300_000, 75_000, 225_000, 0)], l, p, rt, a),
     "protection engaged only"),
])
def test_judge_reports_each_failure(change, why):
    t, lg, polls, rt, a = change(GOOD, LEGIT, POLLS, 0, ATTACK)
    r = demo.judge(_ticks(t), FLOOD, lg, 10, polls, rt, a)
    assert not r["held"]
    assert any(why in f for f in r["failures"]), r["failures"]


@needs_lab
@needs_tc
@pytest.mark.netns
@hard_timeout(300)
def test_demo_flood_stays_spoofed_and_the_live_line_agrees_with_the_report(tmp_path):
    """Issue 19 item 5: a 6-s demo flood from the sender's default pool (262,144 frames: its
    sources repeat after about a second). On 2c83b26 the live line showed "ATTACK spoofed",
    then "ATTACK botnet" (the alarm tick's sources were learnt as normal, then seen again)."""
    out = io.StringIO()
    rc = demo.run(flood=1_200_000, seconds=6.0, connects=10, quiet=1.0, mode="auto", out=out,
                  json_out=str(tmp_path / "demo.json"))
    text = out.getvalue()
    res = json.loads((tmp_path / "demo.json").read_text())
    live = set(re.findall(r"ATTACK (\S+)", text))
    assert res["attack"] is not None and res["attack"]["kinds"] == ["spoofed"], text
    assert live == {"spoofed"}, text
    assert "reported a spoofed attack" in line(text, "detector") and rc == 0, text
