#!/usr/bin/env bash
# Services scoped to the tests that use them: a suite of 400 unit tests and
# 20 Postgres tests, one shard, the Postgres service with reset = "postgres".
#
#   scripts/bench/scoped.sh [RUNS]          (default RUNS=3)
#   EPHEM_BIN=target/debug/cargo-ephem scripts/bench/scoped.sh 3
#                                           (skip the release build)
#
# Two configurations of the same generated workspace, tests built once
# before timing, RUNS alternating rounds, median wall of `cargo ephem test`:
#   all      no `tests` key: every test waits for Postgres and, as the
#            service resets, all 420 run one at a time;
#   scoped   tests = "test(/^pg::/)": the 400 unit tests start at once
#            (while Postgres starts) and run in parallel; only the 20
#            Postgres tests wait for it and are serialised by its reset.
# The figure is scoped / all (target: at most 0.5).
#
# Needs the machine scripts/provision-test-env.sh makes (daemon, registry on
# 127.0.0.1:5000, postgres:15-bookworm there).
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-3}
export EPHEM_REGISTRY_MIRROR="${EPHEM_REGISTRY_MIRROR:-localhost:5000}" CI=1

if [ -z "${EPHEM_BIN:-}" ]; then
	cargo build -q --release -p cargo-ephem
	EPHEM_BIN="$PWD/target/release/cargo-ephem"
fi
ephem=$(realpath "$EPHEM_BIN")

ws=${BENCH_DIR:-$PWD/target/bench-scoped}
mkdir -p "$ws/src"
cat >"$ws/Cargo.toml" <<'EOF'
[package]
name = "scoped-bench"
version = "0.1.0"
edition = "2021"
publish = false

[dependencies]
postgres = "0.19"

[workspace]
EOF
# The baseline fixture's lock: the same postgres crates, no network.
cp tests/fixtures/baseline/Cargo.lock "$ws/Cargo.lock"
{
	echo "pub mod unit {"
	for i in $(seq 1 400); do
		echo "    #[test] fn u$i() { std::thread::sleep(std::time::Duration::from_millis(5)); assert_eq!($i + 1, $((i + 1))); }"
	done
	echo "}"
	echo "pub mod pg {"
	echo "    fn check() {"
	echo "        let url = std::env::var(\"DATABASE_URL\").unwrap();"
	echo "        let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();"
	echo "        c.execute(\"INSERT INTO items (name) VALUES ('mine')\", &[]).unwrap();"
	echo "        let n: i64 = c.query_one(\"SELECT count(*) FROM items\", &[]).unwrap().get(0);"
	echo "        assert_eq!(n, 2, \"the baseline has one row\");"
	echo "    }"
	for i in $(seq 1 20); do
		echo "    #[test] fn p$i() { check() }"
	done
	echo "}"
} >"$ws/src/lib.rs"

config() {
	cat <<'EOF'
[images]
mirror = "localhost:5000"

[services.postgres]
image = "postgres:15-bookworm"
env = { POSTGRES_PASSWORD = "${random}", POSTGRES_DB = "app", TZ = "UTC", POSTGRES_INITDB_ARGS = "--no-sync" }
ports = [5432]
args = ["-c", "fsync=off"]
wait = { log = "database system is ready to accept connections", times = 2 }
setup = { exec = ["psql", "-v", "ON_ERROR_STOP=1", "-U", "postgres", "-d", "app", "-c", "CREATE TABLE items (id serial PRIMARY KEY, name text); INSERT INTO items (name) VALUES ('seed')"] }
reset = "postgres"
export = { DATABASE_URL = "postgres://postgres:${env.POSTGRES_PASSWORD}@${host}:${port.5432}/${database}" }
EOF
}
config >"$ws/all.toml"
{
	config
	echo 'tests = "test(/^pg::/)"'
} >"$ws/scoped.toml"

now() { date +%s.%N; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
run() {
	"$ephem" ephem test --manifest-path "$ws/Cargo.toml" --config "$ws/$1.toml" >"$ws/$1.log" 2>&1 || {
		echo "the $1 run failed; see $ws/$1.log" >&2
		exit 1
	}
}

# Warm-up: build the tests, check both pass.
run all
run scoped

alls=() scopeds=()
for ((i = 1; i <= runs; i++)); do
	t0=$(now); run all; t1=$(now)
	alls+=("$(echo "$t1 - $t0" | bc)")
	t0=$(now); run scoped; t1=$(now)
	scopeds+=("$(echo "$t1 - $t0" | bc)")
done
all=$(printf '%s\n' "${alls[@]}" | median)
scoped=$(printf '%s\n' "${scopeds[@]}" | median)
echo "all (no tests key): ${alls[*]} -> median $all s"
echo "scoped (tests = \"test(/^pg::/)\"): ${scopeds[*]} -> median $scoped s"
echo "scoped / all: $(echo "scale=3; $scoped / $all" | bc)"
