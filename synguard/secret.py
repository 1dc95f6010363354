"""The cookie secret, in one place: its size, the secret file, the per-epoch keys.

A 128-bit master (random at start, or `secret.file`, shared by a fleet) derives the
key of each epoch = floor(wall clock / secret.rotate_every) with keyed BLAKE2b, so
every daemon sharing the file switches keys at the same instant without talking to
the others. The key is never logged, shown in status or exported.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import struct

from synguard.config import ConfigError

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


def derive_secret(master: bytes, epoch: int) -> bytes:
    return hashlib.blake2b(epoch.to_bytes(8, "little"), key=master, digest_size=16, person=b"synguard-cookie").digest()


def secret_words(secret: bytes) -> tuple[int, int]:
    """struct sg_secret {k0, k1} of a 16-byte key: two little-endian u64 (SipHash's k0, k1)."""
    if len(secret) != SECRET_LEN:
        raise ValueError(f"secret must be {SECRET_LEN} bytes, got {len(secret)}")
    return struct.unpack("<QQ", secret)
