"""What the data path needs from the host: privileges, kernel headers, interfaces,
and the compiler/verifier log. Errors the operator can fix are DataPathError, one line."""

from __future__ import annotations

import contextlib
import os
import platform
import socket
import stat
import tempfile
from pathlib import Path

from synguard import abi

# linux/capability.h
_CAP_SYS_ADMIN = 21
_CAP_NET_ADMIN = 12
_CAP_PERFMON = 38
_CAP_BPF = 39


class DataPathError(RuntimeError):
    """A failure with a one-line explanation for the operator."""


# Environment knobs (README "Security"): SYNGUARD_EBPF_DIR, SYNGUARD_CLANG, SYNGUARD_PIN_DIR
# and SYNGUARD_COOKIE_METHOD are root-only knobs: whoever sets a root daemon's environment
# is root. Still, a directory of C the daemon compiles or a compiler it runs must not be
# one another user can change: such a path is refused in one line (the pin directory has
# its own trust check, pins.py). SYNGUARD_TEST_FAULT is a test hook, honoured only when
# synguard runs from a checkout (abi.FROM_CHECKOUT), never by an installed daemon.


def untrusted_path(path: Path) -> str | None:
    """Why another user could change path (after resolving links), or None: the file and
    every directory above it must be owned by root (or our euid) and closed to
    group/other writes (a sticky directory, like /tmp, may be world-writable)."""
    try:
        real = Path(path).resolve(strict=True)
    except OSError as e:
        return f"{path}: {e.strerror}"
    for p in (real, *real.parents):
        st = os.stat(p)
        if st.st_uid not in (0, os.geteuid()):
            return f"{p} is owned by uid {st.st_uid}"
        if st.st_mode & 0o022 and not (stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX):
            return f"{p} has mode {stat.S_IMODE(st.st_mode):04o}: group/other may write it"
    return None


def env_path(name: str) -> Path | None:
    """A path from the root-only knob `name`, if set and trusted; DataPathError if untrusted."""
    value = os.environ.get(name)
    if not value:
        return None
    why = untrusted_path(Path(value))
    if why:
        raise DataPathError(f"{name}={value}: {why}; synguard compiles or runs nothing another user could change")
    return Path(value)


def ebpf_dir() -> Path:
    return env_path("SYNGUARD_EBPF_DIR") or abi.EBPF_DIR_DEFAULT


# The C the XDP program is compiled from (BCC), headers first, and the tc program's own file.
XDP_SOURCES = ("synguard_abi.h", "synguard_siphash.h", "synguard_parse.h", "synguard_scope.h", "synguard.bpf.c")
TC_SOURCE = "synguard_tc.bpf.c"


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


def private_log_dir(given: Path | None = None) -> Path:
    """The directory for the compiler/verifier and attach logs: given (it must be a real
    directory of ours that nobody else may write), else a fresh mkdtemp() in $TMPDIR
    (0700, a name nobody can predict). A root daemon never writes a fixed name in a
    world-writable /tmp, where another user could plant a symlink."""
    if given is None:
        return Path(tempfile.mkdtemp(prefix="synguard-log-"))
    path = Path(given)
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700, parents=True)
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise DataPathError(f"log directory {path}: not a directory of uid {os.geteuid()} closed to group/other "
                            f"writes (symlink, foreign owner or mode {stat.S_IMODE(st.st_mode):04o}); not writing there")
    return path


@contextlib.contextmanager
def capture_fd2(path: Path):
    """Send fd 2 (where clang, the verifier and libbpf write) to a file for the block;
    libbpf's messages, quiet elsewhere, are on for the block.

    path lies in a private_log_dir(); O_NOFOLLOW all the same (a symlink is never followed)."""
    from synguard.datapath.libbpf import libbpf_messages

    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    saved = os.dup(2)
    os.dup2(fd, 2)
    os.close(fd)
    try:
        with libbpf_messages():
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
