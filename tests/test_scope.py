"""Scope: the data path acts only for this host (ebpf/synguard_scope.h).

Layer 1 (BPF_PROG_TEST_RUN): with sg_config.local_only, a SYN to one of our addresses
is answered, a SYN or ACK to another address (also VLAN-tagged: this kernel has no
8021q link type, so a real VLAN sub-interface is left to the Debian-kernel guests),
or in a multicast/broadcast frame, passes untouched and counts NOT_LOCAL.

Layer 2 (netns + veth): XDP + tc on the lab server's s0 and s1, protect and auto mode
(port and out-of-state drops armed) on PORT, this host listening on PORT too, its
addresses kept by synguard.localaddrs as the daemon does. Through s0, a client
connects and transfers to
  - a container on a macvlan of s0 in its own netns,
  - a host routed behind the server (ip_forward),
  - a host behind a bridge whose port is protected (this host's own address on the bridge),
each listening on PORT: every connection works, while connections to this host are
still answered by XDP and completed from the cookie.
Extra namespaces are deleted in finally blocks; the Lab deletes its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time

import pytest

from frames import XDP_PASS, XDP_TX, eth, syn4, syn6
from helpers import hard_timeout

from synguard_lab import lab as labmod
from synguard.abi import Counter, Mode

PORT = 8080
OTHER4, OTHER6 = "198.51.100.99", "2001:db8:1::99"

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (BPF, XDP, network namespaces)"),
]


@pytest.fixture(scope="module")
def programs():
    from synguard.datapath import DataPath
    from synguard.datapath import tc as tcprog

    if not tcprog.kernel_has_kfunc():
        pytest.skip(f"kernel lacks {tcprog.KFUNC}")
    dp = DataPath()
    try:
        tc = tcprog.TcProgram({name: dp.map(name).map_fd for name in tcprog.SHARED_MAPS})
    except BaseException:
        dp.close()
        raise
    try:
        yield dp, tc
    finally:
        tc.close()
        dp.close()


def delta(dp, before):
    after = dp.counters()
    return {c: after[c] - before[c] for c in Counter if after[c] != before[c]}


# ---- layer 1: BPF_PROG_TEST_RUN ---------------------------------------------------------


@pytest.fixture
def unit(programs):
    from frames import SERVER4, SERVER6

    dp, tc = programs
    dp.set_slot_key(1, bytes(range(16)))
    dp.set_slot(1)
    dp.tick(1000)
    dp.set_synack(1460, 1440, 7, 0xF)
    dp.set_ports({80})
    dp.set_local_addrs([SERVER4, SERVER6])
    dp.set_mode(Mode.PROTECT)
    try:
        yield dp, tc
    finally:
        dp.set_mode(Mode.OBSERVE)
        dp.set_local_addrs([])


@pytest.mark.parametrize("ipv6", [False, True], ids=["v4", "v6"])
def test_syn_to_our_address_answered_other_address_passes(unit, ipv6):
    dp, _ = unit
    mk = syn6 if ipv6 else syn4
    before = dp.counters()
    assert dp.test_run(bytes(mk())).retval == XDP_TX
    assert delta(dp, before).get(Counter.CHALLENGE_SENT) == 1
    before = dp.counters()
    frame = bytes(mk(dst=OTHER6 if ipv6 else OTHER4))
    res = dp.test_run(frame)
    assert (res.retval, res.data) == (XDP_PASS, frame)
    assert delta(dp, before) == {Counter.PACKETS: 1, Counter.TCP: 1, Counter.NOT_LOCAL: 1}


@pytest.mark.parametrize("dst_mac", ["ff:ff:ff:ff:ff:ff", "01:00:5e:00:00:01", "33:33:00:00:00:01"])
def test_multicast_or_broadcast_frame_passes(unit, dst_mac):
    dp, _ = unit
    frame = syn4()
    frame.dst = dst_mac
    before = dp.counters()
    assert dp.test_run(bytes(frame)).retval == XDP_PASS
    assert delta(dp, before).get(Counter.NOT_LOCAL) == 1


def test_vlan_tagged_syn_and_ack_for_another_address_pass(unit):
    """No 8021q here: tagged frames for an address that is not ours pass both programs
    unanswered; tagged frames to our own address are still ours (a VLAN sub-interface
    of this netns would own it)."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Dot1Q

    dp, tc = unit
    tagged_syn = bytes(eth() / Dot1Q(vlan=7) / syn4(dst=OTHER4)[IP])
    tagged_ack = bytes(eth() / Dot1Q(vlan=7) / IP(src="192.0.2.10", dst=OTHER4)
                       / TCP(sport=40000, dport=80, flags="A", seq=5, ack=77))
    before = dp.counters()
    res = dp.test_run(tagged_syn)
    assert (res.retval, res.data) == (XDP_PASS, tagged_syn)
    res = tc.test_run(tagged_ack)
    assert res.retval == 0xFFFFFFFF and res.data == tagged_ack  # TC_ACT_UNSPEC, untouched
    d = delta(dp, before)
    assert d.get(Counter.NOT_LOCAL) == 2 and not d.get(Counter.CHALLENGE_SENT), d
    assert not any(d.get(c) for c in (Counter.ACK_CHECKED, Counter.OOS_ACK, Counter.OOS_DROPPED)), d
    before = dp.counters()
    assert dp.test_run(bytes(eth() / Dot1Q(vlan=7) / syn4()[IP])).retval == XDP_TX
    assert delta(dp, before).get(Counter.CHALLENGE_SENT) == 1


