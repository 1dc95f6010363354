"""Loader for the tc ingress program (ebpf/synguard_tc.bpf.c): clang + libbpf.

BCC cannot emit kfunc calls, so this program is compiled with clang into a private
temporary directory and loaded with Debian's libbpf1 through ctypes. Its maps are
the XDP program's: pass their fds (DataPath(...).map(name).map_fd) and libbpf
reuses them (bpf_map__reuse_fd) instead of creating its own. Without fds (tests)
libbpf creates fresh maps, reachable with TcProgram.map_fd().
It loads in the daemon itself, unlike the XDP program (BCC, synguard/datapath/loader.py):
libbpf is small (+0.4 MiB resident with the load done, measured), and clang runs as
its own process (or the object is prebuilt).

Attachment: a cls_bpf filter in direct-action mode on the clsact ingress hook, at
a fixed handle/priority (TC_HANDLE, TC_PRIORITY). We replace or detach a filter
there only when it is ours: our program id, or the id pinned by a synguard in this
network namespace (a daemon that died), or a program named tc_synguard. Foreign filters are never touched, and the
clsact qdisc is left in place (removing it would remove other people's filters).

Errors the operator can fix are raised as DataPathError with a one-line message.
"""

from __future__ import annotations

import contextlib
import ctypes as ct
import errno
import os
import shutil
import subprocess
import sysconfig
import tempfile
from pathlib import Path

from synguard import abi
from synguard.datapath.host import DataPathError, capture_fd2 as _capture_fd2, ebpf_dir, ifindex
from synguard.datapath.libbpf import BPF_TC_F_REPLACE, BPF_TC_INGRESS, OpenOpts as _OpenOpts, TcHook as _TcHook
from synguard.datapath.libbpf import TcOpts as _TcOpts, lib as _lib, prog_id, prog_name_by_id as _prog_name_by_id
from synguard.datapath.libbpf import prog_test_run
from synguard.datapath.netns import current_netns_fd, in_netns
from synguard.datapath.pins import (SCHED_CLS_PROG_TYPE, pin_named, pin_path, pinned_prog_id,
                                    unpin_named)

PROG_NAME = "tc_synguard"
SRC_NAME = "synguard_tc.bpf.c"
SHARED_MAPS = ("sg_config", "sg_ports", "sg_secrets", "sg_counters", "sg_ifaces", "sg_sip_cache", "sg_local_addrs")
KFUNC = "bpf_sk_assign_tcp_reqsk"
TC_HANDLE = 0x5347  # "SG"
TC_PRIORITY = 1  # first on the hook: the program returns TC_ACT_UNSPEC, so later filters still run

VERIFIER_LOG_SIZE = 16 << 20  # the kernel keeps the log's tail when it overflows


def _errno_of(ret: int) -> int:
    """libbpf 1.x returns -errno (and sets errno); NULL-returning calls set errno only."""
    return -ret if ret < 0 else ct.get_errno()


# ---- Preconditions, each with an operator-facing message ------------------------


def find_clang() -> str:
    from synguard.datapath.host import env_path

    forced = env_path("SYNGUARD_CLANG")  # a trusted path, or DataPathError
    for name in (str(forced) if forced else None, "clang", "clang-14"):
        if name and shutil.which(name):
            return shutil.which(name)
    raise DataPathError("clang not found: the tc program is compiled with clang (apt-get install clang-14 libbpf-dev)")


def kernel_has_kfunc(btf: Path = Path("/sys/kernel/btf/vmlinux")) -> bool:
    """The kernel exports bpf_sk_assign_tcp_reqsk() (Linux >= 6.9 with BTF)."""
    try:
        return b"\0" + KFUNC.encode() + b"\0" in btf.read_bytes()
    except OSError:
        return False


def check_kfunc() -> None:
    if not kernel_has_kfunc():
        raise DataPathError(
            f"this kernel has no {KFUNC}() kfunc (needs Linux >= 6.9 with BTF, /sys/kernel/btf/vmlinux): "
            f"cookie ACKs cannot be turned into connections"
        )


