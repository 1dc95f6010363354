"""synguard/datapath/maps.py: the Map class over real kernel maps made for each test
(bpf_map_create through libbpf; closed afterwards). Each check reads the kernel's
bytes independently of the class (bpf_map_lookup_elem into a raw buffer)."""

from __future__ import annotations

import ctypes as ct
import os

import pytest

from synguard.datapath.libbpf import lib as _lib, num_possible_cpus
from synguard.datapath.maps import (MAP_ARRAY, MAP_HASH, MAP_LPM_TRIE, MAP_LRU_HASH, MAP_PERCPU_ARRAY, Map,
                                    MapLayoutError)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (BPF maps)")

BPF_F_NO_PREALLOC = 1


class _CreateOpts(ct.Structure):
    """struct bpf_map_create_opts (libbpf 1.1)."""

    _fields_ = [("sz", ct.c_size_t), ("btf_fd", ct.c_uint32), ("btf_key_type_id", ct.c_uint32),
                ("btf_value_type_id", ct.c_uint32), ("btf_vmlinux_value_type_id", ct.c_uint32),
                ("inner_map_fd", ct.c_uint32), ("map_flags", ct.c_uint32), ("map_extra", ct.c_uint64),
                ("numa_node", ct.c_uint32), ("map_ifindex", ct.c_uint32)]


class Twelve(ct.Structure):
    """12 bytes: a per-CPU value the kernel lays out at a 16-byte stride."""

    _fields_ = [("a", ct.c_uint32), ("b", ct.c_uint32), ("c", ct.c_uint32)]


class Cidr(ct.Structure):
    _fields_ = [("prefixlen", ct.c_uint32), ("addr", ct.c_uint8 * 4)]


@pytest.fixture
def make_map():
    made = []

    def make(map_type, key, value, max_entries, flags=0, name="sg_test"):
        lib = _lib()
        lib.bpf_map_create.argtypes = [ct.c_int, ct.c_char_p, ct.c_uint32, ct.c_uint32, ct.c_uint32,
                                       ct.POINTER(_CreateOpts)]
        opts = _CreateOpts(sz=ct.sizeof(_CreateOpts), map_flags=flags)
        fd = lib.bpf_map_create(map_type, name.encode(), ct.sizeof(key), ct.sizeof(value), max_entries,
                                ct.byref(opts))
        assert fd >= 0, os.strerror(-fd)
        m = Map(fd, name, (key, value))
        made.append(m)
        return m

    yield make
    for m in made:
        m.close()


def raw_lookup(m: Map, key, size: int) -> bytes:
    buf = ct.create_string_buffer(size)
    assert _lib().bpf_map_lookup_elem(m.map_fd, ct.byref(key), buf) == 0
    return buf.raw


def test_percpu_values_are_a_list_per_cpu_at_an_8_byte_stride(make_map):
    ncpu = num_possible_cpus()
    m = make_map(MAP_PERCPU_ARRAY, ct.c_int, Twelve, 4)
    assert ct.sizeof(Twelve) == 12
    assert m.percpu and m.sLeaf is Twelve and ct.sizeof(m.Leaf) == 16 * ncpu
    m[2] = [Twelve(a=1000 + cpu, b=cpu) for cpu in range(ncpu)]
    raw = raw_lookup(m, ct.c_int(2), 16 * ncpu)
    for cpu in range(ncpu):
        assert int.from_bytes(raw[16 * cpu:16 * cpu + 4], "little") == 1000 + cpu
        assert int.from_bytes(raw[16 * cpu + 4:16 * cpu + 8], "little") == cpu
    got = m[ct.c_int(2)]
    assert len(got) == ncpu and [(v.a, v.b) for v in got] == [(1000 + c, c) for c in range(ncpu)]
    assert all(isinstance(v, Twelve) for v in got)
    assert [v.a for v in m[0]] == [0] * ncpu


