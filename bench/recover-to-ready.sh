#!/usr/bin/env bash
# From quorum loss to every Node Ready on three simulated control-plane hosts (127.0.0.11–.13,
# a kubelet stand-in, real etcd 3.5.1 and a real sshd each; one real kube-apiserver over the
# three members; kubelet stand-ins that need their new client CSR approved before they report
# again): `etcdguard cluster recover`, the API server's restart, `etcdguard cluster finish
# --apply`. Prints each phase's time as the tools report it (recover per step and host, finish
# per phase) and the total from the first command to every Node Ready.
#
#   bash bench/recover-to-ready.sh [MiB]      # default 4 (the suite's size)
#
# Not part of the suite: run by hand. Needs .ci/install-deps and .ci/install-go-peers
# (etcd, openssh-server, kube-apiserver and kubectl).
set -euo pipefail
cd "$(dirname "$0")/.."
mb="${1:-4}"
export ETCDGUARD_RECOVERY_MB="$mb"
# The tools under test are timed as shipped: a release build (the tests' harness stays debug).
cargo build --release --locked -q -p etcdguard --bin etcdguard
export ETCDGUARD_BIN="$PWD/target/release/etcdguard"
echo "data: $mb MiB of 4 KiB values; etcdguard: $ETCDGUARD_BIN"
out="$(cargo test --locked -q -p etcdguard --test recover_to_ready -- --exact \
  quorum_loss_to_every_node_ready --nocapture 2>&1)" || {
  echo "$out" | tail -40 >&2
  echo "recover_to_ready failed" >&2
  exit 1
}
echo "$out" | grep -E '^(PHASE|TOTAL) ' | sed -E 's/^PHASE (.*): ([0-9.]+) s$/\1\t\2/' |
  awk -F'\t' 'NF == 2 { printf "  %-55s %7s s\n", $1, $2; next } { print }'
