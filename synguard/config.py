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

How it works: the section dataclasses below are the schema. Each key is one field
holding its default, its checker and (in a comment) its meaning; a new key is one
such line (+ its entry in config/synguard.yaml, which tests/test_config.py checks
against schema_keys(), + README's table). yaml.compose() gives the node tree with
line numbers; the checkers walk it only as deep as the schema goes (alias bombs
cost nothing) and build the dataclasses.

Why not a validation library (Debian 12 has python3-jsonschema 4.10, -pydantic 1.10,
-voluptuous 0.12, -cerberus 1.3, -schema 0.7, -strictyaml 1.6; checked 2026-11): all
but strictyaml validate the dict yaml.safe_load() already built, and by then what
this file must catch is gone: 0443 is port 291, 0x10 and 1:30 are integers, the
second of two "mode:" keys silently won, a 5,001-digit number has been converted
and a "<<" merge bomb expanded; nor do they know any line numbers. jsonschema takes
2000.0 as a port, pydantic true and 2000.0; their messages ("70000 is greater than
the maximum of 65535") would each need a rewrite to the ones the docs and tests
promise, as would "did you mean". strictyaml keeps lines but stops at the first
error and refuses flow style ({ports: [80]}). A library would keep every checker
here and add a node -> dict -> key path -> line translation around it.
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
PPS_MAX = 1_000_000_000  # far above any NIC's SYN rate
U32_MAX = 2**32 - 1
# Hostile input bounds. A config is a few KiB; load() reads at most this much.
FILE_MAX_BYTES = 1 << 20
# No setting takes a number near this long ("18_446_744_073_709_551_615" is 26):
# longer integer literals are refused unread (int() of 5,001 digits is a ValueError).
INT_TEXT_MAX = 40
# "<<" merge keys are expanded by copying (PyYAML's flatten_mapping): a 419-byte
# file could ask for billions of copies. A mapping may expand to this many keys.
MERGED_KEYS_MAX = 1000
MERGE_DEPTH_MAX = 32

# Keys earlier versions accepted that no longer mean anything -> why, in one line.
# A warning, not an error: an upgraded host keeps the operator's edited conffile, and
# an error there would fail the unit's ExecStartPre check and leave the host without
# any protection over a key whose removal changes nothing it does.
REMOVED_KEYS: dict[str, str] = {
    "protect.allow_ttl": "removed with the RST challenge (no source is remembered any more: every new "
                         "connection completes through its own SYN cookie); ignored, delete the line",
}


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


# -- values with their line numbers, and the errors found in them ----------------------

_KINDS = ((type(None), "null"), (bool, "boolean"), (int, "integer"), (float, "float"), (str, "string"),
          ((list, tuple), "list"), (dict, "mapping"), (bytes, "binary"))  # bool before int
_DECIMAL = re.compile(r"[-+]?(0|[1-9][0-9]*)\Z")
_MERGE_TAG = "tag:yaml.org,2002:merge"
_COLLECTION_TAGS = {yaml.MappingNode: "tag:yaml.org,2002:map", yaml.SequenceNode: "tag:yaml.org,2002:seq"}


class _Value:
    """One value to check: a YAML node with its line, or (override()) a Python value, line None.

    .kind: "null" "boolean" "integer" "float" "string" "list" "mapping" "invalid" (see
    .problem), or another type name (date, binary). A node's scalar is built by PyYAML's
    safe constructor here; its children only when a checker asks (items(), entries())."""

    def __init__(self, obj: Any = None, node: yaml.Node | None = None, loader: yaml.SafeLoader | None = None):
        self.obj, self.node, self.loader = obj, node, loader
        self.line = None if node is None else node.start_mark.line + 1
        self.problem = None if node is None else self._read(node)  # why it cannot be read
        self.kind = ("invalid" if self.problem else "mapping" if isinstance(node, yaml.MappingNode)
                     else "list" if isinstance(node, yaml.SequenceNode)
                     else next((k for t, k in _KINDS if isinstance(self.obj, t)), type(self.obj).__name__))

    def _read(self, node: yaml.Node) -> str | None:
        """Why node cannot be read, or None; a scalar's value goes to .obj."""
        if type(node) in _COLLECTION_TAGS and node.tag != _COLLECTION_TAGS[type(node)]:
            return f"unsupported tag {node.tag!r}"
        if isinstance(node, yaml.MappingNode):
            return _merge_problem(node)
        if isinstance(node, yaml.SequenceNode):
            return None
        if node.tag == "tag:yaml.org,2002:int" and len(node.value) > INT_TEXT_MAX:
            return f"a number of {len(node.value)} characters, far out of range of every setting"
        try:
            self.obj = self.loader.construct_object(node)
        except yaml.YAMLError as e:
            return str(getattr(e, "problem", None) or e)
        except (ValueError, OverflowError) as e:  # never a traceback for a scalar
            return f"unreadable {node.tag.rsplit(':', 1)[-1]}: {_short(str(e))}"
        return None

    def items(self) -> list[_Value]:
        if self.node is None:
            return [_Value(x) for x in self.obj]
        return [_Value(node=n, loader=self.loader) for n in self.node.value]

    def entries(self) -> list[tuple[_Value, _Value]]:
        """(key, value) of a mapping node, in order, duplicates kept."""
        self.loader.flatten_mapping(self.node)  # resolves "<<" merge keys in place
        return [(_Value(node=k, loader=self.loader), _Value(node=v, loader=self.loader)) for k, v in self.node.value]


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
            if knode.tag != _MERGE_TAG:
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

    try:
        if any(k.tag == _MERGE_TAG for k, _ in node.value):
            size(node, 0)
    except ValueError as e:
        return str(e)
    return None


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


def _short(text: str, limit: int = 60) -> str:
    """text, cut to limit characters (hostile values must not make kilobyte-long lines)."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _describe(v: _Value) -> str:
    if v.kind == "invalid":
        return f"an unreadable value ({v.problem})"
    if v.kind == "null":
        return "nothing (null)"
    if v.kind == "boolean":
        return f"boolean {str(v.obj).lower()} (YAML reads yes/no/on/off/true/false as booleans; quote it)"
    if v.kind in ("string", "integer", "float"):
        return f"{v.kind} {_short(repr(v.obj))}"
    return f"a {v.kind}"  # mapping, list, date, ...


def _suggest(word: str, choices: tuple[str, ...] | list[str]) -> str:
    close = difflib.get_close_matches(word.lower(), [c.lower() for c in choices], n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


# -- checkers --------------------------------------------------------------------------
# A Checker is check(value, key path, errors) -> the checked value, or _BAD once the
# problems are in errors. Written as f(value, path, errors) -> value that raises
# ValueError("what is wrong") and wrapped by @_checker (as argparse's type= functions):
# a scalar's checker has one error at most; lists and sections report their items'.

_BAD = object()
Checker = Callable[[_Value, str, _Errors], Any]


def _checker(check: Callable[..., Any]) -> Checker:
    def run(v: _Value, path: str, errs: _Errors) -> Any:
        try:
            return check(v, path, errs)
        except ValueError as e:
            errs.add(path, v.line, str(e))
            return _BAD
    return run


def _expect(v: _Value, kinds: tuple[str, ...], what: str) -> Any:
    """v's value if it is of one of kinds (and an integer is written in decimal); else ValueError."""
    if v.kind == "invalid":
        raise ValueError(f"cannot read value: {v.problem}")
    if v.kind not in kinds:
        raise ValueError(f"expected {what}, got {_describe(v)}")
    if v.kind == "integer" and v.node is not None and v.node.style is None:  # unquoted, in a file
        text = v.node.value
        if not _DECIMAL.match(text.replace("_", "")):  # YAML 1.1 octal, hex, base 60: 0443 is port 291
            raise ValueError(f"{text!r} is not a plain decimal integer (YAML reads it as {v.obj}); write it in decimal")
    return v.obj


def _choice(options: tuple[str, ...], convert: Callable[[str], Any] = str) -> Checker:
    listing = ", ".join(options)

    @_checker
    def check(v: _Value, *_) -> Any:
        s = _expect(v, ("string",), f"one of {listing}")
        if s not in options:
            raise ValueError(f"{s!r} is not one of {listing}{_suggest(s, options)}")
        return convert(s)
    return check


def _int_range(lo: int, hi: int, unit: str = "", name: str = "") -> Checker:
    """A decimal integer lo..hi; name: what one is ("port")."""
    what = f"a {name} number {lo}-{hi}{unit}" if name else f"an integer {lo}-{hi}{unit}"

    @_checker
    def check(v: _Value, *_) -> Any:
        n = _expect(v, ("integer",), what)
        if not lo <= n <= hi:
            raise ValueError((f"{name} " if name else "") + f"{n} out of range {lo}-{hi}{unit}")
        return n
    return check


def _number(lo: float, hi: float, lo_open: bool = False) -> Checker:
    """A finite number (integer or float) in [lo, hi], or (lo, hi] if lo_open; kept as a float."""
    shown = f"{'>' if lo_open else '>='} {lo:g} and <= {hi:g}"

    @_checker
    def check(v: _Value, *_) -> Any:
        n = _expect(v, ("integer", "float"), f"a number {shown}")
        if v.kind == "float" and not math.isfinite(n):
            raise ValueError(f"{n} is not a finite number")
        if n < lo or n > hi or (lo_open and n == lo):  # compared before float(): a huge int would overflow
            raise ValueError(f"{n if v.kind == 'integer' else format(n, 'g')} out of range: must be {shown}")
        return float(n)
    return check


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
    @_checker
    def check(v: _Value, *_) -> Any:
        seconds = parse_duration(_expect(v, ("integer", "string"), "a duration (seconds, or e.g. 90s, 10m, 1h30m)"))
        if seconds < min_s:
            raise ValueError(f"{format_duration(seconds)} is below the minimum {format_duration(min_s)}{min_why}")
        if seconds > max_s:
            raise ValueError(f"{format_duration(seconds)} is above the maximum {format_duration(max_s)}")
        return seconds
    return check


def _list_of(item: Checker, what: str, max_items: int | None = None, sort: bool = False) -> Checker:
    """A list (null: empty) of items; a repeated item is an error naming the first."""

    @_checker
    def check(v: _Value, path: str, errs: _Errors) -> Any:
        if v.kind == "null":
            return ()
        _expect(v, ("list",), f"a list of {what}")
        out, seen, bad = [], {}, False
        items = v.items()
        if max_items is not None and len(items) > max_items:
            errs.add(path, v.line, f"{len(items)} entries; the data path holds at most {max_items}")
            bad = True
        for i, iv in enumerate(items):
            ipath = f"{path}[{i}]"
            got = item(iv, ipath, errs)
            if got is not _BAD and got in seen:
                first_path, first_line = seen[got]
                errs.add(ipath, iv.line, f"{got} listed twice (first at {first_path}"
                         + (f", line {first_line})" if first_line else ")"))
                got = _BAD
            if got is _BAD:
                bad = True
            else:
                seen[got] = (ipath, iv.line)
                out.append(got)
        return _BAD if bad else tuple(sorted(out)) if sort else tuple(out)
    return check


@_checker
def _interface(v: _Value, *_) -> Any:
    name = _expect(v, ("string",), "an interface name")
    # The kernel's dev_valid_name(): 1-15 bytes, not "." or "..", no '/', ':' or whitespace.
    if not name or len(name.encode()) > IFNAME_MAX:
        raise ValueError(f"interface name {name!r} must be 1-{IFNAME_MAX} characters")
    if name in (".", "..") or any(c in "/:" or c.isspace() for c in name):
        raise ValueError(f"interface name {name!r} may not contain '/', ':' or whitespace, nor be '.' or '..'")
    return name


@_checker
def _cidr(v: _Value, *_) -> Any:
    text = _expect(v, ("string",), "a CIDR like 192.0.2.0/24 or 2001:db8::/32")
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as e:
        try:
            net = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise ValueError(f"{text!r} is not an IPv4/IPv6 network ({e}); "
                             "write e.g. 192.0.2.0/24 or 2001:db8::/32") from None
        raise ValueError(f"{text!r} has host bits set; did you mean {str(net)!r}?") from None


def _abs_path(what: str, nullable: bool = False, max_bytes: int | None = None) -> Checker:
    @_checker
    def check(v: _Value, *_) -> Any:
        if nullable and v.kind == "null":
            return None
        p = _expect(v, ("string",), f"the absolute path of {what}" + (" or null" if nullable else ""))
        if not p.startswith("/"):
            raise ValueError(f"{p!r} is not an absolute path")
        if "\0" in p:
            raise ValueError("path contains a NUL character")
        if max_bytes is not None and len(p.encode()) > max_bytes:
            raise ValueError(f"path is {len(p.encode())} bytes; a unix socket path holds at most {max_bytes}")
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


@_checker
def _listen(v: _Value, *_) -> Any:
    if v.kind == "null" or (v.kind == "string" and v.obj == ""):
        return None  # metrics off
    text = _expect(v, ("string",), 'a "host:port" string, or "" / null to disable metrics')
    split_listen(text)  # its ValueError says what is wrong
    return text


def _section(cls: type) -> Checker:
    """A mapping (null: all defaults) whose keys are cls's fields with a checker; then cls._cross_check, if any."""
    keys: dict[str, Checker] = {f.name: f.metadata["check"] for f in dataclasses.fields(cls) if "check" in f.metadata}

    @_checker
    def check(v: _Value, path: str, errs: _Errors) -> Any:
        if v.kind == "null":
            return cls()
        _expect(v, ("mapping",), f"a mapping with keys {', '.join(keys)}")
        got: dict[str, Any] = {}
        raw: dict[str, _Value] = {}
        seen: dict[str, int | None] = {}
        for kv, val in v.entries():
            key = kv.obj
            if kv.kind != "string":
                errs.add(path, kv.line, f"keys must be strings, got {_describe(kv)}")
                continue
            kpath = f"{path}.{key}" if path else key
            if key in seen:
                errs.add(kpath, kv.line, f"duplicate key (first at line {seen[key]})" if seen[key] else "duplicate key")
            elif key not in keys and kpath in REMOVED_KEYS:
                errs.warn(kpath, kv.line, REMOVED_KEYS[kpath])
            elif key not in keys:
                hint = _suggest(key, list(keys)) or f"; valid keys{' under ' + path if path else ''}: {', '.join(keys)}"
                errs.add(kpath, kv.line, f"unknown key {key!r}{hint}")
            elif (out := keys[key](val, kpath, errs)) is not _BAD:
                got[key], raw[key] = out, val
            seen.setdefault(key, kv.line)
        result = cls(**got)
        if hasattr(result, "_cross_check"):
            result._cross_check(raw, path, errs)
        return result
    check.keys = keys  # type: ignore[attr-defined]  # for schema_keys() and override()
    return check


# -- the schema: each section's keys, defaults and checkers ---------------------------

def _key(default: Any, check: Checker) -> Any:
    return field(default=default, metadata={"check": check})


def _sub(cls: type) -> Any:
    """A section key: a mapping of cls's keys (frozen, so one default instance is shared safely)."""
    return _key(cls(), _section(cls))


Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_CIDRS = _list_of(_cidr, "CIDRs", max_items=abi.CIDR_SIZE)


@dataclass(frozen=True)
class ProtectConfig:
    # empty: every port
    ports: tuple[int, ...] = _key((), _list_of(_int_range(1, 65535, name="port"), "ports 1-65535", sort=True))


@dataclass(frozen=True)
class SecretConfig:
    file: str | None = _key(None, _abs_path("a secret file", nullable=True))  # None: random 128-bit secret at start
    rotate_every: int = _key(600, _duration(ROTATE_MIN_S, " (cookies stay valid for ~32 s after a rotation; "
                                                          "rotating faster would invalidate cookies still in flight)"))


@dataclass(frozen=True)
class MetricsConfig:
    """listen "host:port" ("[v6]:port"); None disables metrics. host/port derived."""

    listen: str | None = _key(DEFAULT_METRICS_LISTEN, _listen)
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
    socket: str = _key(DEFAULT_CONTROL_SOCKET, _abs_path("the control socket", max_bytes=SUN_PATH_MAX))


@dataclass(frozen=True)
class LogConfig:
    format: str = _key("human", _choice(LOG_FORMATS))


@dataclass(frozen=True)
class DetectionConfig:
    """Attack detector knobs (synguard/detect.py explains the algorithm).

    Rates are SYN/s, durations int seconds; defaults tuned on tests/test_detect.py."""

    floor_pps: int = _key(2000, _int_range(1, PPS_MAX, " SYN/s"))  # volume floor: below it nothing is an attack
    baseline_multiple: float = _key(3.0, _number(1.0, 1000.0))  # volume gate: max(floor_pps, multiple x baseline)
    ewma_alpha: float = _key(0.05, _number(0.0, 1.0, lo_open=True))  # baseline EWMA weight per tick
    cusum_drift: float = _key(0.5, _number(0.0, 1000.0))  # NP-CUSUM allowance per tick (normalised gap units)
    cusum_threshold: float = _key(3.0, _number(0.0, 1e6, lo_open=True))  # NP-CUSUM alarm level
    clear_ticks: int = _key(5, _int_range(1, 3600, " ticks"))  # consecutive quiet ticks that end an attack
    hold: int = _key(60, _duration())  # attacked ports stay protected this long after the end
    # spoofed: distinct sources / SYNs at or above the first, and new sources / distinct at or above the second
    spoofed_distinct_ratio: float = _key(0.9, _number(0.0, 1.0, lo_open=True))
    spoofed_new_ratio: float = _key(0.5, _number(0.0, 1.0))
    single_source_share: float = _key(0.5, _number(0.0, 1.0, lo_open=True))  # top source's share >= this: single
    fast_trigger_pps: int = _key(100000, _int_range(0, U32_MAX, " SYN/s (0: off)"))  # in-kernel per-port ceiling
    source_deny: int = _key(600, _duration())  # how long a single-source attacker is denied
    # out-of-state segments (ACK/RST/FIN/data no socket owns) per second at protected ports that make an
    # ack-flood (synguard/ackflood.py); auto mode then drops them (protect mode always does)
    ack_flood_pps: int = _key(1000, _int_range(0, U32_MAX, " segments/s (0: off)"))

    def _cross_check(self, raw: dict[str, _Value], path: str, errs: _Errors) -> None:
        """A per-port kernel ceiling under the volume floor would fire on traffic the detector calls normal."""
        if self.fast_trigger_pps and self.fast_trigger_pps < self.floor_pps:
            key = "fast_trigger_pps" if "fast_trigger_pps" in raw else "floor_pps"
            if key in raw:
                errs.add(f"{path}.{key}", raw[key].line, f"fast_trigger_pps ({self.fast_trigger_pps}) is below "
                         f"floor_pps ({self.floor_pps}): the kernel ceiling would fire on traffic the detector "
                         "calls normal; raise it or set it to 0 (off)")


@dataclass(frozen=True)
class Config:
    interfaces: tuple[str, ...] = _key((), _list_of(_interface, "interface names"))  # empty: `synguard run` needs -i
    mode: Mode = _key(Mode.OBSERVE, _choice(Mode.labels(), Mode.parse))
    xdp_mode: str = _key("auto", _choice(XDP_MODES))
    protect: ProtectConfig = _sub(ProtectConfig)
    allow: tuple[Network, ...] = _key((), _CIDRS)
    deny: tuple[Network, ...] = _key((), _CIDRS)
    secret: SecretConfig = _sub(SecretConfig)
    metrics: MetricsConfig = _sub(MetricsConfig)
    control: ControlConfig = _sub(ControlConfig)
    log: LogConfig = _sub(LogConfig)
    detection: DetectionConfig = _sub(DetectionConfig)
    # Not a setting: what parse() wants the operator to know (REMOVED_KEYS found in the file).
    warnings: tuple[str, ...] = field(default=(), compare=False)

    def to_dict(self) -> dict:
        """The config file's shape, JSON-ready (CIDRs as strings, durations in
        seconds, disabled metrics as None); parse() of its YAML gives self back."""
        return _plain(self)

    def _cross_check(self, raw: dict[str, _Value], path: str, errs: _Errors) -> None:
        """The same network in allow and deny is a contradiction (overlaps are fine: longest prefix wins)."""
        allowed = {net: i for i, net in enumerate(self.allow)}
        for i, (net, iv) in enumerate(zip(self.deny, raw["deny"].items() if self.allow and self.deny else ())):
            if net in allowed:
                errs.add(f"deny[{i}]", iv.line, f"{net} is also in allow[{allowed[net]}]; keep it in one list")


def _plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj) if "check" in f.metadata}
    if isinstance(obj, tuple):
        return [_plain(x) for x in obj]
    if isinstance(obj, (ipaddress.IPv4Network, ipaddress.IPv6Network, Mode)):
        return str(obj)
    return obj


