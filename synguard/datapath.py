"""Loader and map access for the XDP program in ebpf/.

DataPath compiles ebpf/synguard.bpf.c with BCC, attaches it to interfaces
(native XDP with a fallback to generic), replaces or detaches only its own
program, and reads/writes the maps through BCC's generated Key/Leaf classes.
Errors the operator can fix are raised as DataPathError with a one-line message.
"""

from __future__ import annotations

import contextlib
import ctypes as ct
import ipaddress
import itertools
import os
import platform
import re
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from synguard import abi
from synguard.abi import Counter, Mode

PROG_NAME = "xdp_synguard"

# linux/if_link.h
XDP_FLAGS_UPDATE_IF_NOEXIST = 1 << 0
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
XDP_MODES = ("auto", "native", "generic")

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
def _capture_fd2(path: Path):
    """Send fd 2 (where clang and the verifier write) to a file for the block."""
    saved = os.dup(2)
    with open(path, "w") as f:
        os.dup2(f.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


# ---- network namespaces: attachments remember theirs ----------------------------

_CLONE_NEWNET = 0x40000000
_libc = ct.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ct.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def current_netns_fd() -> int:
    """An fd of the calling thread's network namespace (caller closes it)."""
    return os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)


@contextlib.contextmanager
def in_netns(fd: int):
    """Run the body with the current thread in the namespace of fd, then return."""
    old = current_netns_fd()
    try:
        _setns(fd)
        try:
            yield
        finally:
            _setns(old)
    finally:
        os.close(old)


# ---- BPF_PROG_TEST_RUN through libbpf ----------------------------------------


class _TestRunOpts(ct.Structure):
    """struct bpf_test_run_opts (libbpf 1.x)."""

    _fields_ = [
        ("sz", ct.c_size_t),
        ("data_in", ct.c_void_p),
        ("data_out", ct.c_void_p),
        ("data_size_in", ct.c_uint32),
        ("data_size_out", ct.c_uint32),
        ("ctx_in", ct.c_void_p),
        ("ctx_out", ct.c_void_p),
        ("ctx_size_in", ct.c_uint32),
        ("ctx_size_out", ct.c_uint32),
        ("retval", ct.c_uint32),
        ("repeat", ct.c_int),
        ("duration", ct.c_uint32),
        ("flags", ct.c_uint32),
        ("cpu", ct.c_uint32),
        ("batch_size", ct.c_uint32),
    ]


_libbpf = None


def _lib():
    global _libbpf
    if _libbpf is None:
        _libbpf = ct.CDLL("libbpf.so.1", use_errno=True)
        lib = _libbpf
        lib.bpf_prog_test_run_opts.argtypes = [ct.c_int, ct.POINTER(_TestRunOpts)]
        lib.bpf_obj_get_info_by_fd.argtypes = [ct.c_int, ct.c_void_p, ct.POINTER(ct.c_uint32)]
        lib.bpf_prog_get_fd_by_id.argtypes = [ct.c_uint32]
        lib.bpf_obj_get.argtypes = [ct.c_char_p]
        lib.bpf_obj_pin.argtypes = [ct.c_int, ct.c_char_p]
        lib.bpf_map_get_next_key.argtypes = [ct.c_int, ct.c_void_p, ct.c_void_p]
        lib.bpf_map_lookup_elem.argtypes = [ct.c_int, ct.c_void_p, ct.c_void_p]
        lib.bpf_map_update_elem.argtypes = [ct.c_int, ct.c_void_p, ct.c_void_p, ct.c_uint64]
    return _libbpf


@dataclass(frozen=True)
class TestRunResult:
    retval: int  # XDP verdict
    data: bytes  # the frame after the program
    duration_ns: int  # kernel-measured average per repetition

    __test__ = False  # not a pytest class


def prog_test_run(prog_fd: int, frame: bytes, repeat: int = 1) -> TestRunResult:
    """Run an XDP program on one frame in the kernel (BPF_PROG_TEST_RUN)."""
    data_in = ct.create_string_buffer(bytes(frame), len(frame))
    out_size = len(frame) + 256
    data_out = ct.create_string_buffer(out_size)
    opts = _TestRunOpts(sz=ct.sizeof(_TestRunOpts))
    opts.data_in = ct.cast(data_in, ct.c_void_p)
    opts.data_size_in = len(frame)
    opts.data_out = ct.cast(data_out, ct.c_void_p)
    opts.data_size_out = out_size
    opts.repeat = repeat
    if _lib().bpf_prog_test_run_opts(prog_fd, ct.byref(opts)) != 0:
        err = ct.get_errno()
        raise OSError(err, f"BPF_PROG_TEST_RUN failed: {os.strerror(err)}")
    return TestRunResult(opts.retval, data_out.raw[: opts.data_size_out], opts.duration)