def test_local_addrs_follow_netlink(programs):
    """synguard.localaddrs: the first sync fills the map with this netns's addresses;
    an address added or removed later is followed at the next poll."""
    from synguard.localaddrs import LocalAddrs

    dp, _ = programs
    ns = f"sgscope-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "add", "d0", "type", "veth", "peer", "name", "d1"], check=True)
        subprocess.run(["ip", "-n", ns, "link", "set", "d0", "up"], check=True)
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        subprocess.run(["ip", "-n", ns, "addr", "add", "10.88.0.1/24", "dev", "d0"], check=True)
        with labmod.netns(ns):
            local = LocalAddrs(dp)
        try:
            local.sync()
            got = {str(a) for a in dp.local_addrs()}
            assert "10.88.0.1" in got and "127.0.0.1" in got, got
            assert dp.config()["local_only"] == 1
            subprocess.run(["ip", "-n", ns, "addr", "add", "10.89.0.2/24", "dev", "d0"], check=True)
            subprocess.run(["ip", "-n", ns, "addr", "del", "10.88.0.1/24", "dev", "d0"], check=True)
            deadline = time.monotonic() + 5
            while not local.poll() and time.monotonic() < deadline:
                time.sleep(0.05)
            got = {str(a) for a in dp.local_addrs()}
            assert "10.89.0.2" in got and "10.88.0.1" not in got, got
        finally:
            local.close()
            dp.set_local_addrs([])
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


# ---- layer 2: real topologies through the protected interface ---------------------------

_TRANSFER_CODE = r"""
import json, socket, sys, time
host, port, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
af = socket.AF_INET6 if ":" in host else socket.AF_INET
out = []
for i in range(n):
    s = socket.socket(af, socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        s.connect((host, port))
        data = bytes([i & 0xFF]) * size
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        got = b""
        while len(got) < size:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
        out.append(got == data)
    except OSError as e:
        out.append(str(e))
    finally:
        s.close()
print(json.dumps(out), flush=True)
"""


def transfer(lab, host: str, n: int = 5, size: int = 200_000) -> list:
    r = lab.run(lab.client_ns, [sys.executable, "-c", _TRANSFER_CODE, host, str(PORT), str(n), str(size)],
                timeout=n * 12 + 10)
    return json.loads(r.stdout)


