"""Python mirror of ebpf/synguard_abi.h.

One name per concept: SG_CNT_CHALLENGE_SENT (C) -> Counter.CHALLENGE_SENT here ->
synguard_challenges_sent_total (metric) -> "challenges sent" (CLI).
tests/test_abi.py parses the header, reads the loaded maps' sizes and BTF, and fails on drift.
"""

from __future__ import annotations

import ctypes as ct
import enum
from dataclasses import dataclass
from pathlib import Path

ABI_VERSION = 3

# Compile-time limits (the header's defaults; the loader may override with -D).
CIDR_SIZE = 4096
SLOT_SHIFT = 4
ACK_GRACE_S = 2 << SLOT_SHIFT  # auto mode: tc checks cookie ACKs this long after a port is disarmed
SRC_SIZE = 65536
SRC_SAMPLE = 16
SRC_DOOR = 4096
PORTS = 65536
PORT_SLOTS = 64
HLL_BITS = 10
HLL_REGS = 1 << HLL_BITS
IFACE_SLOTS = 16
IFINDEX_MAX = 4096
IPV6_EXT_MAX = 4
VLAN_MAX = 2
LOCAL_ADDRS = 1024


class Counter(enum.IntEnum):
    """enum sg_counter: per-CPU counters, summed over CPUs in user space."""

    PACKETS = 0
    TCP = 1
    SYN_RECEIVED = 2
    CHALLENGE_SENT = 3
    COOKIE_VALIDATED = 4
    COOKIE_REFUSED = 5
    SYN_PASSED = 6
    SYN_ALLOW_CIDR = 7
    SYN_DROPPED_DENY = 8
    MALFORMED = 9
    FRAGMENT = 10
    IPV6_EXT_LIMIT = 11
    FAST_TRIGGER = 12
    ACK_CHECKED = 13
    COOKIE_NO_LISTENER = 14
    SYN_NO_LISTENER = 15
    SYN_QUEUE_ROOM = 16
    SYN_COOKIE_ERROR = 17
    NOT_LOCAL = 18
    OOS_ACK = 19
    OOS_RST = 20
    OOS_FIN = 21
    OOS_DATA = 22
    OOS_DROPPED = 23
    KERNEL_COOKIE_ACK = 24

    @property
    def key(self) -> str:
        """The status document's key: CHALLENGE_SENT -> "challenge_sent"."""
        return self.name.lower()

    @property
    def words(self) -> str:
        """The CLI's words: CHALLENGE_SENT -> "challenges sent" (COUNTER_NAMES)."""
        return COUNTER_NAMES[self].words

    @property
    def metric(self) -> str:
        """The Prometheus name: CHALLENGE_SENT -> "synguard_challenges_sent_total"."""
        return COUNTER_NAMES[self].metric + "_total"


COUNTER_MAX = 25


@dataclass(frozen=True)
class CounterName:
    metric: str  # Prometheus name without "_total"
    words: str   # the CLI's words (status, log lines)
    help: str    # the metric's HELP text


