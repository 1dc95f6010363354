"""Prometheus exposition: a custom Collector that reads the maps at scrape time.

Raw `_total` counters only (rates are PromQL's job), base units, every label set
pre-initialised so a series exists before its first event. Names follow the
counters: Counter.CHALLENGE_SENT -> synguard_challenges_sent_total.
Kernel TcpExt counters are left to node_exporter (node_netstat_TcpExt_*).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from synguard import __version__, kernel
from synguard.abi import COUNTER_NAMES, CookieMethod, Counter, Mode
from synguard.ackflood import KINDS as OOS_KINDS
from synguard.detect import KINDS

MAX_LISTENER_SERIES = 100  # listeners with their own synguard_listen_* series: the worst ones

if TYPE_CHECKING:
    from synguard.daemon import Daemon

# Counters exported one metric each (names and help: synguard.abi.COUNTER_NAMES); SYN
# drops are one metric with a reason label.
DROP_REASONS = {Counter.SYN_DROPPED_DENY: "deny"}
COUNTER_METRICS = {c: (COUNTER_NAMES[c].metric, COUNTER_NAMES[c].help) for c in Counter if c not in DROP_REASONS}


class SynguardCollector(Collector):
    def __init__(self, daemon: "Daemon"):
        self.daemon = daemon

    def describe(self):
        return []  # no describe-time map reads; registry accepts an empty describe

    def collect(self):
        d = self.daemon
        yield InfoMetricFamily("synguard_build", "synguard build information.", value={"version": __version__})

        by_if = d.datapath.counters_by_interface()
        for counter, (name, doc) in COUNTER_METRICS.items():
            m = CounterMetricFamily(name, doc, labels=["interface"])
            for ifname, values in by_if.items():
                m.add_metric([ifname], values[counter])
            yield m
        protected = CounterMetricFamily(
            "synguard_syn_protected", "SYNs to a protected port while protecting (answered with a cookie + "
            "allow CIDR; derived, not counted in XDP).", labels=["interface"])
        for ifname, v in by_if.items():
            protected.add_metric([ifname], v[Counter.CHALLENGE_SENT] + v[Counter.SYN_ALLOW_CIDR])
        yield protected
        drops = CounterMetricFamily(COUNTER_NAMES[Counter.SYN_DROPPED_DENY].metric,
                                    COUNTER_NAMES[Counter.SYN_DROPPED_DENY].help, labels=["interface", "reason"])
        for ifname, values in by_if.items():
            for counter, reason in DROP_REASONS.items():
                drops.add_metric([ifname, reason], values[counter])
        yield drops

        mode = GaugeMetricFamily("synguard_mode", "1 for the configured mode, 0 for the others.", labels=["mode"])
        for m in Mode:
            mode.add_metric([m.label], 1.0 if d.config.mode == m else 0.0)
        yield mode
        method = GaugeMetricFamily("synguard_cookie_method", "1 for the SYN-cookie method in use: kfunc (XDP "
                                   "SYN-ACK + tc bpf_sk_assign_tcp_reqsk), kernel-cookie (XDP SYN-ACK with "
                                   "bpf_tcp_gen_syncookie, completed by the kernel) or none; reason, on the one "
                                   "in use: kfunc-available, no-kfunc, tc-refused (the tc program's load failed) or "
                                   "forced (SYNGUARD_COOKIE_METHOD).", labels=["method", "reason"])
        in_use = d.datapath.cookie_method or "none"
        for m in (*CookieMethod.labels(), "none"):
            method.add_metric([m, (getattr(d.datapath, "cookie_method_why", None) or "") if m == in_use else ""],
                              1.0 if in_use == m else 0.0)
        yield method
        active = GaugeMetricFamily("synguard_protecting", "1 while XDP answers SYNs to protected ports with cookies (protect, or "
                                   "auto with a port armed), else 0.")
        active.add_metric([], 1.0 if d.protecting else 0.0)
        yield active

        attached = GaugeMetricFamily("synguard_interface_attached", "1 per interface the program is attached to.",
                                     labels=["interface", "xdp_mode"])
        for ifname, how in d.datapath.attached.items():
            attached.add_metric([ifname, how], 1.0)
        yield attached

        age = GaugeMetricFamily("synguard_secret_age_seconds", "Seconds since the cookie secret last changed.")
        age.add_metric([], time.time() - d.keys.since)
        yield age
        rot = CounterMetricFamily("synguard_secret_rotations", "Cookie secret rotations since start.")
        rot.add_metric([], d.keys.rotations)
        yield rot

        reloads = CounterMetricFamily("synguard_config_reloads", "SIGHUP reloads, by result.", labels=["result"])
        for result in ("success", "failure"):
            reloads.add_metric([result], d.reloads[result])
        yield reloads
        ok = GaugeMetricFamily("synguard_config_last_reload_successful", "1 if the last reload applied, else 0.")
        ok.add_metric([], 1.0 if d.last_reload_ok else 0.0)
        yield ok

        det = d.mitigation.detector
        active = GaugeMetricFamily("synguard_attack_active", "1 while an attack is detected, by kind.",
                                   labels=["kind"])
        total = CounterMetricFamily("synguard_attacks", "Attacks detected since start, by kind.", labels=["kind"])
        for kind in KINDS:
            active.add_metric([kind], 1.0 if det and det.active and det.active["kind"] == kind else 0.0)
            total.add_metric([kind], det.attacks_total.get(kind, 0) if det else 0)
        oos = d.mitigation.ackflood  # out-of-state floods: their own detector (synguard/ackflood.py)
        for kind in OOS_KINDS:
            active.add_metric([kind], 1.0 if oos and oos.active and oos.active["kind"] == kind else 0.0)
            total.add_metric([kind], oos.attacks_total.get(kind, 0) if oos else 0)
        yield active
        yield total
        g = GaugeMetricFamily("synguard_sources_distinct", "Distinct SYN sources in the last second (HyperLogLog).")
        g.add_metric([], d.mitigation.sources_distinct)
        yield g
        g = GaugeMetricFamily("synguard_detector_cusum", "NP-CUSUM statistic on the SYN-vs-handshake gap.")
        g.add_metric([], det.cusum if det else 0.0)
        yield g
        g = GaugeMetricFamily("synguard_detector_baseline_syn_rate", "Learnt normal rate of completed handshakes (EWMA, frozen during attacks), per second.")
        g.add_metric([], det.baseline if det else 0.0)
        yield g

        # Not in node_exporter's default collectors, and it decides whether a cookie ACK becomes a
        # connection: with 0 the kfunc still succeeds (cookies validated) but the kernel resets the ACK.
        syncookies = kernel.sysctls().get("net.ipv4.tcp_syncookies")
        if syncookies is not None:
            g = GaugeMetricFamily("synguard_kernel_tcp_syncookies",
                                  "net.ipv4.tcp_syncookies in the daemon's network namespace (0: the kernel "
                                  "resets every cookie ACK, and drops SYNs when a SYN queue is full).")
            g.add_metric([], syncookies)
            yield g

        # Bounded: a local user can open tens of thousands of listeners; the series show the
        # MAX_LISTENER_SERIES worst (kernel.worst_listeners), synguard_listeners counts them all.
        total, rows = kernel.worst_listeners(MAX_LISTENER_SERIES)
        g = GaugeMetricFamily("synguard_listeners", "TCP listeners in the daemon's network namespace (the "
                              f"per-listener series show the {MAX_LISTENER_SERIES} worst).")
        g.add_metric([], total)
        yield g
        g_recv = GaugeMetricFamily("synguard_listen_syn_recv", "Half-open (SYN_RECV) requests per listener.",
                                   labels=["address", "port"])
        g_acc = GaugeMetricFamily("synguard_listen_accept_queue", "Accept queue length per listener.",
                                  labels=["address", "port"])
        g_back = GaugeMetricFamily("synguard_listen_backlog", "Listen backlog (capacity of each queue) per listener.",
                                   labels=["address", "port"])
        for row in rows:
            labels = [row.address, str(row.port)]
            g_recv.add_metric(labels, row.syn_recv)
            g_acc.add_metric(labels, row.accept_queue)
            g_back.add_metric(labels, row.backlog)
        yield g_recv
        yield g_acc
        yield g_back
