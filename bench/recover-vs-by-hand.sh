#!/usr/bin/env bash
# Quorum-loss recovery of three simulated control-plane hosts (127.0.0.11–.13, a kubelet
# stand-in and a real etcd 3.5.1 each): `etcdguard cluster recover` over real sshd, next to the
# same recovery by hand (etcdutl snapshot restore + etcdctl member add/promote + manifest edits,
# scripted, so it is the tools' time without a person's typing) and to etcdguard's node
# commands run one by one. Each number is the wall time from the first command to three
# healthy members serving the snapshot's data.
#
#   bash bench/recover-vs-by-hand.sh [MiB]      # default 64; 1024 for the 1 GiB case
#
# Not part of the suite: run by hand. Needs .ci/install-deps (etcd, openssh-server).
set -euo pipefail
cd "$(dirname "$0")/.."
mb="${1:-64}"
export ETCDGUARD_RECOVERY_MB="$mb"
# The tools under test are timed as shipped: a release build (the tests' harness stays debug).
cargo build --release --locked -q -p etcdguard --bin etcdguard
export ETCDGUARD_BIN="$PWD/target/release/etcdguard"
run() { # test binary, test name
  cargo test --locked -q -p etcdguard --test "$1" -- --exact "$2" --nocapture 2>&1 |
    grep -E '^RECOVERY TIME' || { echo "$1 $2 failed" >&2; exit 1; }
}
echo "data: $mb MiB of 4 KiB values; etcdguard: $ETCDGUARD_BIN"
run cluster_recover refusals_dry_run_and_full_recovery
run quorum_recovery quorum_loss_by_hand_for_comparison
run quorum_recovery quorum_loss_restore_one_then_join_two
