"""bpffs pins: our program's pin (per network namespace) and the kept maps' pins.

How a restarted daemon (or ExecStopPost) knows its own program, and where the maps
that must survive a crash wait for the next start."""

from __future__ import annotations

import contextlib
import ctypes as ct
import os
import re
import stat
from pathlib import Path

from synguard.datapath.libbpf import lib as _lib, prog_id

# ---- Our program's pin: how a restarted daemon (or ExecStopPost) knows its own ---
# The kernel gives a program's name only with CAP_SYS_ADMIN (BPF_PROG_GET_FD_BY_ID),
# which the systemd unit does not grant. The daemon therefore pins its program in
# bpffs, one pin per network namespace, and compares program ids.
#
# Trust: a pin says "this program is synguard's, detach or replace it freely", so
# a pin another user could plant must never count. On a bpffs mounted 1777 any
# local user can create synguard/netns-N/xdp_synguard (a symlink to another
# program's pin, or a directory where our pins would land under their control).
# Both directories must be real directories of our euid, closed to group/other
# writes (we create them 0700), under a parent where nobody else can swap them
# (not world-writable without the sticky bit); a pin must be a regular bpffs
# object of our euid, of the expected kind. Anything else is foreign: never read,
# never replaced, never removed; synguard says so in one line.


class ForeignPin(Exception):
    """A pin or pin directory synguard did not make (str: the one-line reason)."""


def foreign_note(e: ForeignPin) -> str:
    """The one line a daemon logs about a foreign pin directory (state_dir() and pin() agree)."""
    return (f"{e}: looks foreign; state is not kept across a crash and the program is not pinned "
            f"(remove it once you know who made it)")


def pin_root() -> Path:
    return Path(os.environ.get("SYNGUARD_PIN_DIR", "/sys/fs/bpf/synguard"))


def pin_path() -> Path:
    return pin_root() / f"netns-{os.stat('/proc/thread-self/ns/net').st_ino}" / "xdp_synguard"


def _check_dir(path: Path, create: bool) -> bool:
    """True if path is a trusted directory of ours (made 0700 if create and missing),
    False if it does not exist; ForeignPin if it exists and is not trusted."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        if not create:
            return False
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass  # someone raced us: checked below like any other
        st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise ForeignPin(f"{path} is a symlink")
    if not stat.S_ISDIR(st.st_mode):
        raise ForeignPin(f"{path} is not a directory")
    if st.st_uid != os.geteuid():
        raise ForeignPin(f"{path} is owned by uid {st.st_uid}, not by us (uid {os.geteuid()})")
    if st.st_mode & 0o022:
        raise ForeignPin(f"{path} has mode {stat.S_IMODE(st.st_mode):04o}: group/other may write in it")
    return True


def trusted_pin_dir(create: bool = False, ns_dir: Path | None = None) -> Path | None:
    """The directory of this namespace's pins (or ns_dir, one recorded in another
    namespace), if it exists (or was created) and is ours; None if it does not
    exist; ForeignPin if it or the directories above it are not trusted."""
    path = ns_dir or pin_path().parent
    root = path.parent
    parent = os.lstat(root.parent) if root.parent.exists() else None
    if parent is not None and parent.st_mode & 0o002 and not parent.st_mode & stat.S_ISVTX:
        raise ForeignPin(f"{root.parent} is world-writable without the sticky bit: anyone may swap {root.name}")
    if not _check_dir(root, create):
        return None
    return path if _check_dir(path, create) else None


def check_pin(path: Path) -> bool:
    """True if path is a pin of ours (a bpffs object; its kind is checked on the fd); False if none;
    ForeignPin otherwise (a symlink, not a bpffs object, another owner)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if stat.S_ISLNK(st.st_mode):
        raise ForeignPin(f"{path} is a symlink (to {os.readlink(path)})")
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
        raise ForeignPin(f"{path} is not a bpffs pin of uid {os.geteuid()} (owner uid {st.st_uid})")
    return True


def _fd_kind(fd: int) -> dict[str, str]:
    """The kernel's fdinfo of a BPF object fd (prog_type / map_type lines)."""
    with open(f"/proc/self/fdinfo/{fd}") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


XDP_PROG_TYPE = 6  # enum bpf_prog_type BPF_PROG_TYPE_XDP
SCHED_CLS_PROG_TYPE = 3  # BPF_PROG_TYPE_SCHED_CLS (our tc program)