# One name per counter through every layer: SG_CNT_X (C) -> Counter.X -> metric -> CLI words.
# SYN drops are exported as one metric with a reason label (synguard.metrics.DROP_REASONS).
COUNTER_NAMES: dict[Counter, CounterName] = {
    Counter.PACKETS: CounterName("synguard_packets", "frames", "Frames seen by the XDP program."),
    Counter.TCP: CounterName("synguard_tcp_segments", "TCP segments", "IPv4/IPv6 TCP segments parsed."),
    Counter.SYN_RECEIVED: CounterName("synguard_syn_received", "SYNs received", "SYNs (without ACK) received."),
    Counter.CHALLENGE_SENT: CounterName("synguard_challenges_sent", "challenges sent",
                                        "SYNs answered with a cookie SYN-ACK from XDP."),
    Counter.COOKIE_VALIDATED: CounterName("synguard_cookies_validated", "cookies validated",
                                          "ACKs with a valid cookie: the kernel made the connection."),
    Counter.COOKIE_REFUSED: CounterName("synguard_cookies_refused", "cookies refused",
                                        "Valid cookies the kernel refused (bpf_sk_assign_tcp_reqsk)."),
    Counter.SYN_PASSED: CounterName("synguard_syn_passed", "SYNs passed", "SYNs handed to the kernel."),
    Counter.SYN_ALLOW_CIDR: CounterName("synguard_syn_allow_cidr", "SYNs allowed (allow list)",
                                        "SYNs passed by the static allow list."),
    Counter.SYN_DROPPED_DENY: CounterName("synguard_syn_dropped", "SYNs dropped (deny)",
                                          "SYNs dropped by the XDP program, by reason."),
    Counter.MALFORMED: CounterName("synguard_malformed", "malformed frames",
                                   "Frames with truncated or inconsistent headers (passed)."),
    Counter.FRAGMENT: CounterName("synguard_fragments", "fragments", "IP fragments (passed, never challenged)."),
    Counter.IPV6_EXT_LIMIT: CounterName("synguard_ipv6_ext_limit", "IPv6 extension-header limit",
                                        "IPv6 packets with more extension headers than parsed (passed)."),
    Counter.FAST_TRIGGER: CounterName("synguard_fast_triggers", "fast triggers",
                                      "Auto mode: ports armed in-kernel by the per-second SYN ceiling."),
    Counter.ACK_CHECKED: CounterName("synguard_acks_checked", "ACKs checked",
                                     "ACKs to protected ports whose cookie the tc program checked."),
    Counter.COOKIE_NO_LISTENER: CounterName("synguard_cookies_no_listener", "cookies without listener",
                                            "Valid cookies without a listening socket (passed)."),
    Counter.SYN_NO_LISTENER: CounterName("synguard_syn_no_listener", "SYNs without listener",
                                         "Kernel-cookie method: SYNs to a port without a listening socket "
                                         "(passed; the kernel resets them)."),
    Counter.SYN_QUEUE_ROOM: CounterName("synguard_syn_queue_room", "SYNs left to the kernel",
                                        "Kernel-cookie method: SYNs the kernel would not make a cookie for "
                                        "(its SYN queue has room, or tcp_syncookies=0, or the accept queue is "
                                        "full): passed."),
    Counter.SYN_COOKIE_ERROR: CounterName("synguard_syn_cookie_errors", "SYN cookie errors",
                                          "Kernel-cookie method: SYNs bpf_tcp_gen_syncookie() refused otherwise "
                                          "(TIME_WAIT socket, SYN+FIN, IPv4 to a v6-only listener): passed."),
    Counter.NOT_LOCAL: CounterName("synguard_not_local", "segments not for this host",
                                   "TCP segments to an address that is not this host's, or in a multicast or "
                                   "broadcast frame (forwarded, macvlan, bridge): passed untouched."),
    Counter.OOS_ACK: CounterName("synguard_oos_acks", "out-of-state ACKs",
                                 "ACKs to a protected port that no socket or cookie owns."),
    Counter.OOS_RST: CounterName("synguard_oos_rsts", "out-of-state RSTs",
                                 "RSTs to a protected port that no socket owns."),
    Counter.OOS_FIN: CounterName("synguard_oos_fins", "out-of-state FINs",
                                 "FINs to a protected port that no socket owns."),
    Counter.OOS_DATA: CounterName("synguard_oos_data", "out-of-state data segments",
                                  "Data segments to a protected port that no socket or cookie owns."),
    Counter.OOS_DROPPED: CounterName("synguard_oos_dropped", "out-of-state segments dropped",
                                     "Out-of-state segments dropped before the TCP stack (never answered)."),
    Counter.KERNEL_COOKIE_ACK: CounterName("synguard_kernel_cookie_acks", "kernel cookie ACKs",
                                           "ACKs carrying a valid kernel SYN cookie (passed to the kernel)."),
}

# TCP options the server's stack accepts (sg_config.tcp_opts).
OPT_TS = 0x1
OPT_SACK = 0x2
OPT_WSCALE = 0x4
OPT_ECN = 0x8
OPT_TS_NO_OFFSET = 0x10
COOKIE_WSCALE_NONE = 0xF