@contextlib.contextmanager
def extra_netns(lab, role: str):
    name = f"{lab.id}-{role}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@contextlib.contextmanager
def macvlan_container(lab):
    """A container on a macvlan of s0, in its own netns: 10.77.1.50."""
    with extra_netns(lab, "ctr") as ns:
        lab._ip(lab.server_ns, ["link", "add", "mv0", "link", lab.server_client_if, "type", "macvlan",
                                "mode", "bridge"])
        lab._ip(lab.server_ns, ["link", "set", "mv0", "netns", ns])
        lab._batch(ns, ["link set mv0 up", "addr add 10.77.1.50/24 dev mv0",
                        f"route add default via {labmod.SERVER_IP4}"])
        yield ns, "10.77.1.50"


@contextlib.contextmanager
def routed_host(lab):
    """A host behind the server (ip_forward on): 10.77.3.2 via s2 10.77.3.1."""
    with extra_netns(lab, "rtd") as ns:
        lab._ip(lab.server_ns, ["link", "add", "s2", "type", "veth", "peer", "name", "r0", "netns", ns])
        lab._batch(lab.server_ns, ["link set s2 up", "addr add 10.77.3.1/24 dev s2"])
        lab._batch(ns, ["link set r0 up", "addr add 10.77.3.2/24 dev r0", "route add default via 10.77.3.1"])
        lab._sysctls(lab.server_ns, {"net/ipv4/ip_forward": 1, "net/ipv4/conf/s2/rp_filter": 0})
        try:
            yield ns, "10.77.3.2"
        finally:
            lab._sysctls(lab.server_ns, {"net/ipv4/ip_forward": 0})


@contextlib.contextmanager
def bridged_host(lab, dp, tc):
    """s0 becomes a port of br0 (this host's client-link addresses move to br0); a
    second port leads to a host at 10.77.1.60 in its own netns."""
    with extra_netns(lab, "brh") as ns:
        s = lab.server_ns
        lab._batch(s, ["link add br0 type bridge", "link set br0 up",
                       f"addr del {labmod.SERVER_IP4}/{labmod.PREFIX_LEN4} dev {lab.server_client_if}",
                       f"link set {lab.server_client_if} master br0",
                       f"addr add {labmod.SERVER_IP4}/{labmod.PREFIX_LEN4} dev br0"])
        lab._ip(s, ["link", "add", "s3", "type", "veth", "peer", "name", "h0", "netns", ns])
        lab._batch(s, ["link set s3 master br0", "link set s3 up"])
        lab._batch(ns, ["link set h0 up", "addr add 10.77.1.60/24 dev h0"])
        lab._sysctls(s, {"net/ipv4/conf/br0/rp_filter": 0})
        time.sleep(0.2)
        yield ns, "10.77.1.60"


@pytest.fixture
def lab_guarded(programs):
    """(lab, dp, local): XDP + tc on s0 and s1 (native), this host's addresses from
    netlink, protect mode on PORT, an echo listener of this host on PORT."""
    from synguard.localaddrs import LocalAddrs
    from synguard_lab.lab import Lab

    from test_handshake import Keys, server_synack_settings

    dp, tc = programs
    with Lab("sgsc") as lab:
        local = None
        try:
            with lab.netns(lab.server_ns):
                local = LocalAddrs(dp)
                local.sync()  # before attaching, as the daemon does
                for ifname in (lab.server_client_if, lab.server_attacker_if):
                    assert dp.attach(ifname, "native") == "native"
                    tc.attach(ifname)
            wscale, tcp_opts = server_synack_settings(lab)
            dp.set_synack(1460, 1440, wscale, tcp_opts)
            Keys(dp)
            dp.tick(int(time.time()))
            dp.set_ports({PORT})
            dp.set_mode(Mode.PROTECT)
            lab.tcp_server(PORT, mode="echo")
            yield lab, dp, local
        finally:
            dp.set_mode(Mode.OBSERVE)
            dp.set_oos_until(0)
            dp.arm_port(PORT, 0)
            if local is not None:
                local.close()
            dp.set_local_addrs([])
            for ifname in (lab.server_client_if, lab.server_attacker_if):
                tc.detach(ifname)
            with lab.netns(lab.server_ns):
                dp.detach_all()


