"""Loader and map access for the XDP program in ebpf/.

DataPath has ebpf/synguard.bpf.c compiled and loaded by BCC in a short-lived child
process (synguard/datapath/loader.py: BCC's compiler never stays mapped in the
daemon) and keeps the program and map fds it hands back. It reads and writes the
maps by fd through libbpf (synguard/datapath/maps.py, types from synguard/abi.py),
attaches the program with libbpf (native XDP with a fallback to generic), and
replaces or detaches only its own program.
Errors the operator can fix are raised as DataPathError with a one-line message.
"""

from __future__ import annotations

import contextlib
import ctypes as ct
import ipaddress
import itertools
import os
import shutil
import time
from pathlib import Path

from synguard import abi
from synguard.abi import CookieMethod, Counter, Mode
from synguard.datapath.host import (XDP_SOURCES, DataPathError, capture_fd2, check_kernel_headers,
                                    check_privileges, ebpf_dir, ifindex, private_log_dir)
from synguard.datapath.libbpf import TestRunResult, lib, prog_id, prog_test_run
from synguard.datapath.maps import (Map, MapLayoutError, addr_key, addr_of_key, cidr_key, read_struct,
                                    write_struct)
from synguard.datapath.netns import current_netns_fd, in_netns
from synguard.datapath.pins import (adopt_state, forget_state, kept_map_names, pin, pin_path, pinned_prog_id,
                                    pinned_table_fd, state_dir, unpin)
from synguard.datapath.xdp import (PROG_NAME, XDP_MODES, attach_fd, attached_prog, detach_fd, detach_orphan, fd_of,
                                   is_ours, mode_of)

__all__ = ["DataPath", "DataPathError", "TestRunResult", "PROG_NAME", "XDP_MODES", "addr_key", "addr_of_key",
           "attached_prog", "current_netns_fd", "detach_orphan", "ebpf_dir", "in_netns", "lib", "pin_path",
           "pinned_prog_id", "prog_id", "prog_test_run", "unpin"]

# ---- The data path -------------------------------------------------------------

COOKIE_METHOD_ENV = "SYNGUARD_COOKIE_METHOD"  # auto (default) | kfunc | kernel-cookie


def kernel_cookie_problem() -> str | None:
    """Why the kernel-cookie method cannot protect in this network namespace, or None."""
    try:
        value = int(Path("/proc/sys/net/ipv4/tcp_syncookies").read_text())
    except (OSError, ValueError):
        return None  # cannot tell
    if value == 0:
        return ("net.ipv4.tcp_syncookies is 0 in this network namespace: the kernel makes no cookies, so "
                "every SYN passes to it unanswered by XDP; set it to 1 (sysctl -w net.ipv4.tcp_syncookies=1)")
    return None