_check_config = _section(Config)
_KEYS: dict[str, Checker] = _check_config.keys  # type: ignore[attr-defined]
DEFAULTS = Config()


def schema_keys(keys: dict[str, Checker] = _KEYS, prefix: str = "") -> list[str]:
    """Every key path the file accepts ("mode", "protect.ports", ...), for docs and tests."""
    out = []
    for key, checker in keys.items():
        sub = getattr(checker, "keys", None)
        out += schema_keys(sub, f"{prefix}{key}.") if sub else [prefix + key]
    return out


# -- API -------------------------------------------------------------------------------

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
    top = _Value(node=root, loader=loader) if root is not None else _Value(None)  # None: empty, or only comments
    if top.kind == "null":  # also "---" or "~" alone
        return Config()
    if top.kind != "mapping":
        raise ConfigError([f"line {top.line}: the top level must be a mapping of keys "
                           f"({', '.join(_KEYS)}), got {_describe(top)}"], source)
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
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(FILE_MAX_BYTES + 1)  # buffered: loops until that much or the end
    except OSError as e:
        raise ConfigError([f"cannot read: {e.strerror or e}"], source) from None
    finally:
        os.close(fd)
    if len(data) > FILE_MAX_BYTES:  # grew while we read
        raise ConfigError([too_big], source)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError([f"not YAML: not UTF-8 text (bad byte at offset {e.start})"], source) from None
    return parse(text, source)


