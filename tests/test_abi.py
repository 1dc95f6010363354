"""ebpf/synguard_abi.h and synguard/abi.py must agree, name for name.

Parses the header's enums and #defines, and compares the compiled program's
map key/value types (BCC's generated ctypes classes) with the Python mirror.
"""

import ctypes as ct
import re

import pytest

from synguard import abi
from synguard.datapath import ebpf_dir

HEADER = (ebpf_dir() / "synguard_abi.h").read_text()


def _enum(name):
    body = re.search(r"enum %s \{(.*?)\};" % name, HEADER, re.S).group(1)
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"(\w+)\s*=\s*(\d+)", body)}


def _define(name):
    return int(re.search(r"#define %s\s+(\w+)" % name, HEADER).group(1).rstrip("UuLl"), 0)


def _struct_fields(name):
    body = re.search(r"struct %s \{(.*?)\};" % name, HEADER, re.S).group(1)
    return tuple(re.findall(r"(?:__[us]\d+|struct \w+)\s+(\w+)(?:\[\w+\])?;", body))


def test_counters_match():
    c_enum = _enum("sg_counter")
    assert c_enum.pop("SG_CNT_MAX") == abi.COUNTER_MAX == len(abi.Counter)
    assert c_enum == {f"SG_CNT_{c.name}": int(c) for c in abi.Counter}


def test_modes_match():
    assert _enum("sg_mode") == {f"SG_MODE_{m.name}": int(m) for m in abi.Mode}


def test_cookie_methods_match():
    assert _enum("sg_method") == {f"SG_METHOD_{m.name}": int(m) for m in abi.CookieMethod}
    assert abi.CookieMethod.labels() == ("kfunc", "kernel-cookie")
    assert abi.CookieMethod.parse("kernel-cookie") is abi.CookieMethod.KERNEL_COOKIE
    with pytest.raises(ValueError):
        abi.CookieMethod.parse("kernel")


@pytest.mark.parametrize("name", ["ABI_VERSION", "CIDR_SIZE", "SLOT_SHIFT", "PORTS",
                                  "IPV6_EXT_MAX", "VLAN_MAX", "PORT_SLOTS", "HLL_BITS", "IFACE_SLOTS", "IFINDEX_MAX",
                                  "SRC_SIZE", "SRC_SAMPLE", "OPT_TS", "OPT_SACK", "OPT_WSCALE", "OPT_ECN",
                                  "COOKIE_WSCALE_NONE"])
def test_defines_match(name):
    assert _define(f"SG_{name}") == getattr(abi, name)


@pytest.mark.parametrize("struct, fields", [
    ("sg_config", abi.CONFIG_FIELDS), ("sg_secret", abi.SECRET_FIELDS),
    ("sg_port", abi.PORT_FIELDS),
    ("sg_counter_block", abi.COUNTER_BLOCK_FIELDS),
    ("sg_port_syns", abi.PORT_SYNS_FIELDS), ("sg_hll", abi.HLL_FIELDS), ("sg_src_stat", abi.SRC_STAT_FIELDS), ("sg_cidr_key", abi.CIDR_KEY_FIELDS), ("sg_addr", abi.ADDR_FIELDS),
])
def test_struct_fields_match_header(struct, fields):
    assert _struct_fields(struct) == fields


@pytest.mark.parametrize("map_name, kind, fields, size", [
    ("sg_config", "Leaf", abi.CONFIG_FIELDS, 40),
    ("sg_ports", "Leaf", abi.PORT_FIELDS, 8),
    ("sg_secrets", "Leaf", abi.SECRET_FIELDS, 16),
    ("sg_src_syns", "Key", abi.ADDR_FIELDS, 16),
    ("sg_src_syns", "Leaf", abi.SRC_STAT_FIELDS, 16),
    ("sg_allow_cidrs", "Key", abi.CIDR_KEY_FIELDS, 20),
    ("sg_deny_cidrs", "Key", abi.CIDR_KEY_FIELDS, 20),
])
def test_compiled_map_types_match(datapath, map_name, kind, fields, size):
    cls = getattr(datapath.map(map_name), kind)
    assert tuple(f[0] for f in cls._fields_) == fields
    assert ct.sizeof(cls) == size


def test_counter_map_shape(datapath):
    table = datapath.map("sg_counters")
    assert len(table) == abi.IFACE_SLOTS
    # sLeaf: one CPU's block of one interface slot
    assert tuple(f[0] for f in table.sLeaf._fields_) == abi.COUNTER_BLOCK_FIELDS
    assert len(table.sLeaf().cnt) == abi.COUNTER_MAX and len(table.sLeaf().ports) == abi.PORT_SLOTS


def test_one_name_per_counter_through_every_layer():
    """SG_CNT_X (C) -> Counter.X -> COUNTER_NAMES[X] -> metric and CLI words, each unique."""
    from synguard import view
    from synguard.abi import COUNTER_NAMES, Counter
    from synguard.metrics import COUNTER_METRICS, DROP_REASONS

    assert set(COUNTER_NAMES) == set(Counter)
    metrics = [n.metric for n in COUNTER_NAMES.values()]
    words = [n.words for n in COUNTER_NAMES.values()]
    assert len(set(metrics)) == len(metrics) and len(set(words)) == len(words)
    assert all(m.startswith("synguard_") and not m.endswith("_total") for m in metrics)
    # every counter is exported exactly once, by the table's name
    assert set(COUNTER_METRICS) | set(DROP_REASONS) == set(Counter)
    assert {c: COUNTER_METRICS[c][0] for c in COUNTER_METRICS} == {c: COUNTER_NAMES[c].metric for c in COUNTER_METRICS}
    # the CLI shows the table's words
    line = view.counters_line({c: 7 for c in Counter}, None, 1.0)
    assert all(f"{c.words} 7" in line for c in view.LOG_COUNTERS)
    assert Counter.CHALLENGE_SENT.metric == "synguard_challenges_sent_total"
    assert Counter.CHALLENGE_SENT.words == "challenges sent"
