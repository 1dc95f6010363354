"""synguard/config.py: defaults, every error class (with key path and line), the
example file, override(), immutability, secret files, and a YAML round-trip property."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import string
import textwrap
import threading
from pathlib import Path

import pytest

from synguard import secret
from synguard.abi import Mode
import yaml
from hypothesis import HealthCheck, given, settings, strategies as st

from synguard import config
from synguard.config import Config, ConfigError, parse

EXAMPLE = Path(__file__).resolve().parent.parent / "config" / "synguard.yaml"


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as ei:
        parse(textwrap.dedent(text), "test.yaml")
    return ei.value.errors


def one_error(text: str) -> str:
    errs = errors_of(text)
    assert len(errs) == 1, errs
    return errs[0]


# -- defaults ---------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["", "\n\n", "# nothing but a comment\n", "---\n", "~\n"])
def test_empty_file_is_all_defaults(text):
    assert parse(text) == config.DEFAULTS == Config()


def test_default_values():
    d = config.DEFAULTS
    assert d.interfaces == ()
    assert d.mode == Mode.OBSERVE
    assert d.xdp_mode == "auto"
    assert d.protect == config.ProtectConfig(ports=()) and d.warnings == ()
    assert d.allow == () and d.deny == ()
    assert d.secret.file is None and d.secret.rotate_every == 600
    assert d.metrics.listen == "127.0.0.1:9046"
    assert (d.metrics.host, d.metrics.port, d.metrics.enabled) == ("127.0.0.1", 9046, True)
    assert d.control.socket == "/run/synguard/control.sock"
    assert d.log.format == "human"
    assert d.detection == config.DetectionConfig(
        floor_pps=2000, baseline_multiple=3.0, ewma_alpha=0.05, cusum_drift=0.5, cusum_threshold=3.0,
        clear_ticks=5, hold=60, spoofed_distinct_ratio=0.9, spoofed_new_ratio=0.5, single_source_share=0.5,
        fast_trigger_pps=100000, source_deny=600)
    assert config.DEFAULT_PATH == "/etc/synguard/synguard.yaml"


@pytest.mark.parametrize("text", ["protect:\n", "protect: ~\n", "secret:\n", "log: null\n", "detection:\n"])
def test_empty_section_is_its_defaults(text):
    assert parse(text) == config.DEFAULTS


@pytest.mark.parametrize("key", ["interfaces", "allow", "deny"])
def test_empty_list_key_is_empty(key):
    assert getattr(parse(f"{key}:\n"), key) == ()


def test_full_config_values_and_types():
    cfg = parse(textwrap.dedent("""\
        interfaces: [eth0, "bond0.100"]
        mode: protect
        xdp_mode: native
        protect:
          ports: [443, 80]
        allow: [192.0.2.0/24, "2001:db8::/32", 198.51.100.7]
        deny: [203.0.113.0/24]
        secret:
          file: /etc/synguard/secret
          rotate_every: 2d
        metrics:
          listen: "[::1]:9100"
        control:
          socket: /tmp/sg.sock
        log:
          format: json
        """))
    assert cfg.interfaces == ("eth0", "bond0.100")
    assert cfg.mode == Mode.PROTECT and cfg.xdp_mode == "native"
    assert cfg.protect.ports == (80, 443)  # sorted
    assert cfg.allow == (ipaddress.ip_network("192.0.2.0/24"), ipaddress.ip_network("2001:db8::/32"),
                         ipaddress.ip_network("198.51.100.7/32"))
    assert all(isinstance(n, (ipaddress.IPv4Network, ipaddress.IPv6Network)) for n in cfg.allow + cfg.deny)
    assert cfg.secret == config.SecretConfig(file="/etc/synguard/secret", rotate_every=172800)
    assert (cfg.metrics.listen, cfg.metrics.host, cfg.metrics.port) == ("[::1]:9100", "::1", 9100)
    assert cfg.control.socket == "/tmp/sg.sock"
    assert cfg.log.format == "json"


def test_auto_mode_is_accepted():
    assert parse("mode: auto").mode == Mode.AUTO


# -- the example file -------------------------------------------------------------------

def test_example_file_loads_and_shows_the_defaults():
    assert config.load(EXAMPLE) == config.DEFAULTS


def _key_paths(node: yaml.Node, prefix: str = "") -> list[str]:
    out = []
    for k, v in node.value:
        if isinstance(v, yaml.MappingNode):
            out += _key_paths(v, f"{prefix}{k.value}.")
        else:
            out.append(prefix + k.value)
    return out


def test_example_file_documents_every_key_with_a_comment():
    text = EXAMPLE.read_text()
    root = yaml.compose(text)
    assert sorted(_key_paths(root)) == sorted(config.schema_keys())
    lines = text.splitlines()
    for k, v in _all_leaf_key_nodes(root):
        above = lines[k.start_mark.line - 1].strip()
        assert above.startswith("#"), f"no comment above {k.value!r} (line {k.start_mark.line + 1})"


def _all_leaf_key_nodes(node):
    for k, v in node.value:
        if isinstance(v, yaml.MappingNode):
            yield from _all_leaf_key_nodes(v)
        else:
            yield k, v


# -- unknown keys -------------------------------------------------------------------------

def test_unknown_key_suggests_the_close_one():
    assert one_error("mdoe: protect\n") == "mdoe (line 1): unknown key 'mdoe'; did you mean 'mode'?"


def test_unknown_nested_key_suggests_with_full_path():
    e = one_error("""\
        protect:
          port: [80]
        """)
    assert e == "protect.port (line 2): unknown key 'port'; did you mean 'ports'?"


def test_unknown_key_without_close_match_lists_valid_keys():
    e = one_error("protect:\n  zzz: 1\n")
    assert e == "protect.zzz (line 2): unknown key 'zzz'; valid keys under protect: ports"


REMOVED_TTL = ("protect.allow_ttl (line 3): removed with the RST challenge (no source is remembered any more: "
               "every new connection completes through its own SYN cookie); ignored, delete the line")


def test_removed_allow_ttl_is_a_warning_not_an_error():
    """An upgraded host keeps its edited conffile (the shipped one listed allow_ttl: 1h):
    the file still loads, with one warning line naming the key, its line and why."""
    old = "mode: protect\nprotect:\n  allow_ttl: 1h\n  ports: [80]\n"
    cfg = parse(old)
    assert cfg == parse("mode: protect\nprotect:\n  ports: [80]\n")
    assert cfg.warnings == (REMOVED_TTL,)
    assert parse("protect: {ports: [80]}\n").warnings == ()
    # Only that key: a typo of it, or the key elsewhere, is still an error.
    assert one_error("protect:\n  allow_tl: 1h\n").startswith("protect.allow_tl (line 2): unknown key")
    assert one_error("detection:\n  allow_ttl: 1h\n").startswith("detection.allow_ttl (line 2): unknown key")
    # ... and real errors still fail the file.
    assert one_error(old.replace("[80]", "[0]")).startswith("protect.ports[0] (line 4)")


def test_check_config_warns_about_allow_ttl_and_passes(tmp_path):
    p = tmp_path / "old.yaml"
    p.write_text("mode: observe\nprotect:\n  allow_ttl: 1h\n")
    r, _ = _check_config(p)
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines() == [f"{p}: warning: {REMOVED_TTL}"]
    assert r.stdout.startswith(f"{p}: OK")


def test_unknown_detection_key_suggests_the_close_one():
    e = one_error("detection:\n  threshold: 5\n")
    assert e == "detection.threshold (line 2): unknown key 'threshold'; did you mean 'cusum_threshold'?"


def test_duplicate_key():
    assert one_error("mode: observe\nmode: protect\n") == "mode (line 2): duplicate key (first at line 1)"


def test_non_string_key():
    e = one_error("on: 1\n")
    assert e.startswith("line 1: keys must be strings, got boolean true")


# -- detection ------------------------------------------------------------------------------

def test_detection_values_and_types():
    d = parse(textwrap.dedent("""\
        detection:
          floor_pps: 5000
          baseline_multiple: 4
          ewma_alpha: 0.1
          cusum_drift: 0
          cusum_threshold: 2.5
          clear_ticks: 10
          hold: 2m
          spoofed_distinct_ratio: 0.8
          spoofed_new_ratio: 0
          single_source_share: 1
          fast_trigger_pps: 0
          source_deny: 1h
        """)).detection
    assert d == config.DetectionConfig(5000, 4.0, 0.1, 0.0, 2.5, 10, 120, 0.8, 0.0, 1.0, 0, 3600)
    assert isinstance(d.baseline_multiple, float) and isinstance(d.floor_pps, int)


@pytest.mark.parametrize("text, expected", [
    ("floor_pps: 0", "detection.floor_pps (line 2): 0 out of range 1-1000000000 SYN/s"),
    ("floor_pps: 2000.5", "detection.floor_pps (line 2): expected an integer 1-1000000000 SYN/s, got float 2000.5"),
    ("floor_pps: 1e5", "detection.floor_pps (line 2): expected an integer 1-1000000000 SYN/s, got string '1e5'"),
    ("floor_pps: 0x10", "detection.floor_pps (line 2): '0x10' is not a plain decimal integer "
                        "(YAML reads it as 16); write it in decimal"),
    ("baseline_multiple: 0.5", "detection.baseline_multiple (line 2): 0.5 out of range: must be >= 1 and <= 1000"),
    ("baseline_multiple: yes", "detection.baseline_multiple (line 2): expected a number >= 1 and <= 1000, got "
                               "boolean true (YAML reads yes/no/on/off/true/false as booleans; quote it)"),
    ("ewma_alpha: 0", "detection.ewma_alpha (line 2): 0 out of range: must be > 0 and <= 1"),
    ("ewma_alpha: 1.5", "detection.ewma_alpha (line 2): 1.5 out of range: must be > 0 and <= 1"),
    ("ewma_alpha: .nan", "detection.ewma_alpha (line 2): nan is not a finite number"),
    ("cusum_drift: -1", "detection.cusum_drift (line 2): -1 out of range: must be >= 0 and <= 1000"),
    ("cusum_threshold: 0.0", "detection.cusum_threshold (line 2): 0 out of range: must be > 0 and <= 1e+06"),
    ("cusum_threshold: .inf", "detection.cusum_threshold (line 2): inf is not a finite number"),
    ("clear_ticks: 0", "detection.clear_ticks (line 2): 0 out of range 1-3600 ticks"),
    ("hold: 0", "detection.hold (line 2): duration must be positive, got 0"),
    ("hold: soon", "detection.hold (line 2): invalid duration 'soon': use seconds or e.g. 90s, 10m, 1h, 2d, 1h30m"),
    ("spoofed_distinct_ratio: 0", "detection.spoofed_distinct_ratio (line 2): 0 out of range: must be > 0 and <= 1"),
    ("spoofed_new_ratio: 1.01", "detection.spoofed_new_ratio (line 2): 1.01 out of range: must be >= 0 and <= 1"),
    ("single_source_share: '0.5'", "detection.single_source_share (line 2): expected a number > 0 and <= 1, "
                                   "got string '0.5'"),
    ("fast_trigger_pps: -1", "detection.fast_trigger_pps (line 2): -1 out of range 0-4294967295 SYN/s (0: off)"),
    ("source_deny: 1x", "detection.source_deny (line 2): invalid duration '1x': use seconds or e.g. 90s, 10m, "
                        "1h, 2d, 1h30m"),
])
def test_bad_detection_value(text, expected):
    assert one_error(f"detection:\n  {text}\n") == expected


def test_detection_fast_trigger_under_the_floor_is_refused():
    e = one_error("detection:\n  floor_pps: 5000\n  fast_trigger_pps: 4000\n")
    assert e.startswith("detection.fast_trigger_pps (line 3): fast_trigger_pps (4000) is below floor_pps (5000)")
    # a floor above the default ceiling names the floor, the only key given
    e = one_error("detection:\n  floor_pps: 200000\n")
    assert e.startswith("detection.floor_pps (line 2): fast_trigger_pps (100000) is below floor_pps (200000)")
    # off is fine with any floor
    assert parse("detection: {floor_pps: 200000, fast_trigger_pps: 0}").detection.floor_pps == 200000


def test_detection_errors_all_at_once_with_lines():
    errs = errors_of("""\
        mode: protect
        detection:
          floor_pps: -5
          ewma_alpha: 2
          clear_tick: 3
        """)
    assert errs == [
        "detection.floor_pps (line 3): -5 out of range 1-1000000000 SYN/s",
        "detection.ewma_alpha (line 4): 2 out of range: must be > 0 and <= 1",
        "detection.clear_tick (line 5): unknown key 'clear_tick'; did you mean 'clear_ticks'?",
    ]


# -- wrong types ----------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("mode: 1\n", "mode (line 1): expected one of observe, protect, auto, got integer 1"),
    ("interfaces: eth0\n", "interfaces (line 1): expected a list of interface names, got string 'eth0'"),
    ("protect: [80]\n", "protect (line 1): expected a mapping with keys ports, got a list"),
    ("protect:\n  ports: \"80,443\"\n", "protect.ports (line 2): expected a list of ports 1-65535, got string '80,443'"),
    ("protect:\n  ports: [\"80\"]\n", "protect.ports[0] (line 2): expected a port number 1-65535, got string '80'"),
    ("allow: [10]\n", "allow[0] (line 1): expected a CIDR like 192.0.2.0/24 or 2001:db8::/32, got integer 10"),
    ("secret:\n  file: 5\n", "secret.file (line 2): expected the absolute path of a secret file or null, got integer 5"),
    ("log:\n  format: [json]\n", "log.format (line 2): expected one of human, json, got a list"),
    ("metrics:\n  listen: 9046\n",
     "metrics.listen (line 2): expected a \"host:port\" string, or \"\" / null to disable metrics, got integer 9046"),
])
def test_wrong_type(text, expected):
    assert one_error(text) == expected


def test_yaml_boolean_gotcha_is_explained():
    e = one_error("mode: off\n")
    assert e.startswith("mode (line 1): expected one of observe, protect, auto, got boolean false")
    assert "quote it" in e


def test_unknown_tag_is_an_error_not_a_crash():
    assert one_error("mode: !weird observe\n").startswith("mode (line 1): cannot read value:")


# -- ports ------------------------------------------------------------------------------------

@pytest.mark.parametrize("port", [0, 65536, 70000, -1])
def test_port_out_of_range(port):
    assert one_error(f"protect:\n  ports: [{port}]\n") == \
        f"protect.ports[0] (line 2): port {port} out of range 1-65535"


def test_bad_port_path_and_line_in_a_block_list():
    e = one_error("""\
        mode: protect
        protect:
          ports:
            - 80
            - 443
            - 70000
        """)
    assert e == "protect.ports[2] (line 6): port 70000 out of range 1-65535"


def test_duplicate_port_is_rejected_naming_the_first():
    e = one_error("protect:\n  ports:\n    - 443\n    - 80\n    - 443\n")
    assert e == "protect.ports[2] (line 5): 443 listed twice (first at protect.ports[0], line 3)"


def test_octal_looking_port_is_rejected():
    # YAML 1.1 reads 0443 as octal 291: never silently protect the wrong port.
    e = one_error("protect:\n  ports: [0443]\n")
    assert "'0443' is not a plain decimal integer (YAML reads it as 291)" in e


def test_port_boolean_is_not_an_integer():
    assert "got boolean true" in one_error("protect:\n  ports: [true]\n")


# -- durations ---------------------------------------------------------------------------------

@pytest.mark.parametrize("value, seconds", [
    ("45", 45), ("'45'", 45), ("90s", 90), ("10m", 600), ("1h", 3600), ("2d", 172800),
    ("1h30m", 5400), ("1d2h3m4s", 93784), ("1_000", 1000),
])
def test_duration_forms(value, seconds):
    assert parse(f"detection:\n  hold: {value}\n").detection.hold == seconds


@pytest.mark.parametrize("value, message", [
    ("0", "duration must be positive, got 0"),
    ("0s", "duration must be positive, got '0s'"),
    ("-5", "duration must be positive, got -5"),
    ("5x", "invalid duration '5x'"),
    ("1m1h", "invalid duration '1m1h'"),
    ("-5m", "invalid duration '-5m'"),
    ("'1 h'", "invalid duration '1 h'"),
    ("''", "invalid duration ''"),
    ("1.5", "expected a duration (seconds, or e.g. 90s, 10m, 1h30m), got float 1.5"),
    ("yes", "got boolean true"),
    ("1:30", "'1:30' is not a plain decimal integer (YAML reads it as 90)"),
    ("400d", "400d is above the maximum 365d"),
])
def test_bad_duration(value, message):
    e = one_error(f"detection:\n  hold: {value}\n")
    assert e.startswith("detection.hold (line 2): ") and message in e, e


def test_rotation_faster_than_a_minute_is_refused_with_the_reason():
    e = one_error("secret:\n  rotate_every: 30s\n")
    assert e.startswith("secret.rotate_every (line 2): 30s is below the minimum 1m")
    assert "32 s" in e
    assert parse("secret:\n  rotate_every: 60\n").secret.rotate_every == 60


def test_duration_helpers_are_inverse():
    for s in (1, 59, 60, 61, 3600, 5400, 86400, 93784, config.DURATION_MAX_S):
        assert config.parse_duration(config.format_duration(s)) == s


# -- CIDRs --------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, suggestion", [
    ("10.1.2.3/8", "10.0.0.0/8"),
    ("192.0.2.1/24", "192.0.2.0/24"),
    ("2001:db8::1/32", "2001:db8::/32"),
])
def test_cidr_with_host_bits_suggests_the_network(text, suggestion):
    e = one_error(f"deny:\n  - \"{text}\"\n")
    assert e == f"deny[0] (line 2): '{text}' has host bits set; did you mean '{suggestion}'?"


@pytest.mark.parametrize("text", ["bogus", "10.0.0.0/33", "300.1.1.1/32", "2001:db8::/129", "10.0.0.0/8 "])
def test_bad_cidr(text):
    e = one_error(f"allow: [\"{text}\"]\n")
    assert e.startswith(f"allow[0] (line 1): '{text}' is not an IPv4/IPv6 network")


def test_same_network_in_allow_and_deny():
    e = one_error("allow: [10.0.0.0/8]\ndeny:\n  - 192.0.2.0/24\n  - 10.0.0.0/8\n")
    assert e == "deny[1] (line 4): 10.0.0.0/8 is also in allow[0]; keep it in one list"


def test_overlapping_but_different_networks_are_fine():
    cfg = parse("allow: [10.0.0.0/8]\ndeny: [10.1.0.0/16]\n")
    assert cfg.deny == (ipaddress.ip_network("10.1.0.0/16"),)


def test_duplicate_cidr():
    assert "listed twice" in one_error("allow: [10.0.0.0/8, 10.0.0.0/8]\n")


def test_too_many_cidrs():
    nets = ", ".join(f"10.{i // 256}.{i % 256}.0/24" for i in range(config.abi.CIDR_SIZE + 1))
    e = one_error(f"deny: [{nets}]\n")
    assert e == f"deny (line 1): {config.abi.CIDR_SIZE + 1} entries; the data path holds at most {config.abi.CIDR_SIZE}"


# -- enumerations -------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("mode: protec\n", "mode (line 1): 'protec' is not one of observe, protect, auto; did you mean 'protect'?"),
    ("mode: Protect\n", "mode (line 1): 'Protect' is not one of observe, protect, auto; did you mean 'protect'?"),
    ("mode: block\n", "mode (line 1): 'block' is not one of observe, protect, auto"),
    ("xdp_mode: skb\n", "xdp_mode (line 1): 'skb' is not one of auto, native, generic"),
    ("log:\n  format: jsno\n", "log.format (line 2): 'jsno' is not one of human, json; did you mean 'json'?"),
])
def test_bad_choice(text, expected):
    assert one_error(text) == expected


# -- interfaces ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name, message", [
    ("''", "must be 1-15 characters"),
    ("abcdefghijklmnop", "must be 1-15 characters"),
    ("a/b", "may not contain '/', ':' or whitespace"),
    ("'eth 0'", "may not contain '/', ':' or whitespace"),
    ("'eth0:1'", "may not contain '/', ':' or whitespace"),
    ("..", "nor be '.' or '..'"),
])
def test_bad_interface(name, message):
    e = one_error(f"interfaces:\n  - {name}\n")
    assert e.startswith("interfaces[0] (line 2): interface name") and message in e


def test_fifteen_character_interface_is_fine():
    assert parse("interfaces: [abcdefghijklmno]\n").interfaces == ("abcdefghijklmno",)


def test_duplicate_interface():
    assert one_error("interfaces: [eth0, eth0]\n") == \
        "interfaces[1] (line 1): eth0 listed twice (first at interfaces[0], line 1)"


# -- metrics.listen, paths ----------------------------------------------------------------------

@pytest.mark.parametrize("value, host, port", [
    ("127.0.0.1:9046", "127.0.0.1", 9046),
    ("0.0.0.0:9046", "0.0.0.0", 9046),
    ("[::]:9046", "::", 9046),
    ("[::1]:9999", "::1", 9999),
    ("localhost:1", "localhost", 1),
    ("metrics.example.org:65535", "metrics.example.org", 65535),
])
def test_good_listen(value, host, port):
    m = parse(f"metrics:\n  listen: \"{value}\"\n").metrics
    assert (m.listen, m.host, m.port, m.enabled) == (value, host, port, True)


@pytest.mark.parametrize("value", ["''", "null", "~", ""])
def test_listen_empty_or_null_disables_metrics(value):
    m = parse(f"metrics:\n  listen: {value}\n").metrics
    assert (m.listen, m.host, m.port, m.enabled) == (None, None, None, False)


@pytest.mark.parametrize("value, message", [
    ("::1:9046", "an IPv6 address goes in brackets: [::1]:9046"),
    ("127.0.0.1", "no port"),
    (":9046", "no host"),
    ("127.0.0.1:0", "port '0' is not a number 1-65535"),
    ("127.0.0.1:65536", "port '65536' is not a number 1-65535"),
    ("127.0.0.1:http", "port 'http' is not a number 1-65535"),
    ("300.0.0.1:9046", "'300.0.0.1' is not an IPv4 address"),
    ("[127.0.0.1]:9046", "in brackets is not an IPv6 address"),
    ("[::1]9046", "write HOST:PORT"),
    ("bad_host!:9046", "is not an IP address or host name"),
])
def test_bad_listen(value, message):
    e = one_error(f"metrics:\n  listen: \"{value}\"\n")
    assert e.startswith("metrics.listen (line 2): ") and message in e, e


def test_metrics_config_validates_when_built_directly():
    assert config.MetricsConfig("[::1]:9046").port == 9046
    with pytest.raises(ValueError):
        config.MetricsConfig("nonsense")


def test_relative_secret_file_is_refused():
    assert one_error("secret:\n  file: secret.key\n") == "secret.file (line 2): 'secret.key' is not an absolute path"


def test_control_socket_path_too_long_for_sun_path():
    e = one_error(f"control:\n  socket: /{'s' * 120}\n")
    assert e == "control.socket (line 2): path is 121 bytes; a unix socket path holds at most 107"


# -- YAML and file errors -----------------------------------------------------------------------

def test_yaml_syntax_error_names_line_and_column():
    e = one_error("mode: observe\nprotect:\n  ports: [80\n")
    assert e.startswith("line 4, column 1: not valid YAML: ")


def test_yaml_tab_indentation():
    assert "not valid YAML" in one_error("protect:\n\tports: [80]\n")


def test_two_documents_are_refused():
    assert "another document" in one_error("mode: observe\n---\nmode: protect\n")


@pytest.mark.parametrize("text, got", [
    ("- eth0\n", "got a list"),
    ("observe\n", "got string 'observe'"),
    ("42\n", "got integer 42"),
])
def test_top_level_not_a_mapping_is_one_clean_line(text, got):
    e = one_error(text)
    assert e.startswith("line 1: the top level must be a mapping of keys (interfaces, mode,") and e.endswith(got)


def test_missing_file(tmp_path):
    p = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as ei:
        config.load(p)
    assert str(ei.value) == f"{p}: no such file"
    assert ei.value.errors == ["no such file"] and ei.value.source == str(p)


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(ConfigError, match="is a directory"):
        config.load(tmp_path)


def test_permission_denied_for_real(tmp_path):
    """Root reads mode-000 files, so load it as nobody (setpriv, util-linux)."""
    import subprocess
    import sys

    d = tmp_path / "world"
    d.mkdir()
    p = d / "c.yaml"
    p.write_text("mode: observe\n")
    p.chmod(0)
    for parent in [d, *d.parents]:
        if parent == tmp_path.parents[-1]:
            break
        parent.chmod(parent.stat().st_mode | 0o005)  # let nobody reach the file, not read it
    code = "import sys; from synguard import config\ntry:\n config.load(sys.argv[1])\nexcept config.ConfigError as e:\n print(e)"
    r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", code,
                        str(p)], capture_output=True, text=True, timeout=60,
                       cwd=str(__import__("pathlib").Path(config.__file__).parents[1]))
    assert "permission denied (running as uid 65534)" in r.stdout, r.stderr


def test_not_utf8(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_bytes(b"mode: \xff\xfe observe\n")
    with pytest.raises(ConfigError) as ei:
        config.load(p)
    assert str(ei.value) == f"{p}: not YAML: not UTF-8 text (bad byte at offset 6)"


def test_binary_garbage(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_bytes(b"mode: observe\x00\x01\n")
    with pytest.raises(ConfigError) as ei:
        config.load(p)
    assert len(ei.value.errors) == 1 and "not valid YAML" in str(ei.value)


def test_load_not_a_mapping(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("[eth0, eth1]\n")
    with pytest.raises(ConfigError) as ei:
        config.load(p)
    assert str(ei.value).startswith(f"{p}: line 1: the top level must be a mapping")
    assert "\n" not in str(ei.value)


# -- all errors at once -------------------------------------------------------------------------

def test_all_errors_reported_together_with_lines(tmp_path):
    p = tmp_path / "synguard.yaml"
    p.write_text(textwrap.dedent("""\
        interfaces: [eth0]
        mode: protec
        protect:
          ports:
            - 80
            - 70000
        secret: {rotate_every: 5x}
        allow:
          - 10.0.0.1/8
        metrics:
          listen: "::1:9046"
        colour: blue
        """))
    with pytest.raises(ConfigError) as ei:
        config.load(p)
    assert ei.value.errors == [
        "mode (line 2): 'protec' is not one of observe, protect, auto; did you mean 'protect'?",
        "protect.ports[1] (line 6): port 70000 out of range 1-65535",
        "secret.rotate_every (line 7): invalid duration '5x': use seconds or e.g. 90s, 10m, 1h, 2d, 1h30m",
        "allow[0] (line 9): '10.0.0.1/8' has host bits set; did you mean '10.0.0.0/8'?",
        "metrics.listen (line 11): '::1:9046': an IPv6 address goes in brackets: [::1]:9046",
        "colour (line 12): unknown key 'colour'; valid keys: interfaces, mode, xdp_mode, protect, allow, deny, "
        "secret, metrics, control, log, detection",
    ]
    lines = str(ei.value).splitlines()
    assert len(lines) == 6
    assert all(line.startswith(f"{p}: ") for line in lines)


def test_a_flood_of_errors_is_capped():
    errs = errors_of("interfaces: [" + ", ".join(["a/b"] * 150) + "]\n")
    assert len(errs) == 101 and errs[-1] == "... and 50 more errors"


def test_config_error_is_a_value_error_and_not_double_prefixed():
    e = ConfigError(["mode (line 1): bad"], source="a.yaml")
    assert isinstance(e, ValueError)
    assert str(e) == "a.yaml: mode (line 1): bad"
    again = ConfigError([str(e)], source="a.yaml")
    assert str(again) == "a.yaml: mode (line 1): bad"


# -- override() -------------------------------------------------------------------------------

def test_override_none_keeps_everything():
    cfg = parse("interfaces: [eth0]\nmode: protect\nprotect: {ports: [80]}\ndetection: {hold: 5m}\n")
    assert config.override(cfg) == cfg


def test_override_replaces_given_values_only():
    cfg = parse("interfaces: [eth0]\nprotect: {ports: [80]}\nlog: {format: json}\n")
    new = config.override(cfg, interfaces=["eth1", "eth2"], mode="protect", ports=[443, 80],
                          xdp_mode="generic")
    assert new.interfaces == ("eth1", "eth2")
    assert new.mode == Mode.PROTECT and new.xdp_mode == "generic"
    assert new.protect == config.ProtectConfig(ports=(80, 443))
    assert new.log.format == "json"  # untouched
    assert cfg.protect.ports == (80,) and cfg.mode == Mode.OBSERVE  # original unchanged


def test_override_empty_ports_means_every_port():
    cfg = parse("protect: {ports: [80]}\n")
    assert config.override(cfg, ports=[]).protect.ports == ()
    with pytest.raises(TypeError):
        config.override(cfg, allow_ttl=90)  # removed with the RST challenge


def test_override_metrics_control_log():
    new = config.override(config.DEFAULTS, metrics_listen="[::1]:9100", control_socket="/tmp/c.sock",
                          log_format="json")
    assert (new.metrics.host, new.metrics.port) == ("::1", 9100)
    assert new.control.socket == "/tmp/c.sock" and new.log.format == "json"
    assert config.override(config.DEFAULTS, metrics_listen="").metrics.enabled is False
    with pytest.raises(ConfigError) as ei:
        config.override(config.DEFAULTS, metrics_listen="::1:9100", log_format="xml")
    assert [e.split(":")[0] for e in ei.value.errors] == ["--metrics-listen", "--log-format"]


def test_override_is_validated_and_names_the_flags():
    with pytest.raises(ConfigError) as ei:
        config.override(config.DEFAULTS, mode="block", ports=[70000], interfaces=["a/b"])
    assert ei.value.source == "command line"
    assert ei.value.errors == [
        "--interface[0]: interface name 'a/b' may not contain '/', ':' or whitespace, nor be '.' or '..'",
        "--mode: 'block' is not one of observe, protect, auto",
        "--ports[0]: port 70000 out of range 1-65535",
    ]


# -- immutability, to_dict ----------------------------------------------------------------------

def test_config_is_frozen():
    cfg = parse("protect: {ports: [80]}\n")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.mode = "protect"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.protect.ports = (443,)  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.metrics.port = 1  # type: ignore[misc]
    with pytest.raises(AttributeError):
        cfg.protect.ports.append(443)  # type: ignore[attr-defined]
    assert isinstance(cfg.interfaces, tuple) and isinstance(cfg.allow, tuple)
    assert hash(cfg) == hash(parse("protect: {ports: [80]}\n"))


def test_to_dict_is_json_and_round_trips():
    cfg = parse("allow: [192.0.2.0/24, '2001:db8::/32']\nmetrics: {listen: ''}\nprotect: {ports: [80]}\n")
    d = cfg.to_dict()
    assert d["allow"] == ["192.0.2.0/24", "2001:db8::/32"]
    assert d["metrics"] == {"listen": None}
    assert d["protect"] == {"ports": [80]} and "warnings" not in d
    json.dumps(d)
    assert parse(yaml.safe_dump(d)) == cfg
    assert parse(json.dumps(d)) == cfg  # JSON is YAML


# -- secret files -------------------------------------------------------------------------------

SECRET = bytes(range(1, 17))


def secret_file(tmp_path: Path, data: bytes, mode: int = 0o600) -> Path:
    p = tmp_path / "secret"
    p.write_bytes(data)
    p.chmod(mode)
    return p


@pytest.mark.parametrize("mode", [0o600, 0o400, 0o700])
def test_secret_raw_bytes_with_strict_mode(tmp_path, mode):
    assert secret.secret_file_check(secret_file(tmp_path, SECRET, mode)) == SECRET


@pytest.mark.parametrize("data", [SECRET.hex().encode(), SECRET.hex().encode() + b"\n",
                                  SECRET.hex().upper().encode() + b"\n"])
def test_secret_hex(tmp_path, data):
    assert secret.secret_file_check(secret_file(tmp_path, data)) == SECRET


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o666])
def test_secret_readable_by_others_is_refused_naming_the_mode(tmp_path, mode):
    p = secret_file(tmp_path, SECRET, mode)
    with pytest.raises(ConfigError) as ei:
        secret.secret_file_check(p)
    assert f"mode {mode:04o}" in str(ei.value) and "0600 or stricter" in str(ei.value)
    assert str(ei.value).startswith(f"{p}: ")


@pytest.mark.parametrize("data, message", [
    (b"", "has 0 bytes"),
    (SECRET[:15], "has 15 bytes"),
    (SECRET + b"\n", "has 17 bytes"),
    (SECRET.hex()[:31].encode(), "has 31 bytes"),
    (SECRET.hex().encode() + b"\n\n", "has 34 bytes"),
    ((SECRET * 2).hex().encode(), "has 64 bytes"),
    (b"z" * 32, "has 32 bytes but they are not 32 hex characters"),
    (b" " + SECRET.hex()[1:].encode() + b"\n", "are not 32 hex characters"),
    (b"0123456789abcdef", "16 hex characters (64 bits)"),
    (bytes(16), "all-zero"),
    (b"x" * 5000, "has 100 or more bytes"),
])
def test_secret_wrong_content(tmp_path, data, message):
    with pytest.raises(ConfigError) as ei:
        secret.secret_file_check(secret_file(tmp_path, data))
    assert message in str(ei.value)
    assert "\n" not in str(ei.value)


def test_secret_missing(tmp_path):
    with pytest.raises(ConfigError, match="secret file does not exist; create one with"):
        secret.secret_file_check(tmp_path / "nope")


def test_secret_not_a_regular_file(tmp_path):
    d = tmp_path / "dir"
    d.mkdir(mode=0o700)
    with pytest.raises(ConfigError, match="not a regular file"):
        secret.secret_file_check(d)


def test_secret_fifo_does_not_hang(tmp_path):
    p = tmp_path / "fifo"
    os.mkfifo(p, 0o600)
    result = []
    t = threading.Thread(target=lambda: result.append(_raises(secret.secret_file_check, p)), daemon=True)
    t.start()
    t.join(5)
    assert not t.is_alive(), "secret_file_check blocked on a FIFO"
    assert "not a regular file" in result[0]


def _raises(fn, *args) -> str:
    try:
        fn(*args)
    except ConfigError as e:
        return str(e)
    return ""


def test_secret_through_symlink_checks_the_target(tmp_path):
    target = secret_file(tmp_path, SECRET)
    link = tmp_path / "link"
    link.symlink_to(target)
    assert secret.secret_file_check(link) == SECRET
    target.chmod(0o644)
    with pytest.raises(ConfigError, match="mode 0644"):
        secret.secret_file_check(link)


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_secret_owned_by_another_user_is_refused(tmp_path):
    p = secret_file(tmp_path, SECRET)
    os.chown(p, 12345, 12345)
    with pytest.raises(ConfigError, match="owned by uid 12345"):
        secret.secret_file_check(p)


# -- property: any valid config dict survives YAML ------------------------------------------------

IFNAME_CHARS = string.ascii_letters + string.digits + "-_.@"
ifnames = st.text(IFNAME_CHARS, min_size=1, max_size=15).filter(lambda s: s not in (".", ".."))


def _net(version: int):
    bits = 32 if version == 4 else 128
    return st.builds(lambda a, p: ipaddress.ip_network(f"{a}/{p}", strict=False),
                     st.ip_addresses(v=version), st.integers(0, bits))


nets = st.one_of(_net(4), _net(6))


def durations(min_s: int = 1):
    """(YAML value, seconds): int, digit string, or unit string like 1h30m."""
    return st.integers(min_s, config.DURATION_MAX_S).flatmap(lambda s: st.sampled_from(
        [(s, s), (str(s), s), (config.format_duration(s), s)]))


hosts = st.one_of(
    st.ip_addresses(v=4).map(lambda a: (str(a), str(a))),
    st.ip_addresses(v=6).map(lambda a: (f"[{a}]", str(a))),
    st.sampled_from([("localhost", "localhost"), ("metrics.example.org", "metrics.example.org")]),
)
listens = st.one_of(
    st.sampled_from([(None, None), ("", None)]),
    st.tuples(hosts, st.integers(1, 65535)).map(lambda hp: (f"{hp[0][0]}:{hp[1]}", f"{hp[0][0]}:{hp[1]}")),
)
paths = st.lists(st.text(string.ascii_letters + string.digits + "._-", min_size=1, max_size=12),
                 min_size=1, max_size=4).map(lambda parts: "/" + "/".join(parts))


def pair(strategy, expected=lambda x: x):
    return strategy.map(lambda v: (v, expected(v)))


def section(**keys):
    """fixed_dictionaries of (yaml, expected) pairs, every key optional."""
    return st.fixed_dictionaries({}, optional=keys)


@st.composite
def valid_configs(draw):
    doc, want = {}, {}

    def put(key, strat, into_doc=doc, into_want=want):
        if draw(st.booleans()):
            into_doc[key], into_want[key] = draw(strat)

    put("interfaces", pair(st.lists(ifnames, unique=True, max_size=4), tuple))
    put("mode", pair(st.sampled_from(Mode.labels()), Mode.parse))
    put("xdp_mode", pair(st.sampled_from(config.XDP_MODES)))
    cidrs = draw(st.lists(nets, unique=True, max_size=8))
    cut = draw(st.integers(0, len(cidrs)))
    if draw(st.booleans()):
        doc["allow"], want["allow"] = [str(n) for n in cidrs[:cut]], tuple(cidrs[:cut])
    if draw(st.booleans()):
        doc["deny"], want["deny"] = [str(n) for n in cidrs[cut:]], tuple(cidrs[cut:])
    for name, cls, keys in (
        ("protect", config.ProtectConfig, {
            "ports": pair(st.lists(st.integers(1, 65535), unique=True, max_size=8), lambda p: tuple(sorted(p)))}),
        ("secret", config.SecretConfig, {
            "file": st.one_of(st.just((None, None)), pair(paths)),
            "rotate_every": durations(config.ROTATE_MIN_S)}),
        ("metrics", config.MetricsConfig, {"listen": listens}),
        ("control", config.ControlConfig, {"socket": pair(paths)}),
        ("log", config.LogConfig, {"format": pair(st.sampled_from(config.LOG_FORMATS))}),
        ("detection", config.DetectionConfig, {
            "baseline_multiple": pair(st.floats(1, 1000), float),
            "ewma_alpha": pair(st.floats(0, 1, exclude_min=True), float),
            "cusum_drift": pair(st.one_of(st.integers(0, 1000), st.floats(0, 1000)), float),
            "cusum_threshold": pair(st.floats(0, 1e6, exclude_min=True), float),
            "clear_ticks": pair(st.integers(1, 3600)),
            "hold": durations(),
            "spoofed_distinct_ratio": pair(st.floats(0, 1, exclude_min=True)),
            "spoofed_new_ratio": pair(st.floats(0, 1)),
            "single_source_share": pair(st.floats(0, 1, exclude_min=True)),
            "source_deny": durations(),
            # floor_pps and fast_trigger_pps are drawn together below (fast >= floor, or 0)
        }),
    ):
        if draw(st.booleans()):
            sub = draw(section(**keys))
            doc[name] = {k: v[0] for k, v in sub.items()}
            if name == "detection" and draw(st.booleans()):
                floor = draw(st.integers(1, config.PPS_MAX))
                fast = draw(st.one_of(st.just(0), st.integers(floor, config.U32_MAX))) if floor <= config.U32_MAX \
                    else 0
                sub["floor_pps"], sub["fast_trigger_pps"] = (floor, floor), (fast, fast)
            doc[name] = {k: v[0] for k, v in sub.items()}
            want[name] = cls(**{k: v[1] for k, v in sub.items()})
    return doc, Config(**want)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(valid_configs(), st.booleans())
def test_property_valid_config_dict_round_trips_through_yaml(case, flow):
    doc, expected = case
    text = yaml.safe_dump(doc, default_flow_style=flow, sort_keys=False)
    cfg = parse(text)
    assert cfg == expected
    # and the result's own dict form parses back to the same Config
    assert parse(yaml.safe_dump(cfg.to_dict())) == cfg


@given(st.lists(st.integers(1, 65535), min_size=1, max_size=10, unique=True), st.data())
def test_property_bad_port_error_names_index_and_line(ports, data):
    i = data.draw(st.integers(0, len(ports) - 1))
    ports[i] = data.draw(st.integers(65536, 10**6))
    text = "mode: protect\nprotect:\n  ports:\n" + "".join(f"    - {p}\n" for p in ports)
    errs = errors_of(text)
    assert errs == [f"protect.ports[{i}] (line {4 + i}): port {ports[i]} out of range 1-65535"]


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(
    st.text(max_size=200),
    st.tuples(st.integers(0, 2000), st.integers(0, 40), st.text(max_size=20)),  # mangled example file
))
def test_property_any_text_gives_a_config_or_clean_errors(case):
    if isinstance(case, tuple):
        base = EXAMPLE.read_text()
        at, cut, insert = case
        case = base[:at] + insert + base[at + cut:]
    try:
        parse(case)
    except ConfigError as e:
        assert e.errors and all(isinstance(m, str) and m and "\n" not in m for m in e.errors)


# -- hostile input (issue 11, findings 4 and 5): one line, fast, never a traceback ------
# Each case runs `synguard check-config` (the unit's ExecStartPre) in a child with
# its address space and time bounded: a regression fails here, it cannot eat the box.

import resource
import subprocess
import sys
import time


def _check_config(path, timeout=20.0):
    def limits():
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))  # the 484-byte bomb took 1.5 GB
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "synguard.cli", "check-config", str(path)], capture_output=True,
                       text=True, timeout=timeout, preexec_fn=limits)
    return r, time.monotonic() - t0


def merge_bomb(levels: int, fan: int, size: int) -> str:
    """A "<<" merge-key bomb of exactly size bytes under `protect:`: each level merges
    fan copies of the level below (anchored at its first use), fan**levels keys."""
    body = "{" + ", ".join(f"k{i}: 0" for i in range(fan)) + "}"
    for lv in range(1, levels):
        name = f"l{lv}"
        body = f"{{<<: [&{name} {body}, " + ", ".join([f"*{name}"] * (fan - 1)) + "]}"
    text = f"protect: {body}\n"
    assert len(text) < size, len(text)
    return text + "#" * (size - len(text) - 1) + "\n"


HOSTILE_NUMBERS = {
    "int_5001_digits": ("detection:\n  hold: " + "9" * 5001 + "\n", "detection.hold (line 2)"),
    "port_5001_digits": ("protect:\n  ports: [80, " + "9" * 5001 + "]\n", "protect.ports[1] (line 2)"),
    "floor_5001_digits": ("detection:\n  floor_pps: -" + "9" * 5001 + "\n", "detection.floor_pps (line 2)"),
    "interfaces_5001_digits": ("interfaces: " + "9" * 5001 + "\n", "interfaces (line 1)"),
    "hex_4000_digits": ("protect:\n  ports: [0x" + "f" * 4000 + "]\n", "protect.ports[0] (line 2)"),
    "duration_5001_digits": ("detection:\n  source_deny: '" + "9" * 5001 + "s'\n", "detection.source_deny (line 2)"),
    "float_5001_digits": ("detection:\n  ewma_alpha: " + "9" * 5001 + ".5\n", "detection.ewma_alpha (line 2)"),
}


@pytest.mark.parametrize("name", HOSTILE_NUMBERS)
def test_huge_numbers_are_one_config_error_line(tmp_path, name):
    text, where = HOSTILE_NUMBERS[name]
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as ei:
        config.load(p)
    assert len(ei.value.errors) == 1 and where in ei.value.errors[0], ei.value.errors
    assert len(str(ei.value)) < 300  # the number is not echoed back in full
    r, _ = _check_config(p)
    assert r.returncode == 1 and r.stderr.strip() == str(ei.value), r.stderr[-2000:]


def test_bombs_are_built_as_described():
    """The bombs below expand as claimed (PyYAML's own loader, on a small instance)."""
    small = yaml.safe_load(merge_bomb(3, 3, 200))
    assert small["protect"] == {f"k{i}": 0 for i in range(3)}  # 27 pairs before de-duplication
    loader = yaml.SafeLoader(merge_bomb(3, 3, 200))
    node = loader.get_single_node().value[0][1]
    loader.flatten_mapping(node)
    assert len(node.value) == 27


@pytest.mark.parametrize("levels, fan, size", [(6, 9, 419), (7, 9, 484)])
def test_merge_key_bombs_are_refused_fast(tmp_path, levels, fan, size):
    p = tmp_path / "bomb.yaml"
    p.write_text(merge_bomb(levels, fan, size))
    assert p.stat().st_size == size
    r, took = _check_config(p)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1, r.stderr[-2000:]
    assert lines[0].startswith(f"{p}: protect (line 1): cannot read value: '<<' merges expand this mapping past ")
    assert took < 5  # measured 0.3 s (interpreter start included); 9.1 s / past 30 s before


@pytest.mark.parametrize("text, message", [
    ("protect: {<<: 5}\n", "'<<' (merge key) takes a mapping or a list of mappings"),
    ("protect: &p {<<: *p}\n", "a '<<' merge includes the mapping it is in"),
    ("interfaces: " + "[" * 100000 + "\n", "nested too deeply"),
    ("interfaces: " + "[" * 900 + "]" * 900 + "\n", "nested too deeply"),
])
def test_hostile_yaml_shapes_are_one_line(tmp_path, text, message):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    r, _ = _check_config(p)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1 and message in lines[0], r.stderr[-2000:]


def test_legitimate_merge_keys_still_work():
    cfg = parse("detection: {<<: {floor_pps: 500}, hold: 10m}\nprotect: {<<: {ports: [80, 443]}}\n")
    assert cfg.protect.ports == (80, 443) and cfg.detection.hold == 600 and cfg.detection.floor_pps == 500


def test_fifo_device_and_huge_files_are_one_line_without_hanging(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    huge = tmp_path / "huge.yaml"
    with open(huge, "wb") as f:  # sparse: 2 GiB of zeros costs no disk
        f.truncate(2 << 30)
    cases = {fifo: "is not a regular file", Path("/dev/zero"): "is not a regular file",
             huge: "KiB: not a synguard config"}
    for path, message in cases.items():
        r, took = _check_config(path, timeout=20)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 1 and lines == [f"{path}: {lines[0].split(': ', 1)[1]}"], (path, r.stderr[-2000:])
        assert message in lines[0], lines
        assert took < 5, (path, took)


def test_readme_config_table_names_only_keys_the_parser_accepts():
    """README's "Config keys" table: every key it names exists (a removed key, such as
    protect.allow_ttl, cannot linger there), and the example config lists none of the removed ones."""
    import re

    readme = (EXAMPLE.parent.parent / "README.md").read_text()
    table = readme.split("### Config keys", 1)[1].split("\n### ", 1)[0]
    named = []
    for row in re.findall(r"^\| (`[^|]+`) \|", table, re.M):
        keys = re.findall(r"`([\w.]+)`", row)
        section = keys[0].rsplit(".", 1)[0] + "." if "." in keys[0] else ""
        named += [keys[0]] + [k if "." in k or not section else section + k for k in keys[1:]]
    assert len(named) >= 20, named
    assert set(named) <= set(config.schema_keys()), set(named) - set(config.schema_keys())
    assert not set(config.REMOVED_KEYS) & set(_key_paths(yaml.compose(EXAMPLE.read_text())))