def prog_id(prog_fd: int) -> int:
    """The kernel's id of a loaded program (struct bpf_prog_info: type, id, ...)."""
    info = (ct.c_uint32 * 2)()
    size = ct.c_uint32(ct.sizeof(info))
    if _lib().bpf_obj_get_info_by_fd(prog_fd, info, ct.byref(size)) != 0:
        err = ct.get_errno()
        raise OSError(err, f"bpf_obj_get_info_by_fd: {os.strerror(err)}")
    return info[1]


def attached_prog(ifname: str) -> tuple[int, str] | None:
    """(prog id, prog name) of the XDP program on ifname, or None."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        link = ipr.get_links(ifindex(ifname))[0]
    xdp = link.get_attr("IFLA_XDP")
    if not xdp:
        return None
    pid = xdp.get_attr("IFLA_XDP_PROG_ID")
    if not pid:
        return None
    return pid, _prog_name_by_id(pid)


def _prog_name_by_id(pid: int) -> str:
    # bpftool is not a dependency; /proc/self/fdinfo of a GET_FD_BY_ID fd has no
    # name either, so ask libbpf for struct bpf_prog_info.name (offset 64, 16 bytes).
    lib = _lib()
    fd = lib.bpf_prog_get_fd_by_id(pid)
    if fd < 0:
        return "?"
    try:
        info = ct.create_string_buffer(80)
        size = ct.c_uint32(80)
        if lib.bpf_obj_get_info_by_fd(fd, info, ct.byref(size)) != 0:
            return "?"
        return info.raw[64:80].split(b"\0", 1)[0].decode(errors="replace")
    finally:
        os.close(fd)


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


def _pin(prog_fd: int, progs_fd: int | None = None) -> str | None:
    """Pin our program (replacing an older pin) and its tail-call array (whose entries
    the kernel clears when the last user reference goes: a crashed daemon's program
    would lose its option scan); returns an error text or None."""
    lib = _lib()
    path = pin_path()
    for fd, where in ((prog_fd, path), (progs_fd, path.with_name("sg_progs"))):
        if fd is None:
            continue
        try:
            where.parent.mkdir(parents=True, exist_ok=True)
            where.unlink(missing_ok=True)
        except OSError as e:
            return f"{where}: {e.strerror}"
        if lib.bpf_obj_pin(fd, str(where).encode()) != 0:
            return f"{where}: {os.strerror(ct.get_errno())}"
    return None


def unpin(path: Path | None = None, expected_id: int | None = None) -> None:
    """Remove the pin (only if it still holds expected_id, when given)."""
    path = path or pin_path()
    if expected_id is None or pinned_prog_id(path) == expected_id:
        with contextlib.suppress(OSError):
            path.unlink()
            path.with_name("sg_progs").unlink(missing_ok=True)
            path.parent.rmdir()


def is_ours(current: tuple[int, str] | None) -> bool:
    return current is not None and (current[1] == PROG_NAME or current[0] == pinned_prog_id())


def detach_orphan(ifname: str) -> bool:
    """Detach a synguard program left on ifname by a daemon that died (ExecStopPost)."""
    from bcc import BPF

    current = attached_prog(ifname)
    if not is_ours(current):
        return False
    for flag in (XDP_FLAGS_DRV_MODE, XDP_FLAGS_SKB_MODE):
        with contextlib.suppress(Exception):
            BPF.remove_xdp(ifname.encode(), flag)
    return True


def _state_dir() -> tuple[Path | None, str | None]:
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


# ---- The data path -------------------------------------------------------------


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


class DataPath:
    """The compiled program, its maps and its attachments."""

    def __init__(self, *, cflags: tuple[str, ...] = (), log_dir: Path | None = None, keep_state: bool = False):
        """keep_state: pin the maps that must survive a crash (the daemon does; tests don't,
        so that several programs in one namespace never share state)."""
        from bcc import BPF  # Debian's python3-bpfcc

        check_privileges()
        check_kernel_headers()
        self.src_file = ebpf_dir() / "synguard.bpf.c"
        if not self.src_file.is_file():
            raise DataPathError(f"XDP source not found at {self.src_file} (set SYNGUARD_EBPF_DIR)")
        self.cflags = [f"-I{ebpf_dir()}", "-Wno-unused-command-line-argument", *cflags]
        log_dir = Path(log_dir or tempfile.gettempdir())
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / "synguard.verifier.log"
        self.state_dir: Path | None = None  # where kept maps are pinned
        self.adopted: list[str] = []  # kept maps found pinned by an earlier run
        self.state_note: str | None = None
        if keep_state:
            self.state_dir, self.state_note = _state_dir()
        try:
            with _capture_fd2(self.log_path):
                self.bpf = BPF(src_file=str(self.src_file).encode(), cflags=self.cflags)
                self.fn = self.bpf.load_func(PROG_NAME.encode(), BPF.XDP)
                # Tail-called by the program: a SYN whose options need the bounded scan.
                self.optscan = self.bpf.load_func(b"xdp_synguard_optscan", BPF.XDP)
                self.bpf[b"sg_progs"][ct.c_int(0)] = ct.c_int(self.optscan.fd)
        except Exception as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise DataPathError(
                f"loading {self.src_file.name} failed ({first}); compiler/verifier log kept in {self.log_path}"
            ) from None
        self._BPF = BPF
        self.prog_fd = self.fn.fd
        self.prog_id = prog_id(self.prog_fd)
        self.attached: dict[str, str] = {}  # ifname -> "native" | "generic"
        self._ports: set[int] = set()
        self._port_state: dict[int, tuple[int, int, int]] = {}  # port -> (protect, watch slot, auto_until_s)
        self._watch: dict[int, int] = {}  # watched port -> slot
        self._slots: dict[str, int] = {}  # ifname -> counter slot
        self._netns: dict[str, int] = {}  # ifname -> fd of the namespace it was attached in
        self.ifindexes: dict[str, int] = {}  # ifname -> ifindex at attach time
        self.pin_error: str | None = None  # why the program could not be pinned, if so
        self._pins: set[Path] = set()
        self._config = {name: 0 for name in abi.CONFIG_FIELDS}
        if self.state_dir is not None:
            self._adopt_state()

    def kept_maps(self) -> list[str]:
        """Maps whose content outlives a crashed daemon: those the C declares with SG_KEPT."""
        return re.findall(r'^SG_KEPT\("[^"]+",[^,]+,[^,]+,\s*(\w+),', self.src_file.read_text(), re.M)

    def _adopt_state(self) -> None:
        """Copy the pinned maps of a previous run into ours, then pin ours in their place."""
        from bcc.utils import get_possible_cpus

        lib = _lib()
        ncpu = len(get_possible_cpus())
        for name in self.kept_maps():
            table = self.map(name)
            path = self.state_dir / name
            if path.exists():
                old = lib.bpf_obj_get(str(path).encode())
                if old < 0:
                    self.state_note = f"{path}: {os.strerror(ct.get_errno())}: not adopted"
                else:
                    try:
                        copied = self._copy_map(lib, old, table, ncpu)
                        self.adopted.append(f"{name} ({copied})")
                    except OSError as e:
                        self.state_note = f"{path}: {e.strerror}: not adopted (layout changed?)"
                    finally:
                        os.close(old)
                path.unlink(missing_ok=True)
            if lib.bpf_obj_pin(table.map_fd, str(path).encode()) != 0:
                self.state_note = f"cannot pin {path}: {os.strerror(ct.get_errno())}: state is not kept across a crash"

    @staticmethod
    def _copy_map(lib, old_fd: int, table, ncpu: int) -> int:
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

    # -- source -------------------------------------------------------------

    def source_text(self) -> str:
        """The C as compiled (for --ebpf): cflags, then the ABI header and the program."""
        header = (ebpf_dir() / "synguard_abi.h").read_text()
        return f"// cflags: {' '.join(self.cflags)}\n// ---- synguard_abi.h\n{header}\n// ---- {self.src_file.name}\n{self.src_file.read_text()}"

    # -- maps -----------------------------------------------------------------

    def map(self, name: str):
        return self.bpf[name.encode()]

    def read_blocks(self) -> list:
        """One read of sg_counters: for each interface slot, its per-CPU blocks.

        Counters, per-port SYNs and HLL registers all live in these blocks; a
        caller that needs several of them passes one read to each (the daemon's tick)."""
        table = self.map("sg_counters")
        return [table[table.Key(slot)] for slot in range(abi.IFACE_SLOTS)]

    def counters_by_slot(self, blocks: list | None = None) -> list[dict[Counter, int]]:
        """Counters of every interface slot, summed over CPUs (slot 0: unmapped)."""
        return [{c: int(sum(block.cnt[c] for block in per_cpu)) for c in Counter}
                for per_cpu in (blocks or self.read_blocks())]

    def counters(self, interface: str | None = None, blocks: list | None = None) -> dict[Counter, int]:
        """Counters of one attached interface, or of all slots together."""
        slots = self.counters_by_slot(blocks)
        if interface is not None:
            return slots[self._slots[interface]]
        return {c: sum(s[c] for s in slots) for c in Counter}

    def counters_by_interface(self) -> dict[str, dict[Counter, int]]:
        slots = self.counters_by_slot()
        out = {ifname: slots[slot] for ifname, slot in self._slots.items() if ifname in self.attached}
        if any(slots[0].values()):
            out["other"] = slots[0]  # ifindex not mapped (test runs, ifindex >= SG_IFINDEX_MAX)
        return out

    def _map_interface(self, ifname: str) -> None:
        """Give ifname its own counter slot (sg_ifaces[ifindex] = slot)."""
        if ifname in self._slots:
            return
        used = set(self._slots.values())
        free = [s for s in range(1, abi.IFACE_SLOTS) if s not in used]
        idx = ifindex(ifname)
        if not free or idx >= abi.IFINDEX_MAX:
            return  # counted in slot 0 ("other")
        self._slots[ifname] = free[0]
        self.map("sg_ifaces")[ct.c_int(idx)] = ct.c_uint32(free[0])

    def config(self) -> dict[str, int]:
        leaf = self.map("sg_config")[ct.c_int(0)]
        return {name: int(getattr(leaf, name)) for name in abi.CONFIG_FIELDS}

    def _write_config(self, **fields: int) -> None:
        self._config.update(fields)
        table = self.map("sg_config")
        leaf = table.Leaf()
        for name in abi.CONFIG_FIELDS:
            setattr(leaf, name, self._config[name] & 0xFFFFFFFF)
        table[ct.c_int(0)] = leaf

    def set_mode(self, mode: Mode) -> None:
        self._write_config(mode=int(mode))

    def tick(self, now_s: int | None = None) -> None:
        """Advance the program's clock (sg_config.now_s): call at least every second."""
        self._write_config(now_s=int(time.monotonic()) if now_s is None else now_s)

    def _write_port(self, port: int) -> None:
        protect, slot, until = self._port_state.get(port, (0, 0, 0))
        table = self.map("sg_ports")
        leaf = table.Leaf()
        leaf.protect, leaf.watch_slot, leaf.auto_until_s = protect, slot, until & 0xFFFFFFFF
        table[ct.c_int(port)] = leaf

    def _set_port_field(self, port: int, index: int, value: int) -> None:
        state = list(self._port_state.get(port, (0, 0, 0)))
        if index != 2:
            state[2] = self.port_auto_until(port)  # the fast trigger writes it too: keep its value
        state[index] = value
        if state == [0, 0, 0]:
            self._port_state.pop(port, None)
        else:
            self._port_state[port] = tuple(state)
        self._write_port(port)

    def set_ports(self, ports: list[int] | set[int]) -> None:
        """Protected ports; an empty list protects every port."""
        ports = set(ports)
        bad = [p for p in ports if not 1 <= p <= 65535]
        if bad:
            raise ValueError(f"ports out of range 1-65535: {bad}")
        for port in self._ports - ports:
            self._set_port_field(port, 0, 0)
        for port in ports - self._ports:
            self._set_port_field(port, 0, 1)
        self._ports = ports
        self._write_config(all_ports=0 if ports else 1)

    def set_watched(self, ports) -> dict[int, int]:
        """Ports with their own SYN counters (at most PORT_SLOTS - 1); returns port -> slot.

        A port keeps its slot while it stays watched, so its counter is monotonic."""
        ports = sorted(set(ports))
        for port in [p for p in self._watch if p not in ports]:
            self._set_port_field(port, 1, 0)
            del self._watch[port]
        free = sorted(set(range(1, abi.PORT_SLOTS)) - set(self._watch.values()))
        for port in ports:
            if port not in self._watch and free:
                self._watch[port] = free.pop(0)
                self._set_port_field(port, 1, self._watch[port])
        return dict(self._watch)

    def arm_port(self, port: int, until_s: int) -> None:
        """Auto mode: challenge SYNs to port until the clock reaches until_s (0 disarms)."""
        self._set_port_field(port, 2, until_s)

    def port_auto_until(self, port: int) -> int:
        """The program's current deadline for port (the fast trigger writes it too)."""
        leaf = self.map("sg_ports")[ct.c_int(port)]
        return int(leaf.auto_until_s)

    def port_syns(self, blocks: list | None = None) -> dict[int, int]:
        """Total SYNs per watched port, summed over CPUs and interfaces."""
        out = {port: 0 for port in self._watch}
        for per_cpu in blocks or self.read_blocks():
            for block in per_cpu:
                for port, w in self._watch.items():
                    out[port] += int(block.ports[w].syns)
        return out

    def set_fast_trigger(self, syns_per_cpu_second: int, hold_s: int) -> None:
        self._write_config(fast_trigger_syns=int(syns_per_cpu_second), fast_hold_s=int(hold_s))

    def hll_registers(self, second: int, blocks: list | None = None) -> bytes | None:
        """HyperLogLog registers of the SYN sources seen during `second` (sg_config.now_s),
        merged over CPUs and interfaces; None if no CPU has data for that second."""
        bank = second & 1
        merged = None
        for per_cpu in blocks or self.read_blocks():
            for block in per_cpu:
                if int(block.hll_window[bank]) != second & 0xFFFFFFFF:
                    continue  # stale bank: nothing from this CPU in that second
                regs = bytes(block.hll[bank].reg)
                merged = regs if merged is None else bytes(map(max, merged, regs))
        return merged

    def set_slot_key(self, slot: int, key: bytes) -> None:
        """Install the 16-byte SipHash key of cookie slot `slot` (sg_secrets[slot & 1]).

        Write the key of a slot before set_slot() makes it current; the other
        entry keeps the previous slot's key, which the ACK check still accepts."""
        from synguard.cookie import secret_words

        table = self.map("sg_secrets")
        leaf = table.Leaf()
        leaf.k0, leaf.k1 = secret_words(key)
        table[ct.c_int(slot & 1)] = leaf

    def set_slot(self, slot: int) -> None:
        """The current cookie slot (sg_config.slot): CLOCK_REALTIME seconds >> SLOT_SHIFT."""
        self._write_config(slot=int(slot))

    def set_synack(self, mss4: int, mss6: int, wscale: int, tcp_opts: int) -> None:
        """What our SYN-ACK offers: MSS per family, our window scale, the SG_OPT_* the server accepts."""
        if not (0 < mss4 < 65536 and 0 < mss6 < 65536 and 0 <= wscale <= 14 and 0 <= tcp_opts <= 0xF):
            raise ValueError(f"bad SYN-ACK settings: mss4={mss4} mss6={mss6} wscale={wscale} tcp_opts={tcp_opts:#x}")
        self._write_config(synack_mss4=mss4, synack_mss6=mss6, synack_wscale=wscale, tcp_opts=tcp_opts)

    def _set_cidrs(self, trie_name: str, count_field: str, nets) -> None:
        table = self.map(trie_name)
        table.clear()
        nets = {ipaddress.ip_network(net, strict=False) for net in nets}
        for net in nets:
            key = table.Key()
            key.prefixlen, addr = cidr_key(net)
            ct.memmove(key.addr, addr, 16)
            table[key] = ct.c_uint8(1)
        self._write_config(**{count_field: len(nets)})

    def set_allow_cidrs(self, nets) -> None:
        self._set_cidrs("sg_allow_cidrs", "allow_cidrs", nets)

    def set_deny_cidrs(self, nets) -> None:
        self._set_cidrs("sg_deny_cidrs", "deny_cidrs", nets)

    def entries(self, name: str):
        """(key, leaf) of every entry of a hash map, copied out by the caller at once.

        Read with BPF_MAP_LOOKUP_BATCH, bucket by bucket, not key by key: under a
        flood an LRU evicts the key a key walk stands on and the walk restarts
        (measured: 853k rows from a 65,536-entry map in 19 s). Kernels without
        batch ops for the map type get a key walk bounded by the map's size."""
        table = self.map(name)
        batch = table.items_lookup_batch()
        try:
            first = next(batch)
        except StopIteration:
            return
        except Exception:  # BCC raises a bare Exception when the syscall fails
            yield from itertools.islice(table.items(), table.max_entries)
            return
        yield first
        yield from batch

    # -- running --------------------------------------------------------------

    def test_run(self, frame: bytes, repeat: int = 1) -> TestRunResult:
        return prog_test_run(self.prog_fd, frame, repeat)

    def attach(self, ifname: str, xdp_mode: str = "auto") -> str:
        """Attach to ifname; returns "native" or "generic". Replaces only our own program."""
        if xdp_mode not in XDP_MODES:
            raise DataPathError(f"xdp mode must be one of {', '.join(XDP_MODES)}, not {xdp_mode!r}")
        ifindex(ifname)
        current = attached_prog(ifname)
        if current is not None and not is_ours(current):
            raise DataPathError(
                f"{ifname} already runs XDP program id {current[0]} ({current[1]}); "
                f"synguard replaces only its own program: detach that one first"
            )
        modes = {"auto": ("native", "generic"), "native": ("native",), "generic": ("generic",)}[xdp_mode]
        errors = []
        for mode in modes:
            mode_flag = XDP_FLAGS_DRV_MODE if mode == "native" else XDP_FLAGS_SKB_MODE
            # Over our own leftover program (a daemon that died): replace it in one
            # netlink call, so the interface is never unprotected in between.
            tries = [mode_flag] if current is None else [mode_flag, "clear"]
            if current is None:
                tries = [XDP_FLAGS_UPDATE_IF_NOEXIST | mode_flag]
            for flags in tries:
                if flags == "clear":  # the leftover sits in the other mode: clear, then attach
                    self._detach_raw(ifname)
                    flags = XDP_FLAGS_UPDATE_IF_NOEXIST | mode_flag
                try:
                    with _capture_fd2(self.log_path.with_suffix(".attach.log")):
                        self._BPF.attach_xdp(ifname.encode(), self.fn, flags)
                except Exception as e:  # BCC raises a bare Exception
                    errors.append(f"{mode}: {e}")
                    continue
                self.attached[ifname] = mode
                self.ifindexes[ifname] = ifindex(ifname)
                self._netns[ifname] = current_netns_fd()
                self._map_interface(ifname)
                if pinned_prog_id() != self.prog_id:
                    err = _pin(self.prog_fd, self.map("sg_progs").map_fd)
                    if err:
                        self.pin_error = err
                    else:
                        self._pins.add(pin_path())
                return mode
        raise DataPathError(f"cannot attach XDP to {ifname}: " + "; ".join(errors))

    def _detach_raw(self, ifname: str) -> None:
        for flag in (XDP_FLAGS_DRV_MODE, XDP_FLAGS_SKB_MODE):
            with contextlib.suppress(Exception), _capture_fd2(self.log_path.with_suffix(".attach.log")):
                self._BPF.remove_xdp(ifname.encode(), flag)

    def detach(self, ifname: str) -> bool:
        """Detach from ifname (in the namespace it was attached in) if our program is still there."""
        mode = self.attached.pop(ifname, None)
        if mode is None:
            return False
        fd = self._netns.pop(ifname)  # the counter slot stays: a re-attach continues its counters
        try:
            with in_netns(fd):
                return self._detach_here(ifname, mode)
        finally:
            os.close(fd)

    def _detach_here(self, ifname: str, mode: str) -> bool:
        try:
            current = attached_prog(ifname)
        except DataPathError:
            return False  # interface gone: nothing left to detach
        if current is None or current[0] != self.prog_id:
            return False  # someone else's program now: leave it alone
        flag = XDP_FLAGS_DRV_MODE if mode == "native" else XDP_FLAGS_SKB_MODE
        with _capture_fd2(self.log_path.with_suffix(".attach.log")):
            self._BPF.remove_xdp(ifname.encode(), flag)
        return True

    def forget(self, ifname: str) -> None:
        """Drop the records of an attachment the kernel already ended (device removed)."""
        self.attached.pop(ifname, None)
        self.ifindexes.pop(ifname, None)
        fd = self._netns.pop(ifname, None)
        if fd is not None:
            os.close(fd)

    def rename(self, old: str, new: str) -> None:
        """The device we are attached to was renamed: the program followed it."""
        for d in (self.attached, self.ifindexes, self._netns, self._slots):
            if old in d:
                d[new] = d.pop(old)

    def detach_all(self) -> None:
        for ifname in list(self.attached):
            with contextlib.suppress(Exception):
                self.detach(ifname)

    def close(self) -> None:
        """Idempotent: detach everywhere, unpin, then free the program and maps."""
        self.detach_all()
        for path in getattr(self, "_pins", ()):
            unpin(path, self.prog_id)
        self._pins = set()
        forget_state(getattr(self, "state_dir", None))
        self.state_dir = None
        bpf, self.bpf = getattr(self, "bpf", None), None
        if bpf is not None:
            bpf.cleanup()
