"""Collector on a private registry (real program, BPF_PROG_TEST_RUN traffic) and
the CLI's text views on fixed inputs."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from synguard import config, view
from synguard.daemon import Daemon
from synguard.metrics import COUNTER_METRICS, SynguardCollector

from frames import syn4


@pytest.fixture
def registry(dp):
    d = Daemon(config.override(config.Config(), mode="protect", ports=[80]), datapath=dp)
    reg = CollectorRegistry(auto_describe=False)
    reg.register(SynguardCollector(d))
    return reg


def test_counters_move_with_real_packets(registry, dp):
    get = lambda name, **labels: registry.get_sample_value(name, labels)  # noqa: E731
    base = get("synguard_challenges_sent_total", interface="other") or 0
    passed = get("synguard_syn_passed_total", interface="other") or 0
    protected = get("synguard_syn_protected_total", interface="other") or 0
    assert dp.test_run(bytes(syn4(sport=4242))).retval == 3
    assert dp.test_run(bytes(syn4(sport=4242, dport=22))).retval == 2
    assert get("synguard_challenges_sent_total", interface="other") == base + 1
    assert get("synguard_syn_passed_total", interface="other") == passed + 1
    assert get("synguard_syn_protected_total", interface="other") == protected + 1
    assert get("synguard_mode", mode="protect") == 1 and get("synguard_mode", mode="auto") == 0
    assert get("synguard_secret_rotations_total") == 0
    with open("/proc/sys/net/ipv4/tcp_syncookies") as f:
        assert get("synguard_kernel_tcp_syncookies") == int(f.read())


def test_exposition_parses_and_names_follow_conventions(registry, dp):
    dp.test_run(bytes(syn4()))
    text = generate_latest(registry).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name, _ in COUNTER_METRICS.values():
        assert families[name].type == "counter", name
    assert families["synguard_syn_dropped"].type == "counter"
    assert families["synguard_build_info"].type == "gauge"  # info metrics are gauges in the text format
    for name in ("synguard_listen_syn_recv", "synguard_listen_accept_queue", "synguard_listen_backlog"):
        assert families[name].type == "gauge"
    assert all(n.startswith("synguard_") for n in families)


STATUS = {
    "version": "0.1.0", "pid": 42, "uptime_s": 3725.0, "mode": "protect", "protecting": True, "ports": [80, 443],
    "interfaces": [{"name": "eth0", "xdp_mode": "native", "counters": {}}],
    "counters": {c.key: 1234567 for c in view.STATUS_COUNTERS},
    "rates": {c.key: 21045.5 for c in view.STATUS_COUNTERS},
    "secret": {"generation": 2834, "age_s": 252, "rotate_every_s": 600, "source": "random"},
    "kernel": {"counters": {"TcpExt.SyncookiesSent": 5}, "sysctls": {"net.ipv4.tcp_syncookies": 1}},
    "worst_listener": {"address": "::", "port": 443, "syn_recv": 3, "backlog": 4096, "synq_pct": 0.07,
                       "accept_queue": 1},
    "listeners": 7, "config": {},
}


def test_format_status():
    text = view.format_status(STATUS)
    assert text.splitlines()[0] == "synguard 0.1.0  pid 42  up 1h02m"
    assert "|- mode:        protect (answering SYNs with cookies)" in text
    assert "|- counters:                    total  /s, last tick" in text
    assert "|  |- challenges sent              1.2M          21.0k" in text
    assert "`- worst listener: [::]:443  SynRecv 3/4096 (0.1%)  AcceptQ 1  of 7 listeners" in text
    assert "1234567" in view.format_status(STATUS, numeric=True)


def test_format_status_names_the_cookie_method():
    kernel = view.format_status({**STATUS, "cookie_method": "kernel-cookie",
                                 "cookie_method_reason": "this kernel has no bpf_sk_assign_tcp_reqsk() kfunc",
                                 "cookie_options": "MSS only: no window scaling", "tcp_syncookies_held": True})
    assert ("|- cookies:     kernel-cookie: XDP answers with the kernel's cookie (bpf_tcp_gen_syncookie), "
            "tcp_syncookies=2 while protecting, one round trip (this kernel has no bpf_sk_assign_tcp_reqsk() "
            "kfunc)") in kernel
    assert "|- clients keep: MSS only: no window scaling; tcp_syncookies=2 held by synguard" in kernel
    assert "answered in XDP, attack or not" in kernel
    kfunc = view.format_status({**STATUS, "cookie_method": "kfunc"})
    assert "|- cookies:     kfunc: XDP SYN-ACK + tc bpf_sk_assign_tcp_reqsk" in kfunc
    assert "unavailable on this kernel" in view.format_status(STATUS)


def test_cookie_method_metric_has_every_label(registry, dp):
    from synguard.abi import CookieMethod

    get = lambda m, why="": registry.get_sample_value("synguard_cookie_method",  # noqa: E731
                                                      {"method": m, "reason": why})
    assert [get(m) for m in ("kfunc", "kernel-cookie", "none")] == [0.0, 0.0, 1.0]  # tc=False: none
    dp.set_cookie_method(CookieMethod.KERNEL_COOKIE)
    dp.cookie_method_why = "forced"
    try:
        assert [get("kfunc"), get("kernel-cookie", "forced"), get("none")] == [0.0, 1.0, 0.0]
        assert dp.config()["method"] == CookieMethod.KERNEL_COOKIE
    finally:
        dp.set_cookie_method(CookieMethod.KFUNC_COOKIE)
        dp.cookie_method = dp.cookie_method_why = None  # the session's program stays as the other tests expect it


def test_format_top():
    rows = [{"source": "198.51.100.7", "syns": 123456, "last_dport": 443, "last_seen_s": 99}]
    text = view.format_top(rows, now_s=102)
    assert text.splitlines()[1].split() == ["198.51.100.7", "123.5k", "443", "3s", "ago"]
    assert view.format_top(rows, now_s=99 + 3725).splitlines()[1].endswith("1h02m ago")
    assert len(view.format_top(rows, header=False).splitlines()) == 1


def test_format_status_says_what_each_mode_does_and_skips_idle_listeners():
    protect = view.format_status(STATUS)
    assert "|- protect:     every SYN to ports 80,443 is answered in XDP" in protect and "armed ports" not in protect
    auto = view.format_status({**STATUS, "mode": "auto", "detection": {
        "attack": {"kind": "botnet", "ports": [80], "peak_pps": 160000, "detected_after_s": 0.9,
                   "sources_sample": []},
        "attacks_total": {"botnet": 1}, "cusum": 1.0, "baseline_pps": 10, "sources_distinct": 300,
        "protected_ports": [80], "denied_sources": [], "events": []},
        "top_sources": [{"source": "203.0.113.9", "syns": 512, "last_dport": 80, "last_seen_s": 1}]})
    assert "auto:      armed ports 80" in auto
    assert "top sampled sources 203.0.113.9" in auto and "e.g. -" not in auto
    idle = view.format_status({**STATUS, "worst_listener": None})
    assert idle.splitlines()[-1] == "`- listeners:   7, none with half-open connections"