def pin_problem() -> str | None:
    """Why this namespace's pins are not trusted (one line), or None."""
    try:
        d = trusted_pin_dir()
        fd = pinned_prog_fd_checked(d / "xdp_synguard") if d is not None else None
        if fd is not None:
            os.close(fd)
    except ForeignPin as e:
        return f"{e}: not trusted as synguard's (a pin another user could plant is never used)"
    except OSError:
        pass
    return None


def pinned_prog_fd_checked(path: Path, prog_type: int = XDP_PROG_TYPE) -> int | None:
    """An fd of the program pinned at path (None if no pin); ForeignPin if the pin
    is not ours or not a program of prog_type."""
    if not check_pin(path):
        return None
    fd = _lib().bpf_obj_get(str(path).encode())
    if fd < 0:
        return None
    info = _fd_kind(fd)
    if info.get("prog_type") != str(prog_type):
        os.close(fd)
        raise ForeignPin(f"{path} is not a program of type {prog_type}")
    return fd


def pinned_prog_id(path: Path | None = None, name: str = "xdp_synguard", prog_type: int = XDP_PROG_TYPE) -> int | None:
    """Id of the program pinned by a synguard in this namespace (maybe a dead one's);
    None if there is none, or if the pin or its directory is foreign (pin_problem())."""
    try:
        if path is None:
            d = trusted_pin_dir()
            if d is None:
                return None
            path = d / name
        fd = pinned_prog_fd_checked(path, prog_type)
    except (ForeignPin, OSError):
        return None
    if fd is None:
        return None
    try:
        return prog_id(fd)
    finally:
        os.close(fd)


def pin(prog_fd: int, progs_fd: int | None = None) -> str | None:
    """Pin our program (replacing an older pin of ours) and its tail-call array sg_progs
    (the kernel clears a prog array's entries when its last user reference goes: a
    crashed daemon's program would lose its option scan); returns an error text or None."""
    return pin_named(prog_fd, "xdp_synguard") or (pin_named(progs_fd, "sg_progs") if progs_fd is not None else None)


PROG_ARRAY_MAP_TYPE = 3  # BPF_MAP_TYPE_PROG_ARRAY


def pinned_table_fd(name: str) -> int | None:
    """An fd of the tail-call table pinned as `name` in this namespace's trusted directory
    (a dead daemon's, about to be replaced by ours): holding it keeps that table filled
    while its program still sits on an interface. None if none, foreign or not a prog array."""
    with contextlib.suppress(ForeignPin, OSError):
        d = trusted_pin_dir()
        if d is None or not check_pin(d / name):
            return None
        fd = _lib().bpf_obj_get(str(d / name).encode())
        if fd < 0:
            return None
        if _fd_kind(fd).get("map_type") == str(PROG_ARRAY_MAP_TYPE):
            return fd
        os.close(fd)
    return None


def unpin(path: Path | None = None, expected_id: int | None = None) -> None:
    """Remove our pin (only if it still holds expected_id, when given); a foreign pin
    or directory is left alone."""
    try:
        d = trusted_pin_dir(ns_dir=path.parent if path else None)
        if d is None:
            return
        path = path or d / "xdp_synguard"
        if not check_pin(path):
            return
    except (ForeignPin, OSError):
        return
    if expected_id is None or pinned_prog_id(path) == expected_id:
        with contextlib.suppress(OSError, ForeignPin):
            path.unlink()
            if check_pin(path.with_name("sg_progs")):
                path.with_name("sg_progs").unlink()
            path.parent.rmdir()


def state_dir() -> tuple[Path | None, str | None]:
    """Pin directory for kept maps, if it is on a bpffs and ours; else (None, why not)."""
    path = pin_path().parent
    best = ("", "")
    try:
        for line in Path("/proc/thread-self/mountinfo").read_text().splitlines():
            fields = line.split()
            mount, fstype = fields[4], fields[fields.index("-") + 1]
            if (str(path) + "/").startswith(mount.rstrip("/") + "/") and len(mount) > len(best[0]):
                best = (mount, fstype)
    except (OSError, ValueError, IndexError):
        pass
    if best[1] != "bpf":
        return None, f"{path} is not on a bpffs (mount -t bpf -o mode=0700 bpf /sys/fs/bpf): state is not kept across a crash"
    try:
        trusted_pin_dir(create=True)
    except ForeignPin as e:
        return None, foreign_note(e)
    except OSError as e:
        return None, f"{path}: {e.strerror}: state is not kept across a crash"
    return path, None


def forget_state(path: Path | None) -> None:
    """Orderly stop: remove the kept maps' pins (a crash leaves them for the next start)."""
    if path is None:
        return
    for pinned in path.glob("sg_*"):
        with contextlib.suppress(ForeignPin, OSError):
            if check_pin(pinned):
                pinned.unlink()
    with contextlib.suppress(OSError):
        path.rmdir()


