"""Shared fixtures: one compiled XDP program per session, reset before each test."""

from __future__ import annotations

import os

import pytest

SECRET = bytes(range(16))
SECRET_PREV = bytes(range(100, 116))
GEN = 7
NOW_S = 100_000
ALLOW_TTL_S = 60


def pytest_collection_modifyitems(config, items):
    if os.geteuid() != 0:
        skip = pytest.mark.skip(reason="needs root (BPF, XDP, network namespaces)")
        for item in items:
            if "datapath" in item.fixturenames or "dp" in item.fixturenames or "netns" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def datapath():
    from synguard.datapath import DataPath

    d = DataPath()
    yield d
    d.close()


@pytest.fixture
def dp(datapath):
    """The session's program in a known state: protect, port 80, fixed secrets and clock."""
    from synguard.abi import Mode

    d = datapath
    d.set_secret(GEN - 1, SECRET_PREV)
    d.set_secret(GEN, SECRET)
    d.tick(NOW_S)
    d.set_allow_ttl(ALLOW_TTL_S)
    d.set_ports({80})
    d.set_allow_cidrs([])
    d.set_deny_cidrs([])
    d.allowlist_clear()
    d.set_mode(Mode.PROTECT)
    return d
