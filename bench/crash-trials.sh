#!/usr/bin/env bash
# Many kill -9 trials of `backup create` and `backup prune` against local repositories, plain
# and encrypted, in a release build: the ignored test `random_kills_long_run` of
# crates/cli/tests/prune_crash.rs. After every kill each listed backup must pass
# `backup verify --packs`, and a new create and a new prune must succeed.
#
# Usage: bench/crash-trials.sh [TRIALS] [SEED]
#   TRIALS  default $CRASH_TRIALS or 200
#   SEED    default $CRASH_SEED or a new one from the clock; rerun with the printed seed to
#           replay a run (kill delays are fractions of each command's measured run time, so
#           they land in the same phase, not at the same instruction).
# Prints trials, passed, failed and the seed on stdout; every trial's line goes to stderr and
# to the log file named at the end. Exit status: that of the test (0 when no trial failed).
set -uo pipefail
cd "$(dirname "$0")/.."

trials="${1:-${CRASH_TRIALS:-200}}"
seed="${2:-${CRASH_SEED:-$(date +%s)}}"
log="$(mktemp -t etcdguard-crash-trials.XXXXXX)"

echo "crash trials: $trials trials, seed $seed, release build; log $log" >&2
CRASH_TRIALS="$trials" CRASH_SEED="$seed" \
  cargo test --locked --release -p etcdguard --test prune_crash -- --ignored --nocapture --exact random_kills_long_run \
  2>&1 | tee "$log" >&2
status=${PIPESTATUS[0]}

# The test's last line: "crash trials: seed S: N trials, P passed, F failed, …"
summary="$(grep -E '^crash trials: seed [0-9]+: [0-9]+ trials' "$log" | tail -n 1)"
if [ -z "$summary" ]; then
  echo "no summary line: the test did not run to the end (see $log)" >&2
  exit "${status:-1}"
fi
passed="$(sed -E 's/.* ([0-9]+) passed.*/\1/' <<<"$summary")"
failed="$(sed -E 's/.* ([0-9]+) failed.*/\1/' <<<"$summary")"
ran="$(sed -E 's/.*: ([0-9]+) trials.*/\1/' <<<"$summary")"
printf 'trials %s\npassed %s\nfailed %s\nseed %s\n' "$ran" "$passed" "$failed" "$seed"
if [ "$failed" != 0 ]; then
  grep -E '^trial [0-9]+: .*FAILED' "$log" >&2
fi
exit "$status"
