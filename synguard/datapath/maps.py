"""Map keys and values: address codecs for struct sg_addr / sg_cidr_key, and
struct values written by field name."""

from __future__ import annotations

import ipaddress


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
    """table[key] = a Leaf with the named fields set (BCC's generated struct class)."""
    leaf = table.Leaf()
    for name, value in fields.items():
        setattr(leaf, name, value)
    table[key] = leaf


def read_struct(table, key, names) -> dict[str, int]:
    """The named integer fields of table[key]."""
    leaf = table[key]
    return {name: int(getattr(leaf, name)) for name in names}