def check_syncookies() -> None:
    """The kernel completes our cookie ACKs only with net.ipv4.tcp_syncookies != 0 (this netns)."""
    try:
        value = int(Path("/proc/sys/net/ipv4/tcp_syncookies").read_text())
    except (OSError, ValueError):
        return  # cannot tell; the kernel will
    if value == 0:
        raise DataPathError(
            "net.ipv4.tcp_syncookies is 0 in this network namespace: the kernel resets cookie ACKs; "
            "set it to 1 (sysctl -w net.ipv4.tcp_syncookies=1)"
        )


def tc_pin_path() -> Path:
    """Our pinned tc program in this network namespace (beside the XDP program's pin)."""
    return pin_path().parent / PROG_NAME


def pinned_tc_prog_id(path: Path | None = None) -> int | None:
    """Id of the tc program a synguard pinned in this namespace (None: none, or foreign)."""
    if path is None:
        return pinned_prog_id(name=PROG_NAME, prog_type=SCHED_CLS_PROG_TYPE)
    return pinned_prog_id(path, prog_type=SCHED_CLS_PROG_TYPE)


def _hook(ifidx: int) -> _TcHook:
    return _TcHook(sz=ct.sizeof(_TcHook), ifindex=ifidx, attach_point=BPF_TC_INGRESS)


def _opts(**fields) -> _TcOpts:
    return _TcOpts(sz=ct.sizeof(_TcOpts), handle=TC_HANDLE, priority=TC_PRIORITY, **fields)


def filter_prog_id(ifname: str) -> int | None:
    """Id of the program in the filter at our handle/priority on ifname's ingress, or None."""
    hook, opts = _hook(ifindex(ifname)), _opts()
    with _capture_fd2(Path(os.devnull)):  # libbpf prints the kernel's "Parent Qdisc doesn't exists"
        ret = _lib().bpf_tc_query(ct.byref(hook), ct.byref(opts))
    if ret != 0:
        err = _errno_of(ret)
        if err in (errno.ENOENT, errno.EINVAL):  # no filter there (EINVAL: no clsact qdisc)
            return None
        raise DataPathError(f"cannot query tc filters on {ifname}: {os.strerror(err)}")
    return opts.prog_id


def _detach_filter(ifname: str) -> None:
    hook, opts = _hook(ifindex(ifname)), _opts()
    ret = _lib().bpf_tc_detach(ct.byref(hook), ct.byref(opts))
    if ret != 0 and _errno_of(ret) != errno.ENOENT:
        raise DataPathError(f"cannot detach the tc filter on {ifname}: {os.strerror(_errno_of(ret))}")


def is_ours(prog: int | None) -> bool:
    """A filter program is synguard's: the id pinned in this namespace, or (where the pin
    is not visible, e.g. under `ip netns exec`, which mounts a fresh /sys) our name."""
    return prog is not None and (prog == pinned_tc_prog_id() or _prog_name_by_id(prog) == PROG_NAME)


def detach_orphan(ifname: str) -> bool:
    """Detach a synguard tc filter a dead daemon left on ifname."""
    if not is_ours(filter_prog_id(ifname)):
        return False
    _detach_filter(ifname)
    return True


def unpin(expected_id: int | None = None) -> None:
    unpin_named(PROG_NAME, expected_id, SCHED_CLS_PROG_TYPE)


# ---- The program -----------------------------------------------------------------


