"""Python mirror of ebpf/synguard_abi.h.

One name per concept: SG_CNT_CHALLENGE_SENT (C) -> Counter.CHALLENGE_SENT here ->
synguard_challenges_sent_total (metric) -> "challenges sent" (CLI).
tests/test_abi.py parses the header and the compiled maps and fails on drift.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path

ABI_VERSION = 2

# Compile-time limits (the header's defaults; the loader may override with -D).
CIDR_SIZE = 4096
SLOT_SHIFT = 4
SRC_SIZE = 65536
SRC_SAMPLE = 16
PORTS = 65536
PORT_SLOTS = 64
HLL_BITS = 10
HLL_REGS = 1 << HLL_BITS
IFACE_SLOTS = 16
IFINDEX_MAX = 4096
IPV6_EXT_MAX = 4
VLAN_MAX = 2


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


COUNTER_MAX = 18


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
}

# TCP options the server's stack accepts (sg_config.tcp_opts).
OPT_TS = 0x1
OPT_SACK = 0x2
OPT_WSCALE = 0x4
OPT_ECN = 0x8
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


# struct field names, in order, as BCC's generated Leaf/Key classes expose them.
CONFIG_FIELDS = (
    "mode",
    "all_ports",
    "now_s",
    "slot",
    "allow_cidrs",
    "deny_cidrs",
    "fast_trigger_syns",
    "fast_hold_s",
    "synack_mss4",
    "synack_mss6",
    "synack_wscale",
    "tcp_opts",
    "method",
    "reserved",
)
PORT_FIELDS = ("protect", "watch_slot", "reserved", "auto_until_s")
PORT_SYNS_FIELDS = ("syns", "window_s", "window_syns")
HLL_FIELDS = ("reg",)
COUNTER_BLOCK_FIELDS = ("cnt", "ports", "hll_window", "hll")
SECRET_FIELDS = ("k0", "k1")
SRC_STAT_FIELDS = ("syns", "last_seen_s", "last_dport", "reserved")
CIDR_KEY_FIELDS = ("prefixlen", "addr")
ADDR_FIELDS = ("addr",)



def _ebpf_dir_default() -> Path:
    """The checkout's ebpf/ when running from one, else the installed copy."""
    import sys

    here = Path(__file__).resolve().parent.parent / "ebpf"
    if (here / "synguard.bpf.c").is_file():
        return here
    return Path(sys.prefix) / "share" / "synguard" / "ebpf"


EBPF_DIR_DEFAULT = _ebpf_dir_default()


def _ebpf_obj_dir_default() -> Path:
    """Where eBPF objects compiled ahead of time (`make ebpf`) are: beside the C in a
    checkout; in <prefix>/lib/synguard/ebpf when the C is in <prefix>/share/synguard/ebpf
    (the Debian package: objects are architecture-dependent, /usr/share is not for them)."""
    if EBPF_DIR_DEFAULT.parent.parent.name == "share":
        return EBPF_DIR_DEFAULT.parent.parent.parent / "lib" / "synguard" / "ebpf"
    return EBPF_DIR_DEFAULT


EBPF_OBJ_DIR_DEFAULT = _ebpf_obj_dir_default()
