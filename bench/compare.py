#!/usr/bin/env python3
"""Scripted full-sync comparison: sluice vs kube-proxy's iptables and nftables layouts.

Builds one N Services x E endpoints TCP workload and loads it, in one run, five ways -- each
into its own FRESH network namespace (never the root namespace):

  id                 loader                                   layout
  sluice             <build>/bench/sluice-load                sluice (docs/design.md §3), libnftnl
  iptables-legacy    iptables-legacy-restore --counters       kube-proxy iptables mode (KUBE-SVC/SEP)
  iptables-nft       iptables-nft-restore    --counters       same input
  nft-kube-proxy     nft -f                                   kube-proxy nftables mode (prior-art §1.2-1.4)
  nft-lean           nft -f                                   performance.md's lean layout (context)

Each loader runs as `ip netns exec NS /usr/bin/time -f ... LOADER` in a namespace created for it
(`slbench-<pid>-<n>`) and deleted afterwards (also on failure, timeout, Ctrl-C and SIGTERM).
Reported per row: wall seconds of the loader process (measured around the process; includes
~2-5 ms of `ip netns exec` + `time` start-up), peak RSS (GNU time %M = ru_maxrss of the loader),
whether the load verifiably succeeded (exit code 0, then rule/chain/element counts read back
from the namespace), and the ratio to sluice.  sluice additionally reports its own sync time
(plan + encode + commit, desired state -> committed); P1 is judged on that number.

Workload (identical for every implementation; the same address plan as bench/workload.h, which
sluice-load uses):
  service i (0 <= i < N):   namespace "bench", name "svc-<i>", port name "http", TCP port 80,
                            ClusterIP = 198.18.0.0 + i               (N <= 16384)
  endpoint j of service i:  198.18.0.0 + 16384 + i*(E+1) + j, target port 8080, ready
                            (each Service owns E+1 slots: N*(E+1) <= 114688)
  cluster CIDR for the masquerade rules 198.18.0.0/15 (sluice-load's clusterCIDRs); node IP
  198.19.255.255 when free; masquerade mark 0x4000.  Every address is inside 198.18.0.0/15
  (RFC 2544 benchmarking range).  sluice-load also spreads endpoints over 100 nodes (it runs as
  node-0); with externalTrafficPolicy Cluster that changes no rule.

Defaults (CI-friendly: a default run at 1000 x 10 takes well under a minute):
  --services 1000 --endpoints 10 --out bench/results --repeat 1 --settle 1.0
  --max-seconds 60    each loader is killed after 60 s and its row reported as "> 60 s" (a
                      lower bound; ratios become ">= x").  kube-proxy's nftables layout needs
                      ~200 s and ~1 GB at 10000 x 10 (docs: shared/spec/performance.md), so use
                      --max-seconds 0 (no limit) or --max-seconds 300 for the full README table,
                      or --skip nft-kube-proxy to leave it out.
  --skip IDS          comma-separated ids from the table above (repeatable).
  --noflush           off: the iptables loaders run WITHOUT --noflush by default.  kube-proxy passes
                      --noflush, which changes nothing in an empty netns, but iptables-nft-restore
                      1.8.9 then spends O(n^2) user time in a linear name search (7 s at 1000x10,
                      755 s at 4000x10 on a 2-core VM; hours at 10000x10).  Without it the
                      baselines are faster, so ratios against sluice are conservative.
  --ladder 100,1000,10000   run every size in turn, then write <out>/full-sync.dat and, with
                      gnuplot, <out>/full-sync.svg (bench/plot.gp: load time vs services, log-log).

Outputs in --out: compare.json (all samples, host info), compare.md (one markdown table per
size), full-sync.dat / full-sync.svg (with --ladder).

Needs root (ip netns), iproute2, GNU time, nft, iptables (legacy + nft variants); Python 3
standard library only.  No traffic is sent.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import hashlib
import ipaddress
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

# --------------------------------------------------------------------------------------------
# Workload

# Same address plan as bench/workload.h (sluice-load): 198.18.0.0/15 = 131 072 addresses;
# Services take the first 16 384, endpoints the rest, each Service owning E+1 endpoint slots
# (the spare slot is the endpoint sluice-load adds for target P2).
PLAN_BASE = int(ipaddress.IPv4Address("198.18.0.0"))
PLAN_SIZE = 1 << 17
MAX_SERVICES = 16384
ENDPOINT_SLOTS = PLAN_SIZE - MAX_SERVICES  # 114 688
SERVICE_CIDR = "198.18.0.0/18"  # where the ClusterIPs live
CLUSTER_CIDR = "198.18.0.0/15"  # sluice-load's ProxyConfig.clusterCIDRs (masquerade detector)
NODE_IP = "198.19.255.255"  # last address of the plan; used only while no endpoint slot needs it
NAMESPACE = "bench"
PORT_NAME = "http"
SERVICE_PORT = 80
TARGET_PORT = 8080
MASQ_MARK = 0x4000
PROTO = "tcp"


def ip_str(n: int) -> str:
    return str(ipaddress.IPv4Address(n))


def cluster_ip(i: int) -> str:
    return ip_str(PLAN_BASE + i)


def endpoint_ip(i: int, j: int, per_service: int) -> str:
    return ip_str(PLAN_BASE + MAX_SERVICES + i * (per_service + 1) + j)


class Workload:
    def __init__(self, services: int, endpoints: int):
        if services < 1 or endpoints < 1:
            raise SystemExit("need at least 1 service and 1 endpoint")
        if services > MAX_SERVICES or services * (endpoints + 1) > ENDPOINT_SLOTS:
            raise SystemExit(f"workload larger than the 198.18.0.0/15 address plan: at most {MAX_SERVICES} "
                             f"services and services*(endpoints+1) <= {ENDPOINT_SLOTS}")
        self.n = services
        self.e = endpoints

    def services(self):
        """Yields (index, name, cluster_ip, [endpoint ips])."""
        e = self.e
        for i in range(self.n):
            yield i, f"svc-{i}", cluster_ip(i), [endpoint_ip(i, j, e) for j in range(e)]

    @property
    def node_ip(self) -> str | None:
        return NODE_IP if self.n * (self.e + 1) < ENDPOINT_SLOTS else None


class DataplaneWorkload(Workload):
    """The address plan of bench/dataplane_latency.cpp (bench/workload.h, dataplane*): ClusterIPs
    in the testbed's service range, the first and the last Service backed by the testbed's real
    backend pods, every other Service by addresses no packet is sent to.  Only the addresses
    differ from Workload; the rules generated from it have the same shape."""

    def __init__(self, services: int, endpoints: int):
        if services < 1 or services > 60000 or endpoints < 1 or endpoints > 50:
            raise SystemExit("dataplane plan: 1..60000 services, 1..50 endpoints")
        self.n = services
        self.e = endpoints

    def services(self):
        base_svc = int(ipaddress.IPv4Address("198.19.0.0"))
        base_dummy = int(ipaddress.IPv4Address("198.18.2.0"))
        dummies = 254 * 256  # 198.18.2.0 - 198.18.255.255
        for i in range(self.n):
            if i in (0, self.n - 1):
                eps = [f"198.18.1.{10 + b}" for b in range(1, self.e + 1)]
            else:
                eps = [ip_str(base_dummy + (i * self.e + j) % dummies) for j in range(self.e)]
            yield i, f"svc-{i}", ip_str(base_svc + i + 1), eps

    @property
    def node_ip(self) -> str | None:
        return None


def b32_sha256(s: str) -> str:
    return base64.b32encode(hashlib.sha256(s.encode()).digest()).decode()


# --------------------------------------------------------------------------------------------
# (b) kube-proxy iptables layout (pkg/proxy/iptables/proxier.go, syncProxyRules), as written to
# `iptables-restore --noflush --counters` on a full sync (see --noflush below).  Large-cluster mode (> 1000 endpoints)
# drops the per-endpoint comments exactly as kube-proxy does.

LARGE_CLUSTER_ENDPOINTS_THRESHOLD = 1000


class LineFile:
    """A generated loader input, written line by line, counting its lines."""

    def __init__(self, path: Path):
        self.f = open(path, "w")
        self.lines = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()

    def out(self, s: str):
        self.f.write(s)
        self.f.write("\n")
        self.lines += 1


def gen_iptables(w: Workload, path: Path) -> dict:
    mark = f"{MASQ_MARK:#08x}"  # kube-proxy formats with %#08x -> 0x004000
    large = w.n * w.e > LARGE_CLUSTER_ENDPOINTS_THRESHOLD
    counts = {"filter": 0, "nat": 0}
    with LineFile(path) as lf:
        def out(s: str, table: str | None = None):
            lf.out(s)
            if table and s.startswith(("-A ", "-I ")):
                counts[table] += 1

        # ---- filter
        out("*filter")
        for c in ("KUBE-NODEPORTS", "KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-FORWARD",
                  "KUBE-PROXY-FIREWALL"):
            out(f":{c} - [0:0]")
        # jumps from the built-in chains (kube-proxy ensures these with `iptables -I`)
        for chain, target, comment, extra in (
            ("INPUT", "KUBE-PROXY-FIREWALL", "kubernetes load balancer firewall", "-m conntrack --ctstate NEW "),
            ("INPUT", "KUBE-NODEPORTS", "kubernetes health check service ports", ""),
            ("INPUT", "KUBE-EXTERNAL-SERVICES", "kubernetes externally-visible service portals", "-m conntrack --ctstate NEW "),
            ("FORWARD", "KUBE-PROXY-FIREWALL", "kubernetes load balancer firewall", "-m conntrack --ctstate NEW "),
            ("FORWARD", "KUBE-FORWARD", "kubernetes forwarding rules", ""),
            ("FORWARD", "KUBE-SERVICES", "kubernetes service portals", "-m conntrack --ctstate NEW "),
            ("FORWARD", "KUBE-EXTERNAL-SERVICES", "kubernetes externally-visible service portals", "-m conntrack --ctstate NEW "),
            ("OUTPUT", "KUBE-PROXY-FIREWALL", "kubernetes load balancer firewall", "-m conntrack --ctstate NEW "),
            ("OUTPUT", "KUBE-SERVICES", "kubernetes service portals", "-m conntrack --ctstate NEW "),
        ):
            out(f'-A {chain} -m comment --comment "{comment}" {extra}-j {target}', "filter")
        out("-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP", "filter")
        out(f'-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" '
            f'-m mark --mark {mark}/{mark} -j ACCEPT', "filter")
        out('-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" '
            '-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT', "filter")
        out("COMMIT")

        # ---- nat
        out("*nat")
        for c in ("KUBE-NODEPORTS", "KUBE-SERVICES", "KUBE-MARK-MASQ", "KUBE-POSTROUTING"):
            out(f":{c} - [0:0]")
        for chain, target, comment in (
            ("PREROUTING", "KUBE-SERVICES", "kubernetes service portals"),
            ("OUTPUT", "KUBE-SERVICES", "kubernetes service portals"),
            ("POSTROUTING", "KUBE-POSTROUTING", "kubernetes postrouting rules"),
        ):
            out(f'-A {chain} -m comment --comment "{comment}" -j {target}', "nat")
        out(f"-A KUBE-POSTROUTING -m mark ! --mark {mark}/{mark} -j RETURN", "nat")
        out(f"-A KUBE-POSTROUTING -j MARK --xor-mark {mark}", "nat")
        out('-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" '
            '-j MASQUERADE --random-fully', "nat")
        out(f"-A KUBE-MARK-MASQ -j MARK --or-mark {mark}", "nat")

        # Chain declarations come first in kube-proxy's buffer (natChains), rules after.
        chains: list[str] = []
        rules: list[str] = []
        for _, name, cip, eps in w.services():
            spn = f"{NAMESPACE}/{name}:{PORT_NAME}"
            svc_chain = "KUBE-SVC-" + b32_sha256(spn + PROTO)[:16]
            chains.append(f":{svc_chain} - [0:0]")
            rules.append(f'-A KUBE-SERVICES -m comment --comment "{spn} cluster IP" -m {PROTO} -p {PROTO} '
                         f"-d {cip} --dport {SERVICE_PORT} -j {svc_chain}")
            # the ClusterIP masquerade rule (LocalTrafficDetector "IfNotLocal", --cluster-cidr set)
            rules.append(f'-A {svc_chain} -m comment --comment "{spn} cluster IP" -m {PROTO} -p {PROTO} '
                         f"-d {cip} --dport {SERVICE_PORT} ! -s {CLUSTER_CIDR} -j KUBE-MARK-MASQ")
            n = len(eps)
            sep_rules = []
            for j, ep in enumerate(eps):
                ep_str = f"{ep}:{TARGET_PORT}"
                sep = "KUBE-SEP-" + b32_sha256(spn + PROTO + ep_str)[:16]
                chains.append(f":{sep} - [0:0]")
                cmt = "" if large else f'-m comment --comment "{spn} -> {ep_str}" '
                if j < n - 1:
                    rules.append(f"-A {svc_chain} {cmt}-m statistic --mode random "
                                 f"--probability {1.0 / (n - j):0.10f} -j {sep}")
                else:
                    rules.append(f"-A {svc_chain} {cmt}-j {sep}")
                c2 = "" if large else f'-m comment --comment {spn} '
                sep_rules.append(f"-A {sep} {c2}-s {ep} -j KUBE-MARK-MASQ")
                sep_rules.append(f"-A {sep} {c2}-m {PROTO} -p {PROTO} -j DNAT --to-destination {ep_str}")
            rules.extend(sep_rules)
        rules.append('-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must '
                     'be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS')
        for c in chains:
            out(c)
        for r in rules:
            out(r, "nat")
        out("COMMIT")
    return {"lines": lf.lines, "bytes": path.stat().st_size, "rules": counts,
            "chains": {"nat": 4 + len(chains), "filter": 5}, "large_cluster_mode": large}


# --------------------------------------------------------------------------------------------
# (c) kube-proxy nftables layout (pkg/proxy/nftables/proxier.go), as the knftables transaction
# of a first full sync: one operation per line, fed to `nft -f`.

def kp_hash_and_truncate(name: str) -> str:
    h = b32_sha256(name)[:8] + "-" + name
    if len(h) > 240:
        h = h[:237] + "..."
    return h


def gen_nft_kube_proxy(w: Workload, path: Path) -> dict:
    T = "ip kube-proxy"
    chains = 0
    with LineFile(path) as lf:
        out = lf.out

        out(f'add table {T} {{ comment "rules for kube-proxy" ; }}')
        base = (
            ("filter-prerouting-pre-dnat", "filter", "prerouting", -110),
            ("filter-output-pre-dnat", "filter", "output", -110),
            ("filter-input", "filter", "input", 0),
            ("filter-forward", "filter", "forward", 0),
            ("filter-output", "filter", "output", 0),
            ("nat-prerouting", "nat", "prerouting", -100),
            ("nat-output", "nat", "output", -100),
            ("nat-postrouting", "nat", "postrouting", 100),
        )
        # first sync: add+delete each base chain so changed hook priorities apply
        for name, *_ in base:
            out(f"add chain {T} {name}")
            out(f"delete chain {T} {name}")
        for name, typ, hook, prio in base:
            out(f"add chain {T} {name} {{ type {typ} hook {hook} priority {prio} ; }}")
            out(f"flush chain {T} {name}")
            chains += 1
        statics = ("services", "service-endpoints-check", "nodeport-endpoints-check", "firewall-check",
                   "cluster-ips-check", "reject-chain", "mark-for-masquerade", "masquerading")
        for name in statics:
            if name == "reject-chain":
                out(f'add chain {T} {name} {{ comment "helper for @no-endpoint-services / @no-endpoint-nodeports" ; }}')
            else:
                out(f"add chain {T} {name}")
            out(f"flush chain {T} {name}")
            chains += 1
        jumps = (
            ("filter-prerouting-pre-dnat", "ct state new jump firewall-check"),
            ("filter-output-pre-dnat", "ct state new jump firewall-check"),
            ("filter-input", "ct state new jump nodeport-endpoints-check"),
            ("filter-input", "ct state new jump service-endpoints-check"),
            ("filter-forward", "ct state new jump service-endpoints-check"),
            ("filter-forward", "ct state new jump cluster-ips-check"),
            ("filter-output", "ct state new jump service-endpoints-check"),
            ("filter-output", "ct state new jump cluster-ips-check"),
            ("nat-prerouting", "jump services"),
            ("nat-output", "jump services"),
            ("nat-postrouting", "jump masquerading"),
        )
        for chain, rule in jumps:
            out(f"add rule {T} {chain} {rule}")
        out(f"add rule {T} reject-chain reject")
        out(f"add rule {T} mark-for-masquerade mark set mark or {MASQ_MARK:#x}")
        out(f"add rule {T} masquerading mark and {MASQ_MARK:#x} == 0 return")
        out(f"add rule {T} masquerading mark set mark xor {MASQ_MARK:#x}")
        out(f"add rule {T} masquerading masquerade fully-random")

        sets = (
            ("set", "cluster-ips", "ipv4_addr", "Active ClusterIPs"),
            ("set", "nodeport-ips", "ipv4_addr", "IPs that accept NodePort traffic"),
            ("map", "service-ips", "ipv4_addr . inet_proto . inet_service : verdict",
             "ClusterIP, ExternalIP and LoadBalancer IP traffic"),
            ("map", "service-nodeports", "inet_proto . inet_service : verdict", "NodePort traffic"),
            ("map", "no-endpoint-services", "ipv4_addr . inet_proto . inet_service : verdict",
             "vmap to drop or reject packets to services with no endpoints"),
            ("map", "no-endpoint-nodeports", "inet_proto . inet_service : verdict",
             "vmap to drop or reject packets to service nodeports with no endpoints"),
            ("map", "firewall-ips", "ipv4_addr . inet_proto . inet_service : verdict",
             "destinations that are subject to LoadBalancerSourceRanges"),
        )
        for kind, name, typ, comment in sets:
            out(f'add {kind} {T} {name} {{ type {typ} ; comment "{comment}" ; }}')
            out(f"flush {kind} {T} {name}")
        out(f"add rule {T} services ip daddr . meta l4proto . th dport vmap @service-ips")
        out(f"add rule {T} services ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports")
        if w.node_ip:
            out(f"add element {T} nodeport-ips {{ {w.node_ip} }}")
        out(f"add rule {T} service-endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services")
        out(f"add rule {T} nodeport-endpoints-check ip daddr @nodeport-ips meta l4proto . th dport "
            f"vmap @no-endpoint-nodeports")
        out(f"add rule {T} firewall-check ip daddr . meta l4proto . th dport vmap @firewall-ips")
        out(f'add rule {T} cluster-ips-check ip daddr @cluster-ips reject comment '
            f'"Reject traffic to invalid ports of ClusterIPs"')
        out(f'add rule {T} cluster-ips-check ip daddr {{ {SERVICE_CIDR} }} drop comment '
            f'"Drop traffic to unallocated ClusterIPs"')

        for _, name, cip, eps in w.services():
            base_name = f"{NAMESPACE}/{name}/{PROTO}/{PORT_NAME}"
            svc_chain = "service-" + kp_hash_and_truncate(base_name)
            ep_chains = [("endpoint-" + kp_hash_and_truncate(f"{base_name}__{ep}/{TARGET_PORT}"), ep)
                         for ep in eps]
            # endpoint chains first: the service chain's vmap refers to them
            for c, ep in ep_chains:
                out(f"add chain {T} {c}")
                out(f"flush chain {T} {c}")
                out(f"add rule {T} {c} ip saddr {ep} jump mark-for-masquerade")
                out(f"add rule {T} {c} meta l4proto {PROTO} dnat to {ep}:{TARGET_PORT}")
                chains += 1
            out(f"add chain {T} {svc_chain}")
            out(f"flush chain {T} {svc_chain}")
            out(f"add rule {T} {svc_chain} ip daddr {cip} ip saddr != {CLUSTER_CIDR} jump mark-for-masquerade")
            vm = " , ".join(f"{j} : goto {c}" for j, (c, _) in enumerate(ep_chains))
            out(f"add rule {T} {svc_chain} numgen random mod {len(ep_chains)} vmap {{ {vm} }}")
            chains += 1
            out(f"add element {T} cluster-ips {{ {cip} }}")
            out(f"add element {T} service-ips {{ {cip} . {PROTO} . {SERVICE_PORT} : goto {svc_chain} }}")
    return {"lines": lf.lines, "bytes": path.stat().st_size, "chains": chains,
            "table": ("ip", "kube-proxy"), "service_ips": w.n}


# --------------------------------------------------------------------------------------------
# (d) performance.md's "lean" layout (sluice's first design, before the kernel costs of inline
# anonymous maps were measured; docs/design.md §3) written as nft text: one chain per
# Service port with an inline `numgen random mod N map` of address . port, hairpin set.

def gen_nft_lean(w: Workload, path: Path) -> dict:
    T = "ip lean"
    chains = 0
    with LineFile(path) as lf:
        out = lf.out

        out(f"add table {T}")
        base = (
            ("filter-prerouting-pre-dnat", "filter", "prerouting", -110, None),
            ("filter-output-pre-dnat", "filter", "output", -110, None),
            ("nat-prerouting", "nat", "prerouting", -100, ["jump services"]),
            ("nat-output", "nat", "output", -100, ["jump services"]),
            ("filter-input", "filter", "input", 0, ["ct state new jump service-endpoints-check"]),
            ("filter-forward", "filter", "forward", 0, ["ct state new jump service-endpoints-check",
                                                        "ct state new jump cluster-ips-check"]),
            ("filter-output", "filter", "output", 0, ["ct state new jump service-endpoints-check",
                                                      "ct state new jump cluster-ips-check"]),
            ("nat-postrouting", "nat", "postrouting", 100, ["jump masquerading"]),
        )
        out(f"add set {T} cluster-ips {{ type ipv4_addr ; }}")
        out(f"add map {T} service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; }}")
        out(f"add map {T} no-endpoint-services {{ type ipv4_addr . inet_proto . inet_service : verdict ; }}")
        out(f"add set {T} hairpin {{ type ipv4_addr . ipv4_addr ; }}")
        for name in ("services", "service-endpoints-check", "cluster-ips-check", "reject-chain", "masquerading"):
            out(f"add chain {T} {name}")
            chains += 1
        out(f"add rule {T} services ip daddr . meta l4proto . th dport vmap @service-ips")
        out(f"add rule {T} service-endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services")
        out(f"add rule {T} cluster-ips-check ip daddr @cluster-ips reject")
        out(f"add rule {T} reject-chain reject")
        out(f"add rule {T} masquerading meta mark & {MASQ_MARK:#x} == 0 return")
        out(f"add rule {T} masquerading meta mark set meta mark ^ {MASQ_MARK:#x}")
        out(f"add rule {T} masquerading masquerade fully-random")
        # (the hairpin rule sits in the chain after the mark test in design.md; it is placed in
        # the base chain here so that it is reached for unmarked packets too)
        for name, typ, hook, prio, rules in base:
            out(f"add chain {T} {name} {{ type {typ} hook {hook} priority {prio} ; }}")
            chains += 1
            for r in rules or ():
                out(f"add rule {T} {name} {r}")
        out(f"add rule {T} nat-postrouting ct status dnat ip saddr . ip daddr @hairpin masquerade fully-random")

        for _, name, cip, eps in w.services():
            key = f"{NAMESPACE}/{name}/{PROTO}/{PORT_NAME}"
            chain = "svc-" + b32_sha256(key)[:8] + "-" + key
            out(f"add chain {T} {chain}")
            chains += 1
            out(f"add rule {T} {chain} ip saddr != {CLUSTER_CIDR} meta mark set meta mark | {MASQ_MARK:#x}")
            m = ", ".join(f"{j} : {ep} . {TARGET_PORT}" for j, ep in enumerate(eps))
            out(f"add rule {T} {chain} meta l4proto {PROTO} dnat ip to numgen random mod {len(eps)} map {{ {m} }}")
            out(f"add element {T} cluster-ips {{ {cip} }}")
            out(f"add element {T} service-ips {{ {cip} . {PROTO} . {SERVICE_PORT} : goto {chain} }}")
            out(f"add element {T} hairpin {{ {', '.join(f'{ep} . {ep}' for ep in dict.fromkeys(eps))} }}")
    return {"lines": lf.lines, "bytes": path.stat().st_size, "chains": chains,
            "table": ("ip", "lean"), "service_ips": w.n}


# --------------------------------------------------------------------------------------------
# Namespaces and measured runs

class Interrupted(Exception):
    pass


def _on_sigterm(signum, frame):
    raise Interrupted(f"signal {signum}")


class Namespaces:
    """Creates uniquely named namespaces and guarantees their deletion."""

    def __init__(self):
        self.prefix = f"slbench-{os.getpid()}"
        self.counter = 0
        self.live: set[str] = set()

    def create(self) -> str:
        self.counter += 1
        name = f"{self.prefix}-{self.counter}"
        subprocess.run(["ip", "netns", "add", name], check=True)
        self.live.add(name)
        # loopback up, as in any pod/node namespace (nothing else is configured)
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=False)
        return name

    def delete(self, name: str):
        if name in self.live:
            r = subprocess.run(["ip", "netns", "del", name], capture_output=True, text=True)
            if r.returncode != 0:
                print(f"warning: ip netns del {name}: {r.stderr.strip()}", file=sys.stderr)
            self.live.discard(name)

    def delete_all(self):
        for name in sorted(self.live):
            self.delete(name)

    def exec_argv(self, ns: str, argv: list[str]) -> list[str]:
        # Safety: every command that touches netfilter goes through `ip netns exec` into a
        # namespace this process created and still owns.
        if ns not in self.live or not ns.startswith(self.prefix + "-"):
            raise RuntimeError(f"refusing to run in namespace {ns!r} (not created by this run)")
        return ["ip", "netns", "exec", ns] + argv


TIME_FMT = "SLBENCH elapsed=%e maxrss_kb=%M user=%U sys=%S exit=%x"


def measured_run(nss: Namespaces, ns: str, argv: list[str], stdin_path: Path | None, timeout: float,
                 workdir: Path) -> dict:
    """Runs argv inside ns under /usr/bin/time; returns wall/rss/exit and captured output."""
    tfile = workdir / f"time-{ns}.txt"
    full = nss.exec_argv(ns, ["/usr/bin/time", "-f", TIME_FMT, "-o", str(tfile), "--"] + argv)
    stdin = open(stdin_path, "rb") if stdin_path else subprocess.DEVNULL
    out_path = workdir / f"out-{ns}.txt"
    err_path = workdir / f"err-{ns}.txt"
    res: dict = {"argv": argv, "timed_out": False}
    try:
        with open(out_path, "wb") as fo, open(err_path, "wb") as fe:
            t0 = time.perf_counter()
            p = subprocess.Popen(full, stdin=stdin, stdout=fo, stderr=fe, start_new_session=True)
            # A blocking wait: Popen.wait(timeout=) polls with sleeps of up to 50 ms, which
            # would quantise the measured wall time.  The timeout is a timer thread instead.
            timer = None
            if timeout > 0:
                def expire():
                    res["timed_out"] = True
                    try:
                        os.killpg(p.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                timer = threading.Timer(timeout, expire)
                timer.daemon = True
                timer.start()
            try:
                p.wait()
                res["wall_seconds"] = time.perf_counter() - t0
                if timer:
                    timer.cancel()
            except BaseException:
                if timer:
                    timer.cancel()
                # Ctrl-C / SIGTERM: end our own process group, then let the caller clean up
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait()
                raise
    finally:
        if stdin_path:
            stdin.close()
    res["returncode"] = p.returncode
    res["stdout"] = out_path.read_text(errors="replace")
    res["stderr"] = err_path.read_text(errors="replace")
    tt = tfile.read_text(errors="replace") if tfile.exists() else ""
    m = re.search(r"SLBENCH elapsed=([\d.]+) maxrss_kb=(\d+) user=([\d.]+) sys=([\d.]+) exit=(\d+)", tt)
    if m:
        res.update(time_elapsed=float(m.group(1)), peak_rss_kb=int(m.group(2)),
                   user_seconds=float(m.group(3)), sys_seconds=float(m.group(4)),
                   exit_code=int(m.group(5)))
    if "terminated by signal" in tt:
        res["signal"] = tt.strip().splitlines()[0]
    for pth in (tfile, out_path, err_path):
        pth.unlink(missing_ok=True)
    return res


def ns_cmd(nss: Namespaces, ns: str, argv: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(nss.exec_argv(ns, argv), capture_output=True, text=True, timeout=timeout)


# --------------------------------------------------------------------------------------------
# Verification (not timed)

def verify_iptables(nss, ns, save_cmd, meta) -> dict:
    r = ns_cmd(nss, ns, [save_cmd])
    if r.returncode != 0:
        return {"ok": False, "why": f"{save_cmd} failed: {r.stderr.strip()[:200]}"}
    table = None
    got = {"filter": 0, "nat": 0}
    chains = {"filter": 0, "nat": 0}
    for line in r.stdout.splitlines():
        if line.startswith("*"):
            table = line[1:]
        elif table in got and line.startswith("-A "):
            got[table] += 1
        elif table in chains and line.startswith(":KUBE-"):
            chains[table] += 1
    want = meta["rules"]
    ok = got == want and chains == meta["chains"]
    return {"ok": ok, "rules": got, "chains": chains,
            **({} if ok else {"why": f"expected rules {want} chains {meta['chains']}"})}


def verify_nft(nss, ns, family, table, want_chains, want_service_ips) -> dict:
    r = ns_cmd(nss, ns, ["nft", "-j", "list", "chains", family])
    if r.returncode != 0:
        return {"ok": False, "why": f"nft list chains failed: {r.stderr.strip()[:300]}"}
    try:
        objs = json.loads(r.stdout)["nftables"]
    except (ValueError, KeyError) as e:
        return {"ok": False, "why": f"nft -j list chains: bad JSON ({e})"}
    chains = sum(1 for o in objs if "chain" in o and o["chain"].get("table") == table)
    r = ns_cmd(nss, ns, ["nft", "-j", "list", "map", family, table, "service-ips"])
    if r.returncode != 0:
        return {"ok": False, "chains": chains, "why": f"nft list map service-ips failed: {r.stderr.strip()[:300]}"}
    try:
        objs = json.loads(r.stdout)["nftables"]
        elems = sum(len(o["map"].get("elem", [])) for o in objs if "map" in o)
    except (ValueError, KeyError) as e:
        return {"ok": False, "chains": chains, "why": f"nft -j list map: bad JSON ({e})"}
    ok = elems == want_service_ips and (chains == want_chains if want_chains is not None else chains >= want_service_ips)
    res = {"ok": ok, "chains": chains, "service_ips": elems}
    if not ok:
        res["why"] = f"expected chains {want_chains if want_chains is not None else '>= N'}, service-ips {want_service_ips}"
    return res


# --------------------------------------------------------------------------------------------
# Implementations

IMPLS = {
    # id: label
    "sluice": "sluice (sluice-load, libnftnl)",
    "iptables-legacy": "iptables-legacy-restore (kube-proxy iptables layout)",
    "iptables-nft": "iptables-nft-restore (kube-proxy iptables layout)",
    "nft-kube-proxy": "nft -f (kube-proxy nftables layout)",
    "nft-lean": "nft -f (lean layout of performance.md)",
}
ORDER = ["iptables-legacy", "iptables-nft", "nft-lean", "nft-kube-proxy", "sluice"]


def sluice_binary(build: str | None) -> Path | None:
    if not build:
        return None
    p = Path(build) / "bench" / "sluice-load"
    return p if p.is_file() and os.access(p, os.X_OK) else None


def run_one(impl: str, w: Workload, inputs: dict, args, nss: Namespaces, workdir: Path) -> dict:
    ns = nss.create()
    try:
        stdin_path = None
        if impl in ("iptables-legacy", "iptables-nft"):
            argv = [f"{impl}-restore", "-w", "5", "--counters"] + (["--noflush"] if args.noflush else [])
            stdin_path = inputs["iptables"][0]
        elif impl == "nft-kube-proxy":
            argv = ["nft", "-f", str(inputs["nft-kube-proxy"][0])]
        elif impl == "nft-lean":
            argv = ["nft", "-f", str(inputs["nft-lean"][0])]
        elif impl == "sluice":
            # sluice-load enters --netns itself; it is started inside the namespace as well so
            # that nothing can reach the root namespace even if it did not.
            argv = [str(sluice_binary(args.build)), "--services", str(w.n), "--endpoints", str(w.e),
                    "--netns", ns]
        else:
            raise ValueError(impl)
        r = measured_run(nss, ns, argv, stdin_path, args.max_seconds, workdir)
        r["netns"] = ns
        if r["timed_out"]:
            r["status"] = "timeout"
        elif r["returncode"] != 0:
            r["status"] = "failed"
        else:
            r["status"] = "ok"
        if impl == "sluice" and r["status"] == "ok":
            rep = None
            for line in reversed(r["stdout"].splitlines()):
                line = line.strip()
                if line.startswith("{"):
                    try:
                        rep = json.loads(line)
                        break
                    except ValueError:
                        pass
            if rep is None or "seconds" not in rep:
                r["status"] = "failed"
                r["why"] = "sluice-load printed no JSON line with 'seconds'"
            else:
                r["sluice"] = rep
                if rep.get("services") not in (None, w.n) or rep.get("endpoints") not in (None, w.e):
                    r["status"] = "failed"
                    r["why"] = f"sluice-load reported a different workload: {rep}"
        if r["status"] == "ok" and not args.no_verify:
            if impl == "iptables-legacy":
                r["verify"] = verify_iptables(nss, ns, "iptables-legacy-save", inputs["iptables"][1])
            elif impl == "iptables-nft":
                r["verify"] = verify_iptables(nss, ns, "iptables-nft-save", inputs["iptables"][1])
            elif impl in ("nft-kube-proxy", "nft-lean"):
                meta = inputs[impl][1]
                r["verify"] = verify_nft(nss, ns, meta["table"][0], meta["table"][1], meta["chains"], w.n)
            elif impl == "sluice":
                r["verify"] = verify_nft(nss, ns, "ip", "sluice", None, w.n)
            if not r["verify"]["ok"]:
                r["status"] = "failed"
                r["why"] = "verify: " + r["verify"].get("why", "?")
        if r["status"] == "failed" and "why" not in r:
            tail = [ln.strip()[:160] for ln in (r["stderr"].strip().splitlines() or ["(no stderr)"])[-3:]]
            r["why"] = f"exit {r['returncode']}: " + " | ".join(tail)
        # keep the JSON small
        r["stdout"] = r["stdout"][-2000:]
        r["stderr"] = r["stderr"][-2000:]
        return r
    finally:
        nss.delete(ns)
        if args.settle > 0:
            time.sleep(args.settle)  # let the kernel tear the namespace down before the next load


def summarize(samples: list[dict]) -> dict:
    ok = [s for s in samples if s["status"] == "ok"]
    if not ok:
        worst = samples[-1]
        return {"status": worst["status"], "why": worst.get("why", ""),
                "wall_seconds": worst.get("wall_seconds"), "peak_rss_kb": worst.get("peak_rss_kb")}
    res = {"status": "ok",
           "wall_seconds": statistics.median(s["wall_seconds"] for s in ok),
           "wall_seconds_min": min(s["wall_seconds"] for s in ok),
           "peak_rss_kb": int(statistics.median(s["peak_rss_kb"] for s in ok if "peak_rss_kb" in s))
           if any("peak_rss_kb" in s for s in ok) else None}
    if any("sluice" in s for s in ok):
        rep = [s["sluice"] for s in ok]
        res["sync_seconds"] = statistics.median(x["seconds"] for x in rep)
        for k in ("plan_seconds", "commit_seconds", "build_seconds", "change_p50_seconds", "change_max_seconds",
                  "peak_rss_kb", "messages", "bytes", "operations"):
            vals = [x[k] for x in rep if isinstance(x.get(k), (int, float))]
            if vals:
                res["reported_" + k] = (statistics.median(vals) if k.endswith("seconds")
                                        else statistics.median_low(vals))
    if len(ok) < len(samples):
        res["failed_samples"] = len(samples) - len(ok)
    return res


# --------------------------------------------------------------------------------------------
# Report

def fmt_s(x):
    if x is None:
        return "–"
    return f"{x:.3f}" if x < 10 else f"{x:.1f}"


def fmt_mb(kb):
    return "–" if kb is None else f"{kb / 1024:.0f}" if kb >= 10240 else f"{kb / 1024:.1f}"


def ratio(a, b, lower_bound=False):
    if a is None or b is None or b <= 0:
        return "–"
    r = a / b
    s = f"{r:.0f}×" if r >= 10 else f"{r:.1f}×"
    return ("≥ " if lower_bound else "") + s


def build_table(size_res: dict, args) -> tuple[str, dict]:
    rows = size_res["results"]
    sl = rows.get("sluice", {})
    sl_sync = sl.get("sync_seconds") if sl.get("status") == "ok" else None
    sl_proc = sl.get("wall_seconds") if sl.get("status") == "ok" else None
    legacy = rows.get("iptables-legacy", {})
    leg_t = legacy.get("wall_seconds") if legacy.get("status") in ("ok", "timeout") else None
    n, e = size_res["services"], size_res["endpoints"]
    out = [f"### Full sync, {n} Services × {e} endpoints ({n * e} endpoints), fresh netns each\n",
           "| implementation | wall s | peak RSS MiB | ÷ sluice sync | ÷ sluice process | vs iptables-legacy | notes |",
           "|---|---:|---:|---:|---:|---:|---|"]
    for impl in ORDER:
        if impl not in rows:
            continue
        r = rows[impl]
        st = r["status"]
        label = IMPLS[impl]
        if st in ("skipped", "missing"):
            out.append(f"| {label} | – | – | – | – | – | {r.get('why', st)} |")
            continue
        t = r.get("wall_seconds")
        lb = st == "timeout"
        tt = (f"> {args.max_seconds:g}" if lb else fmt_s(t)) if st != "failed" else "FAILED"
        notes = []
        if st == "failed":
            notes.append(r.get("why", ""))
        if impl == "sluice" and st == "ok":
            notes.append(f"sync {fmt_s(r.get('sync_seconds'))} s (plan {fmt_s(r.get('reported_plan_seconds'))}, "
                         f"commit {fmt_s(r.get('reported_commit_seconds'))}), "
                         f"{r.get('reported_messages', '?')} msgs, {r.get('reported_bytes', '?')} B, "
                         f"VmHWM {fmt_mb(r.get('reported_peak_rss_kb'))} MiB")
            if r.get("reported_change_p50_seconds") is not None:
                notes.append(f"one-endpoint change p50 {r['reported_change_p50_seconds'] * 1e3:.2f} ms")
        inp = size_res["inputs"].get({"iptables-legacy": "iptables", "iptables-nft": "iptables"}.get(impl, impl))
        if inp:
            notes.append(f"{inp['lines']} lines")
        if impl.startswith("iptables-"):
            notes.append("--noflush" if args.noflush else "without --noflush")
        if r.get("failed_samples"):
            notes.append(f"{r['failed_samples']} failed samples")
        ok_or_lb = st in ("ok", "timeout")
        out.append("| {} | {} | {} | {} | {} | {} | {} |".format(
            label, tt, fmt_mb(r.get("peak_rss_kb")) if st == "ok" else "–",
            "–" if impl == "sluice" or not ok_or_lb else ratio(t, sl_sync, lb),
            "–" if impl == "sluice" or not ok_or_lb else ratio(t, sl_proc, lb),
            "–" if impl == "iptables-legacy" or not ok_or_lb or leg_t is None else
            f"{t / leg_t:.2f}" + ("+" if lb else ""),
            "; ".join(x for x in notes if x)))
    # Targets
    p1 = {"applies": (n, e) == (10000, 10), "sluice_sync_seconds": sl_sync,
          "legacy_seconds": leg_t}
    lines = []
    hdr = "P1 (10000×10: sluice sync ≤ 0.5 s and ≥ 25× faster than iptables-legacy-restore)"
    if not p1["applies"]:
        hdr += f" — informational at {n}×{e}"
    lines.append(hdr + ":")
    if sl_sync is None:
        lines.append("  sluice: no result (sluice-load not built or failed) — target not evaluated")
        p1["time_met"] = p1["ratio_met"] = None
    else:
        p1["time_met"] = sl_sync <= 0.5
        lines.append(f"  sluice sync {sl_sync:.3f} s ≤ 0.5 s: {'MET' if p1['time_met'] else 'NOT MET'}")
        if leg_t is None:
            p1["ratio_met"] = None
            lines.append("  iptables-legacy-restore: no result — ratio not evaluated")
        else:
            p1["ratio"] = leg_t / sl_sync
            p1["ratio_met"] = p1["ratio"] >= 25
            lines.append(f"  iptables-legacy-restore / sluice = {p1['ratio']:.1f}× "
                         f"(≥ 25×): {'MET' if p1['ratio_met'] else 'NOT MET'}")
            if sl_proc:
                lines.append(f"  (whole sluice-load process {sl_proc:.3f} s: "
                             f"iptables-legacy-restore / process = {leg_t / sl_proc:.1f}×)")
    text = "\n".join(out) + "\n\n" + "\n".join(lines) + "\n"
    return text, p1


def host_info() -> dict:
    def ver(argv):
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip().splitlines()[0]
        except Exception as e:  # noqa: BLE001
            return f"? ({e})"
    mem = ""
    try:
        mem = next(l for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal"))
    except Exception:  # noqa: BLE001
        pass
    return {"kernel": platform.release(), "cpus": os.cpu_count(), "mem": mem,
            "nft": ver(["nft", "--version"]), "iptables": ver(["iptables-legacy-restore", "--version"]),
            "iptables_nft": ver(["iptables-nft-restore", "--version"]), "python": platform.python_version()}


def write_ladder(outdir: Path, all_sizes: list[dict], script_dir: Path) -> Path:
    dat = outdir / "full-sync.dat"
    cols = ["sluice_sync", "sluice_process", "iptables-legacy", "iptables-nft", "nft-kube-proxy", "nft-lean"]
    with open(dat, "w") as f:
        f.write("# load time (s) of one full sync into a fresh netns; NaN = not run / failed / timed out\n")
        f.write("services endpoints " + " ".join(cols) + "\n")
        for s in sorted(all_sizes, key=lambda x: x["services"]):
            rs = s["results"]
            vals = []
            for c in cols:
                if c == "sluice_sync":
                    r, k = rs.get("sluice", {}), "sync_seconds"
                elif c == "sluice_process":
                    r, k = rs.get("sluice", {}), "wall_seconds"
                else:
                    r, k = rs.get(c, {}), "wall_seconds"
                v = r.get(k) if r.get("status") == "ok" else None
                vals.append("NaN" if v is None else f"{v:.6f}")
            f.write(f"{s['services']} {s['endpoints']} " + " ".join(vals) + "\n")
    return dat


def run_gnuplot(outdir: Path, dat: Path, script_dir: Path):
    gp = shutil.which("gnuplot")
    if not gp:
        print("gnuplot not found: skipping the SVG (install gnuplot-nox)")
        return
    svg = outdir / "full-sync.svg"
    r = subprocess.run([gp, "-e", f"datafile='{dat}'; outfile='{svg}'", str(script_dir / "plot.gp")],
                       capture_output=True, text=True)
    if r.returncode != 0:
        print(f"gnuplot failed: {r.stderr.strip()}")
    else:
        print(f"wrote {svg}")


# --------------------------------------------------------------------------------------------

def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="See the module docstring / bench/README.md for the workload and defaults.")
    ap.add_argument("--build", help="CMake build directory (expects <build>/bench/sluice-load)")
    ap.add_argument("--services", type=int, default=1000)
    ap.add_argument("--endpoints", type=int, default=10)
    ap.add_argument("--ladder", help="comma-separated service counts, e.g. 100,1000,10000 (overrides --services)")
    ap.add_argument("--out", default=None, help="output directory (default: bench/results next to this script)")
    ap.add_argument("--skip", action="append", default=[], help="comma-separated ids: " + ", ".join(IMPLS))
    ap.add_argument("--repeat", type=int, default=1, help="loads per implementation and size (median reported)")
    ap.add_argument("--max-seconds", type=float, default=60.0,
                    help="kill a loader after this many seconds (0 = no limit); default 60")
    ap.add_argument("--settle", type=float, default=1.0, help="seconds to wait after deleting a namespace")
    ap.add_argument("--noflush", action="store_true",
                    help="run the iptables loaders with --noflush, exactly as kube-proxy does (default: "
                         "without; same result in a fresh netns, but iptables-nft-restore 1.8.9 is "
                         "quadratic with --noflush: 7 s at 1000x10, 755 s at 4000x10)")
    ap.add_argument("--no-verify", action="store_true", help="skip reading the loaded rules back")
    ap.add_argument("--keep-inputs", action="store_true", help="keep the generated restore/nft files in --out/inputs")
    ap.add_argument("--emit-iptables", metavar="FILE",
                    help="only write the kube-proxy iptables-restore input for --services x --endpoints to FILE "
                         "and exit (no root needed); used by bench/dataplane_latency.cpp")
    ap.add_argument("--plan", choices=("compare", "dataplane"), default="compare",
                    help="address plan for --emit-iptables: this script's (workload.h) or the data-plane "
                         "benchmark's (testbed addresses)")
    return ap.parse_args()


def main() -> int:
    args = parse_args()
    if args.emit_iptables:
        w = (DataplaneWorkload if args.plan == "dataplane" else Workload)(args.services, args.endpoints)
        info = gen_iptables(w, Path(args.emit_iptables))
        print(json.dumps(info))
        return 0
    script_dir = Path(__file__).resolve().parent
    outdir = Path(args.out) if args.out else script_dir / "results"
    outdir.mkdir(parents=True, exist_ok=True)
    skip = {s.strip() for arg in args.skip for s in arg.split(",") if s.strip()}
    unknown = skip - set(IMPLS)
    if unknown:
        raise SystemExit(f"unknown --skip ids: {', '.join(sorted(unknown))} (known: {', '.join(IMPLS)})")
    sizes = [int(x) for x in args.ladder.split(",")] if args.ladder else [args.services]
    if os.geteuid() != 0:
        raise SystemExit("needs root (ip netns add)")
    for tool in ("ip", "/usr/bin/time"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} not found")

    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGHUP, _on_sigterm)
    nss = Namespaces()
    workdir = Path(tempfile.mkdtemp(prefix="slbench-"))
    info = host_info()
    print(f"host: kernel {info['kernel']}, {info['cpus']} CPUs; {info['nft']}; {info['iptables']}; "
          f"{info['iptables_nft']}")
    binpath = sluice_binary(args.build)
    all_sizes: list[dict] = []
    report = {"started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "host": info, "argv": sys.argv[1:], "max_seconds": args.max_seconds, "repeat": args.repeat,
              "iptables_noflush": args.noflush,
              "workload": {"plan": "bench/workload.h", "service_cidr": SERVICE_CIDR, "cluster_cidr": CLUSTER_CIDR, "service_port": SERVICE_PORT,
                           "target_port": TARGET_PORT, "protocol": PROTO},
              "sizes": all_sizes}
    md_all = []
    rc = 0
    try:
        for n in sizes:
            w = Workload(n, args.endpoints)
            print(f"\n== {n} Services × {w.e} endpoints")
            if args.keep_inputs:
                idir = outdir / "inputs"
                idir.mkdir(exist_ok=True)
            else:
                idir = workdir
            inputs = {}
            t0 = time.perf_counter()
            if not {"iptables-legacy", "iptables-nft"} <= skip:
                p = idir / f"kube-proxy-iptables-{n}x{w.e}.rules"
                inputs["iptables"] = (p, gen_iptables(w, p))
            if "nft-kube-proxy" not in skip:
                p = idir / f"kube-proxy-nft-{n}x{w.e}.nft"
                inputs["nft-kube-proxy"] = (p, gen_nft_kube_proxy(w, p))
            if "nft-lean" not in skip:
                p = idir / f"lean-{n}x{w.e}.nft"
                inputs["nft-lean"] = (p, gen_nft_lean(w, p))
            print(f"   generated inputs in {time.perf_counter() - t0:.1f} s: " +
                  ", ".join(f"{k} {v[1]['lines']} lines / {v[1]['bytes'] / 1e6:.1f} MB" for k, v in inputs.items()))

            size_res = {"services": n, "endpoints": w.e,
                        "inputs": {k: {kk: vv for kk, vv in v[1].items() if kk != "table"} for k, v in inputs.items()},
                        "results": {}, "samples": {}}
            all_sizes.append(size_res)
            todo = []
            for impl in ORDER:
                if impl in skip:
                    size_res["results"][impl] = {"status": "skipped", "why": "skipped (--skip)"}
                elif impl == "sluice" and binpath is None:
                    print("   sluice-load not found: build first" +
                          (f" (looked for {Path(args.build) / 'bench' / 'sluice-load'})" if args.build else
                           " (no --build given)"))
                    size_res["results"][impl] = {"status": "missing", "why": "sluice-load not found: build first"}
                else:
                    todo.append(impl)
                    size_res["samples"][impl] = []
            for rep in range(args.repeat):  # round-robin so drift hits every row alike
                for impl in todo:
                    r = run_one(impl, w, inputs, args, nss, workdir)
                    size_res["samples"][impl].append(r)
                    extra = ""
                    if r["status"] == "ok" and "sluice" in r:
                        extra = f", sync {r['sluice']['seconds']:.3f} s"
                    if r.get("verify"):
                        extra += f", verify {'ok' if r['verify']['ok'] else 'FAILED'}"
                    print(f"   {impl:16s} #{rep + 1}: {r['status']:7s} wall {fmt_s(r.get('wall_seconds'))} s, "
                          f"peak RSS {fmt_mb(r.get('peak_rss_kb'))} MiB{extra}"
                          + (f"  [{r['why']}]" if r.get("why") else ""))
            for impl in todo:
                size_res["results"][impl] = summarize(size_res["samples"][impl])
                if size_res["results"][impl]["status"] == "failed":
                    rc = 1
            text, p1 = build_table(size_res, args)
            size_res["p1"] = p1
            print()
            print(text)
            md_all.append(text)
            if not args.keep_inputs:
                for p, _ in inputs.values():
                    p.unlink(missing_ok=True)
    except (KeyboardInterrupt, Interrupted) as e:
        print(f"\ninterrupted ({str(e) or 'Ctrl-C'}): cleaning up", file=sys.stderr)
        rc = 130
    finally:
        nss.delete_all()
        shutil.rmtree(workdir, ignore_errors=True)
        report["finished"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        (outdir / "compare.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
        if md_all:
            hdr = (f"<!-- generated by bench/compare.py {' '.join(sys.argv[1:])} on {report['started']} -->\n"
                   f"Host: kernel {info['kernel']}, {info['cpus']} CPUs, {info['nft']}, {info['iptables']}.\n"
                   f"Wall time of the loader process; peak RSS = GNU time %M. Each load into a fresh netns.\n\n")
            (outdir / "compare.md").write_text(hdr + "\n".join(md_all))
        print(f"wrote {outdir / 'compare.json'}" + (f", {outdir / 'compare.md'}" if md_all else ""))
    if args.ladder and all_sizes:
        dat = write_ladder(outdir, all_sizes, script_dir)
        print(f"wrote {dat}")
        run_gnuplot(outdir, dat, script_dir)
    return rc


if __name__ == "__main__":
    sys.exit(main())
