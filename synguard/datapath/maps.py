"""Map access by fd through libbpf: the subset of BCC's Table API the data path uses.

The daemon holds only the fds of the loaded maps (synguard/datapath/loader.py compiles
and loads in a short-lived process), so keys and values are the ctypes Structures of
synguard/abi.py, checked against the kernel's key/value sizes when a Map is made.

    table = Map(fd, "sg_ports", abi.MAPS["sg_ports"])
    table[ct.c_int(80)] -> abi.Port (a copy)        table[80] = abi.Port(protect=1)
    del table[key]; table.items(); table.items_lookup_batch(); table.clear()

Per-CPU maps: a value is one entry per possible CPU (table[k][cpu] is that CPU's
sLeaf), each padded to 8 bytes as the kernel lays them out. Hash and LPM maps raise
KeyError for a missing key; arrays hold every index (deleting zeroes it).

Also here: address codecs for struct sg_addr / sg_cidr_key, and struct values
written by field name.
"""

from __future__ import annotations

import ctypes as ct
import errno
import ipaddress
import os

from synguard.datapath.libbpf import lib as _lib, map_info, num_possible_cpus

# enum bpf_map_type (linux/bpf.h)
MAP_HASH, MAP_ARRAY, MAP_PROG_ARRAY = 1, 2, 3
MAP_PERCPU_HASH, MAP_PERCPU_ARRAY = 5, 6
MAP_LRU_HASH, MAP_LRU_PERCPU_HASH, MAP_LPM_TRIE = 9, 10, 11
_ARRAYS = {MAP_ARRAY, MAP_PROG_ARRAY, MAP_PERCPU_ARRAY}
_PERCPU = {MAP_PERCPU_HASH, MAP_PERCPU_ARRAY, MAP_LRU_PERCPU_HASH}

BATCH_ENTRIES = 4096  # entries per BPF_MAP_LOOKUP_BATCH call (bounds the buffers: 128 KiB for sg_src_syns)


class MapLayoutError(ValueError):
    """The kernel's map does not hold the key/value types Python mirrors (ABI drift)."""


def _oserror(what: str) -> OSError:
    err = ct.get_errno()
    return OSError(err, f"{what}: {os.strerror(err)}")


