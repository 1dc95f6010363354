/* SPDX-License-Identifier: GPL-2.0 */
/* Lab only (synguard_lab/lab.py): XDP_PASS on the peers of the server's veths.
 * veth delivers XDP_TX frames to a peer only when the peer runs an XDP program
 * (DESIGN.md, "veth + XDP_TX"). Never installed. */
int xdp_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}
