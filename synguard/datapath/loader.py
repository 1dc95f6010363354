"""Compile and load the XDP program in a short-lived process; hand back its fds.

BCC compiles ebpf/synguard.bpf.c with its in-process clang/LLVM. Once imported, that
compiler stays mapped (libLLVM, libclang-cpp) with a large heap: ~140 MiB resident in
a daemon that needs it for two seconds at start. So the daemon never imports BCC: it
runs this module as a child (isolated: child_argv(), cwd /, CHILD_ENV), which

1. reads the request (source, cflags, verifier log path) from the Unix socket FD,
2. compiles with BCC, loads the programs, fills the tail-call array,
3. sends the program and map fds back over the socket (SCM_RIGHTS) with their
   metadata (map name, type, key/value size, max_entries; the log path),
4. waits for the parent's acknowledgement and exits.

The parent (load()) keeps only the fds: the kernel objects live as long as some
process holds an fd, a pin or an attachment; a map passed in flight keeps its user
reference, so the tail-call array is not cleared when the child exits.

Errors: the child reports the first line of what failed; load() raises DataPathError
naming the kept compiler/verifier log, as an in-process load would.
"""

from __future__ import annotations

import array
import ctypes as ct
import json
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from synguard.datapath.host import DataPathError

# What to load, in order; the tail calls to wire: (prog array, index, program).
PROGRAMS = ("xdp_synguard", "xdp_synguard_optscan", "xdp_synguard_kcookie", "xdp_synguard_oos")
TAIL_CALLS = (("sg_progs", 0, "xdp_synguard_optscan"), ("sg_progs", 1, "xdp_synguard_kcookie"),
              ("sg_progs", 2, "xdp_synguard_oos"))
LOAD_TIMEOUT = 600.0  # seconds for compile + verifier: a few seconds on an idle 2-vCPU box, 2-5 min in a TCG guest
MAX_FDS = 64
_MSG_MAX = 1 << 16


@dataclass
class Loaded:
    """What the child handed back: fds (ours now, close-on-exec) and their metadata."""

    progs: dict[str, int] = field(default_factory=dict)  # program name -> fd
    maps: dict[str, int] = field(default_factory=dict)  # map name -> fd
    meta: dict[str, dict] = field(default_factory=dict)  # map name -> type, key_size, value_size, max_entries
    log_path: str = ""

    def close(self) -> None:
        for fd in [*self.progs.values(), *self.maps.values()]:
            try:
                os.close(fd)
            except OSError:
                pass
        self.progs, self.maps = {}, {}


# The child's environment: nothing of the caller's but a fixed PATH and locale. A root
# daemon started by hand from a directory another user owns (or with their PYTHON*
# variables) must not import code from there: the child runs isolated (-I: no working
# directory or script directory on sys.path, no PYTHON* variables, no user site) in
# cwd /, and finds synguard at the package root this very module was imported from.
CHILD_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8"}
PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])  # the directory holding synguard/


