"""synguard's configuration file: parse -> validate -> immutable Config.

Contract:
- parse(text, source) / load(path) return a frozen Config or raise ConfigError
  listing every problem at once (the first 100, by line), each as
  "KEY.PATH (line N): what is wrong"
  (list indexes are 0-based: protect.ports[2] is the third port).
- Unknown keys are errors (with a "did you mean"), wrong types are errors, an
  empty file means all defaults. Config() is the defaults (DEFAULTS).
- Keys of earlier versions that no longer mean anything (REMOVED_KEYS) are not
  errors: the Config carries one warning line each (Config.warnings, same
  "KEY.PATH (line N): ..." form) for check-config and the daemon's log.
- The result holds tuples, ipaddress networks and int seconds; Config.to_dict()
  gives back the file's shape (JSON-ready, and parse() accepts it again).
- override() applies `synguard run` flags on top (None = keep), validated by the
  same checks. (The secret file is read by synguard.secret.)
- Pure: nothing here touches the data path; the only I/O is load().

How it works: yaml.compose() gives the node tree with line numbers; the schema
tables below walk it (only as deep as the schema goes, so alias bombs cost
nothing) and build the dataclasses. A new section is a dataclass + one line in
_CONFIG_KEYS (+ its keys in config/synguard.yaml; tests/test_config.py checks
the example lists every key).
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import math
import os
import re
import stat
from dataclasses import dataclass, field
from typing import Any, Callable

import yaml

from synguard import abi
from synguard.abi import Mode
from synguard.datapath.xdp import XDP_MODES

DEFAULT_PATH = "/etc/synguard/synguard.yaml"

LOG_FORMATS = ("human", "json")

# Metrics port. Checked against the Prometheus "Default port allocations" wiki
# (github.com/prometheus/prometheus/wiki/Default-port-allocations) in the three
# stored copies we could read (the live page was out of reach; the newest copy
# already lists ports 10001-10026): the exporter range 9100-9999 is fully taken
# (new exporters get 10000+, cf. iits-consulting/otc-prometheus-exporter#16),
# and the "outside the standard range" table holds 9001, 9042, 9043, 9045, 9087,
# 9095, 9097, 9098, 9099. 9046 is in none of them, not in Debian's
# /etc/services, and no default of a common service we know. Not registered
# yet: claim it on the wiki (publicly editable) or move to a registered 10xxx port.
DEFAULT_METRICS_PORT = 9046
DEFAULT_METRICS_LISTEN = f"127.0.0.1:{DEFAULT_METRICS_PORT}"
DEFAULT_CONTROL_SOCKET = "/run/synguard/control.sock"

# Cookie window: a cookie is accepted in its 16-s slot and the next (abi.SLOT_SHIFT),
# i.e. for up to ~32 s, and under the current or the previous secret only. Two
# rotations within that window would reject cookies still in flight, so the
# period must exceed it; one minute leaves a margin.
ROTATE_MIN_S = 60
# The longest duration any key takes: a year is far past any sensible value and
# far from overflowing the u32 seconds the data path adds them to.
DURATION_MAX_S = 365 * 86400
# AF_UNIX sun_path is 108 bytes including the terminating NUL.
SUN_PATH_MAX = 107
# IFNAMSIZ is 16 including the NUL (linux/if.h).
IFNAME_MAX = 15
# Hostile input bounds. A config is a few KiB; load() reads at most this much.
FILE_MAX_BYTES = 1 << 20
# No setting takes a number near this long ("18_446_744_073_709_551_615" is 26):
# longer integer literals are refused unread (int() of 5,001 digits is a ValueError).
INT_TEXT_MAX = 40
# "<<" merge keys are expanded by copying (PyYAML's flatten_mapping): a 419-byte
# file could ask for billions of copies. A mapping may expand to this many keys.
MERGED_KEYS_MAX = 1000
MERGE_DEPTH_MAX = 32


class ConfigError(ValueError):
    """Every problem found, one per line, each prefixed with the file name.

    .errors holds the messages without the prefix ("mode (line 3): ..."), .source
    the file name (or "<string>", "command line")."""

    def __init__(self, errors: list[str] | str, source: str = "<string>"):
        self.errors = [errors] if isinstance(errors, str) else list(errors)
        self.source = str(source)
        super().__init__(str(self))

    def __str__(self) -> str:
        prefix = f"{self.source}: "
        # A message that already names this file (re-raised) is not prefixed twice.
        return "\n".join(e if e.startswith(prefix) else prefix + e for e in self.errors)


# -- the result -----------------------------------------------------------------------

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class ProtectConfig:
    ports: tuple[int, ...] = ()  # empty: every port


@dataclass(frozen=True)
class SecretConfig:
    file: str | None = None  # None: random 128-bit secret at start
    rotate_every: int = 600  # seconds


@dataclass(frozen=True)
class MetricsConfig:
    """listen "host:port" ("[v6]:port"); None disables metrics. host/port derived."""

    listen: str | None = DEFAULT_METRICS_LISTEN
    host: str | None = field(init=False, default=None)  # unbracketed, as bind() wants it
    port: int | None = field(init=False, default=None)

    def __post_init__(self):
        if not self.listen:
            object.__setattr__(self, "listen", None)
            return
        host, port = split_listen(self.listen)  # ValueError if invalid
        object.__setattr__(self, "host", host)
        object.__setattr__(self, "port", port)
        object.__setattr__(self, "listen", f"[{host}]:{port}" if ":" in host else f"{host}:{port}")

    @property
    def enabled(self) -> bool:
        return self.listen is not None


@dataclass(frozen=True)
class ControlConfig:
    socket: str = DEFAULT_CONTROL_SOCKET


@dataclass(frozen=True)
class LogConfig:
    format: str = "human"


@dataclass(frozen=True)
class DetectionConfig:
    """Attack detector knobs (synguard/detect.py explains the algorithm).

    Rates are SYN/s, durations int seconds; defaults tuned on tests/test_detect.py."""

    floor_pps: int = 2000  # volume floor: below it nothing is an attack
    baseline_multiple: float = 3.0  # volume gate: rate >= max(floor_pps, multiple x baseline)
    ewma_alpha: float = 0.05  # baseline EWMA weight per tick
    cusum_drift: float = 0.5  # NP-CUSUM allowance per tick (normalised gap units)
    cusum_threshold: float = 3.0  # NP-CUSUM alarm level
    clear_ticks: int = 5  # consecutive quiet ticks that end an attack
    hold: int = 60  # attacked ports stay protected this long after the end
    spoofed_distinct_ratio: float = 0.9  # distinct sources / SYNs at or above: spoofed ...
    spoofed_new_ratio: float = 0.5  # ... if new sources / distinct is at or above this too
    single_source_share: float = 0.5  # top source's share of SYNs at or above: single-source
    fast_trigger_pps: int = 100000  # in-kernel per-port ceiling (SYN/s); 0: off
    source_deny: int = 600  # how long a single-source attacker is denied


@dataclass(frozen=True)
class Config:
    interfaces: tuple[str, ...] = ()  # empty: `synguard run` requires -i
    mode: Mode = Mode.OBSERVE
    xdp_mode: str = "auto"
    protect: ProtectConfig = field(default_factory=ProtectConfig)
    allow: tuple[Network, ...] = ()
    deny: tuple[Network, ...] = ()
    secret: SecretConfig = field(default_factory=SecretConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    log: LogConfig = field(default_factory=LogConfig)
    detection: DetectionConfig = field(default_factory=DetectionConfig)
    # Not settings: what parse() wants the operator to know (REMOVED_KEYS found in the file).
    warnings: tuple[str, ...] = field(default=(), compare=False, metadata={"setting": False})

    def to_dict(self) -> dict:
        """The config file's shape, JSON-ready (CIDRs as strings, durations in
        seconds, disabled metrics as None); parse() of its YAML gives self back."""
        return _plain(self)


def _plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                if f.init and f.metadata.get("setting", True)}
    if isinstance(obj, tuple):
        return [_plain(x) for x in obj]
    if isinstance(obj, (ipaddress.IPv4Network, ipaddress.IPv6Network, Mode)):
        return str(obj)
    return obj


# -- values with their line numbers ---------------------------------------------------

class _Value:
    """One value to check, and the line it came from (None: not from a file)."""

    line: int | None = None
    problem: str | None = None  # why the value could not be read (kind "invalid")

    @property
    def kind(self) -> str:  # "null" "boolean" "integer" "float" "string" "list" "mapping" or other
        raise NotImplementedError

    def scalar(self) -> Any:
        raise NotImplementedError

    def literal_problem(self) -> str | None:
        """Why this integer's source text is surprising (octal, base 60...), if it is."""
        return None

    def items(self) -> list[_Value]:
        raise NotImplementedError

    def entries(self) -> list[tuple[Any, int | None, _Value]]:
        """(key, key line, value) of a mapping, in order, duplicates kept."""
        raise NotImplementedError


