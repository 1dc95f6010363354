"""HyperLogLog over the registers the XDP program keeps (struct sg_hll).

The program hashes each SYN's source address (splitmix64 of the folded
address), uses the top SG_HLL_BITS bits as the register index and stores the
leading-zero count + 1 of the remaining bits; this module estimates cardinality
from those registers (Flajolet et al. 2007, with linear counting for small
sets) and keeps a rolling history so "never seen before" can be estimated as
|window ∪ history| − |history|.
"""

from __future__ import annotations

import math
from collections import deque

from synguard import abi

M = abi.HLL_REGS
_ALPHA = 0.7213 / (1 + 1.079 / M)


def estimate(regs: bytes | None) -> float:
    if not regs:
        return 0.0
    zeros = regs.count(0)
    raw = _ALPHA * M * M / sum(2.0 ** -r for r in regs)
    if raw <= 2.5 * M and zeros:
        return M * math.log(M / zeros)
    return raw


def union(a: bytes | None, b: bytes | None) -> bytes | None:
    if a is None:
        return b
    if b is None:
        return a
    return bytes(map(max, a, b))


class History:
    """Union of the registers of the last `minutes` minutes, in one-minute buckets."""

    def __init__(self, minutes: int = 10):
        self.buckets: deque[bytes | None] = deque(maxlen=minutes)
        self.current: bytes | None = None
        self.minute: int | None = None
        self._merged: bytes | None = None

    def novelty(self, window: bytes | None) -> tuple[float, float]:
        """(distinct sources in window, of which never seen in the history)."""
        distinct = estimate(window)
        if window is None:
            return 0.0, 0.0
        before = self._merged
        new = max(0.0, estimate(union(before, window)) - estimate(before)) if before else distinct
        return distinct, min(new, distinct)

    def add(self, window: bytes | None, now_s: int) -> None:
        minute = now_s // 60
        if self.minute is not None and minute != self.minute:
            self.buckets.append(self.current)
            self.current = None
        self.minute = minute
        self.current = union(self.current, window)
        merged = self.current
        for b in self.buckets:
            merged = union(merged, b)
        self._merged = merged
