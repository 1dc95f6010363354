"""Test lab (netns) and flood sender.

Unit tests of the frame builder run anywhere; the rest need root, `ip`, `ss`
and BCC (XDP pass programs) and are marked `netns`. Every test carries a hard
timeout in code (SIGALRM), so a hung namespace or process fails the test
instead of hanging the run; the lab tears itself down on that exception too.
"""

from __future__ import annotations

import ipaddress
import os
import struct
import subprocess
import sys
import time

import pytest

from helpers import hard_timeout, needs_lab, ones_sum

from synguard_lab import flood as fl
from synguard_lab import lab as labmod
from synguard_lab.lab import Lab






def _netns_list() -> set[str]:
    r = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                       check=True)
    return {line.split()[0] for line in r.stdout.splitlines() if line.strip()}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is gone as far as we care.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


# --- frame builder (no privileges) --------------------------------------------

_csum = ones_sum  # 0xFFFF when the embedded checksum is right (independent of flood.py)


def _parse(frame: bytes, ipv6: bool):
    eth_type = struct.unpack("!H", frame[12:14])[0]
    if ipv6:
        assert eth_type == 0x86DD
        ip = frame[14:54]
        plen = struct.unpack("!H", ip[4:6])[0]
        src, dst = ip[8:24], ip[24:40]
        tcp = frame[54:54 + plen]
        pseudo = src + dst + struct.pack("!IxxxB", len(tcp), 6)
    else:
        assert eth_type == 0x0800
        ip = frame[14:34]
        assert ip[0] == 0x45 and ip[9] == 6
        assert _csum(ip) == 0xFFFF, "IPv4 header checksum"
        total = struct.unpack("!H", ip[2:4])[0]
        src, dst = ip[12:16], ip[16:20]
        tcp = frame[34:14 + total]
        pseudo = src + dst + struct.pack("!xBH", 6, len(tcp))
    assert _csum(pseudo + tcp) == 0xFFFF, "TCP checksum"
    sport, dport, seq, ack, off, flags = struct.unpack("!HHIIBB", tcp[:14])
    assert flags == 0x02 and ack == 0 and off >> 4 == 6
    assert tcp[20:24] == struct.pack("!BBH", 2, 4, fl.MSS)
    return ipaddress.ip_address(src), ipaddress.ip_address(dst), sport, dport, seq


@pytest.mark.parametrize("dst,ipv6", [("10.77.2.1", False), ("fd77:2::1", True)])
@hard_timeout(60)
def test_frames_valid_and_spoofed(dst, ipv6):
    n = 3000
    buf, flen = fl.build_frames(dst=dst, dport=8080, dst_mac="02:00:00:00:00:01",
                                src_mac="02:00:00:00:00:02", n=n, seed=7)
    assert len(buf) == n * flen
    lab_net = ipaddress.ip_network("10.77.0.0/16")
    doc6 = ipaddress.ip_network("2001:db8::/32")
    srcs = set()
    for i in range(n):
        frame = bytes(buf[i * flen:(i + 1) * flen])
        assert frame[:6] == bytes.fromhex("020000000001")
        assert frame[6:12] == bytes.fromhex("020000000002")
        src, d, sport, dport, _ = _parse(frame, ipv6)
        assert str(d) == dst and dport == 8080 and sport >= 1024
        if ipv6:
            assert src in doc6
        else:
            assert src not in lab_net
            assert not (src.is_loopback or src.is_multicast or src.is_reserved
                        or int(src) >> 24 == 0)
        srcs.add(src)
    assert len(srcs) == n   # one distinct source per frame by default


@hard_timeout(60)
def test_frames_sources_limit_and_seed():
    kw = dict(dst="10.77.2.1", dport=80, dst_mac="02:00:00:00:00:01",
              src_mac="02:00:00:00:00:02", n=500)
    for k in (1, 5):
        buf, flen = fl.build_frames(seed=3, sources=k, **kw)
        srcs = {_parse(bytes(buf[i * flen:(i + 1) * flen]), False)[0]
                for i in range(500)}
        assert len(srcs) == k
    a, _ = fl.build_frames(seed=11, **kw)
    b, _ = fl.build_frames(seed=11, **kw)
    c, _ = fl.build_frames(seed=12, **kw)
    assert a == b and a != c


