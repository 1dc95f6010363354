"""Test frames built with scapy, and checks on the program's output frames."""

from __future__ import annotations

import ipaddress

from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether

from synguard import cookie

CLIENT_MAC = "02:00:00:00:00:01"
SERVER_MAC = "02:00:00:00:00:02"
CLIENT4, SERVER4 = "192.0.2.10", "198.51.100.1"
CLIENT6, SERVER6 = "2001:db8::10", "2001:db8:1::1"
SYN_OPTIONS = [("MSS", 1460), ("SAckOK", b""), ("Timestamp", (1, 0)), ("NOP", None), ("WScale", 7)]

XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX = 0, 1, 2, 3


def eth():
    return Ether(src=CLIENT_MAC, dst=SERVER_MAC)


def syn4(sport=40000, dport=80, seq=1000, src=CLIENT4, dst=SERVER4, flags="S", options=SYN_OPTIONS, **ip):
    return eth() / IP(src=src, dst=dst, **ip) / TCP(sport=sport, dport=dport, seq=seq, flags=flags, options=options)


def syn6(sport=40000, dport=80, seq=1000, src=CLIENT6, dst=SERVER6, flags="S", ext=None, options=SYN_OPTIONS):
    l3 = IPv6(src=src, dst=dst)
    if ext is not None:
        l3 = l3 / ext
    return eth() / l3 / TCP(sport=sport, dport=dport, seq=seq, flags=flags, options=options)


def rst(cookie_value, sport=40000, dport=80, src=CLIENT4, dst=SERVER4, flags="R", ipv6=False):
    l3 = IPv6(src=src, dst=dst) if ipv6 else IP(src=src, dst=dst)
    return eth() / l3 / TCP(sport=sport, dport=dport, seq=cookie_value, ack=0, flags=flags)


def expected_cookie(secret, gen, slot, src, dst, sport, dport):
    return cookie.cookie(secret, src, dst, sport, dport, slot, gen)


def parseable(data: bytes):
    """Ether(data), with garbage TCP options replaced by NOPs if scapy cannot parse them.

    The program never reads TCP options, so a mutated SYN with broken options is
    still a SYN; scapy turns its whole TCP header into Raw, which this undoes."""
    from scapy.packet import Raw

    frame = Ether(data)
    if TCP in frame or Raw not in frame:
        return frame
    tcp = frame[Raw].load
    off = bytes(frame).find(tcp)
    if len(tcp) < 20 or off < 0:
        return frame
    hdr = (tcp[12] >> 4) * 4
    fixed = data[:off + 20] + b"\x01" * max(0, min(hdr, len(tcp)) - 20) + data[off + max(hdr, 20):]
    again = Ether(fixed)
    return again if TCP in again else frame


def check_challenge(out: bytes, syn, secret: bytes, gen: int, slot: int) -> int:
    """Assert out is the specified cookie SYN-ACK for syn; returns the cookie."""
    reply = Ether(out)
    if isinstance(syn, (bytes, bytearray)):
        syn = parseable(bytes(syn))
    l3_name = IPv6 if IPv6 in syn else IP
    ip_in = syn[l3_name]
    tcp_in = syn[TCP]
    assert reply.src == syn.dst and reply.dst == syn.src
    # VLAN tags kept as they were.
    assert [(l.vlan, l.type) for l in _tags(reply)] == [(l.vlan, l.type) for l in _tags(syn)]
    if l3_name is IP:
        ip = reply[IP]
        assert (ip.version, ip.ihl, ip.tos, ip.len, ip.id, int(ip.flags), ip.frag, ip.ttl, ip.proto) == (
            4, 5, 0, 40, 0, 2, 0, 64, 6)
        assert not ip.options
        check = ip.chksum
        del ip.chksum
        assert IP(bytes(ip))[IP].chksum == check, "IPv4 header checksum"
        ip = reply[IP]
    else:
        ip = reply[IPv6]
        assert (ip.version, ip.tc, ip.fl, ip.plen, ip.nh, ip.hlim) == (6, 0, 0, 20, 6, 64)
    assert ip.src == ip_in.dst and ip.dst == ip_in.src
    tcp = reply[TCP]
    assert (tcp.sport, tcp.dport) == (tcp_in.dport, tcp_in.sport)
    assert tcp.flags == "SA" and tcp.dataofs == 5 and tcp.options == [] and tcp.urgptr == 0
    assert tcp.window == 65535 and tcp.reserved == 0
    # No TCP payload; what follows the IP length is Ethernet padding (the SYN's
    # old option bytes), which receivers trim.
    assert not bytes(tcp.payload) or tcp.payload.__class__.__name__ == "Padding"
    assert len(out) == len(bytes(syn)), "the frame keeps its length"
    c = expected_cookie(secret, gen, slot, ip_in.src, ip_in.dst, tcp_in.sport, tcp_in.dport)
    assert tcp.ack == c, f"cookie {tcp.ack:#x} != reference {c:#x}"
    assert tcp.ack != (tcp_in.seq + 1) & 0xFFFFFFFF, "acceptable SYN-ACK emitted"
    assert tcp.seq == cookie.challenge_isn(secret, ip_in.src, ip_in.dst, tcp_in.sport, tcp_in.dport, slot)
    want = tcp.chksum
    rebuilt = reply.copy()
    del rebuilt[TCP].chksum
    assert Ether(bytes(rebuilt))[TCP].chksum == want, "TCP checksum"
    return c


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
    "IPv6ExtHdrHopByHop", "TCP", "UDP", "ipaddress",
]
