"""What a server installs: the daemon and its CLI, nothing of the lab.

Installs the checkout into a fresh staging venv (as `pip install .` would on a
server), lists the installed files, and runs `--help` of every subcommand the
installed `synguard --help` lists."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAB_MODULES = ("lab", "flood", "demo", "evaluate", "floodbench", "bench", "kernel_bench", "benchreport", "model",
               "clientlab", "common", "daemonmem")


@pytest.fixture(scope="module")
def staging(tmp_path_factory):
    base = tmp_path_factory.mktemp("staging")
    # A clean copy of the checkout: a stale build/ or egg-info must not leak into the install.
    src = base / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".venv", "build", "dist", ".git", "*.egg-info",
                                                               "__pycache__", ".pytest_cache", ".hypothesis"))
    venv = base / "venv"
    # Debian's python, with its site packages (BCC comes from python3-bpfcc), like setup.sh.
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--system-site-packages", str(venv)], check=True)
    r = subprocess.run([str(venv / "bin/pip"), "install", "-q", "--disable-pip-version-check", str(src)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return venv


def installed_files(venv: Path) -> list[str]:
    r = subprocess.run([str(venv / "bin/python"), "-c",
                        "import importlib.metadata as m; print('\\n'.join(str(f) for f in m.files('synguard')))"],
                       capture_output=True, text=True, check=True, cwd="/")  # not the checkout's egg-info
    return r.stdout.split()


def test_only_the_daemon_and_cli_are_installed(staging):
    files = installed_files(staging)
    modules = [f for f in files if f.endswith(".py")]
    assert any(f.endswith("synguard/daemon.py") for f in modules)
    assert any(f.endswith("synguard/datapath/__init__.py") for f in modules)
    assert not [f for f in files if "synguard_lab" in f], "the lab package must not be installed"
    leaked = [f for f in modules if Path(f).stem in LAB_MODULES]
    assert not leaked, f"lab/bench/test modules installed: {leaked}"
    c_files = sorted(Path(f).name for f in files if f.endswith((".c", ".h")))
    assert "synguard.bpf.c" in c_files and "synguard_abi.h" in c_files
    assert not [f for f in c_files if f.startswith(("lab_", "bench"))], c_files


def test_every_listed_subcommand_runs_help_on_the_installed_package(staging):
    exe = str(staging / "bin/synguard")
    top = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60, cwd="/")
    assert top.returncode == 0, top.stderr
    section = top.stdout.split("COMMAND\n", 2)[-1].split("\noptions:")[0]
    listed = re.findall(r"^    ([a-z][a-z-]*)", section, re.M)
    assert {"run", "status", "listeners", "top", "check-config", "detach"} <= set(listed)
    assert "bench" not in listed and "demo" not in listed
    for cmd in listed:
        r = subprocess.run([exe, cmd, "--help"], capture_output=True, text=True, timeout=60, cwd="/")
        assert r.returncode == 0 and "usage:" in r.stdout, (cmd, r.stderr[-2000:])
    # The installed program finds its installed C, not a checkout's.
    r = subprocess.run([exe, "run", "--ebpf"], capture_output=True, text=True, timeout=60, cwd="/")
    assert r.returncode == 0 and "xdp_synguard" in r.stdout, r.stderr


def test_lab_runs_from_the_checkout():
    """make demo / make bench / evaluation entry points import from a checkout."""
    for mod in ("synguard_lab.demo", "synguard_lab.bench", "synguard_lab.benchreport", "synguard_lab.evaluate",
                "synguard_lab.floodbench"):
        r = subprocess.run([sys.executable, "-m", mod, "--help"], capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert r.returncode == 0 and "usage:" in r.stdout, (mod, r.stderr[-2000:])
