#!/usr/bin/env bash
# Environments hidden behind the build: how much longer than the build alone
# a run takes when it must also build and start its environments.
#
#   scripts/bench/overlap.sh [RUNS] [CACHE]    (default RUNS=5; CACHE: an
#                                             --image-cache folder, optional)
#
# Three measurements on examples/postgres-redis with 4 shards, each a median
# of RUNS alternating rounds:
#   build   `cargo test --no-run` after `cargo clean -p redis -p
#           postgres-redis-example` (about 12 s here: the example and one
#           dependency, what a CI job pays anyway);
#   cold    the same clean, the example's images removed from the daemon,
#           then `cargo ephem test --shards 4`: build, pulls (through the
#           registry mirror, or restored from CACHE), environments, tests;
#   warm    nothing to build, images present: `cargo ephem test --shards 4`.
# The figure is (cold - build) / warm: what the run costs beyond the build,
# against a run that has nothing to wait for. Before environments started
# during the build it was about 1.5; the target is at most 0.5.
#
# Needs the machine scripts/provision-test-env.sh makes (daemon, registry on
# 127.0.0.1:5000). Removes the example's images (postgres:15-bookworm,
# redis:7-bookworm) between rounds: do not run it beside the test suite.
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-5}
cache=${2:-}
export EPHEM_REGISTRY_MIRROR="${EPHEM_REGISTRY_MIRROR:-localhost:5000}" CI=1
manifest=examples/postgres-redis/Cargo.toml
images=(postgres:15-bookworm redis:7-bookworm)

cargo build -q --release -p cargo-ephem
ephem="$PWD/target/release/cargo-ephem"
cache_args=()
[ -n "$cache" ] && cache_args=(--image-cache "$cache")

now() { date +%s.%N; }
touch_sources() { cargo clean -q --manifest-path "$manifest" -p redis -p postgres-redis-example; }
drop_images() {
	local image
	for image in "${images[@]}"; do
		docker image rm -f "$image" "$EPHEM_REGISTRY_MIRROR/library/$image" >/dev/null 2>&1 || true
	done
}
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

# Warm-up: build once, images present, so every round starts alike.
"$ephem" ephem test --manifest-path "$manifest" --shards 4 "${cache_args[@]}" >/dev/null 2>&1

builds=() colds=() warms=()
for ((i = 1; i <= runs; i++)); do
	touch_sources
	t0=$(now); cargo test -q --no-run --manifest-path "$manifest" >/dev/null 2>&1; t1=$(now)
	builds+=("$(echo "$t1 - $t0" | bc)")

	touch_sources; drop_images
	t0=$(now); "$ephem" ephem test --manifest-path "$manifest" --shards 4 "${cache_args[@]}" >/dev/null 2>&1; t1=$(now)
	colds+=("$(echo "$t1 - $t0" | bc)")

	t0=$(now); "$ephem" ephem test --manifest-path "$manifest" --shards 4 "${cache_args[@]}" >/dev/null 2>&1; t1=$(now)
	warms+=("$(echo "$t1 - $t0" | bc)")
	printf 'round %d: build %.2f s, cold %.2f s, warm %.2f s\n' "$i" "${builds[-1]}" "${colds[-1]}" "${warms[-1]}"
done

b=$(printf '%s\n' "${builds[@]}" | median)
c=$(printf '%s\n' "${colds[@]}" | median)
w=$(printf '%s\n' "${warms[@]}" | median)
printf 'medians: build %.2f s, cold run %.2f s, warm run %.2f s\n' "$b" "$c" "$w"
printf '(cold - build) / warm = %.2f   (target <= 0.5)\n' "$(echo "($c - $b) / $w" | bc -l)"
echo "reproduce: scripts/bench/overlap.sh $runs${cache:+ $cache}"
