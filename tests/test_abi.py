"""ebpf/synguard_abi.h and synguard/abi.py must agree, name for name and byte for byte.

Parses the header's enums and #defines; checks the hand-written ctypes Structures of
synguard/abi.py mechanically: against the header's and the program's declarations
(every map, its key and value type, each field's offset computed with C's layout
rules), and against the maps the loader really made (key/value sizes from
BPF_OBJ_GET_INFO_BY_FD, field names and offsets from the BTF BCC attached to them).
"""

import ctypes as ct
import re
import struct

import pytest

from synguard import abi
from synguard.datapath import ebpf_dir

HEADER = (ebpf_dir() / "synguard_abi.h").read_text()
PROGRAM = (ebpf_dir() / "synguard.bpf.c").read_text()


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
                                  "IPV6_EXT_MAX", "VLAN_MAX", "LOCAL_ADDRS", "PORT_SLOTS", "HLL_BITS", "IFACE_SLOTS",
                                  "IFINDEX_MAX", "SRC_SIZE", "SRC_SAMPLE", "SRC_DOOR", "OPT_TS", "OPT_SACK", "OPT_WSCALE",
                                  "OPT_ECN",
                                  "OPT_TS_NO_OFFSET", "COOKIE_WSCALE_NONE"])
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
    ("sg_config", "Leaf", abi.CONFIG_FIELDS, 48),
    ("sg_ports", "Leaf", abi.PORT_FIELDS, 8),
    ("sg_secrets", "Leaf", abi.SECRET_FIELDS, 16),
    ("sg_src_syns", "Key", abi.ADDR_FIELDS, 16),
    ("sg_src_syns", "Leaf", abi.SRC_STAT_FIELDS, 16),
    ("sg_allow_cidrs", "Key", abi.CIDR_KEY_FIELDS, 20),
    ("sg_deny_cidrs", "Key", abi.CIDR_KEY_FIELDS, 20),
    ("sg_local_addrs", "Key", abi.ADDR_FIELDS, 16),
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


# ---- Layouts, three ways: ctypes, C declarations, BTF ----------------------------------
# A layout is ("int", size) | ("array", n, layout) | ("struct", size, ((field, offset, layout), ...)).


def ctypes_layout(t) -> tuple:
    if issubclass(t, ct.Array):
        return ("array", t._length_, ctypes_layout(t._type_))
    if issubclass(t, ct.Structure):
        return ("struct", ct.sizeof(t), tuple((name, getattr(t, name).offset, ctypes_layout(ft))
                                             for name, ft, *_ in t._fields_))
    return ("int", ct.sizeof(t))


_C_INTS = {"int": 4, "__u8": 1, "__u16": 2, "__u32": 4, "__u64": 8, "__s8": 1, "__s16": 2, "__s32": 4, "__s64": 8}


def _c_constant(name: str) -> str:
    """The text of a header constant: a #define's value or an enum member's."""
    m = (re.search(r"#define %s\s+(.+?)(?:\s*/\*|$)" % name, HEADER, re.M)
         or re.search(r"^\s*%s\s*=\s*(\d+)," % name, HEADER, re.M))
    return m.group(1).strip()


def _c_value(expr: str) -> int:
    """An array bound: a number, an SG_ #define or enum member, or (1 << SG_X) as the header writes them."""
    expr = re.sub(r"\bSG_\w+\b", lambda m: str(_c_value(_c_constant(m.group(0)))), expr)
    if not re.fullmatch(r"[\d\s()<+*-]+", expr):
        raise ValueError(f"cannot evaluate {expr!r}")
    return int(eval(expr))  # digits and operators only (checked above)


def c_layout(ctype: str) -> tuple:
    """Layout of a C type named in the header (natural alignment, as clang lays out BPF structs)."""
    return _c_layout_align(ctype.strip())[0]