class CookieMethod(enum.IntEnum):
    """enum sg_method (sg_config.method): how SYN cookies are made and completed.

    Shown as its label: "kfunc" (our SipHash cookie with options, completed by the tc
    program's bpf_sk_assign_tcp_reqsk(), Linux >= 6.9) or "kernel-cookie" (the kernel's
    own cookie from bpf_tcp_gen_syncookie(), MSS only, completed by the kernel)."""

    KFUNC_COOKIE = 0
    KERNEL_COOKIE = 1

    @property
    def label(self) -> str:
        return {CookieMethod.KFUNC_COOKIE: "kfunc", CookieMethod.KERNEL_COOKIE: "kernel-cookie"}[self]

    def __str__(self) -> str:
        return self.label

    @classmethod
    def labels(cls) -> tuple[str, ...]:
        return tuple(m.label for m in cls)

    @classmethod
    def parse(cls, text: str) -> "CookieMethod":
        """Method of its label; ValueError otherwise."""
        for m in cls:
            if m.label == text:
                return m
        raise ValueError(f"{text!r} is not one of {', '.join(cls.labels())}")


class Mode(enum.IntEnum):
    """enum sg_mode; the one spelling of the mode for config, daemon, metrics and CLI.

    Written and shown as its lower-case name ("observe", "protect", "auto")."""

    OBSERVE = 0
    PROTECT = 1
    AUTO = 2

    @property
    def label(self) -> str:
        return self.name.lower()

    def __str__(self) -> str:
        return self.label

    def __format__(self, spec: str) -> str:
        return format(self.label, spec)

    @classmethod
    def labels(cls) -> tuple[str, ...]:
        return tuple(m.label for m in cls)

    @classmethod
    def parse(cls, text: str) -> "Mode":
        """Mode of its label; ValueError otherwise."""
        try:
            return cls[str(text).upper()]
        except KeyError:
            raise ValueError(f"{text!r} is not one of {', '.join(cls.labels())}") from None


# ---- The header's structs as ctypes, and each map's key and value types ---------
# Hand-written mirrors of the structs in synguard_abi.h, field for field. They cannot
# drift silently: tests/test_abi.py compares names, sizes and offsets with the header
# and with the BTF the loaded maps carry, and synguard.datapath.maps refuses a map
# whose kernel key/value size differs from these.


class Config(ct.Structure):
    """struct sg_config: runtime settings, sg_config[0]."""

    _fields_ = [
        ("mode", ct.c_uint32),
        ("all_ports", ct.c_uint32),
        ("now_s", ct.c_uint32),
        ("slot", ct.c_uint32),
        ("allow_cidrs", ct.c_uint32),
        ("deny_cidrs", ct.c_uint32),
        ("fast_trigger_syns", ct.c_uint32),
        ("fast_hold_s", ct.c_uint32),
        ("synack_mss4", ct.c_uint16),
        ("synack_mss6", ct.c_uint16),
        ("synack_wscale", ct.c_uint8),
        ("tcp_opts", ct.c_uint8),
        ("method", ct.c_uint8),
        ("local_only", ct.c_uint8),
        ("all_until_s", ct.c_uint32),
        ("oos_until_s", ct.c_uint32),
    ]


class Port(ct.Structure):
    """struct sg_port: value of sg_ports, indexed by the host-order port."""

    _fields_ = [("protect", ct.c_uint8), ("watch_slot", ct.c_uint8), ("reserved", ct.c_uint16),
                ("auto_until_s", ct.c_uint32)]


class PortSyns(ct.Structure):
    """struct sg_port_syns: SYNs of one watched port (per CPU)."""

    _fields_ = [("syns", ct.c_uint64), ("window_s", ct.c_uint32), ("window_syns", ct.c_uint32)]


class Hll(ct.Structure):
    """struct sg_hll: one bank of HyperLogLog registers."""

    _fields_ = [("reg", ct.c_uint8 * HLL_REGS)]


class CounterBlock(ct.Structure):
    """struct sg_counter_block: value of sg_counters, one per CPU and interface slot."""

    _fields_ = [("cnt", ct.c_uint64 * COUNTER_MAX), ("ports", PortSyns * PORT_SLOTS),
                ("hll_window", ct.c_uint32 * 2), ("hll", Hll * 2)]


class Secret(ct.Structure):
    """struct sg_secret: the SipHash key of one cookie slot."""

    _fields_ = [("k0", ct.c_uint64), ("k1", ct.c_uint64)]


class Addr(ct.Structure):
    """struct sg_addr: key of sg_src_syns (IPv4 as ::ffff:a.b.c.d, network order)."""

    _fields_ = [("addr", ct.c_uint32 * 4)]