def child_argv(module: str, *args: str) -> list[str]:
    """argv to run module's main(args) in an isolated interpreter importing synguard from
    PACKAGE_ROOT (a checkout, or the installed package's site directory)."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import importlib; "
            "raise SystemExit(importlib.import_module(sys.argv[2]).main(sys.argv[3:]))")
    return [sys.executable, "-I", "-c", code, PACKAGE_ROOT, module, *args]


def _recv_fds(sock: socket.socket) -> tuple[bytes, list[int]]:
    """One message and the fds it carries (received close-on-exec)."""
    fds = array.array("i")
    msg, anc, flags, _ = sock.recvmsg(_MSG_MAX, socket.CMSG_SPACE(MAX_FDS * fds.itemsize),
                                      getattr(socket, "MSG_CMSG_CLOEXEC", 0))
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    if flags & (socket.MSG_CTRUNC | socket.MSG_TRUNC):
        for fd in fds:
            os.close(fd)
        raise DataPathError("loader: message or fds truncated")
    return msg, list(fds)


def load(src_file: Path, cflags: list[str], log_path: Path, timeout: float = LOAD_TIMEOUT) -> Loaded:
    """Compile and load src_file in a child process; returns the fds it loaded."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        proc = subprocess.Popen(child_argv("synguard.datapath.loader", str(theirs.fileno())),
                                pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, env=dict(CHILD_ENV), cwd="/")
    except OSError as e:
        ours.close()
        raise DataPathError(f"cannot start the loader ({sys.executable}): {e.strerror}") from None
    finally:
        theirs.close()
    failed = True
    try:
        ours.settimeout(timeout)
        ours.send(json.dumps({"src": str(src_file), "cflags": list(cflags), "log": str(log_path)}).encode())
        try:
            msg, fds = _recv_fds(ours)
        except socket.timeout:
            raise DataPathError(f"loading {src_file.name} took more than {timeout:.0f} s; "
                                f"compiler/verifier log kept in {log_path}") from None
        if not msg:
            rc = proc.wait(timeout=10)
            raise DataPathError(f"loading {src_file.name} failed (loader exited with status {rc}); "
                                f"compiler/verifier log kept in {log_path}")
        reply = json.loads(msg)
        if "error" in reply:
            for fd in fds:
                os.close(fd)
            raise DataPathError(f"loading {src_file.name} failed ({reply['error']}); "
                                f"compiler/verifier log kept in {log_path}")
        names = [("prog", n) for n in reply["progs"]] + [("map", m["name"]) for m in reply["maps"]]
        if len(fds) != len(names):
            for fd in fds:
                os.close(fd)
            raise DataPathError(f"loader: {len(fds)} fds for {len(names)} objects")
        out = Loaded(log_path=reply["log"], meta={m["name"]: m for m in reply["maps"]})
        for (kind, name), fd in zip(names, fds):
            (out.progs if kind == "prog" else out.maps)[name] = fd
        ours.send(b"ok")  # the child may exit: our fds hold the objects now
        failed = False
        return out
    finally:
        ours.close()
        try:
            proc.wait(timeout=10 if not failed else 0.1)
        except subprocess.TimeoutExpired:
            proc.kill()  # our own child, by its handle
            proc.wait()


# ---- The child ---------------------------------------------------------------------


def _die_with_parent() -> None:
    """SIGKILL this child if the daemon that started it dies (prctl PR_SET_PDEATHSIG)."""
    libc = ct.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL, 0, 0, 0)
    if os.getppid() == 1:
        os._exit(1)


def _compile_and_load(req: dict) -> tuple[dict, list[int]]:
    """In the child: BCC compile + load; returns (reply, fds). The BPF object is kept
    alive by the caller until the parent has the fds."""
    from synguard.datapath.host import capture_fd2
    from synguard.datapath.libbpf import map_info

    try:
        from bcc import BPF, libbcc  # Debian's python3-bpfcc
    except ImportError:
        raise DataPathError("BCC is not installed (apt-get install python3-bpfcc)") from None
    with capture_fd2(Path(req["log"])):
        bpf = BPF(src_file=req["src"].encode(), cflags=req["cflags"])
        progs = {name: bpf.load_func(name.encode(), BPF.XDP) for name in PROGRAMS}
        for table, index, prog in TAIL_CALLS:
            bpf[table.encode()][ct.c_int(index)] = ct.c_int(progs[prog].fd)
    lib = libbcc.lib
    lib.bpf_num_tables.argtypes, lib.bpf_num_tables.restype = [ct.c_void_p], ct.c_size_t
    lib.bpf_table_name.argtypes, lib.bpf_table_name.restype = [ct.c_void_p, ct.c_size_t], ct.c_char_p
    maps, fds = [], [progs[name].fd for name in PROGRAMS]
    for i in range(lib.bpf_num_tables(bpf.module)):
        name = lib.bpf_table_name(bpf.module, i)
        fd = lib.bpf_table_fd(bpf.module, name)
        info = map_info(fd)
        maps.append({"name": name.decode(), "type": info.type, "key_size": info.key_size,
                     "value_size": info.value_size, "max_entries": info.max_entries})
        fds.append(fd)
    _compile_and_load.bpf = bpf  # keep the fds open until sent
    return {"progs": list(PROGRAMS), "maps": maps, "log": req["log"]}, fds


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    _die_with_parent()
    sock = socket.socket(fileno=int(argv[0]))
    req = json.loads(sock.recv(_MSG_MAX))
    try:
        reply, fds = _compile_and_load(req)
    except Exception as e:  # reported to the parent, which names the log
        text = str(e).strip()
        reply, fds = {"error": text.splitlines()[0] if text else type(e).__name__}, []
    socket.send_fds(sock, [json.dumps(reply).encode()], fds)
    sock.settimeout(30)
    try:
        sock.recv(16)  # the parent's acknowledgement (or EOF if it gave up)
    except OSError:
        pass
    sys.stdout.flush()
    os._exit(0)  # no atexit: BCC's cleanup has nothing to undo that the parent relies on


if __name__ == "__main__":
    raise SystemExit(main())