def _c_layout_align(ctype: str) -> tuple[tuple, int]:
    if ctype in _C_INTS:
        return ("int", _C_INTS[ctype]), _C_INTS[ctype]
    name = re.fullmatch(r"struct (\w+)", ctype).group(1)
    body = re.search(r"struct %s \{(.*?)\n\};" % name, HEADER, re.S).group(1)
    body = re.sub(r"/\*.*?\*/", "", body, flags=re.S)
    fields, off, align = [], 0, 1
    for m in re.finditer(r"((?:struct )?\w+)\s+(\w+)((?:\[[^\]]+\])*);", body):
        lay, al = _c_layout_align(m.group(1))
        for dim in reversed(re.findall(r"\[([^\]]+)\]", m.group(3))):
            lay = ("array", _c_value(dim), lay)
        off = -(-off // al) * al
        fields.append((m.group(2), off, lay))
        off += _size(lay)
        align = max(align, al)
    return ("struct", -(-off // align) * align, tuple(fields)), align


def _size(lay: tuple) -> int:
    return lay[1] * _size(lay[2]) if lay[0] == "array" else lay[1]


def program_maps() -> dict[str, tuple[str, str]]:
    """name -> (key C type, value C type) of every map synguard.bpf.c declares (BCC macros)."""
    out = {}
    for m in re.finditer(r"^(SG_KEPT|BPF_TABLE)\(\"\w+\",\s*([^,]+),\s*([^,]+),\s*(\w+),", PROGRAM, re.M):
        out[m.group(4)] = (m.group(2), m.group(3))
    for m in re.finditer(r"^BPF_ARRAY\((\w+),\s*([^,]+),", PROGRAM, re.M):
        out[m.group(1)] = ("int", m.group(2))
    for m in re.finditer(r"^BPF_PROG_ARRAY\((\w+),", PROGRAM, re.M):
        out[m.group(1)] = ("int", "int")
    for m in re.finditer(r"^BPF_LPM_TRIE\((\w+),\s*([^,]+),\s*([^,]+),", PROGRAM, re.M):
        out[m.group(1)] = (m.group(2), m.group(3))
    return out


# BTF (linux/btf.h): the kinds the ABI uses; qualifiers and typedefs are seen through.
_BTF_INT, _BTF_ARRAY, _BTF_STRUCT, _BTF_ENUM, _BTF_ENUM64 = 1, 3, 4, 6, 19
_BTF_SEE_THROUGH = {8, 9, 10, 11, 18}  # typedef, volatile, const, restrict, type_tag
# bytes each kind's record carries after its 12-byte head (per vlen item where it has items)
_BTF_EXTRA = {1: (4, 0), 3: (12, 0), 4: (0, 12), 5: (0, 12), 6: (0, 8), 13: (0, 8), 14: (4, 0), 15: (0, 12),
              17: (4, 0), 19: (0, 12)}


def btf_types(raw: bytes) -> dict[int, tuple]:
    """type id -> (kind, size_or_type, detail) of a raw BTF blob; detail: an array's
    (elem type, nelems), a struct's ((member name, type, bit offset), ...)."""
    magic, _, _, hdr_len, type_off, type_len, str_off, _ = struct.unpack_from("<HBBIIIII", raw)
    assert magic == 0xEB9F, "not BTF (or not little-endian)"
    strings = raw[hdr_len + str_off:]
    name = lambda off: strings[off:strings.index(b"\0", off)].decode()  # noqa: E731
    pos, end, out = hdr_len + type_off, hdr_len + type_off + type_len, {}
    while pos < end:
        _, info, size_or_type = struct.unpack_from("<III", raw, pos)
        kind, vlen, kflag = (info >> 24) & 0x1F, info & 0xFFFF, info >> 31
        pos += 12
        detail = None
        if kind == _BTF_ARRAY:
            elem, _, n = struct.unpack_from("<III", raw, pos)
            detail = (elem, n)
        elif kind == _BTF_STRUCT:
            members = [struct.unpack_from("<III", raw, pos + 12 * i) for i in range(vlen)]
            detail = tuple((name(n), t, (o & 0xFFFFFF) if kflag else o) for n, t, o in members)
        fixed, per_item = _BTF_EXTRA.get(kind, (0, 0))
        pos += fixed + per_item * vlen
        out[len(out) + 1] = (kind, size_or_type, detail)
    return out


def btf_layout(types: dict[int, tuple], tid: int) -> tuple:
    kind, size_or_type, detail = types[tid]
    if kind in _BTF_SEE_THROUGH:
        return btf_layout(types, size_or_type)
    if kind in (_BTF_INT, _BTF_ENUM, _BTF_ENUM64):
        return ("int", size_or_type)
    if kind == _BTF_ARRAY:
        return ("array", detail[1], btf_layout(types, detail[0]))
    if kind == _BTF_STRUCT:
        assert all(bits % 8 == 0 for _, _, bits in detail), "bitfields are not part of the ABI"
        return ("struct", size_or_type, tuple((n, bits // 8, btf_layout(types, t)) for n, t, bits in detail))
    raise AssertionError(f"BTF kind {kind} (type {tid}) is not part of the ABI")


# ---- The checks -------------------------------------------------------------------------


def test_every_map_of_the_program_has_a_mirror():
    assert set(program_maps()) == set(abi.MAPS)


@pytest.mark.parametrize("name", sorted(abi.MAPS))
def test_mirror_matches_the_c_declarations(name):
    """Each map's key and value type, laid out from the header's declarations, equals the
    ctypes mirror: field names, offsets, sizes, array lengths."""
    key_c, leaf_c = program_maps()[name]
    key, leaf = abi.MAPS[name]
    assert c_layout(key_c) == ctypes_layout(key)
    assert c_layout(leaf_c) == ctypes_layout(leaf)


@pytest.mark.parametrize("name", sorted(abi.MAPS))
def test_mirror_matches_the_loaded_map(datapath, name):
    """The map the loader made: key/value sizes from the kernel (BPF_OBJ_GET_INFO_BY_FD),
    and, from the BTF BCC attached to it, every field's name and offset."""
    from synguard.datapath.libbpf import btf_raw, map_info

    key, leaf = abi.MAPS[name]
    info = map_info(datapath.map(name).map_fd)
    assert info.name.decode() == name[:15]
    assert (info.key_size, info.value_size) == (ct.sizeof(key), ct.sizeof(leaf))
    if not info.btf_id:  # BCC emitted no BTF: the header is the reference (checked above too)
        key_c, leaf_c = program_maps()[name]
        assert (c_layout(key_c), c_layout(leaf_c)) == (ctypes_layout(key), ctypes_layout(leaf))
        return
    types = btf_types(btf_raw(info.btf_id))
    assert btf_layout(types, info.btf_key_type_id) == ctypes_layout(key)
    assert btf_layout(types, info.btf_value_type_id) == ctypes_layout(leaf)


def test_the_loaded_maps_carry_btf(datapath):
    """BCC attaches BTF to the maps on this kernel, so the check above compares offsets
    with what the compiler laid out (not only with our reading of the header)."""
    from synguard.datapath.libbpf import map_info

    assert all(map_info(datapath.map(n).map_fd).btf_id for n in abi.MAPS)


def test_the_checks_catch_a_drifted_mirror(datapath):
    """A mirror with two fields swapped (same size) or a field widened fails the comparisons;
    the map class refuses a type whose size differs from the kernel's."""
    from synguard.datapath.libbpf import btf_raw, map_info
    from synguard.datapath.maps import Map, MapLayoutError

    class Swapped(ct.Structure):
        _fields_ = [("watch_slot", ct.c_uint8), ("protect", ct.c_uint8), ("reserved", ct.c_uint16),
                    ("auto_until_s", ct.c_uint32)]

    class Wider(ct.Structure):
        _fields_ = [("protect", ct.c_uint16), ("watch_slot", ct.c_uint8), ("reserved", ct.c_uint8),
                    ("auto_until_s", ct.c_uint32)]

    info = map_info(datapath.map("sg_ports").map_fd)
    btf = btf_layout(btf_types(btf_raw(info.btf_id)), info.btf_value_type_id)
    header = c_layout("struct sg_port")
    for bad in (Swapped, Wider):
        assert ct.sizeof(bad) == ct.sizeof(abi.Port)
        assert ctypes_layout(bad) != btf and ctypes_layout(bad) != header
    import os

    fd = os.dup(datapath.map("sg_ports").map_fd)
    try:
        with pytest.raises(MapLayoutError, match="sg_ports: the kernel's key/value sizes are 4/8 bytes, "
                                                 "synguard.abi declares 4/4"):
            Map(fd, "sg_ports", (ct.c_int, ct.c_uint32))
    finally:
        os.close(fd)
