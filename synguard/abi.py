"""Python mirror of ebpf/synguard_abi.h.

One name per concept: SG_CNT_CHALLENGE_SENT (C) -> Counter.CHALLENGE_SENT here ->
synguard_challenges_sent_total (metric) -> "challenges sent" (CLI).
tests/test_abi.py parses the header and the compiled maps and fails on drift.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path

ABI_VERSION = 1

# Compile-time limits (the header's defaults; the loader may override with -D).
ALLOWLIST_SIZE = 262144
CIDR_SIZE = 4096
SLOT_SHIFT = 4
SRC_SIZE = 65536
SRC_SAMPLE = 16
ALLOW_FILTER_BITS = 20
ALLOW_FILTER_WORDS = 1 << (ALLOW_FILTER_BITS - 6)
ALLOW_FILTER_MULT = 0x9E3779B1
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
    COOKIE_INVALID = 5
    SYN_PASSED = 6
    SYN_ALLOWLISTED = 7
    SYN_ALLOW_CIDR = 8
    SYN_DROPPED_DENY = 9
    MALFORMED = 10
    FRAGMENT = 11
    COOKIE_COLLISION = 12
    IPV6_EXT_LIMIT = 13
    FAST_TRIGGER = 14

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


COUNTER_MAX = 15


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
                                          "Challenge answers (RST) with a valid cookie: source verified."),
    Counter.COOKIE_INVALID: CounterName("synguard_cookies_invalid", "cookies invalid",
                                        "Bare RSTs from unverified sources with a wrong cookie, dropped."),
    Counter.SYN_PASSED: CounterName("synguard_syn_passed", "SYNs passed", "SYNs handed to the kernel."),
    Counter.SYN_ALLOWLISTED: CounterName("synguard_syn_allowlisted", "SYNs from verified sources",
                                         "SYNs passed because their source is verified."),
    Counter.SYN_ALLOW_CIDR: CounterName("synguard_syn_allow_cidr", "SYNs allowed (allow list)",
                                        "SYNs passed by the static allow list."),
    Counter.SYN_DROPPED_DENY: CounterName("synguard_syn_dropped", "SYNs dropped (deny)",
                                          "SYNs dropped by the XDP program, by reason."),
    Counter.MALFORMED: CounterName("synguard_malformed", "malformed frames",
                                   "Frames with truncated or inconsistent headers (passed)."),
    Counter.FRAGMENT: CounterName("synguard_fragments", "fragments", "IP fragments (passed, never challenged)."),
    Counter.COOKIE_COLLISION: CounterName("synguard_cookie_collisions", "cookie collisions",
                                          "SYNs passed because the cookie equalled ISN+1."),
    Counter.IPV6_EXT_LIMIT: CounterName("synguard_ipv6_ext_limit", "IPv6 extension-header limit",
                                        "IPv6 packets with more extension headers than parsed (passed)."),
    Counter.FAST_TRIGGER: CounterName("synguard_fast_triggers", "fast triggers",
                                      "Auto mode: ports armed in-kernel by the per-second SYN ceiling."),
}


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
    "allow_ttl_s",
    "secret_gen",
    "now_s",
    "allow_cidrs",
    "deny_cidrs",
    "fast_trigger_syns",
    "fast_hold_s",
    "reserved",
)
PORT_FIELDS = ("protect", "watch_slot", "reserved", "auto_until_s")
PORT_SYNS_FIELDS = ("syns", "window_s", "window_syns")
HLL_FIELDS = ("reg",)
COUNTER_BLOCK_FIELDS = ("cnt", "ports", "hll_window", "hll")
SECRET_FIELDS = ("k0", "k1")
ALLOW_ENTRY_FIELDS = ("expires_s", "validated")
SRC_STAT_FIELDS = ("syns", "last_seen_s", "last_dport", "reserved")
CIDR_KEY_FIELDS = ("prefixlen", "addr")
ADDR_FIELDS = ("addr",)



def allow_filter_bit(addr16: bytes) -> int:
    """Bit of sg_allow_filter for a 16-byte (IPv4-mapped) address, as the program computes it.

    The program XORs the four u32 words as loaded (little-endian host)."""
    import struct

    a0, a1, a2, a3 = struct.unpack("<4I", addr16)
    return (((a0 ^ a1 ^ a2 ^ a3) * ALLOW_FILTER_MULT) & 0xFFFFFFFF) >> (32 - ALLOW_FILTER_BITS)


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