class Map:
    """One BPF map by fd, with typed keys and values (Key, Leaf; sLeaf per CPU)."""

    def __init__(self, fd: int, name: str, types: tuple[type, type]):
        """fd: ours from now on (close() closes it). types: (key type, value type; one
        CPU's value for a per-CPU map), e.g. synguard.abi.MAPS[name]."""
        info = map_info(fd)
        if info.name and info.name.decode(errors="replace") != name[:15]:  # the kernel keeps 15 characters
            raise MapLayoutError(f"map fd {fd} is {info.name.decode(errors='replace')!r}, not {name!r}")
        self.map_fd = fd
        self.name = name
        self.map_type = info.type
        self.map_id = info.id
        self.max_entries = info.max_entries
        self.Key, leaf = types
        self.key_size, self.value_size = info.key_size, info.value_size
        if ct.sizeof(self.Key) != info.key_size or ct.sizeof(leaf) != info.value_size:
            raise MapLayoutError(
                f"map {name}: the kernel's key/value sizes are {info.key_size}/{info.value_size} bytes, "
                f"synguard.abi declares {ct.sizeof(self.Key)}/{ct.sizeof(leaf)} (ebpf/ and synguard/ differ)")
        self.percpu = info.type in _PERCPU
        self.is_array = info.type in _ARRAYS
        if self.percpu:
            self.sLeaf = leaf
            self.ncpu = num_possible_cpus()
            pad = -ct.sizeof(leaf) % 8  # the kernel copies each CPU's value at an 8-byte stride
            cell = leaf if not pad else type(leaf.__name__, (leaf,), {"_fields_": [("_pad", ct.c_uint8 * pad)]})
            self.Leaf = cell * self.ncpu
        else:
            self.Leaf = leaf
        self.raw_value_size = ct.sizeof(self.Leaf)  # bytes one lookup writes

    # -- conversions -------------------------------------------------------------

    def _key(self, key):
        if isinstance(key, self.Key):
            return key
        if isinstance(key, int) and issubclass(self.Key, ct._SimpleCData):
            return self.Key(key)
        if isinstance(key, (ct._SimpleCData, ct.Structure, ct.Array)) and ct.sizeof(key) == self.key_size:
            return self.Key.from_buffer_copy(key)  # e.g. c_int for a c_uint32 key
        raise TypeError(f"map {self.name}: key {key!r} is not a {self.Key.__name__}")

    def _leaf(self, value):
        if isinstance(value, self.Leaf):
            return value
        if self.percpu:
            values = list(value)
            if len(values) != self.ncpu:
                raise ValueError(f"map {self.name}: {len(values)} per-CPU values for {self.ncpu} CPUs")
            out, stride = self.Leaf(), ct.sizeof(self.Leaf._type_)
            for cpu, v in enumerate(values):
                v = v if isinstance(v, self.sLeaf) else self.sLeaf.from_buffer_copy(v)
                ct.memmove(ct.addressof(out) + cpu * stride, ct.addressof(v), ct.sizeof(self.sLeaf))
            return out
        if isinstance(value, int) and issubclass(self.Leaf, ct._SimpleCData):
            return self.Leaf(value)
        if isinstance(value, (ct._SimpleCData, ct.Structure, ct.Array)) and ct.sizeof(value) == self.value_size:
            return self.Leaf.from_buffer_copy(value)
        raise TypeError(f"map {self.name}: value {value!r} is not a {self.Leaf.__name__}")

    # -- one entry ---------------------------------------------------------------

    def __getitem__(self, key):
        k = self._key(key)
        leaf = self.Leaf()
        if _lib().bpf_map_lookup_elem(self.map_fd, ct.byref(k), ct.byref(leaf)) != 0:
            err = ct.get_errno()
            if err == errno.ENOENT:
                raise KeyError(key)
            raise OSError(err, f"map {self.name}: lookup: {os.strerror(err)}")
        return leaf

    def get(self, key, default=None):
        try:
            return self[key]
        except KeyError:
            return default

    def __setitem__(self, key, value) -> None:
        k, v = self._key(key), self._leaf(value)
        if _lib().bpf_map_update_elem(self.map_fd, ct.byref(k), ct.byref(v), 0) != 0:
            raise _oserror(f"map {self.name}: update")

    def __delitem__(self, key) -> None:
        k = self._key(key)
        if self.is_array and self.map_type != MAP_PROG_ARRAY:
            self[k] = self.Leaf()  # an array entry always exists: deleting zeroes it (as BCC does)
            return
        if _lib().bpf_map_delete_elem(self.map_fd, ct.byref(k)) != 0:
            err = ct.get_errno()
            if err == errno.ENOENT:
                raise KeyError(key)
            raise OSError(err, f"map {self.name}: delete: {os.strerror(err)}")

    def __contains__(self, key) -> bool:
        return self.get(key) is not None

    # -- every entry -------------------------------------------------------------

    def keys(self):
        """Every key (a key walk: under heavy updates of a hash map, prefer items_lookup_batch)."""
        if self.is_array:
            yield from (self.Key(i) for i in range(self.max_entries))
            return
        lib = _lib()
        prev, nxt = None, self.Key()
        for _ in range(self.max_entries):  # bounded: an LRU evicting under us may restart the walk
            if lib.bpf_map_get_next_key(self.map_fd, None if prev is None else ct.byref(prev), ct.byref(nxt)) != 0:
                err = ct.get_errno()
                if err == errno.ENOENT:
                    return
                raise OSError(err, f"map {self.name}: get_next_key: {os.strerror(err)}")
            yield nxt
            prev, nxt = nxt, self.Key()

    __iter__ = keys

    def items(self):
        """(key, value) of every entry, each looked up as the walk reaches it."""
        for k in self.keys():
            try:
                yield k, self[k]
            except KeyError:
                continue  # deleted (or evicted) meanwhile

    def values(self):
        return (v for _, v in self.items())

    def __len__(self) -> int:
        if self.is_array:
            return self.max_entries
        return sum(1 for _ in self.keys())

    def items_lookup_batch(self, batch: int = BATCH_ENTRIES):
        """(key, value) of every entry, read with BPF_MAP_LOOKUP_BATCH (bucket by bucket:
        a flood's LRU evictions cannot restart it). OSError when the kernel has no batch
        operations for this map type (the caller falls back to items())."""
        lib = _lib()
        n = min(batch, max(self.max_entries, 1))
        keys, values = (self.Key * n)(), (self.Leaf * n)()
        token = ct.create_string_buffer(max(self.key_size, 8))  # opaque position (a u32 bucket for hashes)
        first = True
        while True:
            count = ct.c_uint32(n)
            ret = lib.bpf_map_lookup_batch(self.map_fd, None if first else token, token, keys, values,
                                           ct.byref(count), None)
            err = ct.get_errno() if ret != 0 else 0
            if ret != 0 and err != errno.ENOENT:
                if err == errno.ENOSPC and n < self.max_entries:  # one bucket holds more than n: grow
                    n = min(n * 2, self.max_entries)
                    keys, values = (self.Key * n)(), (self.Leaf * n)()
                    continue
                raise OSError(err, f"map {self.name}: BPF_MAP_LOOKUP_BATCH: {os.strerror(err)}")
            ks, vs = ct.sizeof(self.Key), ct.sizeof(self.Leaf)
            for i in range(count.value):
                yield self.Key.from_buffer_copy(keys, i * ks), self.Leaf.from_buffer_copy(values, i * vs)
            if err == errno.ENOENT:
                return
            first = False

    def clear(self) -> None:
        """Empty the map (arrays: every entry zeroed). Keys are collected first, then deleted."""
        for k in list(self.keys()):
            try:
                del self[k]
            except KeyError:
                pass

    def close(self) -> None:
        fd, self.map_fd = self.map_fd, -1
        if fd >= 0:
            os.close(fd)

    def __repr__(self) -> str:
        return f"<Map {self.name} fd {self.map_fd} type {self.map_type} max_entries {self.max_entries}>"


# ---- Codecs ----------------------------------------------------------------------


def addr_key(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bytes:
    """struct sg_addr bytes of an address: IPv4 as ::ffff:a.b.c.d."""
    if addr.version == 4:
        return bytes(10) + b"\xff\xff" + addr.packed
    return addr.packed


def addr_of_key(raw: bytes) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The address of struct sg_addr bytes (the inverse of addr_key)."""
    addr = ipaddress.IPv6Address(bytes(raw))
    return addr.ipv4_mapped or addr


def cidr_key(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> tuple[int, bytes]:
    """(prefixlen over the 128-bit mapped address, address bytes)."""
    prefix = net.prefixlen + (96 if net.version == 4 else 0)
    return prefix, addr_key(net.network_address)


def write_struct(table, key, **fields) -> None:
    """table[key] = a Leaf with the named fields set."""
    leaf = table.Leaf()
    for name, value in fields.items():
        setattr(leaf, name, value)
    table[key] = leaf


def read_struct(table, key, names) -> dict[str, int]:
    """The named integer fields of table[key]."""
    leaf = table[key]
    return {name: int(getattr(leaf, name)) for name in names}
