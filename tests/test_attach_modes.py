"""XDP attach modes: `auto` takes native XDP where the driver has it and falls back to
generic where it does not; `native` refuses such an interface with a clear error.

veth has native XDP; the loopback device and a bridge have none (no ndo_bpf), so they
take the generic path. Both live in a namespace this test makes and removes."""

from __future__ import annotations

import os
import subprocess

import pytest

from synguard.datapath import DataPath, DataPathError, attached_prog, in_netns


@pytest.fixture
def ns():
    name = f"sgmode-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "add", "v0", "type", "veth", "peer", "name", "v1"], check=True)
        subprocess.run(["ip", "-n", name, "link", "add", "br0", "type", "bridge"], check=True)
        for dev in ("lo", "v0", "v1", "br0"):
            subprocess.run(["ip", "-n", name, "link", "set", dev, "up"], check=True)
        fd = os.open(f"/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            yield fd
        finally:
            os.close(fd)
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.mark.netns
def test_auto_is_native_where_possible_else_generic(ns):
    dp = DataPath()
    try:
        with in_netns(ns):
            assert dp.attach("v0", "auto") == "native"
            assert dp.attach("lo", "auto") == "generic"  # native refused by the device: fell back
            assert attached_prog("v0")[0] == attached_prog("lo")[0] == dp.prog_id
            with pytest.raises(DataPathError, match="cannot attach XDP to br0: native"):
                dp.attach("br0", "native")  # a bridge has no native XDP either
            assert attached_prog("br0") is None  # nothing half-attached
            assert dp.attach("v1", "generic") == "generic"
        assert dp.attached == {"v0": "native", "lo": "generic", "v1": "generic"}
        dp.detach_all()
        with in_netns(ns):
            assert [attached_prog(i) for i in ("v0", "lo", "v1", "br0")] == [None, None, None, None]
    finally:
        dp.close()