def _kind_of(obj: Any) -> str:
    if obj is None:
        return "null"
    if isinstance(obj, bool):
        return "boolean"
    if isinstance(obj, int):
        return "integer"
    if isinstance(obj, float):
        return "float"
    if isinstance(obj, str):
        return "string"
    if isinstance(obj, (list, tuple)):
        return "list"
    if isinstance(obj, dict):
        return "mapping"
    if isinstance(obj, bytes):
        return "binary"
    return type(obj).__name__  # date, datetime (YAML timestamps)


_DECIMAL = re.compile(r"[-+]?(0|[1-9][0-9]*)\Z")


class _NodeValue(_Value):
    """A YAML node: scalars are constructed on demand by PyYAML's safe constructor."""

    def __init__(self, node: yaml.Node, loader: yaml.SafeLoader):
        self.node = node
        self.loader = loader
        self.line = node.start_mark.line + 1
        self._obj: Any = None
        standard = {yaml.MappingNode: "tag:yaml.org,2002:map", yaml.SequenceNode: "tag:yaml.org,2002:seq"}
        if type(node) in standard and node.tag != standard[type(node)]:
            self.problem = f"unsupported tag {node.tag!r}"
        elif isinstance(node, yaml.ScalarNode):
            if node.tag == "tag:yaml.org,2002:int" and len(node.value) > INT_TEXT_MAX:
                self.problem = f"a number of {len(node.value)} characters, far out of range of every setting"
                return
            try:
                self._obj = loader.construct_object(node)
            except yaml.YAMLError as e:
                self.problem = str(getattr(e, "problem", None) or e)
            except (ValueError, OverflowError) as e:  # never a traceback for a scalar
                self.problem = f"unreadable {node.tag.rsplit(':', 1)[-1]}: {_short(str(e))}"
        elif isinstance(node, yaml.MappingNode):
            self.problem = _merge_problem(node)

    @property
    def kind(self) -> str:
        if self.problem:
            return "invalid"
        if isinstance(self.node, yaml.MappingNode):
            return "mapping"
        if isinstance(self.node, yaml.SequenceNode):
            return "list"
        return _kind_of(self._obj)

    def scalar(self) -> Any:
        return self._obj

    def literal_problem(self) -> str | None:
        text = self.node.value if isinstance(self.node, yaml.ScalarNode) else ""
        if self.kind == "integer" and self.node.style is None and not _DECIMAL.match(text.replace("_", "")):
            return f"{text!r} is not a plain decimal integer (YAML reads it as {self._obj}); write it in decimal"
        return None

    def items(self) -> list[_Value]:
        return [_NodeValue(n, self.loader) for n in self.node.value]

    def entries(self) -> list[tuple[Any, int | None, _Value]]:
        """Scalar keys as Python values; a list/mapping/unreadable key as its _Value."""
        self.loader.flatten_mapping(self.node)  # resolves "<<" merge keys in place
        out = []
        for knode, vnode in self.node.value:
            key = _NodeValue(knode, self.loader)
            out.append((key if key.kind in ("mapping", "list", "invalid") else key.scalar(),
                        key.line, _NodeValue(vnode, self.loader)))
        return out