class SrcStat(ct.Structure):
    """struct sg_src_stat: value of sg_src_syns."""

    _fields_ = [("syns", ct.c_uint64), ("last_seen_s", ct.c_uint32), ("last_dport", ct.c_uint16),
                ("reserved", ct.c_uint16)]


class SrcDoor(ct.Structure):
    """struct sg_src_door: value of sg_src_door (per CPU; the XDP program's own)."""

    _fields_ = [("fp", ct.c_uint32 * SRC_DOOR)]


class CidrKey(ct.Structure):
    """struct sg_cidr_key: key of the LPM tries sg_allow_cidrs / sg_deny_cidrs."""

    _fields_ = [("prefixlen", ct.c_uint32), ("addr", ct.c_uint8 * 16)]


class Sip(ct.Structure):
    """struct sg_sip: SipHash-2-4 state."""

    _fields_ = [("v0", ct.c_uint64), ("v1", ct.c_uint64), ("v2", ct.c_uint64), ("v3", ct.c_uint64)]


class SipCacheEntry(ct.Structure):
    """struct sg_sip_cache_entry: value of sg_sip_cache (per CPU; the programs' own)."""

    _fields_ = [("daddr", ct.c_uint64 * 2), ("k0", ct.c_uint64), ("k1", ct.c_uint64), ("filled", ct.c_uint64),
                ("state", Sip)]


# Every map of ebpf/synguard.bpf.c: name -> (key type, value type), as the C declares
# them (BCC's `int` keys are c_int). A per-CPU map's value type is one CPU's value.
MAPS: dict[str, tuple[type, type]] = {
    "sg_counters": (ct.c_int, CounterBlock),
    "sg_ifaces": (ct.c_int, ct.c_uint32),
    "sg_config": (ct.c_int, Config),
    "sg_secrets": (ct.c_int, Secret),
    "sg_sip_cache": (ct.c_int, SipCacheEntry),
    "sg_ports": (ct.c_int, Port),
    "sg_src_syns": (Addr, SrcStat),
    "sg_src_door": (ct.c_int, SrcDoor),
    "sg_progs": (ct.c_int, ct.c_int),
    "sg_allow_cidrs": (CidrKey, ct.c_uint8),
    "sg_deny_cidrs": (CidrKey, ct.c_uint8),
    "sg_local_addrs": (Addr, ct.c_uint8),
}


def _names(cls) -> tuple[str, ...]:
    return tuple(f[0] for f in cls._fields_)


# struct field names, in order (the daemon writes structs by field name).
CONFIG_FIELDS = _names(Config)
PORT_FIELDS = _names(Port)
PORT_SYNS_FIELDS = _names(PortSyns)
HLL_FIELDS = _names(Hll)
COUNTER_BLOCK_FIELDS = _names(CounterBlock)
SECRET_FIELDS = _names(Secret)
SRC_STAT_FIELDS = _names(SrcStat)
CIDR_KEY_FIELDS = _names(CidrKey)
ADDR_FIELDS = _names(Addr)



def _ebpf_dir_default() -> Path:
    """The checkout's ebpf/ when running from one, else the installed copy."""
    import sys

    here = Path(__file__).resolve().parent.parent / "ebpf"
    if (here / "synguard.bpf.c").is_file():
        return here
    return Path(sys.prefix) / "share" / "synguard" / "ebpf"


EBPF_DIR_DEFAULT = _ebpf_dir_default()
# Running from a checkout (tests, the lab), not an installed package: test hooks
# (SYNGUARD_TEST_FAULT) are honoured only then.
FROM_CHECKOUT = EBPF_DIR_DEFAULT == Path(__file__).resolve().parent.parent / "ebpf"


def _ebpf_obj_dir_default() -> Path:
    """Where eBPF objects compiled ahead of time (`make ebpf`) are: beside the C in a
    checkout; in <prefix>/lib/synguard/ebpf when the C is in <prefix>/share/synguard/ebpf
    (the Debian package: objects are architecture-dependent, /usr/share is not for them)."""
    if EBPF_DIR_DEFAULT.parent.parent.name == "share":
        return EBPF_DIR_DEFAULT.parent.parent.parent / "lib" / "synguard" / "ebpf"
    return EBPF_DIR_DEFAULT


EBPF_OBJ_DIR_DEFAULT = _ebpf_obj_dir_default()