def _set_mode(dp, mode: Mode) -> None:
    now = int(time.time())
    dp.tick(now)
    if mode == Mode.AUTO:  # armed: SYNs challenged, out-of-state segments dropped
        dp.arm_port(PORT, now + 120)
        dp.set_oos_until(now + 120)
    dp.set_mode(mode)


def _check_topology(lab, dp, local, target_ns: str, target_ip: str, host_protected: bool = True) -> dict:
    lab.tcp_server(PORT, ns=target_ns, mode="echo")
    with lab.netns(lab.server_ns):
        local.poll()  # addresses that moved (bridge) are followed, as each daemon tick does
    report = {}
    for mode in (Mode.PROTECT, Mode.AUTO):
        _set_mode(dp, mode)
        before = dp.counters()
        other = transfer(lab, target_ip)
        d_other = delta(dp, before)
        before = dp.counters()
        ours = transfer(lab, labmod.SERVER_IP4, n=2)
        d_ours = delta(dp, before)
        report[mode.label] = (other, ours, d_other, d_ours)
        print(mode.label, target_ip, other, ours, {c.name: v for c, v in d_other.items()}, {c.name: v for c, v in d_ours.items()})
        assert other == [True] * 5, (mode, target_ip, other, d_other)
        assert d_other.get(Counter.NOT_LOCAL, 0) >= 5 * 3, d_other  # SYNs and ACKs of 5 connections
        assert not d_other.get(Counter.CHALLENGE_SENT) and not d_other.get(Counter.COOKIE_VALIDATED), d_other
        assert not d_other.get(Counter.OOS_DROPPED), d_other
        if not host_protected:
            continue
        # This host is still protected: its connections start from a cookie SYN-ACK.
        assert ours == [True] * 2, (mode, ours, {c.name: v for c, v in d_ours.items()})
        assert d_ours.get(Counter.CHALLENGE_SENT, 0) >= 2 and d_ours.get(Counter.COOKIE_VALIDATED, 0) >= 2, d_ours
    return report


@hard_timeout(240)
def test_macvlan_container_connects(lab_guarded):
    lab, dp, local = lab_guarded
    with macvlan_container(lab) as (ns, ip):
        _check_topology(lab, dp, local, ns, ip)


@hard_timeout(240)
def test_routed_host_connects(lab_guarded):
    lab, dp, local = lab_guarded
    with routed_host(lab) as (ns, ip):
        _check_topology(lab, dp, local, ns, ip)


@hard_timeout(240)
def test_bridge_port_host_connects(lab_guarded, programs):
    """The host behind the bridge works in both modes. XXX (known gap, reported on issue
    18): this host's own address on br0, reached through the protected bridge port, is
    answered and its cookie ACK validated (bpf_sk_assign_tcp_reqsk returns 0), yet the
    kernel resets the connection once the skb has crossed the bridge: protect br0
    itself there (the README says so). Not asserted here."""
    lab, dp, local = lab_guarded
    with bridged_host(lab, *programs) as (ns, ip):
        _check_topology(lab, dp, local, ns, ip, host_protected=False)


@hard_timeout(120)
def test_without_scope_the_container_is_broken(lab_guarded):
    """The control: local_only off (what the issue found), the container's clients get
    our cookie SYN-ACK and their ACK goes to this host's listener: no transfer works."""
    lab, dp, local = lab_guarded
    with macvlan_container(lab) as (ns, ip):
        lab.tcp_server(PORT, ns=ns, mode="echo")
        dp._write_config(local_only=0)
        try:
            _set_mode(dp, Mode.PROTECT)
            got = transfer(lab, ip, n=2)
        finally:
            dp._write_config(local_only=1)
        assert True not in got, got