class _PyValue(_Value):
    """A plain Python value (override() arguments); no line numbers."""

    def __init__(self, obj: Any):
        self.obj = obj

    @property
    def kind(self) -> str:
        return _kind_of(self.obj)

    def scalar(self) -> Any:
        return self.obj

    def items(self) -> list[_Value]:
        return [_PyValue(x) for x in self.obj]


def _where(path: str, line: int | None, msg: str) -> str:
    if path and line:
        return f"{path} (line {line}): {msg}"
    if path or line:
        return f"{path or f'line {line}'}: {msg}"
    return msg


class _Errors:
    def __init__(self):
        self._items: list[tuple[float, int, str]] = []
        self.warnings: list[str] = []  # REMOVED_KEYS found: not errors

    def add(self, path: str, line: int | None, msg: str) -> None:
        # sorted by line, then in the order found
        self._items.append((line if line is not None else float("inf"), len(self._items), _where(path, line, msg)))

    def warn(self, path: str, line: int | None, msg: str) -> None:
        self.warnings.append(_where(path, line, msg))

    def __bool__(self) -> bool:
        return bool(self._items)

    def messages(self, limit: int = 100) -> list[str]:
        """Sorted by line; past `limit` (a generated or mangled file) the rest is counted."""
        out = [t for _, _, t in sorted(self._items)]
        return out if len(out) <= limit else out[:limit] + [f"... and {len(out) - limit} more errors"]


_BAD = object()  # a checker found a problem (already reported)
Checker = Callable[[_Value, str, _Errors], Any]


