"""The detection evaluation suite (synguard/evaluate.py), short run, against its targets.

One short run (~4-5 min: 14 scenarios, each in a fresh lab with a real daemon in
auto mode) shared by every test here; the table is printed at the end of the run.
The issue-19 scenarios (client ports reused during a ramp, restart during a flood,
trickle then flood, random flood next to a busy port, a 4k-address pool, a single
source among real clients) each miss a target on 2c83b26.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from helpers import needs_lab, needs_tc  # noqa: E402


def evaluation(fn):
    """Needs the lab (root, namespaces, XDP): uses the shared short run."""
    return pytest.mark.netns(needs_lab(fn))


RUN_LIMIT_S = 480  # hard limit for the whole short run (it takes ~2.5-3.5 min)


@pytest.fixture(scope="module")
def results(request):
    from synguard_lab import evaluate

    def boom(signum, frame):
        raise TimeoutError(f"evaluation exceeded its hard timeout ({RUN_LIMIT_S} s)")

    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(RUN_LIMIT_S)
    try:
        rs = evaluate.run(short=True)  # every lab and daemon torn down inside, even on failure
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    capman = request.config.pluginmanager.getplugin("capturemanager")
    with capman.global_and_fixture_disabled() if capman else contextlib.nullcontext():
        print("\n" + evaluate.table(rs), flush=True)  # shown even without -s
    return {r["scenario"]: r for r in rs}


def scenario(results, prefix: str) -> dict:
    r = next((r for name, r in results.items() if name.startswith(prefix)), None)
    assert r is not None, f"no scenario {prefix!r} in {list(results)}"
    assert "error" not in r, r["error"]
    return r


def events(r) -> str:
    return "\n".join(f"  {e}" for e in r.get("attack_events", [])) or "  (no attack events)"


@evaluation
def test_every_scenario_ran(results):
    from synguard_lab.evaluate import SCENARIOS

    names = [sc.name for sc in SCENARIOS if sc.short_seconds is not None]
    assert [n for n in names if not any(r.startswith(n) for r in results)] == []
    assert {k: v["error"] for k, v in results.items() if "error" in v} == {}


@evaluation
def test_quiet_background_raises_no_attack(results):
    r = scenario(results, "quiet background")
    assert r["false_alarms"] == 0 and not r["detected"] and r["kind"] is None, events(r)


@evaluation
def test_spoofed_flood_detected_within_2s_as_spoofed(results):
    r = scenario(results, "spoofed random-source flood")
    assert r["detected"], events(r)
    # The 2-s target is a printed figure (the table above); on a shared 2-vCPU box the test
    # bounds what seconds cannot stretch: the detector alarmed within 2 of its 1-s ticks.
    assert r["detected_after_ticks"] <= 2, events(r)
    assert r["kinds_seen"] == ["spoofed"], events(r)
    assert r["ports"] == [8080]
    assert r["false_alarms"] == 0, events(r)
    st = r["status_mid"]  # while the flood ran: the port is protected, XDP answers with cookies
    assert st is not None, "no status was taken while the attack was on:\n" + events(r)
    assert (st["protecting"] and st["detection"]["protected_ports"] == [8080]
            and st["cookie_method"] == "kfunc" and st["counters"]["challenge_sent"] > 0
            and "TcpExt.SyncookiesSent" in st["kernel"]["counters"]), st


@evaluation
def test_single_source_flood_classified_and_denied(results):
    r = scenario(results, "single-source flood")
    assert r["detected"], events(r)
    assert r["kind"] == "single-source", events(r)
    assert r["kinds_seen"] == ["single-source"], "kind changed during the attack:\n" + events(r)
    assert r["flood_source"] in r["denied_sources"] and r["syn_dropped_deny"] > 0
    assert r["false_alarms"] == 0, events(r)


@evaluation
def test_few_hundred_source_flood_is_a_botnet(results):
    r = scenario(results, "300-source flood")
    assert r["detected"], events(r)
    assert r["kinds_seen"] == ["botnet"], events(r)
    assert r["false_alarms"] == 0, events(r)


@evaluation
def test_flash_crowd_is_never_an_attack(results):
    for name, r in results.items():
        if name.startswith("flash crowd"):
            assert "error" not in r, r["error"]
            assert r["false_alarms"] == 0 and not r["detected"] and r["kind"] is None, events(r)
            assert r["traffic"]["fail"] == 0, r["traffic"]  # every crowd connect completed
    r = scenario(results, "flash crowd")
    # the crowd cleared the volume floor (else a lowered-floor variant ran too, checked above)
    assert r["traffic"]["pps"] >= 3000 or any("floor_pps" in n for n in results), r["traffic"]


@evaluation
def test_slow_ramp_detected_before_it_ends_as_spoofed(results):
    r = scenario(results, "slow ramp")
    assert r["detected"] and r["detected_before_stop"], events(r)
    assert r["kinds_seen"] == ["spoofed"], events(r)
    assert r["false_alarms"] == 0, events(r)


@evaluation
def test_flood_running_before_the_daemon_starts_is_reported(results):
    """Issue 19 item 1: on 2c83b26 a 5,000 SYN/s flood already running at start was never
    reported (baseline at the floor, gate 6,000 SYN/s)."""
    r = scenario(results, "restart during")
    assert r["detected"] and r["detected_before_stop"], events(r)
    assert r["kinds_seen"] == ["spoofed"] and r["false_alarms"] == 0, events(r)
    assert r["detected_after_ticks"] <= 3, events(r)  # ticks since the daemon's first


@evaluation
def test_trickle_does_not_blind_the_detector(results):
    """Issue 19 item 2: on 2c83b26 a 1,100 SYN/s trickle was learnt as normal and the
    following 2,900 SYN/s flood never reported. The trickle itself is no attack."""
    r = scenario(results, "trickle")
    assert r["detected"] and r["detected_before_stop"], events(r)
    assert r["kinds_seen"] == ["spoofed"] and r["false_alarms"] == 0, events(r)


@evaluation
@pytest.mark.parametrize("prefix", ["spoofed 10k SYN/s next to a busy port", "4k-address pool"])
def test_random_and_pooled_floods_are_spoofed_and_name_no_real_client(results, prefix):
    """Issue 19 item 3: on 2c83b26 both were "botnet" and sources_sample named real clients."""
    r = scenario(results, prefix)
    assert r["detected"] and r["kinds_seen"] == ["spoofed"] and r["false_alarms"] == 0, events(r)
    assert r["real_clients_named"] == [], events(r)
    if r.get("busy") is not None:
        assert r["busy"]["fail"] == 0 and r["busy"]["ok"] > 0, r["busy"]


@evaluation
def test_single_source_among_real_clients_known_at_the_first_tick(results):
    """Issue 19 item 4: on 2c83b26 it was "botnet" for its first ticks (the heavy hitters were
    chosen from the crowd before the flood), nobody was denied, real clients were named."""
    r = scenario(results, "single source among real clients")
    assert r["detected"] and r["kinds_seen"] == ["single-source"], events(r)
    assert r["syn_dropped_deny"] > 0 and r["real_clients_named"] == [], events(r)
    assert r["busy"]["fail"] == 0, r["busy"]


@evaluation
@pytest.mark.parametrize("prefix", ["quiet", "spoofed", "single", "300", "flash", "slow ramp", "ramp 200",
                                    "restart during", "trickle", "spoofed 10k", "4k-address",
                                    "single source among"])
@needs_tc
def test_legit_clients_all_connect(results, prefix):
    """Every legit client connects, sends its request and reads the echo."""
    r = scenario(results, prefix)
    assert r["legit_n"] > 0 and r["legit_success_pct"] == 100.0, \
        f"{r['legit_failed']} of {r['legit_n']} legit connects failed (errnos {r['legit_errnos']})"


@evaluation
@needs_tc
def test_reused_client_ports_lose_no_connection(results):
    """Issue 19 item 7: the client's ports come round while the server holds them in
    TIME_WAIT, during a spoofed ramp in auto mode. On main 2 of 152 requests were lost and
    cookies_no_listener rose to 18 (our cookie ACK met the TIME_WAIT socket)."""
    r = scenario(results, "ramp 200")
    assert r["detected"] and r["kinds_seen"] == ["spoofed"], events(r)
    st = r["status_mid"]
    assert st is not None and st["counters"]["challenge_sent"] > 0, "the port was never armed"
    assert r["legit_failed"] == 0, f"{r['legit_failed']} of {r['legit_n']} lost (errnos {r['legit_errnos']})"
    for name, rr in results.items():
        assert not rr.get("cookies_no_listener"), (name, rr.get("cookies_no_listener"))


@evaluation
def test_daemon_clean(results):
    for name, r in results.items():
        assert r.get("daemon_exit") == 0, (name, r.get("daemon_exit"))
        assert r.get("daemon_errors") == [], (name, r.get("daemon_errors"))


@pytest.mark.parametrize("ramp", ["linear", "exp"])
def test_flood_pacing_schedule(ramp):
    """flood.schedule: cumulative frames allowed; its slope is the rate (pps at 0, ramp_to at the end)."""
    from synguard_lab.flood import schedule

    assert schedule(None, 5) is None
    const = schedule(1000, 5)
    assert const(0) == 0 and const(2.5) == pytest.approx(2500)
    n = schedule(500, 12, 50_000, ramp)
    h = 1e-4
    assert n(0) == 0
    assert (n(h) - n(0)) / h == pytest.approx(500, rel=0.01)
    assert (n(12) - n(12 - h)) / h == pytest.approx(50_000, rel=0.01)
    assert (n(12 + h) - n(12)) / h == pytest.approx(50_000, rel=0.01)  # holds the top rate after the ramp
    assert all(n(t + 0.1) > n(t) for t in [i * 0.5 for i in range(24)])
    total = {"linear": (500 + 50_000) * 12 / 2, "exp": (50_000 - 500) * 12 / math.log(100)}[ramp]
    assert n(12) == pytest.approx(total)
    with pytest.raises(ValueError):
        schedule(None, 5, 1000)
    with pytest.raises(ValueError):
        schedule(100, 5, 1000, "cubic")
