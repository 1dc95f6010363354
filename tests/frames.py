"""Test frames built with scapy, and checks on the program's output frames."""

from __future__ import annotations

import ipaddress

from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether


CLIENT_MAC = "02:00:00:00:00:01"
SERVER_MAC = "02:00:00:00:00:02"
CLIENT4, SERVER4 = "192.0.2.10", "198.51.100.1"
CLIENT6, SERVER6 = "2001:db8::10", "2001:db8:1::1"
SYN_OPTIONS = [("MSS", 1460), ("SAckOK", b""), ("Timestamp", (1, 0)), ("NOP", None), ("WScale", 7)]

XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX = 0, 1, 2, 3


def eth():
    return Ether(src=CLIENT_MAC, dst=SERVER_MAC)


def _tcp(sport, dport, seq, flags, options):
    """TCP with options as scapy tuples, or as raw option bytes (any layout, padded to 4)."""
    if isinstance(options, (bytes, bytearray)):
        raw = bytes(options) + b"\0" * (-len(options) % 4)
        return TCP(sport=sport, dport=dport, seq=seq, flags=flags, dataofs=5 + len(raw) // 4) / raw
    return TCP(sport=sport, dport=dport, seq=seq, flags=flags, options=options)


def syn4(sport=40000, dport=80, seq=1000, src=CLIENT4, dst=SERVER4, flags="S", options=SYN_OPTIONS, **ip):
    return eth() / IP(src=src, dst=dst, **ip) / _tcp(sport, dport, seq, flags, options)


def syn6(sport=40000, dport=80, seq=1000, src=CLIENT6, dst=SERVER6, flags="S", ext=None, options=SYN_OPTIONS):
    l3 = IPv6(src=src, dst=dst)
    if ext is not None:
        l3 = l3 / ext
    return eth() / l3 / _tcp(sport, dport, seq, flags, options)


def ack4(seq, ack, sport=40000, dport=80, src=CLIENT4, dst=SERVER4, flags="A", options=()):
    return eth() / IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, seq=seq, ack=ack, flags=flags, options=list(options))


def check_synack(out: bytes, syn: bytes, key: bytes, slot: int, mss4: int, mss6: int, wscale: int,
                 tcp_opts: int) -> None:
    """Assert out is the cookie SYN-ACK answering syn (COOKIE.md).

    Two independent checks: byte equality with synguard_lab.model.synack (built from
    synguard.cookie and an RFC 1071 checksum), and scapy's reading of the frame
    (fields, options, both checksums recomputed by scapy)."""
    from synguard_lab import model

    syn = bytes(syn)
    seg = model.parse(syn)
    assert isinstance(seg, model.Segment), seg
    want = model.synack(syn, seg, key, slot, mss4, mss6, wscale, tcp_opts)
    assert out == want, f"kernel SYN-ACK differs from the reference:\n{out.hex()}\n{want.hex()}"

    reply, request = Ether(out), Ether(syn)
    # 20 option bytes with timestamps, else the MSS alone (COOKIE.md, "SYN-ACK"), then
    # NOPs up to the SYN's length when it was longer by 4-16 bytes (no shrink)
    base = 40 if any(o[0] == "Timestamp" for o in reply[TCP].options) else 24
    slack = len(syn) - (seg.l3 + (40 if seg.ipv6 else 20) + base)
    tcp_len = base + (slack if 0 < slack <= 16 and slack % 4 == 0 else 0)
    assert bytes(reply[TCP])[base:tcp_len] == b"\x01" * (tcp_len - base), "padding: NOPs only"
    assert reply.src == request.dst and reply.dst == request.src
    assert [(l.vlan, l.type) for l in _tags(reply)] == [(l.vlan, l.type) for l in _tags(request)]
    if seg.ipv6:
        ip = reply[IPv6]
        assert (ip.version, ip.tc, ip.fl, ip.plen, ip.nh, ip.hlim) == (6, 0, 0, tcp_len, 6, 64)
    else:
        ip = reply[IP]
        assert (ip.version, ip.ihl, ip.tos, ip.len, ip.id, int(ip.flags), ip.frag, ip.ttl, ip.proto) == (
            4, 5, 0, 20 + tcp_len, 0, 2, 0, 64, 6)
        rebuilt = IP(bytes(ip))
        del rebuilt.chksum
        assert IP(bytes(rebuilt)).chksum == ip.chksum, "IPv4 header checksum"
    assert ipaddress.ip_address(ip.src).packed == seg.daddr and ipaddress.ip_address(ip.dst).packed == seg.saddr
    tcp = reply[TCP]
    assert (tcp.sport, tcp.dport) == (seg.dport, seg.sport)
    assert tcp.ack == (seg.seq + 1) & 0xFFFFFFFF, "a real SYN-ACK: ack = ISN + 1"
    assert tcp.dataofs == tcp_len // 4 and tcp.window == 65535 and tcp.urgptr == 0 and tcp.reserved == 0
    assert str(tcp.flags) in ("SA", "SAE")
    assert not bytes(tcp.payload) and len(out) == seg.l3 + (40 if seg.ipv6 else 20) + tcp_len, "frame sized to the reply"
    rebuilt = reply.copy()
    del rebuilt[TCP].chksum
    assert Ether(bytes(rebuilt))[TCP].chksum == tcp.chksum, "TCP checksum"
    names = [o[0] for o in tcp.options if o[0] != "NOP"]
    assert names[0] == "MSS" and dict(tcp.options)["MSS"] == (mss6 if seg.ipv6 else mss4)
    if base == 24:
        assert [o for o in tcp.options if o[0] != "NOP"] == [("MSS", mss6 if seg.ipv6 else mss4)], "the MSS alone"


def _tags(frame):
    out = []
    layer = frame
    while layer is not None and layer.payload is not None:
        if isinstance(layer, (Dot1Q, Dot1AD)):
            out.append(layer)
        layer = layer.payload if layer.payload.__class__.__name__ != "NoPayload" else None
    return out


__all__ = [
    "ARP", "Dot1AD", "Dot1Q", "Ether", "IP", "IPv6", "IPv6ExtHdrDestOpt", "IPv6ExtHdrFragment",
    "IPv6ExtHdrHopByHop", "TCP", "UDP", "ipaddress", "syn4", "syn6", "ack4", "eth", "check_synack",
]