def _short(text: str, limit: int = 60) -> str:
    """text, cut to limit characters (hostile values must not make kilobyte-long lines)."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _merge_problem(node: yaml.MappingNode) -> str | None:
    """Why node's "<<" merge keys must not be expanded, or None.

    Counts the keys the expansion would produce (each merged mapping once,
    memoised, so an alias bomb costs one visit per distinct node) before PyYAML
    copies anything; refuses merges of non-mappings, self-merges and deep chains."""
    sizes: dict[int, int | None] = {}  # id(node) -> keys once expanded; None while being counted

    def size(n: yaml.MappingNode, depth: int) -> int:
        if id(n) in sizes:
            if sizes[id(n)] is None:
                raise ValueError("a '<<' merge includes the mapping it is in")
            return sizes[id(n)]  # type: ignore[return-value]
        if depth > MERGE_DEPTH_MAX:
            raise ValueError(f"'<<' merges nested more than {MERGE_DEPTH_MAX} deep")
        sizes[id(n)] = None
        total = 0
        for knode, vnode in n.value:
            if knode.tag != "tag:yaml.org,2002:merge":
                total += 1
            else:
                subs = [vnode] if isinstance(vnode, yaml.MappingNode) else (
                    vnode.value if isinstance(vnode, yaml.SequenceNode) else None)
                if subs is None or not all(isinstance(sub, yaml.MappingNode) for sub in subs):
                    raise ValueError("'<<' (merge key) takes a mapping or a list of mappings")
                for sub in subs:
                    total += size(sub, depth + 1)
                    if total > MERGED_KEYS_MAX:
                        break
            if total > MERGED_KEYS_MAX:
                raise ValueError(f"'<<' merges expand this mapping past {MERGED_KEYS_MAX} keys "
                                 f"(a merge-key bomb?); refused unexpanded")
        sizes[id(n)] = total
        return total

    if not any(k.tag == "tag:yaml.org,2002:merge" for k, _ in node.value):
        return None
    try:
        size(node, 0)
    except ValueError as e:
        return str(e)
    return None


def _describe(v: _Value) -> str:
    kind = v.kind
    if kind == "invalid":
        return f"an unreadable value ({v.problem})"
    if kind in ("mapping", "list"):
        return f"a {kind}"
    if kind == "null":
        return "nothing (null)"
    val = v.scalar()
    if kind == "boolean":
        return f"boolean {str(val).lower()} (YAML reads yes/no/on/off/true/false as booleans; quote it)"
    if kind == "string":
        return f"string {_short(repr(val))}"
    return f"{kind} {_short(repr(val))}" if kind in ("integer", "float") else f"a {kind}"


def _expect(v: _Value, kinds: tuple[str, ...], path: str, errs: _Errors, what: str) -> bool:
    if v.kind == "invalid":
        errs.add(path, v.line, f"cannot read value: {v.problem}")
        return False
    if v.kind not in kinds:
        errs.add(path, v.line, f"expected {what}, got {_describe(v)}")
        return False
    return True


def _suggest(word: str, choices: tuple[str, ...] | list[str]) -> str:
    close = difflib.get_close_matches(word.lower(), [c.lower() for c in choices], n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


# -- checkers: (value, key path, errors) -> checked value or _BAD -----------------------

def _choice(options: tuple[str, ...], convert: Callable[[str], Any] = str) -> Checker:
    def check(v: _Value, path: str, errs: _Errors) -> Any:
        listing = ", ".join(options)
        if not _expect(v, ("string",), path, errs, f"one of {listing}"):
            return _BAD
        s = v.scalar()
        if s not in options:
            errs.add(path, v.line, f"{s!r} is not one of {listing}{_suggest(s, options)}")
            return _BAD
        return convert(s)
    return check


def _integer(v: _Value, path: str, errs: _Errors, what: str) -> Any:
    if not _expect(v, ("integer",), path, errs, what):
        return _BAD
    problem = v.literal_problem()
    if problem:
        errs.add(path, v.line, problem)
        return _BAD
    return v.scalar()


_DURATION = re.compile(r"(?:([0-9]+)d)?(?:([0-9]+)h)?(?:([0-9]+)m)?(?:([0-9]+)s)?\Z")


def parse_duration(value: int | str) -> int:
    """90 / "90" / "90s" / "10m" / "1h" / "2d" / "1h30m" -> seconds (> 0). ValueError otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"expected seconds or a duration like 90s, 10m, 1h30m, got {value!r}")
    if isinstance(value, int):
        seconds = value
    elif len(value) > INT_TEXT_MAX:
        raise ValueError(f"invalid duration {_short(repr(value))}: far too long")
    elif value.isdigit() and value.isascii():
        seconds = int(value)
    else:
        m = _DURATION.match(value)
        if not value or not m or not any(m.groups()):
            raise ValueError(f"invalid duration {value!r}: use seconds or e.g. 90s, 10m, 1h, 2d, 1h30m")
        d, h, mi, s = (int(g or 0) for g in m.groups())
        seconds = ((d * 24 + h) * 60 + mi) * 60 + s
    if seconds <= 0:
        raise ValueError(f"duration must be positive, got {value!r}")
    return seconds


def format_duration(seconds: int) -> str:
    """3600 -> "1h", 5400 -> "1h30m", 90 -> "1m30s" (parse_duration's inverse)."""
    out = ""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            out += f"{seconds // size}{unit}"
            seconds %= size
    return out or "0s"