def kept_map_names(c_source: str) -> list[str]:
    """Maps the C declares with SG_KEPT: their content outlives a crashed daemon."""
    return re.findall(r'^SG_KEPT\("[^"]+",[^,]+,[^,]+,\s*(\w+),', c_source, re.M)


def map_layout(fd: int) -> tuple[int, int, int, int]:
    """(type, key_size, value_size, max_entries) of a map fd (struct bpf_map_info's head)."""
    info = (ct.c_uint32 * 6)()
    size = ct.c_uint32(ct.sizeof(info))
    if _lib().bpf_obj_get_info_by_fd(fd, info, ct.byref(size)) != 0:
        err = ct.get_errno()
        raise OSError(err, os.strerror(err))
    return info[0], info[2], info[3], info[4]


def adopt_state(directory: Path, tables: dict) -> tuple[list[str], str | None]:
    """Copy the kept maps a previous run pinned in directory into ours (name -> Map,
    synguard/datapath/maps.py), then pin ours in their place. Returns ("name (entries)" adopted, a note
    on what could not be adopted). A pin whose layout differs from ours (an upgrade
    changed the struct, or a file that is not our map) is never read: not adopted."""
    lib = _lib()
    adopted, note = [], None
    for name, table in tables.items():
        path = directory / name
        try:
            ours = check_pin(path)
        except ForeignPin as e:
            note = f"{e}: not adopted"
            continue  # never read, replaced or removed
        if ours:
            old = lib.bpf_obj_get(str(path).encode())
            if old < 0:
                note = f"{path}: {os.strerror(ct.get_errno())}: not adopted"
            else:
                try:
                    if map_layout(old) != map_layout(table.map_fd):
                        note = f"{path}: layout differs from this version's {name}: not adopted"
                    else:
                        adopted.append(f"{name} ({_copy_map(lib, old, table)})")
                except OSError as e:
                    note = f"{path}: {e.strerror}: not adopted"
                finally:
                    os.close(old)
            path.unlink(missing_ok=True)
        if lib.bpf_obj_pin(table.map_fd, str(path).encode()) != 0:
            note = f"cannot pin {path}: {os.strerror(ct.get_errno())}: state is not kept across a crash"
    return adopted, note


def _copy_map(lib, old_fd: int, table) -> int:
    """Copy every entry of old_fd into table; the layouts were compared by the caller
    (raw bytes: a per-CPU value is every possible CPU's, 8-byte aligned: table.raw_value_size)."""
    ksize, vsize = table.key_size, table.raw_value_size
    key, nxt, val = ct.create_string_buffer(ksize), ct.create_string_buffer(ksize), ct.create_string_buffer(vsize)
    first, copied = True, 0
    while lib.bpf_map_get_next_key(old_fd, None if first else key, nxt) == 0:
        first = False
        ct.memmove(key, nxt, ksize)
        if lib.bpf_map_lookup_elem(old_fd, key, val) != 0:
            continue  # evicted meanwhile
        if lib.bpf_map_update_elem(table.map_fd, key, val, 0) != 0:
            err = ct.get_errno()
            raise OSError(err, os.strerror(err))
        copied += 1
    return copied


def pin_named(fd: int, name: str) -> str | None:
    """Pin a BPF object of ours as `name` in this namespace's trusted pin directory
    (replacing an older pin of ours); returns an error text or None."""
    try:
        path = trusted_pin_dir(create=True) / name
        if check_pin(path):
            path.unlink()
    except ForeignPin as e:
        return foreign_note(e)
    except OSError as e:
        return f"{pin_path().parent / name}: {e.strerror}"
    if _lib().bpf_obj_pin(fd, str(path).encode()) != 0:
        return f"{path}: {os.strerror(ct.get_errno())}"
    return None


def unpin_named(name: str, expected_id: int | None, prog_type: int, directory: Path | None = None) -> None:
    """Remove our pin `name` in this namespace's directory (or `directory`, one recorded
    in another namespace), only if it still holds expected_id when given; a foreign pin
    or directory is left alone; the directory goes when it is empty."""
    try:
        d = trusted_pin_dir(ns_dir=directory)
        if d is None or not check_pin(d / name):
            return
    except (ForeignPin, OSError):
        return
    if expected_id is None or pinned_prog_id(d / name, prog_type=prog_type) == expected_id:
        with contextlib.suppress(OSError):
            (d / name).unlink()
        with contextlib.suppress(OSError):
            d.rmdir()
