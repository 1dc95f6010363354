"""Monitoring deploy files (deploy/prometheus, deploy/grafana) against the real tools.

- promtool (Debian's `prometheus` package, installed by `make setup`) checks the rules,
  runs their unit tests and checks the example config;
- every PromQL expression of the rules and the dashboard names only metrics (and labels)
  that a real `synguard run` in a lab namespace exports;
- a real Prometheus server, started inside the lab's server namespace on 127.0.0.1,
  scrapes that daemon with the example config, loads the rules, evaluates every
  dashboard query, and raises the listener-queue and reload alerts from real kernel
  state.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

import synguard

REPO = Path(__file__).resolve().parents[1]
PROM_DIR = REPO / "deploy" / "prometheus"
RULES = PROM_DIR / "synguard.rules.yml"
RULE_TESTS = PROM_DIR / "synguard.rules.test.yml"
EXAMPLE = PROM_DIR / "prometheus.example.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "synguard.json"

ALERTS = {"SynguardDown", "SynguardAttackActive", "SynguardNotProtecting", "SynguardCookiesUnavailable",
          "SynguardCookieValidationCollapse", "SynguardCookiesRefused", "SynguardSyncookiesOff",
          "SynguardSynQueueHigh", "SynguardAcceptQueueOverflow", "SynguardConfigReloadFailed",
          "SynguardOutOfStateFlood"}
SEVERITIES = {"critical", "warning"}
SYNQ_PORT = 8080      # backlog 64, filled with spoofed half-open requests
ACCEPTQ_PORT = 8081   # backlog 8, never accept()s: the accept queue fills
PROM_LABELS = {"job", "instance"}  # added by Prometheus at scrape time


def tool(name: str) -> str:
    path = shutil.which(name) or f"/usr/bin/{name}"
    if not Path(path).exists():
        pytest.fail(f"{name} not found: `make setup` installs Debian's prometheus package (promtool, prometheus)")
    return path


@contextlib.contextmanager
def deadline(seconds: float, what: str):
    """Hard timeout (main thread): TimeoutError after `seconds`."""
    def boom(signum, frame):
        raise TimeoutError(f"{what}: hard timeout {seconds}s")

    old = signal.signal(signal.SIGALRM, boom)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture(autouse=True)
def hard_timeout():
    with deadline(170, "test"):
        yield


# ---- PromQL: which metrics and labels an expression uses --------------------------------

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_IDENT = re.compile(r"(?<![\w:$.])([A-Za-z_:][\w:]*)(\s*\()?")
_SELECTOR = re.compile(r"(?<![\w:$.])([A-Za-z_:][\w:]*)\s*\{([^}]*)\}")
_MATCHER = re.compile(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)")
_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "Inf", "NaN"}
_LABEL_VALUES = re.compile(r"^\s*label_values\((?:(.*),)?\s*(\w+)\s*\)\s*$", re.S)


def metric_names(expr: str) -> set[str]:
    """Every metric name an expression selects (identifiers not called as functions)."""
    bare = _STRING.sub('""', expr)
    bare = re.sub(r"\{[^}]*\}", "{}", bare)
    bare = _LABEL_LIST.sub(" ", bare)
    return {name for name, call in _IDENT.findall(bare) if not call and name not in _KEYWORDS}


def selector_labels(expr: str) -> list[tuple[str, set[str]]]:
    """(metric, label names matched in its {...}) for every selector with braces."""
    bare = _STRING.sub('""', expr)
    return [(m, set(_MATCHER.findall(body))) for m, body in _SELECTOR.findall(bare)]


def test_metric_name_extraction():
    e = ('100 * sum by (instance, reason) (rate(synguard_syn_dropped_total{job=~"$job", reason="deny"}'
         '[$__rate_interval])) / (synguard_listen_backlog > 0) and on (job) up{job="synguard"} '
         'unless instance:synguard_x:rate1m offset 5m')
    assert metric_names(e) == {"synguard_syn_dropped_total", "synguard_listen_backlog", "up",
                               "instance:synguard_x:rate1m"}
    assert selector_labels(e) == [("synguard_syn_dropped_total", {"job", "reason"}), ("up", {"job"})]
    assert _LABEL_VALUES.match('label_values(synguard_build_info{job=~"$job"}, instance)').groups() == (
        'synguard_build_info{job=~"$job"}', "instance")


# ---- the files ------------------------------------------------------------------------------


def load_rules() -> dict:
    return yaml.safe_load(RULES.read_text())


def rules_by_kind() -> tuple[dict[str, dict], dict[str, dict]]:
    alerts, records = {}, {}
    for group in load_rules()["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                alerts[rule["alert"]] = rule
            else:
                records[rule["record"]] = rule
    return alerts, records


def load_dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels(dash: dict):
    for p in dash["panels"]:
        yield p
        yield from p.get("panels", [])  # collapsed rows keep their panels inside


def dashboard_exprs(dash: dict) -> list[tuple[str, str, dict]]:
    """(where, expr, context) for every PromQL expression: targets, variables, annotations."""
    out = []
    for p in panels(dash):
        for t in p.get("targets", []):
            if t.get("expr"):
                out.append((f"panel {p['title']!r} target {t['refId']}", t["expr"], {"panel": p, "target": t}))
    for v in dash["templating"]["list"]:
        if v["type"] == "query":
            q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            out.append((f"variable {v['name']}", q, {"variable": v}))
    for a in dash["annotations"]["list"]:
        if a.get("expr"):
            out.append((f"annotation {a['name']!r}", a["expr"], {"annotation": a}))
    return out


def split_label_values(expr: str) -> tuple[str, str | None]:
    """label_values(sel, label) -> (sel, label); plain PromQL -> (expr, None)."""
    m = _LABEL_VALUES.match(expr)
    return (m.group(1) or "", m.group(2)) if m else (expr, None)


def promtool(*args, cwd=PROM_DIR) -> subprocess.CompletedProcess:
    return subprocess.run([tool("promtool"), *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def test_promtool_checks_and_unit_tests_pass():
    for args in (("check", "rules", str(RULES)), ("test", "rules", str(RULE_TESTS)),
                 ("check", "config", str(EXAMPLE))):
        r = promtool(*args)
        assert r.returncode == 0, f"promtool {' '.join(args)}:\n{r.stdout}\n{r.stderr}"
        assert "SUCCESS" in r.stdout + r.stderr


# (text in synguard.rules.yml, a plausible wrong version, the rule the unit tests must then fail on)
RULE_MUTATIONS = [
    ("> 0.8", "> 0.9", "SynguardSynQueueHigh"),
    ("increase(synguard_cookies_refused_total[5m])) >= 5", "increase(synguard_cookies_refused_total[5m])) >= 4",
     "SynguardCookiesRefused"),
    ("expr: synguard_kernel_tcp_syncookies == 0", "expr: synguard_kernel_tcp_syncookies < 2", "SynguardSyncookiesOff"),
    ('synguard_cookie_method{method="none"} == 1)', 'synguard_cookie_method{method="none"} >= 0)',
     "SynguardCookiesUnavailable"),
    ("increase(synguard_cookies_validated_total[5m])) < 1", "increase(synguard_cookies_validated_total[5m])) < 5",
     "SynguardCookieValidationCollapse"),
    ("(rate(synguard_acks_checked_total[1m]))", "(rate(synguard_cookies_validated_total[1m]))",
     "instance:synguard_acks_checked:rate1m"),
]


@pytest.mark.parametrize("old, new, rule", RULE_MUTATIONS, ids=[m[2] for m in RULE_MUTATIONS])
def test_promtool_unit_tests_catch_a_broken_rule(tmp_path, old, new, rule):
    """The unit tests would notice a wrong threshold or series (they are not vacuous)."""
    text = RULES.read_text()
    assert text.count(old) == 1, old
    (tmp_path / RULES.name).write_text(text.replace(old, new))
    (tmp_path / RULE_TESTS.name).write_text(RULE_TESTS.read_text())
    r = promtool("test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert r.returncode != 0 and rule in r.stdout + r.stderr


def test_every_alert_has_for_severity_summary_description_and_tests():
    alerts, records = rules_by_kind()
    assert ALERTS <= alerts.keys(), ALERTS - alerts.keys()
    for name, rule in alerts.items():
        assert re.fullmatch(r"\d+[smh]", str(rule.get("for", ""))) and not str(rule["for"]).startswith("0"), name
        assert rule["labels"]["severity"] in SEVERITIES, name
        ann = rule["annotations"]
        assert len(ann.get("summary", "")) > 20 and len(ann.get("description", "")) > 200, name
        assert "`" in ann["description"], f"{name}: the description should name a command or key to act with"
    for name in records:
        assert name.count(":") == 2, f"recording rule {name}: level:metric:operations"

    fires, quiet = set(), set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for t in case.get("alert_rule_test", []):
            if t["exp_alerts"]:
                fires.add(t["alertname"])
                for a in t["exp_alerts"]:
                    assert a["exp_labels"]["severity"] == alerts[t["alertname"]]["labels"]["severity"]
                    assert {"summary", "description"} <= a["exp_annotations"].keys(), t["alertname"]
            else:
                quiet.add(t["alertname"])
    assert fires == alerts.keys(), f"alerts without a firing test: {alerts.keys() - fires}"
    assert quiet == alerts.keys(), f"alerts without a not-firing test: {alerts.keys() - quiet}"


def test_dashboard_structure():
    dash = load_dashboard()
    assert 36 <= dash["schemaVersion"] <= 41 and dash["uid"] and dash["title"]
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    ds = variables["DS_PROMETHEUS"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    for name in ("job", "instance"):
        q = variables[name]["query"]
        q = q["query"] if isinstance(q, dict) else q
        sel, label = split_label_values(q)
        assert label == name and metric_names(sel) == {"synguard_build_info"}, q

    ids, cells = set(), {}
    for p in panels(dash):
        assert p["id"] not in ids, p["title"]
        ids.add(p["id"])
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = p["title"]
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] == "${DS_PROMETHEUS}", p["title"]
        assert p.get("description"), p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${DS_PROMETHEUS}", p["title"]
    for a in dash["annotations"]["list"]:
        if a.get("expr"):
            assert a["datasource"]["uid"] == "${DS_PROMETHEUS}", a["name"]

    exprs = dashboard_exprs(dash)
    used = set().union(*(metric_names(e) for _, e, _ in exprs))
    wanted = {"synguard_syn_received_total", "synguard_challenges_sent_total", "synguard_acks_checked_total",
              "synguard_cookies_validated_total", "synguard_cookies_refused_total",
              "synguard_cookies_no_listener_total", "synguard_syn_passed_total", "synguard_syn_dropped_total",
              "synguard_attack_active", "synguard_sources_distinct", "synguard_detector_cusum",
              "synguard_listen_syn_recv", "synguard_listen_backlog", "synguard_listen_accept_queue",
              "synguard_cookie_method", "synguard_kernel_tcp_syncookies", "synguard_mode", "synguard_build_info"}
    assert wanted <= used, wanted - used
    assert any("synguard_attack" in a.get("expr", "") for a in dash["annotations"]["list"])
    for where, expr, ctx in exprs:
        if "target" not in ctx and "annotation" not in ctx:
            continue
        # every selector of a synguard metric honours both variables; ranges follow Grafana's interval
        for metric, labels in selector_labels(expr):
            if metric.startswith("synguard_") or metric == "up":
                assert {"job", "instance"} <= labels, f"{where}: {metric} without the $job/$instance filter"
        for m in metric_names(expr):
            assert m.startswith("synguard_") or m == "up", f"{where}: {m}"
            assert re.search(rf"{m}\{{[^}}]*job=~\"\$job\"[^}}]*instance=~\"\$instance\"", expr), f"{where}: {m}"
        if "target" in ctx:
            for rng in re.findall(r"\[([^\]]+)\]", expr):
                assert rng in ("$__rate_interval", "$__range"), f"{where}: range [{rng}]"


# ---- a real daemon in a lab --------------------------------------------------------------------


@dataclass
class Live:
    lab: object
    daemon: object
    text: str                       # one /metrics scrape
    labels: dict[str, set[str]]     # sample name -> label names


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("needs root (BPF, XDP, network namespaces)")
    from synguard_lab.lab import Lab
    from test_daemon import Running, config_text

    tmp = tmp_path_factory.mktemp("live")
    lab = Lab("sgmon")
    d = None
    try:
        with deadline(150, "lab + daemon setup"):
            lab.__enter__()
            lab.tcp_server(SYNQ_PORT, backlog=64)
            lab.tcp_server(ACCEPTQ_PORT, backlog=8, mode="hold")
            d = Running(lab, tmp, config_text(lab, mode="observe", ports=(SYNQ_PORT, ACCEPTQ_PORT)))
            text = d.scrape()
        labels: dict[str, set[str]] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                labels.setdefault(s.name, set()).update(s.labels)
        yield Live(lab, d, text, labels)
    finally:
        with deadline(60, "lab teardown"):
            if d is not None:
                lab.stop(d.proc)
            lab.close()


def check_names(where: str, expr: str, live: Live, records: set[str] = frozenset()) -> set[str]:
    sel, label = split_label_values(expr)
    names = metric_names(sel)
    assert names, f"{where}: no metric in {expr!r}"
    for m in names:
        if m == "up":
            continue
        if ":" in m:
            assert m in records, f"{where}: {m} is no recording rule of {RULES.name}"
            continue
        assert m in live.labels, f"{where}: the daemon does not export {m} (expr {expr!r})"
    for m, used in selector_labels(sel):
        if m in live.labels:
            assert used <= live.labels[m] | PROM_LABELS, f"{where}: {m} has no label {used - live.labels[m]}"
        elif m == "up":
            assert used <= PROM_LABELS, where
    if label is not None:
        assert all(label in live.labels[m] | PROM_LABELS for m in names if m in live.labels), where
    return names


@pytest.mark.netns
def test_dashboard_queries_name_only_exported_metrics(live):
    assert live.labels.get("synguard_build_info") == {"version"}
    used = set()
    for where, expr, _ in dashboard_exprs(load_dashboard()):
        used |= check_names(where, expr, live)
    assert len(used) >= 30


@pytest.mark.netns
def test_rules_name_only_exported_metrics(live):
    alerts, records = rules_by_kind()
    for name, rule in {**alerts, **records}.items():
        check_names(name, rule["expr"], live, set(records))
        for text in rule.get("annotations", {}).values():
            for m in re.findall(r"\bsynguard_\w+", text):
                assert m in live.labels, f"{name}: annotation names {m}, which the daemon does not export"


# ---- a real Prometheus server in the lab's server namespace ------------------------------------------


def free_port(lab) -> int:
    with lab.netns(lab.server_ns):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]


class PromAPI:
    def __init__(self, lab, port: int, log: Path):
        self.lab, self.base, self.log = lab, f"http://127.0.0.1:{port}", log

    def get(self, path: str, **params) -> dict:
        url = f"{self.base}{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
        with self.lab.netns(self.lab.server_ns):
            try:
                with urllib.request.urlopen(url, timeout=10) as resp:
                    doc = json.loads(resp.read())
            except urllib.error.HTTPError as e:
                doc = json.loads(e.read())
        return doc

    def query(self, q: str) -> dict:
        return self.get("/api/v1/query", query=q)

    def tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-30:])

    def wait(self, what: str, fn, timeout: float, proc=None, detail=lambda: ""):
        """Poll fn() until it returns something truthy; fail with Prometheus's log otherwise."""
        end = time.monotonic() + timeout
        last = None
        while time.monotonic() < end:
            if proc is not None and proc.poll() is not None:
                raise AssertionError(f"prometheus exited ({proc.returncode}) while waiting for {what}:\n{self.tail()}")
            try:
                last = fn()
                if last:
                    return last
            except OSError as e:  # not listening yet
                last = e
            time.sleep(0.3)
        raise AssertionError(f"{what}: not within {timeout}s (last: {last!r}) {detail()}\n"
                             f"prometheus log:\n{self.tail()}")