def _duration(min_s: int = 1, min_why: str = "", max_s: int = DURATION_MAX_S) -> Checker:
    def check(v: _Value, path: str, errs: _Errors) -> Any:
        if not _expect(v, ("integer", "string"), path, errs, "a duration (seconds, or e.g. 90s, 10m, 1h30m)"):
            return _BAD
        if v.kind == "integer" and _integer(v, path, errs, "") is _BAD:
            return _BAD
        try:
            seconds = parse_duration(v.scalar())
        except ValueError as e:
            errs.add(path, v.line, str(e))
            return _BAD
        if seconds < min_s:
            errs.add(path, v.line, f"{format_duration(seconds)} is below the minimum {format_duration(min_s)}{min_why}")
            return _BAD
        if seconds > max_s:
            errs.add(path, v.line, f"{format_duration(seconds)} is above the maximum {format_duration(max_s)}")
            return _BAD
        return seconds
    return check


def _list_of(item: Checker, what: str, max_items: int | None = None, sort: bool = False) -> Checker:
    """A list (null: empty) of items; a repeated item is an error naming the first."""

    def check(v: _Value, path: str, errs: _Errors) -> Any:
        if v.kind == "null":
            return ()
        if not _expect(v, ("list",), path, errs, f"a list of {what}"):
            return _BAD
        out, seen, bad = [], {}, False
        items = v.items()
        if max_items is not None and len(items) > max_items:
            errs.add(path, v.line, f"{len(items)} entries; the data path holds at most {max_items}")
            bad = True
        for i, iv in enumerate(items):
            ipath = f"{path}[{i}]"
            got = item(iv, ipath, errs)
            if got is _BAD:
                bad = True
                continue
            if got in seen:
                first_path, first_line = seen[got]
                errs.add(ipath, iv.line, f"{got} listed twice (first at {first_path}"
                         + (f", line {first_line})" if first_line else ")"))
                bad = True
                continue
            seen[got] = (ipath, iv.line)
            out.append(got)
        if bad:
            return _BAD
        return tuple(sorted(out)) if sort else tuple(out)
    return check


def _port(v: _Value, path: str, errs: _Errors) -> Any:
    p = _integer(v, path, errs, "a port number 1-65535")
    if p is _BAD:
        return _BAD
    if not 1 <= p <= 65535:
        errs.add(path, v.line, f"port {p} out of range 1-65535")
        return _BAD
    return p


def _int_range(lo: int, hi: int, what: str) -> Checker:
    """A decimal integer lo..hi."""
    def check(v: _Value, path: str, errs: _Errors) -> Any:
        n = _integer(v, path, errs, f"an integer {lo}-{hi}{what}")
        if n is _BAD:
            return _BAD
        if not lo <= n <= hi:
            errs.add(path, v.line, f"{n} out of range {lo}-{hi}{what}")
            return _BAD
        return n
    return check


def _number(lo: float, hi: float, lo_open: bool = False) -> Checker:
    """A finite number (integer or float) in [lo, hi], or (lo, hi] if lo_open; kept as a float."""
    shown = f"{'>' if lo_open else '>='} {lo:g} and <= {hi:g}"

    def check(v: _Value, path: str, errs: _Errors) -> Any:
        if not _expect(v, ("integer", "float"), path, errs, f"a number {shown}"):
            return _BAD
        if v.kind == "integer" and _integer(v, path, errs, "") is _BAD:
            return _BAD
        n = v.scalar()
        if v.kind == "float" and not math.isfinite(n):
            errs.add(path, v.line, f"{n} is not a finite number")
            return _BAD
        if n < lo or n > hi or (lo_open and n == lo):  # compared before float(): a huge int would overflow
            errs.add(path, v.line, f"{n if v.kind == 'integer' else format(n, 'g')} out of range: must be {shown}")
            return _BAD
        return float(n)
    return check


def _interface(v: _Value, path: str, errs: _Errors) -> Any:
    if not _expect(v, ("string",), path, errs, "an interface name"):
        return _BAD
    name = v.scalar()
    # The kernel's dev_valid_name(): 1-15 bytes, not "." or "..", no '/', ':' or whitespace.
    if not name or len(name.encode()) > IFNAME_MAX:
        errs.add(path, v.line, f"interface name {name!r} must be 1-{IFNAME_MAX} characters")
    elif name in (".", "..") or any(c in "/:" or c.isspace() for c in name):
        errs.add(path, v.line, f"interface name {name!r} may not contain '/', ':' or whitespace, nor be '.' or '..'")
    else:
        return name
    return _BAD


def _cidr(v: _Value, path: str, errs: _Errors) -> Any:
    if not _expect(v, ("string",), path, errs, "a CIDR like 192.0.2.0/24 or 2001:db8::/32"):
        return _BAD
    text = v.scalar()
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as e:
        try:
            net = ipaddress.ip_network(text, strict=False)
        except ValueError:
            errs.add(path, v.line, f"{text!r} is not an IPv4/IPv6 network ({e}); write e.g. 192.0.2.0/24 or 2001:db8::/32")
        else:
            errs.add(path, v.line, f"{text!r} has host bits set; did you mean {str(net)!r}?")
        return _BAD


