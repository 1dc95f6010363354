"""The cookie secret, in one place: its size, the secret file, the per-slot keys,
and the schedule that installs them (SlotKeys).

A 128-bit master (random at start, or `secret.file`, shared by a fleet) derives the
key of each cookie slot (wall clock >> SLOT_SHIFT) with keyed BLAKE2b over the slot and
its epoch = floor(wall clock / secret.rotate_every), the secret's generation, so every
daemon sharing the file switches keys at the same instant without talking to the
others. The program signs with sg_secrets[slot & 1]; the previous slot's key stays for
the ACK check. The key is never logged, shown in status or exported.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import struct
import time
from typing import TYPE_CHECKING

from synguard import abi
from synguard.config import ConfigError
from synguard.log import event

if TYPE_CHECKING:
    from synguard.config import SecretConfig
    from synguard.datapath import DataPath

SECRET_LEN = 16


def secret_file_check(path: str | os.PathLike) -> bytes:
    """The 16-byte secret in path, or ConfigError (one line) saying what is wrong.

    The file must be a regular file, owned by root or by the user running synguard,
    with no group/other permission bits (0600 or stricter), holding exactly 16 raw
    bytes or 32 hex characters with an optional trailing newline."""
    source = os.fspath(path)
    fix = f"create one with: umask 077; head -c 16 /dev/urandom > {source}"
    try:
        # O_NONBLOCK: opening a FIFO must not hang the daemon; checked on the fd, not the name.
        fd = os.open(source, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except FileNotFoundError:
        raise ConfigError([f"secret file does not exist; {fix}"], source) from None
    except PermissionError:
        raise ConfigError([f"secret file: permission denied (running as uid {os.geteuid()})"], source) from None
    except OSError as e:
        raise ConfigError([f"secret file: cannot open: {e.strerror or e}"], source) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(["secret file is not a regular file"], source)
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise ConfigError([f"secret file has mode {mode:04o}: group/other may access it; "
                               f"it must be 0600 or stricter (chmod 600 {source})"], source)
        if st.st_uid not in (0, os.geteuid()):
            raise ConfigError([f"secret file is owned by uid {st.st_uid}; it must be owned by root "
                               f"or by the user synguard runs as (uid {os.geteuid()})"], source)
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(100)  # enough to tell every accepted form from a wrong one
    except OSError as e:
        raise ConfigError([f"secret file: cannot read: {e.strerror or e}"], source) from None
    finally:
        os.close(fd)
    return _secret_bytes(data, source)


_HEX = re.compile(rb"[0-9a-fA-F]{32}\n?\Z")


def _secret_bytes(data: bytes, source: str) -> bytes:
    want = "16 raw bytes or 32 hex characters (optionally followed by a newline)"
    if len(data) == SECRET_LEN:
        if re.fullmatch(rb"[0-9a-fA-F]{16}", data):
            raise ConfigError([f"secret file holds 16 hex characters (64 bits); {want} are needed "
                               "for a 128-bit secret"], source)
        secret = data
    elif len(data) in (2 * SECRET_LEN, 2 * SECRET_LEN + 1) and _HEX.match(data):
        secret = bytes.fromhex(data[: 2 * SECRET_LEN].decode())
    elif len(data) in (2 * SECRET_LEN, 2 * SECRET_LEN + 1):
        raise ConfigError([f"secret file has {len(data)} bytes but they are not 32 hex characters; expected {want}"],
                          source)
    else:
        size = f"{len(data)}" if len(data) < 100 else "100 or more"
        raise ConfigError([f"secret file has {size} bytes; expected {want}"], source)
    if secret == bytes(SECRET_LEN):
        raise ConfigError(["secret file holds an all-zero secret"], source)
    return secret


def random_master() -> bytes:
    return os.urandom(SECRET_LEN)


def epoch_of(slot: int, rotate_every: int) -> int:
    """The secret's generation a cookie slot belongs to (rotate_every seconds each)."""
    return (slot << abi.SLOT_SHIFT) // rotate_every


def slot_key(master: bytes, rotate_every: int, slot: int) -> bytes:
    """The SipHash key of one cookie slot (sg_secrets[slot & 1]), its own: derived from the
    master, the slot's epoch (the secret's generation, rotate_every seconds long) and the
    slot's number, so a cookie is bound to its slot without the slot being hashed."""
    return hashlib.blake2b(struct.pack("<QQ", epoch_of(slot, rotate_every), slot), key=master, digest_size=16,
                           person=b"synguard-slot").digest()


def secret_words(secret: bytes) -> tuple[int, int]:
    """struct sg_secret {k0, k1} of a 16-byte key: two little-endian u64 (SipHash's k0, k1)."""
    if len(secret) != SECRET_LEN:
        raise ValueError(f"secret must be {SECRET_LEN} bytes, got {len(secret)}")
    return struct.unpack("<QQ", secret)


class SlotKeys:
    """The cookie-key schedule of one data path: which master, which epoch, which slot.

    configure() takes the master (secret.file, else the random one already held) and
    the period from the config; advance() moves the data path to the wall clock's slot,
    writing the new slot's key before the program signs with it. epoch, since (wall
    time the current secret took effect) and rotations are what status and metrics show."""

    def __init__(self, datapath: DataPath, rotate_every: int):
        self.datapath = datapath
        self.master = b""
        self.rotate_every = rotate_every
        self.slot = -1  # the cookie slot the program signs with (sg_config.slot)
        self.epoch = -1
        self.since = time.time()
        self.rotations = 0

    def configure(self, cfg: SecretConfig, *, force: bool = False) -> None:
        """Take cfg's master and period (ConfigError if the secret file is unusable, with
        nothing changed); a new master or period (or force) re-derives both slots' keys
        at the next advance()."""
        master = secret_file_check(cfg.file) if cfg.file else (self.master or random_master())
        if force or master != self.master or cfg.rotate_every != self.rotate_every:
            self.master = master
            self.rotate_every = cfg.rotate_every
            self.epoch = -1
            self.slot = -1

    def key(self, slot: int) -> bytes:
        """The key of a cookie slot (slot_key)."""
        return slot_key(self.master, self.rotate_every, slot)

    def advance(self, wall: int | None = None) -> None:
        """Advance the cookie slot to the wall clock (wall: CLOCK_REALTIME seconds, now if
        None): the new slot's key is written before the program signs with it; the other
        entry keeps the previous slot's key."""
        wall = int(time.time()) if wall is None else int(wall)
        slot = (wall & 0xFFFFFFFF) >> abi.SLOT_SHIFT
        if slot == self.slot:
            return
        dp = self.datapath
        if slot != self.slot + 1:  # first slot, a jump of the clock, or a new master
            dp.set_slot_key(slot - 1, self.key(slot - 1))
        dp.set_slot_key(slot, self.key(slot))
        dp.set_slot(slot)
        self.slot = slot
        epoch = epoch_of(slot, self.rotate_every)
        if epoch == self.epoch:
            return
        first = self.epoch < 0
        self.epoch = epoch
        self.since = epoch * self.rotate_every
        if not first:
            self.rotations += 1
            event("secret_rotated", f"cookie secret rotated (generation {epoch})", generation=epoch)
