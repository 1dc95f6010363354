"""synguard.ackflood: the out-of-state flood detector (pure unit tests, no kernel)."""

from __future__ import annotations

from synguard import config as configmod
from synguard.abi import Counter
from synguard.ackflood import AckFloodDetector


def det(**kw):
    return AckFloodDetector(configmod.DetectionConfig(**kw))


def test_quiet_traffic_is_no_attack():
    d = det(ack_flood_pps=1000)
    for t in range(1, 30):
        assert d.update(float(t), 1.0, {Counter.OOS_ACK: 5, Counter.OOS_RST: 2}) == []
    assert d.active is None and d.drop_until() is None


def test_flood_starts_in_one_tick_named_by_its_kind_and_ends_after_clear_ticks():
    d = det(ack_flood_pps=1000, clear_ticks=3, hold=60)
    assert d.update(1.0, 1.0, {Counter.OOS_ACK: 10}) == []
    ev = d.update(2.0, 1.0, {Counter.OOS_ACK: 5000, Counter.OOS_RST: 10})
    assert [e["event"] for e in ev] == ["attack_start"] and ev[0]["attack"]["kind"] == "ack-flood"
    assert ev[0]["attack"]["detected_after_s"] <= 2.0 and d.drop_until() == 2.0 + 60
    ev = d.update(3.0, 1.0, {Counter.OOS_RST: 20000})  # the flood changes to RSTs: renamed
    assert ev[0]["event"] == "attack_update" and ev[0]["attack"]["kind"] == "rst-flood"
    assert d.update(4.0, 1.0, {}) == [] and d.update(5.0, 1.0, {}) == []
    ev = d.update(6.0, 1.0, {})
    assert ev[0]["event"] == "attack_end" and ev[0]["attack"]["ended"] == 3.0
    assert d.active is None and d.drop_until() == 3.0 + 60  # dropped for `hold` after the end
    assert dict(d.attacks_total) == {"ack-flood": 1}


def test_data_counts_as_ack_flood_and_fin_flood_is_named():
    d = det(ack_flood_pps=100)
    assert d.update(1.0, 1.0, {Counter.OOS_DATA: 500})[0]["attack"]["kind"] == "ack-flood"
    d = det(ack_flood_pps=100)
    assert d.update(1.0, 1.0, {Counter.OOS_FIN: 500, Counter.OOS_ACK: 1})[0]["attack"]["kind"] == "fin-flood"


def test_zero_turns_it_off():
    d = det(ack_flood_pps=0)
    assert d.update(1.0, 1.0, {Counter.OOS_ACK: 10**6}) == [] and d.drop_until() is None
