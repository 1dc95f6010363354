"""Shared fixtures: one compiled XDP program per session, reset before each test."""

from __future__ import annotations

import os

import pytest

SECRET = bytes(range(16))  # key of SLOT
SECRET_PREV = bytes(range(100, 116))  # key of SLOT - 1
NOW_S = 100_000  # sg_config.now_s (monotonic seconds)
SLOT = 0x1234567  # sg_config.slot (odd: SECRET sits in sg_secrets[1])
SYNACK_MSS4, SYNACK_MSS6, SYNACK_WSCALE = 1460, 1440, 10
TCP_OPTS_ALL = 0xF


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
    """The session's program in a known state: protect, port 80, fixed keys, slot and clock."""
    from synguard.abi import Mode

    d = datapath
    d.set_slot_key(SLOT - 1, SECRET_PREV)
    d.set_slot_key(SLOT, SECRET)
    d.set_slot(SLOT)
    d.tick(NOW_S)
    d.set_synack(SYNACK_MSS4, SYNACK_MSS6, SYNACK_WSCALE, TCP_OPTS_ALL)
    d.set_ports({80})
    d.arm_port(80, 0)
    d.arm_all(0)
    d.set_allow_cidrs([])
    d.set_deny_cidrs([])
    d.set_mode(Mode.PROTECT)
    return d