def test_flood_refuses_non_lab_targets():
    with pytest.raises(ValueError, match="outside the lab"):
        fl.check_lab_target("192.0.2.1")
    with pytest.raises(ValueError, match="outside the lab"):
        fl.check_lab_target("2001:db8::1")
    # The test process runs in the host's netns, not in an `ip netns` one.
    with pytest.raises(ValueError, match="named network namespace"):
        fl.check_lab_target("10.77.2.1")
    r = subprocess.run([sys.executable, "-m", "synguard_lab.flood", "--iface", "lo",
                        "--dst-mac", "02:00:00:00:00:01", "--src-mac",
                        "02:00:00:00:00:02", "--dst", "192.0.2.1", "--count", "1",
                        "--seconds", "1"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2 and "outside the lab" in r.stderr


def test_flood_rejects_unbounded():
    with pytest.raises(ValueError):
        fl.flood("lo", dst="10.77.2.1", dst_mac="02:00:00:00:00:01",
                 src_mac="02:00:00:00:00:02", count=0, seconds=1)
    with pytest.raises(ValueError):
        fl.flood("lo", dst="10.77.2.1", dst_mac="02:00:00:00:00:01",
                 src_mac="02:00:00:00:00:02", count=10, seconds=0)


# --- the lab -------------------------------------------------------------------

@pytest.mark.netns
@needs_lab
@hard_timeout(60)
def test_lab_up_and_down():
    with Lab() as lab:
        names = set(lab.namespaces)
        assert names <= _netns_list()
        addrs = lab.run(lab.server_ns, ["ip", "-br", "addr"]).stdout
        for a in (labmod.SERVER_IP4, labmod.SERVER_IP6,
                  labmod.SERVER_ATTACKER_IP4, labmod.SERVER_ATTACKER_IP6):
            assert a + "/" in addrs
        route = lab.run(lab.server_ns, ["ip", "route", "show", "default"]).stdout
        assert f"via {labmod.ATTACKER_IP4} dev {lab.server_attacker_if}" in route
        route6 = lab.run(lab.server_ns, ["ip", "-6", "route", "show", "default"]).stdout
        assert f"via {labmod.ATTACKER_IP6} dev {lab.server_attacker_if}" in route6
        assert lab.run(lab.server_ns, ["sysctl", "-n", "net.ipv4.conf.all.rp_filter"]
                       ).stdout.strip() == "0"
        # XDP pass on both peer veths (needed for XDP_TX from the server side).
        for ns, ifname in ((lab.client_ns, lab.client_if),
                           (lab.attacker_ns, lab.attacker_if)):
            assert "prog/xdp" in lab.run(ns, ["ip", "link", "show", ifname]).stdout
        # Switching threads' netns and back.
        before = os.readlink("/proc/thread-self/ns/net")
        with lab.netns(lab.server_ns):
            assert os.readlink("/proc/thread-self/ns/net") != before
            assert os.path.exists(f"/proc/sys/net/ipv4/conf/{lab.server_attacker_if}")
        assert os.readlink("/proc/thread-self/ns/net") == before
        srv = lab.tcp_server(8081)
    assert not names & _netns_list()
    assert not _alive(srv.pid)
    lab.close()   # idempotent


@pytest.mark.netns
@needs_lab
@hard_timeout(60)
def test_lab_torn_down_when_body_raises():
    with pytest.raises(RuntimeError, match="boom"):
        with Lab(kill_grace=0.5) as lab:
            names = set(lab.namespaces)
            srv = lab.tcp_server(8082, mode="hold")
            # A process that ignores SIGTERM must still die (SIGKILL by PID).
            stubborn = lab.popen(lab.attacker_ns, [
                sys.executable, "-c",
                "import signal,time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
                "print('x', flush=True); time.sleep(600)"],
                stdout=subprocess.PIPE, text=True)
            assert stubborn.stdout.readline().strip() == "x"
            raise RuntimeError("boom")
    assert not names & _netns_list()
    assert not _alive(srv.pid) and not _alive(stubborn.pid)


@pytest.mark.netns
@needs_lab
@hard_timeout(60)
def test_client_connects():
    with Lab() as lab:
        lab.tcp_server(8080, backlog=128)
        for family in (4, 6):
            before = lab.netstat(lab.client_ns)["Tcp"]
            times = lab.connect_times(20, 8080, family=family, timeout=3)
            after = lab.netstat(lab.client_ns)["Tcp"]
            assert len(times) == 20 and all(t is not None for t in times), times
            # one round trip each, counted rather than timed: no SYN was retransmitted
            assert after["ActiveOpens"] - before["ActiveOpens"] == 20
            assert after["RetransSegs"] == before["RetransSegs"]
        # Nothing listens on 8083: refused at once, reported as None.
        assert lab.connect_times(2, 8083, timeout=1) == [None, None]
        echo = lab.tcp_server(8084, mode="echo")
        out = lab.run(lab.client_ns, [sys.executable, "-c",
                      "import socket; s=socket.create_connection(('%s',8084),3);"
                      "s.sendall(b'ping'); print(s.recv(4).decode())"
                      % labmod.SERVER_IP4]).stdout.strip()
        assert out == "ping"
        lab.stop(echo)
        assert not _alive(echo.pid)


@pytest.mark.netns
@needs_lab
@pytest.mark.parametrize("ipv6", [False, True], ids=["v4", "v6"])
@hard_timeout(90)
def test_flood_reaches_server(ipv6):
    """2000 spoofed SYNs, no XDP on the server: each one becomes either a
    SYN_RECV request socket or a syncookie, which also proves the frames
    arrive with valid checksums (the stack verifies them: CHECKSUM_NONE)."""
    port, backlog, count = 8080, 256, 2000
    with Lab() as lab:
        lab.tcp_server(port, backlog=backlog)
        before = lab.netstat(lab.server_ns)
        res = lab.flood(count, 10, dport=port, seed=42, ipv6=ipv6)
        assert res["sent"] == count and res["errors"] == 0
        assert 0 < res["seconds"] <= 10 and res["pps"] > 0
        after = lab.netstat(lab.server_ns)

        def delta(sect, key):
            return after[sect][key] - before[sect][key]

        syn_recv = lab.syn_recv_count(lab.server_ns, port)
        cookies = delta("TcpExt", "SyncookiesSent")
        assert syn_recv > 0 and cookies > 0, (syn_recv, cookies)
        assert syn_recv <= backlog + 1
        # Every SYN accounted for (a little slack for counter timing).
        assert syn_recv + cookies >= 0.98 * count, (syn_recv, cookies)
        assert delta("Tcp", "InCsumErrors") == 0
        assert delta("Tcp", "InSegs") >= count
        if not ipv6:
            assert delta("Ip", "InHdrErrors") == 0


@pytest.mark.netns
@needs_lab
@hard_timeout(60)
def test_flood_bounded_by_seconds_and_targets():
    with Lab() as lab:
        t0 = time.monotonic()
        res = lab.flood(10**9, 0.3, dport=9, seed=1, pool=4096)
        # the sender's own clock: it stopped at its 0.3-s bound (one more batch at most), far
        # from the 10**9 it was allowed; the wall-clock bound only catches a hang
        assert res["seconds"] < 0.3 + 1.0 and 0 < res["sent"] < 10**9
        assert time.monotonic() - t0 < 60
        # Few-source flood towards the server's client-side address (still
        # enters via s1); the kernel answers port 9 with RSTs.
        before = lab.netstat(lab.server_ns)["Tcp"]["OutRsts"]
        res = lab.flood(500, 5, dport=9, seed=2, sources=3,
                        dst=labmod.SERVER_IP4)
        assert res["sent"] == 500
        assert lab.netstat(lab.server_ns)["Tcp"]["OutRsts"] - before >= 490
        # Only the lab server's own addresses may be targeted.
        with pytest.raises(ValueError):
            lab.flood(10, 1, dst="192.0.2.1")
        with pytest.raises(ValueError):
            lab.flood(10, 0)
        # Background variant.
        p = lab.flood_start(1000, 5, dport=9, seed=3)
        assert lab.flood_result(p)["sent"] == 1000


_REFLECT_SRC = b"""
#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>
/* Send every IPv4 frame straight back (MACs swapped) with XDP_TX. */
int xdp_reflect(struct xdp_md *ctx) {
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    unsigned char tmp[ETH_ALEN];
    if ((void *)(eth + 1) > data_end)
        return XDP_PASS;
    if (eth->h_proto != htons(ETH_P_IP))
        return XDP_PASS;   /* ARP and the rest: not ours */
    __builtin_memcpy(tmp, eth->h_dest, ETH_ALEN);
    __builtin_memcpy(eth->h_dest, eth->h_source, ETH_ALEN);
    __builtin_memcpy(eth->h_source, tmp, ETH_ALEN);
    return XDP_TX;
}
"""


@pytest.mark.netns
@needs_lab
@hard_timeout(60)
def test_xdp_tx_from_server_reaches_attacker():
    """The pass program on a0 is what makes XDP_TX frames from s1 arrive."""
    import socket

    from bcc import BPF
    b = BPF(text=_REFLECT_SRC, cflags=["-Wno-ignored-attributes"])
    fn = b.load_func(b"xdp_reflect", BPF.XDP)
    try:
        with Lab() as lab:
            with lab.netns(lab.server_ns):
                BPF.attach_xdp(lab.server_attacker_if.encode(), fn,
                               labmod.XDP_FLAGS_DRV_MODE)
            with lab.netns(lab.attacker_ns):
                rx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW,
                                   socket.htons(0x0800))
            with rx:
                rx.bind((lab.attacker_if, 0))
                rx.settimeout(0.2)
                s1_mac = bytes.fromhex(
                    lab.mac(lab.server_ns, lab.server_attacker_if).replace(":", ""))
                res = lab.flood(20, 5, dport=7777, seed=5)
                assert res["sent"] == 20
                got = 0
                deadline = time.monotonic() + 5
                while got < 20 and time.monotonic() < deadline:
                    try:
                        frame, addr = rx.recvfrom(2048)
                    except socket.timeout:
                        continue
                    if (addr[2] != socket.PACKET_OUTGOING and frame[6:12] == s1_mac
                            and frame[23] == 6
                            and struct.unpack("!H", frame[36:38])[0] == 7777):
                        got += 1
                assert got == 20
            with lab.netns(lab.server_ns):
                BPF.remove_xdp(lab.server_attacker_if.encode(),
                               labmod.XDP_FLAGS_DRV_MODE)
    finally:
        b.cleanup()