# override() keyword -> (flag of `synguard run`, section or None for top level, key)
_OVERRIDES: dict[str, tuple[str, str | None, str]] = {
    "interfaces": ("--interface", None, "interfaces"),
    "mode": ("--mode", None, "mode"),
    "ports": ("--ports", "protect", "ports"),
    "xdp_mode": ("--xdp-mode", None, "xdp_mode"),
    "metrics_listen": ("--metrics-listen", "metrics", "listen"),  # "" disables metrics
    "control_socket": ("--control-socket", "control", "socket"),
    "log_format": ("--log-format", "log", "format"),
}


def override(cfg: Config, *, interfaces=None, mode=None, ports=None, xdp_mode=None,
             metrics_listen=None, control_socket=None, log_format=None) -> Config:
    """cfg with `synguard run` flags applied (None = keep), checked like the file.

    Errors name the flag: ConfigError(source="command line")."""
    given = locals()
    errs = _Errors()
    changes: dict[str | None, dict[str, Any]] = {}  # section (None: top level) -> key -> value
    for name, (flag, section, key) in _OVERRIDES.items():
        if given[name] is not None:
            checker = _KEYS[section].keys[key] if section else _KEYS[key]  # type: ignore[attr-defined]
            if (got := checker(_Value(given[name]), flag, errs)) is not _BAD:
                changes.setdefault(section, {})[key] = got
    if errs:
        raise ConfigError(errs.messages(), "command line")
    top = changes.pop(None, {})
    top.update({section: dataclasses.replace(getattr(cfg, section), **kv) for section, kv in changes.items()})
    return dataclasses.replace(cfg, **top)