def _abs_path(what: str, nullable: bool = False, max_bytes: int | None = None) -> Checker:
    def check(v: _Value, path: str, errs: _Errors) -> Any:
        if nullable and v.kind == "null":
            return None
        if not _expect(v, ("string",), path, errs, f"the absolute path of {what}" + (" or null" if nullable else "")):
            return _BAD
        p = v.scalar()
        if not p.startswith("/"):
            errs.add(path, v.line, f"{p!r} is not an absolute path")
            return _BAD
        if "\0" in p:
            errs.add(path, v.line, "path contains a NUL character")
            return _BAD
        if max_bytes is not None and len(p.encode()) > max_bytes:
            errs.add(path, v.line, f"path is {len(p.encode())} bytes; a unix socket path holds at most {max_bytes}")
            return _BAD
        return p
    return check


_HOSTNAME = re.compile(r"(?=.{1,253}\Z)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                       r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?\Z")


def split_listen(text: str) -> tuple[str, int]:
    """"127.0.0.1:9046" -> ("127.0.0.1", 9046); "[::1]:9046" -> ("::1", 9046).

    Host: an IPv4 address, a bracketed IPv6 address or a host name. ValueError otherwise."""
    hint = "write HOST:PORT, e.g. 127.0.0.1:9046, [::1]:9046, 0.0.0.0:9046 (every IPv4 address) or [::]:9046"
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"{text!r}: {hint}")
        port_s = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{text!r}: {host!r} in brackets is not an IPv6 address") from None
    else:
        host, sep, port_s = text.rpartition(":")
        if not sep:
            raise ValueError(f"{text!r}: no port; {hint}")
        if ":" in host:
            raise ValueError(f"{text!r}: an IPv6 address goes in brackets: [{host}]:{port_s}")
        if not host:
            raise ValueError(f"{text!r}: no host; {hint}")
        if re.fullmatch(r"[0-9.]+", host):
            try:
                ipaddress.IPv4Address(host)
            except ValueError:
                raise ValueError(f"{text!r}: {host!r} is not an IPv4 address") from None
        elif not _HOSTNAME.match(host):
            raise ValueError(f"{text!r}: {host!r} is not an IP address or host name")
    if not (port_s.isascii() and port_s.isdigit()) or not 1 <= int(port_s) <= 65535:
        raise ValueError(f"{text!r}: port {port_s!r} is not a number 1-65535")
    return host, int(port_s)


def _listen(v: _Value, path: str, errs: _Errors) -> Any:
    if v.kind == "null" or (v.kind == "string" and v.scalar() == ""):
        return None  # metrics off
    if not _expect(v, ("string",), path, errs, 'a "host:port" string, or "" / null to disable metrics'):
        return _BAD
    try:
        split_listen(v.scalar())
    except ValueError as e:
        errs.add(path, v.line, str(e))
        return _BAD
    return v.scalar()


def _section(cls: type, keys: dict[str, Checker],
             post: Callable[[dict, dict, str, _Errors], None] | None = None) -> Checker:
    """A mapping (null: all defaults) whose keys are cls's fields, each checked by keys[name]."""

    def check(v: _Value, path: str, errs: _Errors) -> Any:
        if v.kind == "null":
            return cls()
        if not _expect(v, ("mapping",), path, errs, f"a mapping with keys {', '.join(keys)}"):
            return _BAD
        got: dict[str, Any] = {}
        raw: dict[str, _Value] = {}
        seen: dict[str, int | None] = {}
        for key, kline, val in v.entries():
            if not isinstance(key, str):
                shown = _describe(key if isinstance(key, _Value) else _PyValue(key))
                errs.add(path, kline, f"keys must be strings, got {shown}")
                continue
            kpath = f"{path}.{key}" if path else key
            if key in seen:
                errs.add(kpath, kline, f"duplicate key (first at line {seen[key]})" if seen[key] else "duplicate key")
                continue
            seen[key] = kline
            if key not in keys and kpath in REMOVED_KEYS:
                errs.warn(kpath, kline, REMOVED_KEYS[kpath])
                continue
            if key not in keys:
                hint = _suggest(key, list(keys)) or f"; valid keys{' under ' + path if path else ''}: {', '.join(keys)}"
                errs.add(kpath, kline, f"unknown key {key!r}{hint}")
                continue
            out = keys[key](val, kpath, errs)
            if out is not _BAD:
                got[key] = out
                raw[key] = val
        if post:
            post(got, raw, path, errs)
        return cls(**got)
    check.keys = keys  # type: ignore[attr-defined]  # for schema_keys()
    return check


def _allow_deny_disjoint(got: dict, raw: dict, path: str, errs: _Errors) -> None:
    """The same network in allow and deny is a contradiction (overlaps are fine: longest prefix wins)."""
    if not got.get("allow") or not got.get("deny"):
        return
    allowed = {net: i for i, net in enumerate(got["allow"])}
    for i, (net, iv) in enumerate(zip(got["deny"], raw["deny"].items())):
        if net in allowed:
            errs.add(f"deny[{i}]", iv.line, f"{net} is also in allow[{allowed[net]}]; keep it in one list")


