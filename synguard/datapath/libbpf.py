"""Debian's libbpf1 through ctypes: BPF_PROG_TEST_RUN, object ids and names, pins,
raw map access by fd, XDP attachment. One place for every libbpf signature (argtypes
set once). The long-running daemon reaches the kernel only through these calls: it
never imports BCC (whose compiler would stay mapped; see synguard/datapath/loader.py)."""

from __future__ import annotations

import contextlib
import ctypes as ct
import os
from dataclasses import dataclass


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


# libbpf.h
BPF_TC_INGRESS = 1 << 0
BPF_TC_F_REPLACE = 1 << 0


class TcHook(ct.Structure):
    """struct bpf_tc_hook (libbpf 1.1)."""

    _fields_ = [("sz", ct.c_size_t), ("ifindex", ct.c_int), ("attach_point", ct.c_int), ("parent", ct.c_uint32)]


class TcOpts(ct.Structure):
    """struct bpf_tc_opts (libbpf 1.1)."""

    _fields_ = [
        ("sz", ct.c_size_t),
        ("prog_fd", ct.c_int),
        ("flags", ct.c_uint32),
        ("prog_id", ct.c_uint32),
        ("handle", ct.c_uint32),
        ("priority", ct.c_uint32),
    ]


class OpenOpts(ct.Structure):
    """struct bpf_object_open_opts (libbpf 1.1), for the verifier log buffer."""

    _fields_ = [
        ("sz", ct.c_size_t),
        ("object_name", ct.c_char_p),
        ("relaxed_maps", ct.c_bool),
        ("pin_root_path", ct.c_char_p),
        ("_removed_attach_prog_fd", ct.c_uint32),
        ("kconfig", ct.c_char_p),
        ("btf_custom_path", ct.c_char_p),
        ("kernel_log_buf", ct.c_void_p),
        ("kernel_log_size", ct.c_size_t),
        ("kernel_log_level", ct.c_uint32),
    ]


class MapInfo(ct.Structure):
    """The head of struct bpf_map_info (linux/bpf.h), up to the BTF type ids."""

    _fields_ = [
        ("type", ct.c_uint32),
        ("id", ct.c_uint32),
        ("key_size", ct.c_uint32),
        ("value_size", ct.c_uint32),
        ("max_entries", ct.c_uint32),
        ("map_flags", ct.c_uint32),
        ("name", ct.c_char * 16),
        ("ifindex", ct.c_uint32),
        ("btf_vmlinux_value_type_id", ct.c_uint32),
        ("netns_dev", ct.c_uint64),
        ("netns_ino", ct.c_uint64),
        ("btf_id", ct.c_uint32),
        ("btf_key_type_id", ct.c_uint32),
        ("btf_value_type_id", ct.c_uint32),
    ]


class XdpAttachOpts(ct.Structure):
    """struct bpf_xdp_attach_opts (libbpf 1.1): old_prog_fd with XDP_FLAGS_REPLACE."""

    _fields_ = [("sz", ct.c_size_t), ("old_prog_fd", ct.c_int)]


class XdpQueryOpts(ct.Structure):
    """struct bpf_xdp_query_opts (libbpf 1.1)."""

    _fields_ = [("sz", ct.c_size_t), ("prog_id", ct.c_uint32), ("drv_prog_id", ct.c_uint32),
                ("hw_prog_id", ct.c_uint32), ("skb_prog_id", ct.c_uint32), ("attach_mode", ct.c_uint8)]


_libbpf = None
_default_print = None  # libbpf's own printer (to stderr), off outside libbpf_messages()


def lib():
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
        vp = ct.c_void_p
        lib.bpf_object__open_file.argtypes = [ct.c_char_p, ct.POINTER(OpenOpts)]
        lib.bpf_object__open_file.restype = vp
        lib.bpf_object__find_map_by_name.argtypes = [vp, ct.c_char_p]
        lib.bpf_object__find_map_by_name.restype = vp
        lib.bpf_map__reuse_fd.argtypes = [vp, ct.c_int]
        lib.bpf_map__fd.argtypes = [vp]
        lib.bpf_object__load.argtypes = [vp]
        lib.bpf_object__find_program_by_name.argtypes = [vp, ct.c_char_p]
        lib.bpf_object__find_program_by_name.restype = vp
        lib.bpf_program__fd.argtypes = [vp]
        lib.bpf_object__close.argtypes = [vp]
        lib.bpf_object__close.restype = None
        for fn in ("bpf_tc_hook_create",):
            getattr(lib, fn).argtypes = [ct.POINTER(TcHook)]
        for fn in ("bpf_tc_attach", "bpf_tc_detach", "bpf_tc_query"):
            getattr(lib, fn).argtypes = [ct.POINTER(TcHook), ct.POINTER(TcOpts)]
        lib.libbpf_num_possible_cpus.argtypes = []
        lib.bpf_map_delete_elem.argtypes = [ct.c_int, ct.c_void_p]
        lib.bpf_map_lookup_batch.argtypes = [ct.c_int, vp, vp, vp, vp, ct.POINTER(ct.c_uint32), vp]
        lib.bpf_map_get_fd_by_id.argtypes = [ct.c_uint32]
        lib.bpf_btf_get_fd_by_id.argtypes = [ct.c_uint32]
        lib.btf__load_from_kernel_by_id.argtypes = [ct.c_uint32]
        lib.btf__load_from_kernel_by_id.restype = vp
        lib.btf__raw_data.argtypes = [vp, ct.POINTER(ct.c_uint32)]
        lib.btf__raw_data.restype = vp
        lib.btf__free.argtypes = [vp]
        lib.btf__free.restype = None
        lib.bpf_xdp_attach.argtypes = [ct.c_int, ct.c_int, ct.c_uint32, ct.POINTER(XdpAttachOpts)]
        lib.bpf_xdp_detach.argtypes = [ct.c_int, ct.c_uint32, ct.POINTER(XdpAttachOpts)]
        lib.bpf_xdp_query.argtypes = [ct.c_int, ct.c_int, ct.POINTER(XdpQueryOpts)]
        lib.libbpf_set_print.argtypes = [vp]
        lib.libbpf_set_print.restype = vp
        # Quiet by default, as under BCC: libbpf would print every expected ENOENT of a
        # query ("Kernel error message: ...") into the daemon's log.
        global _default_print
        _default_print = lib.libbpf_set_print(None)
    return _libbpf


