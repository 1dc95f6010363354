"""bpffs pins: our program's pin (per network namespace) and the kept maps' pins.

How a restarted daemon (or ExecStopPost) knows its own program, and where the maps
that must survive a crash wait for the next start."""

from __future__ import annotations

import contextlib
import ctypes as ct
import os
import re
from pathlib import Path

from synguard.datapath.libbpf import lib as _lib, prog_id

# ---- Our program's pin: how a restarted daemon (or ExecStopPost) knows its own ---
# The kernel gives a program's name only with CAP_SYS_ADMIN (BPF_PROG_GET_FD_BY_ID),
# which the systemd unit does not grant. The daemon therefore pins its program in
# bpffs, one pin per network namespace, and compares program ids.


def pin_path() -> Path:
    root = Path(os.environ.get("SYNGUARD_PIN_DIR", "/sys/fs/bpf/synguard"))
    return root / f"netns-{os.stat('/proc/thread-self/ns/net').st_ino}" / "xdp_synguard"


def pinned_prog_id(path: Path | None = None) -> int | None:
    """Id of the program pinned by a synguard in this namespace (maybe a dead one's)."""
    lib = _lib()
    path = path or pin_path()
    if not path.exists():
        return None
    fd = lib.bpf_obj_get(str(path).encode())
    if fd < 0:
        return None
    try:
        return prog_id(fd)
    finally:
        os.close(fd)


def pin(prog_fd: int) -> str | None:
    """Pin our program (replacing an older pin); returns an error text or None."""
    lib = _lib()
    path = pin_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
    except OSError as e:
        return f"{path}: {e.strerror}"
    if lib.bpf_obj_pin(prog_fd, str(path).encode()) != 0:
        return f"{path}: {os.strerror(ct.get_errno())}"
    return None


def unpin(path: Path | None = None, expected_id: int | None = None) -> None:
    """Remove the pin (only if it still holds expected_id, when given)."""
    path = path or pin_path()
    if expected_id is None or pinned_prog_id(path) == expected_id:
        with contextlib.suppress(OSError):
            path.unlink()
            path.parent.rmdir()


def state_dir() -> tuple[Path | None, str | None]:
    """Pin directory for kept maps, if it is on a bpffs; else (None, why not)."""
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
        return None, f"{path} is not on a bpffs (mount -t bpf bpf /sys/fs/bpf): state is not kept across a crash"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return None, f"{path}: {e.strerror}: state is not kept across a crash"
    return path, None


def forget_state(path: Path | None) -> None:
    """Orderly stop: remove the kept maps' pins (a crash leaves them for the next start)."""
    if path is None:
        return
    for pinned in path.glob("sg_*"):
        pinned.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        path.rmdir()


def kept_map_names(c_source: str) -> list[str]:
    """Maps the C declares with SG_KEPT: their content outlives a crashed daemon."""
    return re.findall(r'^SG_KEPT\("[^"]+",[^,]+,[^,]+,\s*(\w+),', c_source, re.M)


    def kept_maps(self) -> list[str]:
        """Maps whose content outlives a crashed daemon: those the C declares with SG_KEPT."""
        return re.findall(r'^SG_KEPT\("[^"]+",[^,]+,[^,]+,\s*(\w+),', self.src_file.read_text(), re.M)

def map_layout(fd: int) -> tuple[int, int, int, int]:
    """(type, key_size, value_size, max_entries) of a map fd (struct bpf_map_info's head)."""
    info = (ct.c_uint32 * 6)()
    size = ct.c_uint32(ct.sizeof(info))
    if _lib().bpf_obj_get_info_by_fd(fd, info, ct.byref(size)) != 0:
        err = ct.get_errno()
        raise OSError(err, os.strerror(err))
    return info[0], info[2], info[3], info[4]


def adopt_state(directory: Path, tables: dict) -> tuple[list[str], str | None]:
    """Copy the kept maps a previous run pinned in directory into ours (name -> BCC
    table), then pin ours in their place. Returns ("name (entries)" adopted, a note
    on what could not be adopted). A pin whose layout differs from ours (an upgrade
    changed the struct, or a file that is not our map) is never read: not adopted."""
    from bcc.utils import get_possible_cpus

    lib = _lib()
    ncpu = len(get_possible_cpus())
    adopted, note = [], None
    for name, table in tables.items():
        path = directory / name
        if path.exists():
            old = lib.bpf_obj_get(str(path).encode())
            if old < 0:
                note = f"{path}: {os.strerror(ct.get_errno())}: not adopted"
            else:
                try:
                    if map_layout(old) != map_layout(table.map_fd):
                        note = f"{path}: layout differs from this version's {name}: not adopted"
                    else:
                        adopted.append(f"{name} ({_copy_map(lib, old, table, ncpu)})")
                except OSError as e:
                    note = f"{path}: {e.strerror}: not adopted"
                finally:
                    os.close(old)
            path.unlink(missing_ok=True)
        if lib.bpf_obj_pin(table.map_fd, str(path).encode()) != 0:
            note = f"cannot pin {path}: {os.strerror(ct.get_errno())}: state is not kept across a crash"
    return adopted, note


def _copy_map(lib, old_fd: int, table, ncpu: int) -> int:
    """Copy every entry of old_fd into table; the layouts were compared by the caller."""
    ksize = ct.sizeof(table.Key)
    leaf = getattr(table, "sLeaf", table.Leaf)
    vsize = ct.sizeof(leaf)
    if hasattr(table, "sLeaf"):  # per-CPU: one 8-byte-aligned value per possible CPU
        vsize = (vsize + 7) // 8 * 8 * ncpu
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