class DataPath:
    """The loaded program, its maps (by fd) and its attachments."""

    def __init__(self, *, cflags: tuple[str, ...] = (), log_dir: Path | None = None, keep_state: bool = False,
                 tc: bool = False):
        """keep_state: pin the maps that must survive a crash (the daemon does; tests don't,
        so that several programs in one namespace never share state).
        tc: choose how SYN cookies are completed (cookie_method, cookie_method_reason):
        "kfunc" when the kernel has bpf_sk_assign_tcp_reqsk() -- the tc program
        (ebpf/synguard_tc.bpf.c) is loaded on the same maps and attached wherever the XDP
        program goes -- else "kernel-cookie" (XDP answers with the kernel's own cookie,
        the kernel completes the ACK; no tc program). The environment variable
        SYNGUARD_COOKIE_METHOD=kernel-cookie forces the fallback on a kernel with the
        kfunc (=kfunc refuses to start without it; unset or "auto": choose). Without tc,
        cookie_method is None (tests, benchmarks: set_cookie_method() picks the XDP path).
        BCC compiles and loads in a short-lived child (datapath/loader.py): this process
        keeps only fds, never BCC's compiler."""
        from synguard.datapath import loader  # not at import: the loader child imports this package

        check_privileges()
        check_kernel_headers()
        self.src_file = ebpf_dir() / "synguard.bpf.c"
        if not self.src_file.is_file():
            raise DataPathError(f"XDP source not found at {self.src_file} (set SYNGUARD_EBPF_DIR)")
        self.cflags = [f"-I{ebpf_dir()}", "-Wno-unused-command-line-argument", *cflags]
        # Logs in a private directory (never a fixed /tmp name); removed by close()
        # when we made it, kept (and named) when the program is refused.
        self._log_dir_made = log_dir is None
        self.log_path = private_log_dir(log_dir) / "synguard.verifier.log"
        self.state_dir: Path | None = None  # where kept maps are pinned
        self.adopted: list[str] = []  # kept maps found pinned by an earlier run
        self.state_note: str | None = None
        self._maps: dict[str, Map] = {}
        self.prog_fd = self.optscan_fd = self.kcookie_fd = self.oos_fd = -1
        loaded = loader.load(self.src_file, self.cflags, self.log_path)
        try:
            self.prog_fd = loaded.progs.pop(PROG_NAME)
            # Tail-called by the program (sg_progs[0], wired by the loader): a SYN whose
            # options need the bounded scan. Kept open for the program's lifetime.
            self.optscan_fd = loaded.progs.pop("xdp_synguard_optscan")
            # Tail-called too (sg_progs[1]): a SYN to answer with the kernel-cookie method.
            self.kcookie_fd = loaded.progs.pop("xdp_synguard_kcookie")
            # And (sg_progs[2]): the out-of-state check of method kernel-cookie (no tc program).
            self.oos_fd = loaded.progs.pop("xdp_synguard_oos")
            missing = sorted(set(abi.MAPS) - set(loaded.maps))
            unknown = sorted(set(loaded.maps) - set(abi.MAPS))
            if missing or unknown:
                raise MapLayoutError(f"maps of {self.src_file.name} and synguard.abi.MAPS differ: "
                                     f"missing {missing}, not mirrored {unknown}")
            for name in list(loaded.maps):
                self._maps[name] = Map(loaded.maps[name], name, abi.MAPS[name])  # checks the sizes
                del loaded.maps[name]  # ours now: closed by close()
        except MapLayoutError as e:
            loaded.close()
            self.close()
            raise DataPathError(f"{e}; reinstall synguard (its eBPF source and Python code must match)") from None
        except BaseException:
            loaded.close()
            self.close()
            raise
        if keep_state:
            self.state_dir, self.state_note = state_dir()
        self.prog_id = prog_id(self.prog_fd)
        self.attached: dict[str, str] = {}  # ifname -> "native" | "generic"
        self._ports: set[int] = set()
        self._port_state: dict[int, dict[str, int]] = {}  # port -> struct sg_port fields
        self._watch: dict[int, int] = {}  # watched port -> slot
        self._slots: dict[str, int] = {}  # ifname -> counter slot
        self._netns: dict[str, int] = {}  # ifname -> fd of the namespace it was attached in
        self.ifindexes: dict[str, int] = {}  # ifname -> ifindex at attach time
        self.pin_error: str | None = None  # why the program could not be pinned, if so
        self._pins: set[Path] = set()
        self._orphan_ids: set[int] = set()  # pinned ids of dead daemons' programs we replace
        # fds of dead daemons' tail-call tables (their pins are replaced by ours): held while
        # their programs may still sit on interfaces we have not reached yet.
        self._orphan_tables: list[int] = []
        self._keepers: dict[int, object] = {}  # netns inode -> keeper process (sg_progs not pinned)
        self._config = {name: 0 for name in abi.CONFIG_FIELDS}
        if self.state_dir is not None:
            self.adopted, note = adopt_state(self.state_dir, {n: self.map(n) for n in self.kept_maps()})
            self.state_note = note or self.state_note
        # The second kernel program: turns cookie ACKs into connections (synguard/datapath/tc.py).
        self.tc = None
        self.cookie_method: str | None = None  # CookieMethod label: "kfunc" | "kernel-cookie"
        self.cookie_method_reason: str | None = None  # why that one (the daemon logs it)
        # ... as a label value: kfunc-available | no-kfunc | tc-refused | forced (None: not chosen)
        self.cookie_method_why: str | None = None
        self.tc_unavailable: str | None = None  # why the kfunc method is not used
        self.tc_problem: str | None = None  # last attach's warning (tcp_syncookies=0), for the daemon
        if tc:
            try:
                self._choose_cookie_method()
            except BaseException:
                self.close(keep_state=True)
                raise

    def _choose_cookie_method(self) -> None:
        from synguard.datapath import tc as tcmod

        forced = os.environ.get(COOKIE_METHOD_ENV, "").strip() or "auto"
        if forced not in ("auto", *CookieMethod.labels()):
            raise DataPathError(f"{COOKIE_METHOD_ENV}={forced!r}: use auto, {', '.join(CookieMethod.labels())}")
        if not tcmod.kernel_has_kfunc():
            self.cookie_method_why = "no-kfunc"
            self.tc_unavailable = f"this kernel has no {tcmod.KFUNC}() kfunc (Linux >= 6.9 with BTF)"
            if forced == "kfunc":
                raise DataPathError(f"{COOKIE_METHOD_ENV}=kfunc, but {self.tc_unavailable}")
        elif forced == "kernel-cookie":
            self.cookie_method_why = "forced"
            self.tc_unavailable = f"{COOKIE_METHOD_ENV}=kernel-cookie (the kernel has {tcmod.KFUNC}())"
        else:
            # The BTF says the kfunc exists; the load itself is the probe that it can be
            # called from our tc program (a verifier or a libbpf that refuses it, a
            # kernel built without it in the tc kfunc set): then the fallback.
            try:
                self.tc = tcmod.TcProgram({name: self.map(name).map_fd for name in tcmod.SHARED_MAPS})
            except DataPathError as e:
                if forced == "kfunc":
                    raise
                self.cookie_method_why = "tc-refused"
                self.tc_unavailable = f"the kernel has {tcmod.KFUNC}() but refused the tc program ({e})"
            else:
                self.set_cookie_method(CookieMethod.KFUNC_COOKIE)
                self.cookie_method_why = "forced" if forced == "kfunc" else "kfunc-available"
                self.cookie_method_reason = f"the kernel has {tcmod.KFUNC}()" + (
                    f" ({COOKIE_METHOD_ENV}=kfunc)" if forced == "kfunc" else "")
                return
        self.set_cookie_method(CookieMethod.KERNEL_COOKIE)
        self.cookie_method_reason = self.tc_unavailable

    def kept_maps(self) -> list[str]:
        """Maps whose content outlives a crashed daemon: those the C declares with SG_KEPT."""
        return kept_map_names(self.src_file.read_text())

    # -- source -------------------------------------------------------------

    def source_text(self) -> str:
        """The C as compiled (for --ebpf): cflags, then the ABI header and the program."""
        parts = [f"// ---- {name}\n{(ebpf_dir() / name).read_text()}"
                 for name in XDP_SOURCES]
        return f"// cflags: {' '.join(self.cflags)}\n" + "\n".join(parts)

    # -- maps -----------------------------------------------------------------

    def map(self, name: str) -> Map:
        """A map of the program by name (typed access by fd, synguard/datapath/maps.py)."""
        return self._maps[name]

    def read_blocks(self) -> list:
        """One read of sg_counters: for each interface slot, its per-CPU blocks.

        Counters, per-port SYNs and HLL registers all live in these blocks; a
        caller that needs several of them passes one read to each (the daemon's tick)."""
        table = self.map("sg_counters")
        return [table[slot] for slot in range(abi.IFACE_SLOTS)]

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
        return read_struct(self.map("sg_config"), ct.c_int(0), abi.CONFIG_FIELDS)

    def _write_config(self, **fields: int) -> None:
        self._config.update(fields)
        write_struct(self.map("sg_config"), ct.c_int(0), **{k: v & 0xFFFFFFFF for k, v in self._config.items()})

    def set_mode(self, mode: Mode) -> None:
        self._write_config(mode=int(mode))

    def set_cookie_method(self, method: CookieMethod) -> None:
        """The XDP program's SYN answer (sg_config.method). DataPath(tc=True) chooses it;
        this alone does not load or drop the tc program (kfunc needs it to complete)."""
        self._write_config(method=int(method))
        self.cookie_method = CookieMethod(method).label

    def tick(self, now_s: int | None = None) -> None:
        """Advance the program's clock (sg_config.now_s): call at least every second."""
        self._write_config(now_s=int(time.monotonic()) if now_s is None else now_s)

    def _set_port(self, port: int, **fields: int) -> None:
        """Write struct sg_port of port by field name (protect, watch_slot, auto_until_s);
        the fields not given keep their value."""
        state = dict(self._port_state.get(port, {"protect": 0, "watch_slot": 0, "auto_until_s": 0}))
        if "auto_until_s" not in fields:
            state["auto_until_s"] = self.port_auto_until(port)  # the fast trigger writes it too: keep its value
        state.update(fields)
        if any(state.values()):
            self._port_state[port] = state
        else:
            self._port_state.pop(port, None)
        write_struct(self.map("sg_ports"), ct.c_int(port), **{k: v & 0xFFFFFFFF for k, v in state.items()})

    def set_ports(self, ports: list[int] | set[int]) -> None:
        """Protected ports; an empty list protects every port."""
        ports = set(ports)
        bad = [p for p in ports if not 1 <= p <= 65535]
        if bad:
            raise ValueError(f"ports out of range 1-65535: {bad}")
        for port in self._ports - ports:
            self._set_port(port, protect=0)
        for port in ports - self._ports:
            self._set_port(port, protect=1)
        self._ports = ports
        self._write_config(all_ports=0 if ports else 1)

    def set_watched(self, ports) -> dict[int, int]:
        """Ports with their own SYN counters (at most PORT_SLOTS - 1); returns port -> slot.

        A port keeps its slot while it stays watched, so its counter is monotonic."""
        ports = sorted(set(ports))
        for port in [p for p in self._watch if p not in ports]:
            self._set_port(port, watch_slot=0)
            del self._watch[port]
        free = sorted(set(range(1, abi.PORT_SLOTS)) - set(self._watch.values()))
        for port in ports:
            if port not in self._watch and free:
                self._watch[port] = free.pop(0)
                self._set_port(port, watch_slot=self._watch[port])
        return dict(self._watch)

    def arm_port(self, port: int, until_s: int) -> None:
        """Auto mode: challenge SYNs to port until the clock reaches until_s (0 disarms)."""
        self._set_port(port, auto_until_s=until_s)

    def arm_all(self, until_s: int) -> None:
        """Auto mode: challenge SYNs to every protected port until the clock reaches
        until_s (sg_config.all_until_s, one switch; 0 disarms)."""
        if self._config.get("all_until_s") != until_s:
            self._write_config(all_until_s=until_s)

    def all_until(self) -> int:
        return self._config.get("all_until_s", 0)

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
        from synguard.secret import secret_words

        table = self.map("sg_secrets")
        leaf = table.Leaf()
        leaf.k0, leaf.k1 = secret_words(key)
        table[ct.c_int(slot & 1)] = leaf

    def set_slot(self, slot: int) -> None:
        """The current cookie slot (sg_config.slot): CLOCK_REALTIME seconds >> SLOT_SHIFT."""
        self._write_config(slot=int(slot))

    def set_synack(self, mss4: int, mss6: int, wscale: int, tcp_opts: int) -> None:
        """What our SYN-ACK offers: MSS per family, our window scale, the SG_OPT_* the server accepts."""
        if not (0 < mss4 < 65536 and 0 < mss6 < 65536 and 0 <= wscale <= 14 and 0 <= tcp_opts <= 0x1F):
            raise ValueError(f"bad SYN-ACK settings: mss4={mss4} mss6={mss6} wscale={wscale} tcp_opts={tcp_opts:#x}")
        self._write_config(synack_mss4=mss4, synack_mss6=mss6, synack_wscale=wscale, tcp_opts=tcp_opts)

    def _set_cidrs(self, trie_name: str, count_field: str, nets) -> None:
        """Make the trie hold exactly nets, with no moment in which an entry that is in
        both the old and the new set is missing: the new entries go in first, then the
        old ones that are gone come out (a reload or a temporary deny never opens a
        window without the static deny list). The first call clears what it finds."""
        table = self.map(trie_name)
        nets = {ipaddress.ip_network(net, strict=False) for net in nets}
        cidrs = getattr(self, "_cidrs", None)
        if cidrs is None:
            cidrs = self._cidrs = {}
        if trie_name not in cidrs:
            table.clear()
            cidrs[trie_name] = set()
        old = cidrs[trie_name]

        def key_of(net):
            key = table.Key()
            key.prefixlen, addr = cidr_key(net)
            ct.memmove(key.addr, addr, 16)
            return key

        for net in nets - old:
            table[key_of(net)] = ct.c_uint8(1)
            old.add(net)
        if nets:
            self._write_config(**{count_field: len(nets)})
        for net in old - nets:
            with contextlib.suppress(KeyError):
                del table[key_of(net)]
            old.discard(net)
        self._write_config(**{count_field: len(nets)})

    def set_allow_cidrs(self, nets) -> None:
        self._set_cidrs("sg_allow_cidrs", "allow_cidrs", nets)

    def set_deny_cidrs(self, nets) -> None:
        self._set_cidrs("sg_deny_cidrs", "deny_cidrs", nets)

    def set_local_addrs(self, addrs) -> list:
        """Scope (synguard_scope.h): from now on act only on segments to these addresses,
        this netns's own (the daemon keeps them current, synguard/localaddrs.py). New ones
        are added before gone ones are removed, so an address present in both sets never
        drops out. Returns the addresses that did not fit (SG_LOCAL_ADDRS): those pass
        unprotected."""
        table = self.map("sg_local_addrs")
        wanted = sorted({ipaddress.ip_address(a) for a in addrs}, key=lambda a: (a.version, a))
        kept, left_out = wanted[: abi.LOCAL_ADDRS], wanted[abi.LOCAL_ADDRS:]
        keys = {addr_key(a) for a in kept}
        have = {bytes(k) for k in table.keys()}
        for raw in keys - have:
            key = table.Key()
            ct.memmove(key.addr, raw, 16)
            table[key] = ct.c_uint8(1)
        for raw in have - keys:
            key = table.Key()
            ct.memmove(key.addr, raw, 16)
            with contextlib.suppress(KeyError):
                del table[key]
        self._write_config(local_only=1)
        return left_out

    def set_local_only(self, on: bool) -> None:
        """Scope on (act only for sg_local_addrs) or off (any destination: tests, benchmarks)."""
        self._write_config(local_only=int(bool(on)))

    def local_addrs(self) -> set:
        """The addresses the program acts for (sg_local_addrs)."""
        return {addr_of_key(bytes(k)) for k in self.map("sg_local_addrs").keys()}

    def set_oos_until(self, until_s: int) -> None:
        """Auto mode: drop out-of-state segments at protected ports until the clock
        (sg_config.now_s) reaches until_s (0: count them only). Protect mode always drops."""
        self._write_config(oos_until_s=int(until_s))

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
        except OSError:  # no batch operations for this map type on this kernel
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
        idx = ifindex(ifname)
        current = attached_prog(ifname)
        pinned = pinned_prog_id()
        if pinned is not None and pinned != self.prog_id:
            # A dead daemon's program: remembered before our pin replaces it, so that its
            # copies on the other interfaces are still recognised as ours.
            self._orphan_ids.add(pinned)
        if current is not None and current[0] not in self._orphan_ids and not is_ours(current):
            raise DataPathError(
                f"{ifname} already runs XDP program id {current[0]} ({current[1]}); "
                f"synguard replaces only its own program: detach that one first"
            )
        # Over our own leftover program (a daemon that died): replace it in one netlink
        # call naming it as the expected program (XDP_FLAGS_REPLACE), so the interface
        # is never unprotected in between and nothing else can be replaced by mistake.
        # Without an fd of it (no trusted pin, no CAP_SYS_ADMIN) the mode's program is
        # replaced as found, as the check above allowed.
        old_fd = None
        if current is not None:
            old_fd = self.prog_fd if current[0] == self.prog_id else fd_of(current[0])
        modes = {"auto": ("native", "generic"), "native": ("native",), "generic": ("generic",)}[xdp_mode]
        errors = []
        try:
            with capture_fd2(self.log_path.with_suffix(".attach.log")):  # libbpf's netlink messages
                for mode in modes:
                    where = mode_of(idx, current[0]) if current is not None else None
                    if where is not None and where != mode:  # the leftover sits in the other mode:
                        detach_fd(idx, where, old_fd)          # clear it, then attach
                        where = None
                    if where is None:
                        ret = attach_fd(idx, self.prog_fd, mode)
                    else:
                        ret = attach_fd(idx, self.prog_fd, mode, expected_fd=old_fd, replace_any=old_fd is None)
                    if ret == 0:
                        break
                    errors.append(f"{mode}: {os.strerror(-ret)}")
                else:
                    mode = None
        finally:
            if old_fd is not None and old_fd != self.prog_fd:
                os.close(old_fd)
        if mode is None:
            why = self._kernel_message()
            raise DataPathError(f"cannot attach XDP to {ifname}: " + "; ".join(errors) + (f" ({why})" if why else ""))
        self.attached[ifname] = mode
        self.ifindexes[ifname] = idx
        self._netns[ifname] = current_netns_fd()
        self._map_interface(ifname)
        if pinned_prog_id() != self.prog_id:
            old_table = pinned_table_fd("sg_progs")
            if old_table is not None:
                self._orphan_tables.append(old_table)
            err = pin(self.prog_fd, self.map("sg_progs").map_fd)
            if err:
                self.pin_error = err
            else:
                self._pins.add(pin_path())
        if self.pin_error:
            self._keep_tail_calls()
        if self.tc is not None:
            self.tc_problem = self.tc.attach(ifname, strict=False)
        elif self.cookie_method == CookieMethod.KERNEL_COOKIE.label:
            self.tc_problem = kernel_cookie_problem()
        return mode

    def _keep_tail_calls(self) -> None:
        """sg_progs could not be pinned: a keeper process holds it while our program is
        attached in this namespace, so that a SIGKILL never empties it (datapath/keeper.py)."""
        from synguard.datapath import keeper

        ns = os.stat("/proc/thread-self/ns/net").st_ino
        proc = self._keepers.get(ns)
        if proc is None or proc.poll() is not None:
            self._keepers[ns] = keeper.start(self.map("sg_progs").map_fd, self.prog_id)

    def _kernel_message(self) -> str | None:
        """The kernel's last netlink error text (extack) libbpf logged during attach."""
        with contextlib.suppress(OSError):
            lines = [ln.split("Kernel error message:", 1)[1].strip()
                     for ln in self.log_path.with_suffix(".attach.log").read_text().splitlines()
                     if "Kernel error message:" in ln]
            return lines[-1] if lines else None
        return None

    def detach(self, ifname: str) -> bool:
        """Detach from ifname (in the namespace it was attached in) if our program is still there."""
        mode = self.attached.pop(ifname, None)
        if mode is None:
            return False
        fd = self._netns.pop(ifname)  # the counter slot stays: a re-attach continues its counters
        if self.tc is not None:
            self.tc.detach(ifname)
        try:
            with in_netns(fd):
                return self._detach_here(ifname)
        finally:
            os.close(fd)

    def _detach_here(self, ifname: str) -> bool:
        try:
            idx = ifindex(ifname)
            mode = mode_of(idx, self.prog_id)
        except DataPathError:
            return False  # interface gone: nothing left to detach
        if mode is None:
            return False  # someone else's program now: leave it alone
        with capture_fd2(self.log_path.with_suffix(".attach.log")):
            return detach_fd(idx, mode, self.prog_fd) == 0  # REPLACE: only if ours is still there

    def forget(self, ifname: str) -> None:
        """Drop the records of an attachment the kernel already ended (device removed)."""
        self.attached.pop(ifname, None)
        self.ifindexes.pop(ifname, None)
        fd = self._netns.pop(ifname, None)
        if fd is not None:
            os.close(fd)
        if self.tc is not None:
            self.tc.forget(ifname)

    def rename(self, old: str, new: str) -> None:
        """The device we are attached to was renamed: the program followed it."""
        for d in (self.attached, self.ifindexes, self._netns, self._slots):
            if old in d:
                d[new] = d.pop(old)
        if self.tc is not None:
            self.tc.rename(old, new)

    def detach_all(self) -> None:
        for ifname in list(getattr(self, "attached", ())):
            with contextlib.suppress(Exception):
                self.detach(ifname)

    def close(self, keep_state: bool = False) -> None:
        """Idempotent: detach everywhere, unpin, then free the program and maps.
        keep_state (a failed start): the kept maps stay pinned for the next start."""
        self.detach_all()
        for proc in getattr(self, "_keepers", {}).values():
            with contextlib.suppress(OSError):
                proc.kill()  # our own child, by its handle: our program is detached
                proc.wait()
        self._keepers = {}
        for fd in getattr(self, "_orphan_tables", ()):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._orphan_tables = []
        tc, self.tc = getattr(self, "tc", None), None
        if tc is not None:
            tc.close()
        for path in getattr(self, "_pins", ()):
            unpin(path, self.prog_id)
        self._pins = set()
        if not keep_state:
            forget_state(getattr(self, "state_dir", None))
        self.state_dir = None
        maps, self._maps = getattr(self, "_maps", {}), {}
        for table in maps.values():
            table.close()
        for attr in ("prog_fd", "optscan_fd", "kcookie_fd", "oos_fd"):
            fd = getattr(self, attr, -1)
            setattr(self, attr, -1)
            if fd >= 0:
                os.close(fd)
        for fd in getattr(self, "_netns", {}).values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._netns = {}
        if getattr(self, "_log_dir_made", False):
            self._log_dir_made = False
            shutil.rmtree(self.log_path.parent, ignore_errors=True)
