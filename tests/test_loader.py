"""synguard/datapath/loader.py: BCC compiles and loads in a short-lived child; the
daemon keeps only fds and never maps BCC's compiler (issue 12, "Memory an operator sees").
Real programs, real kernel, real `synguard run` in a lab namespace."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from helpers import needs_lab

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (BPF)")

COMPILER_LIBS = ("libbcc", "libLLVM", "libclang")
RSS_TARGET = 64 << 20


def test_the_daemons_imports_and_load_never_map_bcc(tmp_path):
    """Everything `synguard run` imports, plus a full DataPath(tc=True) load and map reads,
    in a fresh interpreter: no BCC module, no compiler library mapped, no child left."""
    code = textwrap.dedent("""
        import json, os, sys
        import synguard.cli, synguard.daemon, synguard.metrics, synguard.control, synguard.status
        from synguard.datapath import DataPath
        dp = DataPath(tc=True)
        dp.counters(); list(dp.entries("sg_src_syns")); dp.set_allow_cidrs(["10.0.0.0/8"])
        maps = open("/proc/self/maps").read()
        children = open(f"/proc/self/task/{os.getpid()}/children").read().split()
        print(json.dumps({"bcc": [m for m in sys.modules if m == "bcc" or m.startswith("bcc.")],
                          "libs": sorted({l.split()[-1] for l in maps.splitlines()
                                          if any(n in l for n in %r)}),
                          "children": children, "tc": dp.cookie_method}))
        dp.close()
    """ % (COMPILER_LIBS,))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "TMPDIR": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    import json

    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["bcc"] == [] and got["libs"] == [] and got["children"] == [], got


def test_the_tail_call_survives_the_loader(datapath):
    """sg_progs[0] still holds the option-scan program after the child that filled it exited."""
    from synguard.datapath import prog_id

    assert datapath.map("sg_progs")[0].value == prog_id(datapath.optscan_fd)


def test_a_compile_error_names_the_kept_log(tmp_path, monkeypatch):
    from synguard.datapath import DataPath, DataPathError

    src = tmp_path / "ebpf"
    src.mkdir()
    (src / "synguard.bpf.c").write_text("this is not C;\n")
    (src / "synguard_abi.h").write_text("")
    monkeypatch.setenv("SYNGUARD_EBPF_DIR", str(src))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the log's private directory goes here
    with pytest.raises(DataPathError, match=r"^loading synguard.bpf.c failed \(.+\); compiler/verifier log kept "
                                            r"in (\S+)$") as e:
        DataPath()
    log = Path(str(e.value).rsplit(" ", 1)[1])
    assert log.parent.parent == tmp_path and "error" in log.read_text()


@pytest.mark.netns
@needs_lab
def test_daemon_idle_rss_is_within_target():
    """A real `synguard run` (protect, both lab interfaces), 3 s after it is ready: RSS at most
    64 MiB and none of BCC's compiler mapped (it was 178-182 MiB with BCC in the daemon)."""
    from synguard_lab import daemonmem

    r = daemonmem.measure(settle=3.0, prefix="sgld")
    names = [name for name, _ in r["top"]]
    assert not [n for n in names if any(lib in n for lib in COMPILER_LIBS)], r["top"]
    assert r["rss"] <= RSS_TARGET, (r["rss"] / (1 << 20), r["top"])


# ---- XDP attachment through libbpf (no BCC) -----------------------------------------


@pytest.fixture
def lab():
    from synguard_lab.lab import Lab

    with Lab("sgxa") as lab:
        yield lab


@pytest.mark.netns
@needs_lab
def test_replace_and_detach_name_the_expected_program(lab):
    """A restarted daemon replaces its predecessor's leftover (here in the other XDP mode);
    a detach or replace naming a program that is no longer there changes nothing
    (XDP_FLAGS_REPLACE: the kernel compares, EEXIST)."""
    import errno

    from synguard.datapath import DataPath, attached_prog
    from synguard.datapath.xdp import attach_fd, detach_fd, mode_of

    ifname = lab.server_client_if
    dp1, dp2 = DataPath(), DataPath()
    try:
        with lab.netns(lab.server_ns):
            idx = __import__("socket").if_nametoindex(ifname)
            assert dp1.attach(ifname, "generic") == "generic"
            dp1.forget(ifname)  # dp1 "died": its program stays attached
            assert dp2.attach(ifname, "auto") == "native"  # over our own leftover, cleared from generic
            assert attached_prog(ifname)[0] == dp2.prog_id and mode_of(idx, dp1.prog_id) is None
            # dp1's program is gone from there: naming it changes nothing
            assert detach_fd(idx, "native", dp1.prog_fd) == -errno.EEXIST
            assert attach_fd(idx, dp1.prog_fd, "native", expected_fd=dp1.prog_fd) == -errno.EEXIST
            assert attached_prog(ifname)[0] == dp2.prog_id
            # same mode: one replace, never a moment without a program
            assert dp1.attach(ifname, "native") == "native"
            assert attached_prog(ifname)[0] == dp1.prog_id
            assert dp2.detach(ifname) is False  # not dp2's any more: left alone
            assert attached_prog(ifname)[0] == dp1.prog_id
            assert dp1.detach(ifname) is True and attached_prog(ifname) is None
    finally:
        with lab.netns(lab.server_ns):
            dp1.close()
            dp2.close()