@contextlib.contextmanager
def libbpf_messages():
    """libbpf's warnings go to fd 2 for the block (callers send fd 2 to a log file)."""
    lib_ = lib()
    old = lib_.libbpf_set_print(_default_print)
    try:
        yield
    finally:
        lib_.libbpf_set_print(old)


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
    opts.data_in = ct.addressof(data_in)
    opts.data_size_in = len(frame)
    opts.data_out = ct.addressof(data_out)
    opts.data_size_out = out_size
    opts.repeat = repeat
    if lib().bpf_prog_test_run_opts(prog_fd, ct.byref(opts)) != 0:
        err = ct.get_errno()
        raise OSError(err, f"BPF_PROG_TEST_RUN failed: {os.strerror(err)}")
    return TestRunResult(opts.retval, data_out.raw[: opts.data_size_out], opts.duration)


def prog_id(prog_fd: int) -> int:
    """The kernel's id of a loaded program (struct bpf_prog_info: type, id, ...)."""
    info = (ct.c_uint32 * 2)()
    size = ct.c_uint32(ct.sizeof(info))
    if lib().bpf_obj_get_info_by_fd(prog_fd, info, ct.byref(size)) != 0:
        err = ct.get_errno()
        raise OSError(err, f"bpf_obj_get_info_by_fd: {os.strerror(err)}")
    return info[1]


def prog_name_by_id(pid: int) -> str:
    # bpftool is not a dependency; /proc/self/fdinfo of a GET_FD_BY_ID fd has no
    # name either, so ask libbpf for struct bpf_prog_info.name (offset 64, 16 bytes).
    lib_ = lib()
    fd = lib_.bpf_prog_get_fd_by_id(pid)
    if fd < 0:
        return "?"
    try:
        info = ct.create_string_buffer(80)
        size = ct.c_uint32(80)
        if lib_.bpf_obj_get_info_by_fd(fd, info, ct.byref(size)) != 0:
            return "?"
        return info.raw[64:80].split(b"\0", 1)[0].decode(errors="replace")
    finally:
        os.close(fd)


def errno_of(ret: int) -> int:
    """libbpf 1.x returns -errno (and sets errno); NULL-returning calls set errno only."""
    return -ret if ret < 0 else ct.get_errno()


def map_info(fd: int) -> MapInfo:
    """The kernel's struct bpf_map_info of a map fd (type, sizes, name, BTF ids)."""
    info = MapInfo()
    size = ct.c_uint32(ct.sizeof(info))
    if lib().bpf_obj_get_info_by_fd(fd, ct.byref(info), ct.byref(size)) != 0:
        err = ct.get_errno()
        raise OSError(err, f"bpf_obj_get_info_by_fd: {os.strerror(err)}")
    return info


def num_possible_cpus() -> int:
    """CPUs a per-CPU map holds a value for (/sys/devices/system/cpu/possible)."""
    n = lib().libbpf_num_possible_cpus()
    if n <= 0:
        raise OSError(-n, f"libbpf_num_possible_cpus: {os.strerror(-n)}")
    return n


def btf_raw(btf_id: int) -> bytes:
    """The raw BTF blob (header, types, strings) of a kernel BTF object, by id."""
    lib_ = lib()
    btf = lib_.btf__load_from_kernel_by_id(btf_id)
    if not btf:
        err = ct.get_errno()
        raise OSError(err, f"btf__load_from_kernel_by_id({btf_id}): {os.strerror(err)}")
    try:
        size = ct.c_uint32(0)
        data = lib_.btf__raw_data(btf, ct.byref(size))
        return ct.string_at(data, size.value)
    finally:
        lib_.btf__free(btf)