class TcProgram:
    """The compiled tc program, its (shared) maps and its attachments."""

    def __init__(self, map_fds: dict[str, int] | None = None, *, cflags: tuple[str, ...] = (),
                 src_name: str = SRC_NAME, prog_name: str = PROG_NAME):
        """map_fds: the XDP program's maps by name (all of SHARED_MAPS), or None for fresh ones.
        src_name/prog_name: another program in ebpf/ (the benchmark's empty floor)."""
        if src_name == SRC_NAME:
            check_kfunc()
        self.prog_name = prog_name
        self.obj = None
        self.attached: dict[str, int] = {}  # ifname -> netns fd it was attached in
        self._pins: set[Path] = set()
        self._orphan_ids: set[int] = set()
        self.pin_error: str | None = None
        self.work_dir = Path(tempfile.mkdtemp(prefix="synguard-tc-"))  # 0700, ours alone
        self.src_file = ebpf_dir() / src_name
        self.cflags = tuple(cflags)
        self.log_path = self.work_dir / "load.log"
        obj_file = self._prebuilt() or self._compile(find_clang())
        try:
            self._load(obj_file, map_fds)
        except BaseException:
            obj, self.obj = self.obj, None  # the work dir stays: the error names its log
            if obj:
                _lib().bpf_object__close(obj)
            raise

    def _prebuilt(self) -> Path | None:
        """The object `make ebpf` (or the Debian package) compiled ahead of time, if it is
        not older than the C it was built from and no extra cflags are asked for."""
        obj = abi.EBPF_OBJ_DIR_DEFAULT / self.src_file.name.replace(".c", ".o")
        try:
            newest = max(p.stat().st_mtime for p in (self.src_file, *self.src_file.parent.glob("synguard_*.h")))
            if not self.cflags and obj.stat().st_mtime >= newest:
                return obj
        except OSError:
            pass
        return None

    def _compile(self, clang: str) -> Path:
        out = self.work_dir / self.src_file.name.replace(".c", ".o")
        log = self.work_dir / "compile.log"
        multiarch = sysconfig.get_config_var("MULTIARCH") or ""
        cmd = [clang, "-O2", "-g", "-target", "bpf", "-Wall", "-Wno-unused-function",
               f"-I{self.src_file.parent}"]
        if multiarch and Path(f"/usr/include/{multiarch}").is_dir():
            cmd.append(f"-I/usr/include/{multiarch}")  # asm/types.h for linux/*.h
        cmd += [*self.cflags, "-c", str(self.src_file), "-o", str(out)]
        with open(log, "w") as f:
            f.write(" ".join(cmd) + "\n")
            f.flush()
            rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, check=False).returncode
        if rc != 0:
            raise DataPathError(f"cannot compile {self.src_file.name} with {clang}: see {log}")
        return out

    def _load(self, obj_file: Path, map_fds: dict[str, int] | None) -> None:
        lib = _lib()
        # The verifier log goes to our buffer: libbpf retries a failed load with
        # log level 1 into it (its print callback may belong to BCC in this process).
        # By address, not ct.cast(): cast() makes a reference cycle that keeps the 16 MiB
        # buffer resident until the next full GC, long after the load.
        log_buf = ct.create_string_buffer(VERIFIER_LOG_SIZE)
        opts = _OpenOpts(sz=ct.sizeof(_OpenOpts), kernel_log_buf=ct.addressof(log_buf),
                         kernel_log_size=VERIFIER_LOG_SIZE)
        with _capture_fd2(self.log_path.with_suffix(".libbpf.log")):  # libbpf's own messages
            obj = lib.bpf_object__open_file(str(obj_file).encode(), ct.byref(opts))
            if not obj:
                raise DataPathError(f"libbpf cannot open {obj_file.name}: {os.strerror(ct.get_errno())} "
                                    f"(see {self.log_path.with_suffix('.libbpf.log')})")
            self.obj = obj
            if map_fds is not None:
                missing = [name for name in SHARED_MAPS if name not in map_fds]
                if missing:
                    raise DataPathError(f"tc program: no fd for shared maps {', '.join(missing)}")
                for name in SHARED_MAPS:
                    m = lib.bpf_object__find_map_by_name(obj, name.encode())
                    ret = lib.bpf_map__reuse_fd(m, map_fds[name]) if m else -errno.ENOENT
                    if ret != 0:
                        raise DataPathError(f"tc program: cannot share map {name}: {os.strerror(_errno_of(ret))}")
            ret = lib.bpf_object__load(obj)
        self.log_path.write_bytes(log_buf.value)
        del log_buf
        if ret != 0:
            raise DataPathError(f"cannot load the tc program: {os.strerror(_errno_of(ret))} "
                                f"(verifier log: {self.log_path})")
        prog = lib.bpf_object__find_program_by_name(obj, self.prog_name.encode())
        if not prog:
            raise DataPathError(f"{self.prog_name} not found in {obj_file.name}")
        self.prog_fd = lib.bpf_program__fd(prog)
        self.prog_id = prog_id(self.prog_fd)

    def map_fd(self, name: str) -> int:
        lib = _lib()
        m = lib.bpf_object__find_map_by_name(self.obj, name.encode())
        if not m:
            raise KeyError(name)
        return lib.bpf_map__fd(m)

    def test_run(self, frame: bytes, repeat: int = 1):
        """BPF_PROG_TEST_RUN on one Ethernet frame (retval = the tc verdict)."""
        return prog_test_run(self.prog_fd, frame, repeat)

    # -- attachments -------------------------------------------------------------

    def attach(self, ifname: str, strict: bool = True) -> str | None:
        """Attach at ifname's clsact ingress; replaces only our own (or a dead synguard's) filter.

        With net.ipv4.tcp_syncookies=0 the kernel resets every cookie ACK: strict raises
        DataPathError; otherwise the filter is attached and the problem returned as text
        (a daemon in observe mode, or one whose operator fixes the sysctl, still works)."""
        problem = None
        try:
            check_syncookies()
        except DataPathError as e:
            if strict:
                raise
            problem = str(e)
        lib = _lib()
        hook = _hook(ifindex(ifname))
        with _capture_fd2(self.work_dir / "attach.log"):  # libbpf prints the expected EEXIST
            ret = lib.bpf_tc_hook_create(ct.byref(hook))
        if ret != 0 and _errno_of(ret) != errno.EEXIST:
            raise DataPathError(f"cannot create the clsact qdisc on {ifname}: {os.strerror(_errno_of(ret))}")
        current = filter_prog_id(ifname)
        pinned = pinned_tc_prog_id()
        if pinned is not None and pinned != self.prog_id:
            self._orphan_ids.add(pinned)  # a dead daemon's: still ours after our pin replaces it
        flags = 0
        if current is not None:
            if current != self.prog_id and current not in self._orphan_ids and not is_ours(current):
                raise DataPathError(
                    f"{ifname} ingress already has tc program id {current} at handle {TC_HANDLE:#x} priority "
                    f"{TC_PRIORITY}; synguard replaces only its own filter: remove that one first"
                )
            flags = BPF_TC_F_REPLACE  # ours, maybe a dead daemon's: swap in one step
        opts = _opts(prog_fd=self.prog_fd, flags=flags)
        ret = lib.bpf_tc_attach(ct.byref(hook), ct.byref(opts))
        if ret != 0:
            raise DataPathError(f"cannot attach the tc program to {ifname}: {os.strerror(_errno_of(ret))}")
        old = self.attached.pop(ifname, None)
        if old is not None:
            os.close(old)
        self.attached[ifname] = current_netns_fd()
        if pinned_tc_prog_id() != self.prog_id:
            self._pin()
        return problem

    def _pin(self) -> None:
        err = pin_named(self.prog_fd, PROG_NAME)
        if err:
            self.pin_error = err
        else:
            self._pins.add(tc_pin_path())

    def detach(self, ifname: str) -> bool:
        """Detach from ifname (in the namespace it was attached in) if our filter is still there."""
        fd = self.attached.pop(ifname, None)
        if fd is None:
            return False
        try:
            with in_netns(fd):
                try:
                    if filter_prog_id(ifname) != self.prog_id:
                        return False  # gone, or someone else's now
                except DataPathError:
                    return False  # interface gone
                _detach_filter(ifname)
                return True
        finally:
            os.close(fd)

    def forget(self, ifname: str) -> None:
        """Drop the record of an attachment the kernel already ended (device removed)."""
        fd = self.attached.pop(ifname, None)
        if fd is not None:
            os.close(fd)

    def rename(self, old: str, new: str) -> None:
        """The device was renamed: the filter followed it (it is bound to the ifindex)."""
        if old in self.attached:
            self.attached[new] = self.attached.pop(old)

    def close(self) -> None:
        """Idempotent: detach everywhere, unpin (if the pin is still ours), free the program."""
        for ifname in list(self.attached):
            with contextlib.suppress(Exception):
                self.detach(ifname)
        for path in self._pins:
            unpin_named(path.name, self.prog_id, SCHED_CLS_PROG_TYPE, directory=path.parent)
        self._pins = set()
        obj, self.obj = self.obj, None
        if obj:
            _lib().bpf_object__close(obj)
        shutil.rmtree(getattr(self, "work_dir", ""), ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