def _detection_consistent(got: dict, raw: dict, path: str, errs: _Errors) -> None:
    """A per-port kernel ceiling under the volume floor would fire on traffic the detector calls normal."""
    d = DetectionConfig()
    floor = got.get("floor_pps", d.floor_pps)
    fast = got.get("fast_trigger_pps", d.fast_trigger_pps)
    if fast and fast < floor:
        key = "fast_trigger_pps" if "fast_trigger_pps" in raw else "floor_pps"
        if key in raw:
            errs.add(f"{path}.{key}", raw[key].line,
                     f"fast_trigger_pps ({fast}) is below floor_pps ({floor}): the kernel ceiling would fire on "
                     "traffic the detector calls normal; raise it or set it to 0 (off)")


# -- the schema: one entry per key ------------------------------------------------------

_PROTECT_KEYS: dict[str, Checker] = {
    "ports": _list_of(_port, "ports 1-65535", sort=True),
}

# Keys earlier versions accepted that no longer mean anything -> why, in one line.
# A warning, not an error: an upgraded host keeps the operator's edited conffile, and
# an error there would fail the unit's ExecStartPre check and leave the host without
# any protection over a key whose removal changes nothing it does.
REMOVED_KEYS: dict[str, str] = {
    "protect.allow_ttl": "removed with the RST challenge (no source is remembered any more: every new "
                         "connection completes through its own SYN cookie); ignored, delete the line",
}
_SECRET_KEYS: dict[str, Checker] = {
    "file": _abs_path("a secret file", nullable=True),
    "rotate_every": _duration(ROTATE_MIN_S, " (cookies stay valid for ~32 s after a rotation; "
                              "rotating faster would invalidate cookies still in flight)"),
}
_CIDRS = _list_of(_cidr, "CIDRs", max_items=abi.CIDR_SIZE)
PPS_MAX = 1_000_000_000  # far above any NIC's SYN rate
U32_MAX = 2**32 - 1
_DETECTION_KEYS: dict[str, Checker] = {
    "floor_pps": _int_range(1, PPS_MAX, " SYN/s"),
    "baseline_multiple": _number(1.0, 1000.0),
    "ewma_alpha": _number(0.0, 1.0, lo_open=True),
    "cusum_drift": _number(0.0, 1000.0),
    "cusum_threshold": _number(0.0, 1e6, lo_open=True),
    "clear_ticks": _int_range(1, 3600, " ticks"),
    "hold": _duration(),
    "spoofed_distinct_ratio": _number(0.0, 1.0, lo_open=True),
    "spoofed_new_ratio": _number(0.0, 1.0),
    "single_source_share": _number(0.0, 1.0, lo_open=True),
    "fast_trigger_pps": _int_range(0, U32_MAX, " SYN/s (0: off)"),
    "source_deny": _duration(),
}

_CONFIG_KEYS: dict[str, Checker] = {
    "interfaces": _list_of(_interface, "interface names"),
    "mode": _choice(Mode.labels(), Mode.parse),
    "xdp_mode": _choice(XDP_MODES),
    "protect": _section(ProtectConfig, _PROTECT_KEYS),
    "allow": _CIDRS,
    "deny": _CIDRS,
    "secret": _section(SecretConfig, _SECRET_KEYS),
    "metrics": _section(MetricsConfig, {"listen": _listen}),
    "control": _section(ControlConfig, {"socket": _abs_path("the control socket", max_bytes=SUN_PATH_MAX)}),
    "log": _section(LogConfig, {"format": _choice(LOG_FORMATS)}),
    "detection": _section(DetectionConfig, _DETECTION_KEYS, post=_detection_consistent),
}
_check_config = _section(Config, _CONFIG_KEYS, post=_allow_deny_disjoint)


def schema_keys(keys: dict[str, Checker] = _CONFIG_KEYS, prefix: str = "") -> list[str]:
    """Every key path the file accepts ("mode", "protect.ports", ...), for docs and tests."""
    out = []
    for key, checker in keys.items():
        sub = getattr(checker, "keys", None)
        out += schema_keys(sub, f"{prefix}{key}.") if sub else [prefix + key]
    return out


# -- API -------------------------------------------------------------------------------

DEFAULTS = Config()