def grafana_to_promql(expr: str) -> str:
    return (expr.replace("$__rate_interval", "4s").replace("$__range", "1m").replace("$__interval", "1s")
            .replace("$job", ".*").replace("$instance", ".*"))


def alerts_now(api: PromAPI) -> list[dict]:
    return api.get("/api/v1/alerts")["data"]["alerts"]


def alert_present(api: PromAPI, name: str, **labels) -> dict | None:
    for a in alerts_now(api):
        if a["labels"]["alertname"] == name and all(a["labels"].get(k) == v for k, v in labels.items()):
            if a["state"] in ("pending", "firing"):
                return a
    return None


@pytest.mark.netns
def test_real_prometheus_scrapes_the_daemon_and_evaluates_rules_and_dashboard(live, tmp_path):
    from test_daemon import config_text, sample

    lab, d = live.lab, live.daemon
    prometheus = tool("prometheus")
    version = subprocess.run([prometheus, "--version"], capture_output=True, text=True).stdout.splitlines()[0]

    # The example config, with 1-s intervals and the repository's rule file.
    cfg = yaml.safe_load(EXAMPLE.read_text())
    assert [j["static_configs"][0]["targets"] for j in cfg["scrape_configs"] if j["job_name"] == "synguard"] == [
        ["127.0.0.1:9046"]]
    cfg["global"].update(scrape_interval="1s", evaluation_interval="1s", scrape_timeout="1s")
    for job in cfg["scrape_configs"]:
        job.pop("scrape_timeout", None)
    cfg["rule_files"] = [str(RULES)]
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump(cfg))
    r = promtool("check", "config", str(config))
    assert r.returncode == 0, r.stdout + r.stderr

    port = free_port(lab)
    log = tmp_path / "prometheus.log"
    api = PromAPI(lab, port, log)
    with open(log, "w") as logf:
        proc = lab.popen(lab.server_ns, [prometheus, f"--config.file={config}",
                                         f"--storage.tsdb.path={tmp_path / 'data'}",
                                         f"--web.listen-address=127.0.0.1:{port}",
                                         "--storage.tsdb.retention.time=1h"],
                         stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        # 1. It scrapes the daemon.
        build = api.wait("synguard_build_info in Prometheus",
                         lambda: api.query("synguard_build_info")["data"]["result"], 60, proc)
        assert build[0]["metric"]["job"] == "synguard" and build[0]["metric"]["instance"] == "127.0.0.1:9046"
        assert build[0]["metric"]["version"] == synguard.__version__

        # Listening on loopback only, in the lab namespace.
        ss = lab.run(lab.server_ns, ["ss", "-Hltnp"]).stdout
        mine = [line.split()[3] for line in ss.splitlines() if f"pid={proc.pid}," in line]
        assert mine and all(a.startswith("127.0.0.1:") for a in mine), ss

        targets = api.get("/api/v1/targets")["data"]["activeTargets"]
        assert [t["health"] for t in targets if t["labels"]["job"] == "synguard"] == ["up"], targets

        # 2. Both rule groups loaded, every rule evaluated without error.
        file_groups = {g["name"]: len(g["rules"]) for g in load_rules()["groups"]}

        def rules_ok():
            groups = api.get("/api/v1/rules")["data"]["groups"]
            if {g["name"]: len(g["rules"]) for g in groups} != file_groups:
                return None
            bad = [(r["name"], r["health"], r.get("lastError")) for g in groups for r in g["rules"]
                   if r["health"] != "ok"]
            return groups if not bad else None
        groups = api.wait("every rule health ok", rules_ok, 30, proc)
        assert all(not r.get("lastError") for g in groups for r in g["rules"])

        # 3. Every dashboard query runs; those without a filter return series carrying their legend labels.
        dash_queries = []
        for where, expr, ctx in dashboard_exprs(load_dashboard()):
            sel, label = split_label_values(expr)
            q = grafana_to_promql(f"count by ({label}) ({sel})" if label else expr)
            legend = ctx.get("target", {}).get("legendFormat", "")
            filtered = re.search(r"==|!=|>|<", _STRING.sub('""', expr)) is not None
            dash_queries.append((where, q, filtered, re.findall(r"\{\{\s*(\w+)\s*\}\}", legend)))

        problems: list[str] = []

        def dashboard_ok():
            problems.clear()
            for where, q, filtered, legend_labels in dash_queries:
                doc = api.query(q)
                if doc["status"] != "success":
                    raise AssertionError(f"{where}: {q}: {doc.get('error')}")
                result = doc["data"]["result"]
                if not filtered and not result:
                    problems.append(f"{where}: no data")
                for series in result:
                    missing = [lbl for lbl in legend_labels if lbl not in series["metric"]]
                    if missing:
                        raise AssertionError(f"{where}: legend labels {missing} not in {series['metric']}")
            return not problems
        api.wait("every dashboard query has data", dashboard_ok, 30, proc, detail=lambda: problems)

        alert_rules, records = rules_by_kind()
        for name, rule in {**alert_rules, **records}.items():
            doc = api.query(rule["expr"])
            assert doc["status"] == "success", (name, doc)
        assert alert_present(api, "SynguardDown") is None
        # This kernel completes cookies (kfunc) and tcp_syncookies is on: neither alert may be pending.
        assert sample(d.scrape(), "synguard_cookie_method", method="kfunc") == 1
        assert alert_present(api, "SynguardCookiesUnavailable") is None
        assert alert_present(api, "SynguardSyncookiesOff") is None

        # 4. Real kernel state raises the listener alerts: a spoofed burst fills the SYN queue
        #    (observe mode: nothing challenged), connections nobody accepts fill the accept queue.
        lab.flood(300, 10, dport=SYNQ_PORT)
        assert sum(t is not None for t in lab.connect_times(9, ACCEPTQ_PORT, timeout=2)) >= 8

        def queues_full():
            text = d.scrape()
            return (sample(text, "synguard_listen_syn_recv", address="::", port=str(SYNQ_PORT)) > 0.8 * 64
                    and sample(text, "synguard_listen_accept_queue", address="::", port=str(ACCEPTQ_PORT)) > 0.9 * 8)
        api.wait("both queues full in the daemon's metrics", queues_full, 10, detail=d.scrape)
        synq = api.wait("SynguardSynQueueHigh pending", lambda: alert_present(
            api, "SynguardSynQueueHigh", port=str(SYNQ_PORT), address="::", job="synguard"), 20, proc)
        assert synq["labels"]["severity"] == "critical" and "[::]:8080" in synq["annotations"]["summary"]
        acc = api.wait("SynguardAcceptQueueOverflow pending", lambda: alert_present(
            api, "SynguardAcceptQueueOverflow", port=str(ACCEPTQ_PORT)), 20, proc)
        assert "node_netstat_TcpExt_ListenOverflows" in acc["annotations"]["description"]
        assert alert_present(api, "SynguardSynQueueHigh", port=str(ACCEPTQ_PORT)) is None
        ratio = api.query(f'listener:synguard_listen_syn_queue:ratio{{port="{SYNQ_PORT}"}}')["data"]["result"]
        assert ratio and float(ratio[0]["value"][1]) >= 0.8

        # 5. net.ipv4.tcp_syncookies=0 in the daemon's namespace (the kernel would reset every
        #    cookie ACK) raises SynguardSyncookiesOff from the daemon's gauge.
        key = "net/ipv4/tcp_syncookies"
        with lab.netns(lab.server_ns), open(f"/proc/sys/{key}") as f:
            old_syncookies = int(f.read())
        assert old_syncookies != 0
        try:
            lab._sysctls(lab.server_ns, {key: 0})
            assert sample(d.scrape(), "synguard_kernel_tcp_syncookies") == 0
            off = api.wait("SynguardSyncookiesOff pending", lambda: alert_present(
                api, "SynguardSyncookiesOff", instance="127.0.0.1:9046"), 20, proc)
            assert off["labels"]["severity"] == "critical" and "sysctl -w" in off["annotations"]["description"]
        finally:
            lab._sysctls(lab.server_ns, {key: old_syncookies})
        assert sample(d.scrape(), "synguard_kernel_tcp_syncookies") == old_syncookies

        # 6. A rejected SIGHUP reload raises SynguardConfigReloadFailed.
        assert alert_present(api, "SynguardConfigReloadFailed") is None
        d.config.write_text(config_text(lab, mode="observe") + "bogus_key: 1\n")
        d.proc.send_signal(signal.SIGHUP)
        d.wait_log("config NOT reloaded")
        api.wait("SynguardConfigReloadFailed pending",
                 lambda: alert_present(api, "SynguardConfigReloadFailed", instance="127.0.0.1:9046"), 20, proc)
        assert alert_present(api, "SynguardDown") is None
        print(f"\n{version}; rules {sum(file_groups.values())}, dashboard queries {len(dash_queries)}")
    finally:
        lab.stop(proc, grace=10)
        assert proc.poll() is not None
