#!/usr/bin/env bash
# Warm environments between local runs: how long a rerun takes with
# `--reuse` against a run that starts its environments afresh.
#
#   scripts/bench/reuse.sh [RUNS]    (default RUNS=5)
#
# On examples/postgres-redis with 4 shards (Postgres and Redis each), nothing
# to build, images present. RUNS alternating rounds of:
#   fresh   `cargo ephem test --shards 4`: create, wait for, remove 8 containers;
#   reuse   `cargo ephem test --shards 4 --reuse` after one untimed --reuse
#           run kept the environments: take them over, run, keep them again.
# Also reported: the tests' own time, the runner's "Summary [...]" figure,
# which a rerun is measured against ("about as long as its tests").
# Target: the reuse rerun at most 2.0 s and at most 0.35x the fresh run.
#
# Needs the machine scripts/provision-test-env.sh makes. Ends with
# `cargo ephem down`, which removes the kept environments.
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-5}
export EPHEM_REGISTRY_MIRROR="${EPHEM_REGISTRY_MIRROR:-localhost:5000}" CI=1
manifest=examples/postgres-redis/Cargo.toml

if [ -z "${EPHEM_BIN:-}" ]; then
	cargo build -q --release -p cargo-ephem
	EPHEM_BIN="$PWD/target/release/cargo-ephem"
fi
ephem() { "$EPHEM_BIN" ephem "$@"; }
trap 'ephem down --manifest-path "$manifest" >/dev/null 2>&1 || true' EXIT

now() { date +%s.%N; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
# timed ARGS...: runs the example, prints "WALL TESTS" (seconds).
timed() {
	local t0 t1 log
	log=$(mktemp)
	t0=$(now)
	ephem test --manifest-path "$manifest" --shards 4 "$@" >/dev/null 2>"$log" || {
		cat "$log" >&2
		exit 1
	}
	t1=$(now)
	printf '%s %s\n' "$(echo "$t1 - $t0" | bc)" \
		"$(sed -n 's/^Summary \[ *\([0-9.]*\)s\].*/\1/p' "$log")"
	rm -f "$log"
}

ephem down --manifest-path "$manifest" >/dev/null 2>&1 || true
# Warm-up: the build, and the environments the first --reuse run keeps.
ephem test --manifest-path "$manifest" --shards 4 >/dev/null 2>&1
ephem test --manifest-path "$manifest" --shards 4 --reuse >/dev/null 2>&1

fresh=() reuse=() tests=()
for ((i = 1; i <= runs; i++)); do
	read -r f _ < <(timed)
	read -r r t < <(timed --reuse)
	fresh+=("$f") reuse+=("$r") tests+=("$t")
	printf 'round %d: fresh %.2f s, reuse %.2f s (tests %.2f s)\n' "$i" "$f" "$r" "$t"
done

f=$(printf '%s\n' "${fresh[@]}" | median)
r=$(printf '%s\n' "${reuse[@]}" | median)
t=$(printf '%s\n' "${tests[@]}" | median)
printf 'medians: fresh %.2f s, reuse %.2f s, the reuse runs'"'"' tests %.2f s\n' "$f" "$r" "$t"
printf 'reuse / fresh = %.2f   (target <= 0.35, and reuse <= 2.0 s)\n' "$(echo "$r / $f" | bc -l)"
echo "load: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "reproduce: scripts/bench/reuse.sh $runs"
