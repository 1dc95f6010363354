"""Python mirror of ebpf/synguard_abi.h.

One name per concept: SG_CNT_CHALLENGE_SENT (C) -> Counter.CHALLENGE_SENT here ->
synguard_challenges_sent_total (metric) -> "challenges sent" (CLI).
tests/test_abi.py parses the header and the compiled maps and fails on drift.
"""

from __future__ import annotations

import enum
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

    @property
    def label(self) -> str:
        """The CLI's words for this counter: CHALLENGE_SENT -> "challenge sent"."""
        return self.name.lower().replace("_", " ")


COUNTER_MAX = 15


# TCP options the server's stack accepts (sg_config.tcp_opts).
OPT_TS = 0x1
OPT_SACK = 0x2
OPT_WSCALE = 0x4
OPT_ECN = 0x8
COOKIE_WSCALE_NONE = 0xF


class Mode(enum.IntEnum):
    """enum sg_mode."""

    OBSERVE = 0
    PROTECT = 1
    AUTO = 2


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
