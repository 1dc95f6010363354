"""What the data path needs from the host: privileges, kernel headers, interfaces,
and the compiler/verifier log. Errors the operator can fix are DataPathError, one line."""

from __future__ import annotations

import contextlib
import os
import platform
import socket
from pathlib import Path

from synguard import abi

# linux/capability.h
_CAP_SYS_ADMIN = 21
_CAP_NET_ADMIN = 12
_CAP_PERFMON = 38
_CAP_BPF = 39


class DataPathError(RuntimeError):
    """A failure with a one-line explanation for the operator."""


def ebpf_dir() -> Path:
    return Path(os.environ.get("SYNGUARD_EBPF_DIR", abi.EBPF_DIR_DEFAULT))


def check_privileges() -> None:
    """Raise unless we can load BPF and change links (root, or CAP_BPF + CAP_NET_ADMIN)."""
    try:
        status = Path("/proc/self/status").read_text()
        cap_eff = int(next(line.split()[1] for line in status.splitlines() if line.startswith("CapEff:")), 16)
    except (OSError, StopIteration, ValueError):
        cap_eff = -1 if os.geteuid() == 0 else 0
    has = lambda cap: bool(cap_eff >> cap & 1)  # noqa: E731
    if not (has(_CAP_BPF) or has(_CAP_SYS_ADMIN)) or not has(_CAP_NET_ADMIN):
        raise DataPathError("synguard needs root, or CAP_BPF + CAP_NET_ADMIN (+ CAP_PERFMON): run it as root")


def check_kernel_headers() -> None:
    build = Path("/lib/modules") / platform.release() / "build"
    if not (build / "include").is_dir():
        raise DataPathError(
            f"kernel headers missing: {build} not found; run `make setup` "
            f"(installs Debian's linux-headers and links them there)"
        )


def ifindex(ifname: str) -> int:
    try:
        return socket.if_nametoindex(ifname)
    except OSError:
        raise DataPathError(f"interface {ifname!r} does not exist (in this network namespace)") from None


@contextlib.contextmanager
def capture_fd2(path: Path):
    """Send fd 2 (where clang and the verifier write) to a file for the block."""
    saved = os.dup(2)
    with open(path, "w") as f:
        os.dup2(f.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
