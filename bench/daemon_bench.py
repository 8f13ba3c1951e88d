#!/usr/bin/env python3
"""sluiced start-up time (target P6) and resident memory (target P4) on a manifest file.

For each size of the ladder (default 1 000 and 10 000 Services x 10 endpoints) this script
writes the workload of bench/workload.h / compare.py as one Kubernetes manifest (a JSON `List`
of Services and EndpointSlices, what `kubectl get -o json` prints) and runs the real `sluiced`
on it with the file source, inside a throw-away network namespace (`ip netns add slbench-...`,
deleted afterwards, also on failure, Ctrl-C and SIGTERM).  Per size and repetition:

  fresh   sluiced starts with no table in the namespace;
  adopt   sluiced is stopped (SIGTERM: the rules stay) and started again on the same namespace,
          so its first sync replaces the table that is there (what a restart on a node does).

Measured for each start (P6): wall time from spawning the process to the first committed full
sync, taken from sluiced's own log (JSON, --log-level debug: the "sync IPv4: full in X ms" line
carries a UTC timestamp with microseconds; the spawn time is this script's clock right before
fork, same machine, same clock).  The same log splits it into process start (spawn -> "starting"
line), loading the manifest (until the sync began) and the sync itself (plan + commit, from the
line).  Then, after --settle seconds (P4): VmRSS and VmHWM from /proc/PID/status (VmHWM is the
peak, i.e. includes the transient cost of parsing the manifest).  Every start is verified: the
daemon's /status (read inside the namespace) must show all N Services and N*E endpoints
programmed by a successful full sync, and SIGTERM must end it with exit code 0.

Outputs in --out (default bench/results): daemon.json (every sample), daemon.md (the table the
README shows), daemon.dat and, with gnuplot and a ladder of >= 2 sizes, daemon.svg.

Needs root (ip netns), iproute2, a built sluiced (--build DIR, default build/).  Not a test:
absolute numbers depend on the machine and its load; nothing here asserts a time.

  sudo bench/daemon_bench.py --build build                       # 1000 and 10000 Services
  sudo bench/daemon_bench.py --build build --ladder 1000,3000,10000 --repeat 3
  sudo bench/daemon_bench.py --build build --baseline /tmp/old/build --ladder 10000 --repeat 5

--baseline DIR runs a second sluiced (say, the previous commit's) in alternation with the first,
same sizes, one fresh namespace each, and adds a table of both with their ratio: on a shared
machine only such a same-run comparison says whether a change made sluiced faster.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
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

SCRIPT_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(SCRIPT_DIR))
import compare  # noqa: E402  (the shared workload and the namespace bookkeeping)

P4_MIB = 64
P6_SECONDS = 2.0
SYNC_LINE = re.compile(r"^sync IPv4: full in ([0-9.]+) ms, ([0-9]+) operations")


def write_manifest(w: compare.Workload, path: Path) -> int:
    """The workload as one JSON List; endpoints spread over 100 nodes like bench/workload.h."""
    items = []
    for i, name, cip, eps in w.services():
        items.append({"apiVersion": "v1", "kind": "Service",
                      "metadata": {"name": name, "namespace": compare.NAMESPACE},
                      "spec": {"type": "ClusterIP", "clusterIP": cip, "clusterIPs": [cip],
                               "ports": [{"name": compare.PORT_NAME, "protocol": "TCP",
                                          "port": compare.SERVICE_PORT, "targetPort": compare.TARGET_PORT}]}})
        endpoints = []
        for j, ip in enumerate(eps):
            endpoints.append({"addresses": [ip], "conditions": {"ready": True},
                              "nodeName": f"node-{(i * (w.e + 1) + j) % 100}"})
        items.append({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                      "metadata": {"name": f"{name}-slice", "namespace": compare.NAMESPACE,
                                   "labels": {"kubernetes.io/service-name": name}},
                      "addressType": "IPv4",
                      "ports": [{"name": compare.PORT_NAME, "protocol": "TCP", "port": compare.TARGET_PORT}],
                      "endpoints": endpoints})
    with open(path, "w") as f:
        json.dump({"apiVersion": "v1", "kind": "List", "items": items}, f, separators=(",", ":"))
    return path.stat().st_size


def proc_status(pid: int) -> dict:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "Threads"):
            out[k] = int(v.split()[0])  # kB, or a count for Threads
    return out


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of every thread so far (includes the kernel's work in netlink sendmsg)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def parse_ts(ts: str) -> float:
    return datetime.datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.timezone.utc).timestamp()


class Daemon:
    """One sluiced process; a thread reads its JSON log and notes the lines we time."""

    def __init__(self, argv: list[str], log_path: Path):
        self.log = open(log_path, "a")
        self.first_sync = threading.Event()
        self.started_ts = None
        self.sync_ts = None
        self.sync_ms = None
        self.sync_cpu = None
        self.spawn = time.time()
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stderr:
            self.log.write(line)
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            msg = rec.get("msg", "")
            if msg.startswith("sluiced ") and " starting" in msg and self.started_ts is None:
                self.started_ts = parse_ts(rec["ts"])
            m = SYNC_LINE.match(msg)
            if m and self.sync_ts is None:
                self.sync_ts = parse_ts(rec["ts"])
                self.sync_ms = float(m.group(1))
                self.sync_cpu = cpu_seconds(self.proc.pid)  # read at once: the process idles now
                self.first_sync.set()
        self.first_sync.set()  # the process ended

    def stop(self, timeout: float) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            rc = None
        self.reader.join(5)
        self.log.close()
        return rc


def read_status(nss: compare.Namespaces, ns: str, port: int) -> dict | None:
    r = compare.ns_cmd(nss, ns, ["curl", "-sf", "--max-time", "10", f"http://127.0.0.1:{port}/status"], timeout=20)
    if r.returncode != 0:
        return None
    try:
        return json.loads(r.stdout)
    except ValueError:
        return None


def run_start(kind: str, w: compare.Workload, manifest: Path, args, nss, ns: str, workdir: Path,
              sluiced: Path) -> dict:
    """Starts sluiced in `ns`, waits for its first full sync, measures, verifies, stops it."""
    argv = [str(sluiced), "--netns", ns, "--source", f"file:{manifest}", "--hostname-override", "node-0",
            "--cluster-cidr", compare.CLUSTER_CIDR, "--service-cluster-ip-range", compare.SERVICE_CIDR,
            "--metrics-bind-address", f"127.0.0.1:{args.port}", "--healthz-bind-address", "127.0.0.1:10256",
            "--log-format", "json", "--log-level", "debug"]
    d = Daemon(argv, workdir / f"sluiced-{ns}.log")
    res = {"kind": kind, "status": "failed", "loadavg": os.getloadavg()[0]}
    try:
        if not d.first_sync.wait(args.timeout) or d.sync_ts is None:
            res["why"] = f"no committed full sync within {args.timeout} s (exit {d.proc.poll()}), log {d.log.name}"
            return res
        res["start_to_sync_s"] = d.sync_ts - d.spawn
        res["sync_s"] = d.sync_ms / 1000
        res["cpu_s"] = d.sync_cpu
        if d.started_ts is not None:
            res["process_start_s"] = d.started_ts - d.spawn
            res["load_s"] = res["start_to_sync_s"] - res["process_start_s"] - res["sync_s"]
        time.sleep(args.settle)
        mem = proc_status(d.proc.pid)
        res.update(rss_kb=mem["VmRSS"], hwm_kb=mem["VmHWM"], anon_kb=mem.get("RssAnon"), file_kb=mem.get("RssFile"),
                   threads=mem.get("Threads"))
        st = read_status(nss, ns, args.port)
        fam = (st or {}).get("families", [{}])[0]
        res["verify"] = {"services": fam.get("services"), "endpoints": fam.get("endpoints"),
                         "lastOk": fam.get("lastOk"), "syncs": fam.get("syncs")}
        ok = fam.get("services") == w.n and fam.get("endpoints") == w.n * w.e and fam.get("lastOk") is True
        res["status"] = "ok" if ok else "failed"
        if not ok:
            res["why"] = f"/status does not show {w.n} Services / {w.n * w.e} endpoints programmed: {res['verify']}"
    finally:
        rc = d.stop(args.timeout)
        res["exit"] = rc
        if rc != 0 and res["status"] == "ok":
            res["status"], res["why"] = "failed", f"SIGTERM ended sluiced with exit {rc}"
    return res


def median(samples: list[dict], key: str):
    vals = [s[key] for s in samples if s.get("status") == "ok" and s.get(key) is not None]
    return statistics.median(vals) if vals else None


def mib(kb):
    return "–" if kb is None else f"{kb / 1024:.1f}"


def secs(x):
    return "–" if x is None else f"{x:.3f}"


def samples_of(size: dict, kind: str, binary: str = "") -> list[dict]:
    return [x for x in size["samples"] if x["kind"] == kind and x.get("binary", "") == binary]


def build_table(sizes: list[dict]) -> str:
    rows = ["| Services × endpoints | start | start → first full sync, s | of which: process / manifest / sync, s "
            "| CPU used, s | VmRSS after, MiB | VmHWM (peak), MiB |",
            "|---|---|---:|---|---:|---:|---:|"]
    for s in sizes:
        for kind in ("fresh", "adopt"):
            smp = samples_of(s, kind)
            ok = sum(1 for x in smp if x["status"] == "ok")
            t = median(smp, "start_to_sync_s")
            flag = "" if t is None or s["services"] != 10000 else (" ✓" if t <= P6_SECONDS else " ✗")
            parts = " / ".join(secs(median(smp, k)) for k in ("process_start_s", "load_s", "sync_s"))
            rss, hwm = median(smp, "rss_kb"), median(smp, "hwm_kb")
            mflag = "" if rss is None or s["services"] != 10000 else (" ✓" if rss / 1024 <= P4_MIB else " ✗")
            label = "table absent" if kind == "fresh" else "table present (restart adopts)"
            rows.append(f"| {s['services']:,} × {s['endpoints']} | {label} | **{secs(t)}**{flag} | {parts} "
                        f"| {secs(median(smp, 'cpu_s'))} | **{mib(rss)}**{mflag} | {mib(hwm)} |" + ("" if ok == len(smp) else f" ({len(smp) - ok} failed)"))
    return "\n".join(rows)


def build_comparison(sizes: list[dict]) -> str:
    """Medians of this build and the baseline, run in alternation, and this / baseline."""
    rows = ["| Services × endpoints | start | start → first full sync, s: baseline → this | ratio "
            "| sync (plan + commit), s: baseline → this | ratio | CPU used, s: baseline → this | ratio |",
            "|---|---|---|---:|---|---:|---|---:|"]

    def cell(base, this, key):
        b, t = median(base, key), median(this, key)
        ratio = "–" if not b or t is None else f"{t / b:.2f}"
        return f"{secs(b)} → {secs(t)} | {ratio}"

    for s in sizes:
        for kind in ("fresh", "adopt"):
            base, this = samples_of(s, kind, "baseline"), samples_of(s, kind)
            label = "table absent" if kind == "fresh" else "table present (restart adopts)"
            cells = [cell(base, this, key) for key in ("start_to_sync_s", "sync_s", "cpu_s")]
            rows.append(f"| {s['services']:,} × {s['endpoints']} | {label} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def write_plot(outdir: Path, sizes: list[dict]):
    dat = outdir / "daemon.dat"
    with open(dat, "w") as f:
        f.write("# medians; NaN = no successful sample\n")
        f.write("# services fresh_s adopt_s fresh_rss_mib fresh_hwm_mib adopt_rss_mib fresh_cpu_s\n")
        for s in sorted(sizes, key=lambda x: x["services"]):
            def v(kind, key, scale=1.0):
                m = median(samples_of(s, kind), key)
                return "NaN" if m is None else f"{m / scale:.4f}"
            f.write(f"{s['services']} {v('fresh', 'start_to_sync_s')} {v('adopt', 'start_to_sync_s')} "
                    f"{v('fresh', 'rss_kb', 1024)} {v('fresh', 'hwm_kb', 1024)} {v('adopt', 'rss_kb', 1024)} "
                    f"{v('fresh', 'cpu_s')}\n")
    gp = shutil.which("gnuplot")
    if not gp or len(sizes) < 2:
        print("no plot: " + ("gnuplot not found" if not gp else "a ladder needs at least 2 sizes"))
        return
    svg = outdir / "daemon.svg"
    r = subprocess.run([gp, "-e", f"datafile='{dat}'; outfile='{svg}'", str(SCRIPT_DIR / "daemon.gp")],
                       capture_output=True, text=True)
    print(f"wrote {svg}" if r.returncode == 0 else f"gnuplot failed: {r.stderr.strip()}")


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=str(SCRIPT_DIR.parent / "build"), help="CMake build dir with proxy/sluiced")
    ap.add_argument("--ladder", default="1000,10000", help="comma-separated Service counts")
    ap.add_argument("--endpoints", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=1, help="fresh+adopt pairs per size (median reported)")
    ap.add_argument("--settle", type=float, default=1.0, help="seconds after the first sync before reading memory")
    ap.add_argument("--timeout", type=float, default=120.0, help="give up on a start after this many seconds")
    ap.add_argument("--port", type=int, default=10249, help="admin port inside the namespace")
    ap.add_argument("--baseline", help="a second CMake build dir whose sluiced runs in alternation (see above)")
    ap.add_argument("--out", default=str(SCRIPT_DIR / "results"))
    return ap.parse_args()


def run_pair(label: str, sluiced: Path, rep: int, w: compare.Workload, manifest: Path, args, nss, workdir: Path,
             entry: dict) -> int:
    """A fresh start and then an adopting restart of one binary, in a namespace of their own."""
    rc = 0
    ns = nss.create()
    try:
        for kind in ("fresh", "adopt"):
            r = run_start(kind, w, manifest, args, nss, ns, workdir, sluiced)
            r["binary"] = label
            entry["samples"].append(r)
            print(f"   #{rep + 1} {kind:5s}{' ' + label if label else ''}: {r['status']:6s} "
                  f"start→sync {secs(r.get('start_to_sync_s'))} s "
                  f"(process {secs(r.get('process_start_s'))}, manifest {secs(r.get('load_s'))}, "
                  f"sync {secs(r.get('sync_s'))}; CPU {secs(r.get('cpu_s'))}), VmRSS {mib(r.get('rss_kb'))} MiB, "
                  f"VmHWM {mib(r.get('hwm_kb'))} MiB" + (f"  [{r['why']}]" if r.get("why") else ""))
            if r["status"] != "ok":
                rc = 1
    finally:
        nss.delete(ns)
    time.sleep(1.0)  # let the namespace's teardown finish before the next start
    return rc


def main() -> int:
    args = parse_args()
    args.sluiced = Path(args.build) / "proxy" / "sluiced"
    binaries = [("", args.sluiced)]
    if args.baseline:
        binaries.append(("baseline", Path(args.baseline) / "proxy" / "sluiced"))
    for _, path in binaries:
        if not path.exists():
            raise SystemExit(f"{path} not found: cmake --build {path.parent.parent} --target sluiced")
    if os.geteuid() != 0:
        raise SystemExit("needs root (ip netns add)")
    outdir = Path(args.out)
    outdir.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, compare._on_sigterm)
    signal.signal(signal.SIGHUP, compare._on_sigterm)
    nss = compare.Namespaces()
    workdir = Path(tempfile.mkdtemp(prefix="sldaemon-"))
    info = compare.host_info()
    load = os.getloadavg()
    print(f"host: kernel {info['kernel']}, {info['cpus']} CPUs, load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    report = {"started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "host": info, "loadavg_at_start": load, "argv": sys.argv[1:], "sizes": []}
    rc = 0
    try:
        for n in (int(x) for x in args.ladder.split(",")):
            w = compare.Workload(n, args.endpoints)
            manifest = workdir / f"services-{n}x{w.e}.json"
            size = write_manifest(w, manifest)
            print(f"\n== {n} Services × {w.e} endpoints: manifest {size / 1e6:.1f} MB")
            entry = {"services": n, "endpoints": w.e, "manifest_bytes": size, "samples": []}
            report["sizes"].append(entry)
            for rep in range(args.repeat):
                # With a baseline, the two alternate, and which goes first alternates too.
                order = binaries if rep % 2 == 0 else binaries[::-1]
                for label, sluiced in order:
                    rc = max(rc, run_pair(label, sluiced, rep, w, manifest, args, nss, workdir, entry))
            manifest.unlink()
    except (KeyboardInterrupt, compare.Interrupted) as e:
        print(f"\ninterrupted ({str(e) or 'Ctrl-C'}): cleaning up", file=sys.stderr)
        rc = 130
    finally:
        nss.delete_all()
        shutil.rmtree(workdir, ignore_errors=True)
    report["finished"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    (outdir / "daemon.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    if report["sizes"]:
        md = (f"<!-- generated by bench/daemon_bench.py {' '.join(sys.argv[1:])} on {report['started']} -->\n"
              f"Host: kernel {info['kernel']}, {info['cpus']} CPUs (shared), load average at start "
              f"{load[0]:.2f}. sluiced on a JSON manifest (file source) in a fresh netns; medians of "
              f"{args.repeat} run(s). Targets at 10 000 × 10: P6 ≤ {P6_SECONDS:g} s, P4 ≤ {P4_MIB} MiB. "
              f"CPU used = user + system time of all sluiced threads until the sync was logged (the "
              f"kernel's commit work included); unlike wall time it barely depends on other load.\n\n"
              + build_table(report["sizes"]) + "\n")
        if args.baseline:
            md += (f"\nThis build against the baseline ({args.baseline}), run in alternation in the same "
                   f"session; ratio = this / baseline, below 1 is faster.\n\n" + build_comparison(report["sizes"]) + "\n")
        (outdir / "daemon.md").write_text(md)
        print("\n" + build_table(report["sizes"]))
        if args.baseline:
            print("\n" + build_comparison(report["sizes"]))
        write_plot(outdir, report["sizes"])
    print(f"wrote {outdir / 'daemon.json'}, {outdir / 'daemon.md'}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