def parse(text: str, source: str = "<string>") -> Config:
    """YAML text -> Config, or ConfigError with every problem found."""
    loader = None
    try:
        loader = yaml.SafeLoader(text)
        root = loader.get_single_node()
    except RecursionError:
        raise ConfigError(["not valid YAML for a config: nested too deeply"], source) from None
    except yaml.MarkedYAMLError as e:
        raise ConfigError([_yaml_problem(e)], source) from None
    except yaml.reader.ReaderError as e:
        raise ConfigError([f"not valid YAML: character #x{e.character:04x} at offset {e.position} "
                           f"is not allowed ({e.reason})"], source) from None
    except yaml.YAMLError as e:
        raise ConfigError([f"not valid YAML: {str(e).splitlines()[0]}"], source) from None
    finally:
        if loader is not None:
            loader.dispose()
    if root is None:  # empty, or only comments
        return Config()
    top = _NodeValue(root, loader)
    if top.kind == "null":  # "---" or "~" alone: as empty
        return Config()
    if top.kind != "mapping":
        raise ConfigError([f"line {top.line}: the top level must be a mapping of keys "
                           f"({', '.join(_CONFIG_KEYS)}), got {_describe(top)}"], source)
    errs = _Errors()
    cfg = _check_config(top, "", errs)
    if errs:
        raise ConfigError(errs.messages(), source)
    return dataclasses.replace(cfg, warnings=tuple(errs.warnings)) if errs.warnings else cfg


def _yaml_problem(e: yaml.MarkedYAMLError) -> str:
    mark = e.problem_mark or e.context_mark
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    msg = e.problem or e.context or "syntax error"
    if e.problem and e.context:
        at = f" at line {e.context_mark.line + 1}" if e.context_mark else ""
        # PyYAML splits sentences: context "expected a single document", problem "but found another"
        msg = f"{e.context}{at}, {e.problem}" if e.problem.startswith("but ") else f"{e.problem} ({e.context}{at})"
    return f"{where}not valid YAML: {msg}"


def load(path: str | os.PathLike = DEFAULT_PATH) -> Config:
    """Read and parse a config file; unreadable files are a one-line ConfigError.

    Only a regular file is read (a FIFO or a device is refused, never waited on:
    opened non-blocking, checked on the fd), and at most FILE_MAX_BYTES of it."""
    source = os.fspath(path)
    try:
        fd = os.open(source, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except FileNotFoundError:
        raise ConfigError(["no such file"], source) from None
    except PermissionError:
        raise ConfigError([f"permission denied (running as uid {os.geteuid()})"], source) from None
    except OSError as e:
        raise ConfigError([f"cannot read: {e.strerror or e}"], source) from None
    too_big = f"larger than {FILE_MAX_BYTES // 1024} KiB: not a synguard config"
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise ConfigError(["is a directory, not a config file"], source)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(["is not a regular file (a FIFO, device or socket): give a config file"], source)
        if st.st_size > FILE_MAX_BYTES:
            raise ConfigError([too_big], source)
        chunks, size = [], 0
        while size <= FILE_MAX_BYTES:
            chunk = os.read(fd, FILE_MAX_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > FILE_MAX_BYTES:  # grew while we read
            raise ConfigError([too_big], source)
        data = b"".join(chunks)
    except OSError as e:
        raise ConfigError([f"cannot read: {e.strerror or e}"], source) from None
    finally:
        os.close(fd)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError([f"not YAML: not UTF-8 text (bad byte at offset {e.start})"], source) from None
    return parse(text, source)


# override() keyword -> (flag of `synguard run`, section or None for top level, key)
_OVERRIDES: dict[str, tuple[str, str | None, str]] = {
    "interfaces": ("--interface", None, "interfaces"),
    "mode": ("--mode", None, "mode"),
    "xdp_mode": ("--xdp-mode", None, "xdp_mode"),
    "ports": ("--ports", "protect", "ports"),
    "metrics_listen": ("--metrics-listen", "metrics", "listen"),  # "" disables metrics
    "control_socket": ("--control-socket", "control", "socket"),
    "log_format": ("--log-format", "log", "format"),
}


def override(cfg: Config, *, interfaces=None, mode=None, ports=None, xdp_mode=None,
             metrics_listen=None, control_socket=None, log_format=None) -> Config:
    """cfg with `synguard run` flags applied (None = keep), checked like the file.

    Errors name the flag: ConfigError(source="command line")."""
    given = dict(interfaces=interfaces, mode=mode, ports=ports, xdp_mode=xdp_mode,
                 metrics_listen=metrics_listen, control_socket=control_socket, log_format=log_format)
    errs = _Errors()
    top: dict[str, Any] = {}
    sections: dict[str, dict[str, Any]] = {}
    for name, value in given.items():
        if value is None:
            continue
        flag, section, key = _OVERRIDES[name]
        checker = _CONFIG_KEYS[section].keys[key] if section else _CONFIG_KEYS[key]  # type: ignore[attr-defined]
        got = checker(_PyValue(value), flag, errs)
        if got is not _BAD:
            (sections.setdefault(section, {}) if section else top)[key] = got
    if errs:
        raise ConfigError(errs.messages(), "command line")
    for section, changes in sections.items():
        top[section] = dataclasses.replace(getattr(cfg, section), **changes)
    return dataclasses.replace(cfg, **top)