def test_array_keys_values_and_delete(make_map):
    m = make_map(MAP_ARRAY, ct.c_int, ct.c_uint32, 8)
    assert len(m) == 8 and m.is_array
    m[3] = 7
    m[ct.c_uint32(4)] = ct.c_int(9)  # same-size ctypes of another type are accepted
    assert raw_lookup(m, ct.c_int(3), 4) == (7).to_bytes(4, "little")
    assert m[4].value == 9 and [k.value for k, v in m.items() if v.value] == [3, 4]
    del m[3]  # an array entry always exists: deleting zeroes it
    assert m[3].value == 0
    with pytest.raises(TypeError):
        m[b"xx"] = 1
    with pytest.raises(KeyError):
        m[8]  # out of range: the kernel says ENOENT
    m.clear()
    assert all(v.value == 0 for v in m.values())


@pytest.mark.parametrize("map_type", [MAP_HASH, MAP_LRU_HASH])
def test_hash_batch_read_equals_the_entries(make_map, map_type):
    """More entries than one batch: items_lookup_batch() returns each exactly once."""
    n = 5000
    m = make_map(map_type, ct.c_uint64, ct.c_uint64, 8192)
    for i in range(n):
        m[ct.c_uint64(i * 7919)] = ct.c_uint64(i)
    assert raw_lookup(m, ct.c_uint64(7919 * 3), 8) == (3).to_bytes(8, "little")
    batch = [(k.value, v.value) for k, v in m.items_lookup_batch(batch=1024)]
    assert len(batch) == n and dict(batch) == {i * 7919: i for i in range(n)}
    assert dict((k.value, v.value) for k, v in m.items()) == dict(batch)
    assert len(m) == n
    del m[ct.c_uint64(0)]
    with pytest.raises(KeyError):
        m[ct.c_uint64(0)]
    with pytest.raises(KeyError):
        del m[ct.c_uint64(0)]
    assert m.get(ct.c_uint64(0)) is None and ct.c_uint64(7919) in m
    m.clear()
    assert len(m) == 0 and list(m.items_lookup_batch()) == []


def test_lpm_trie_keys(make_map):
    m = make_map(MAP_LPM_TRIE, Cidr, ct.c_uint8, 16, flags=BPF_F_NO_PREALLOC)
    for prefix, addr, val in ((8, b"\x0a\x00\x00\x00", 1), (24, b"\x0a\x01\x02\x00", 2)):
        k = m.Key(prefixlen=prefix)
        ct.memmove(k.addr, addr, 4)
        m[k] = val
    probe = m.Key(prefixlen=32)
    ct.memmove(probe.addr, b"\x0a\x01\x02\x03", 4)
    assert m[probe].value == 2  # longest prefix wins
    ct.memmove(probe.addr, b"\x0a\x09\x09\x09", 4)
    assert m[probe].value == 1
    assert sorted((k.prefixlen, bytes(k.addr)) for k, _ in m.items()) == [(8, b"\n\0\0\0"), (24, b"\n\1\2\0")]
    m.clear()
    assert list(m.items()) == []
    with pytest.raises(KeyError):
        m[probe]


def test_a_type_of_another_size_is_refused(make_map):
    m = make_map(MAP_HASH, ct.c_uint32, Twelve, 4)
    fd = os.dup(m.map_fd)
    try:
        with pytest.raises(MapLayoutError, match="are 4/12 bytes, synguard.abi declares 4/8"):
            Map(fd, "sg_test", (ct.c_uint32, ct.c_uint64))
    finally:
        os.close(fd)


def test_a_map_is_known_by_its_kernel_name(make_map):
    """An fd handed over under another map's name (same sizes: sg_allow_cidrs and sg_deny_cidrs
    are alike) is refused: the kernel's own name for the map must match."""
    m = make_map(MAP_HASH, ct.c_uint32, ct.c_uint32, 4, name="sg_allow_cidrs")
    fd = os.dup(m.map_fd)
    try:
        with pytest.raises(MapLayoutError, match="is 'sg_allow_cidrs', not 'sg_deny_cidrs'"):
            Map(fd, "sg_deny_cidrs", (ct.c_uint32, ct.c_uint32))
    finally:
        os.close(fd)
