# Shared by snapshot.sh and snapshot-fresh-daemon.sh (sourced, from the
# repository's root): the bench workspace target/bench-snapshot/ (the
# example's ephem.toml with a Postgres `setup` of MIGRATIONS migrations and
# `snapshot = { inputs = ["migrations/**"] }`), the release binary, and
# `timed`. Set `cache` (the image cache folder) before calling `timed`.
migrations=${MIGRATIONS:-300}
export EPHEM_REGISTRY_MIRROR="${EPHEM_REGISTRY_MIRROR:-localhost:5000}" CI=1
unset EPHEM_SNAPSHOT
manifest=examples/postgres-redis/Cargo.toml
ws=$PWD/target/bench-snapshot
cache=${cache:-$ws/cache}
mkdir -p "$ws/migrations"

if [ -z "${EPHEM_BIN:-}" ]; then
	cargo build -q --release -p cargo-ephem
	EPHEM_BIN="$PWD/target/release/cargo-ephem"
fi
ephem() { "$EPHEM_BIN" ephem "$@"; }

sql="for i in \$(seq 1 $migrations); do echo \"CREATE TABLE m\$i (id serial PRIMARY KEY, a int, b text, c timestamptz DEFAULT now()); CREATE INDEX ON m\$i (a); CREATE INDEX ON m\$i (b);\"; done | psql -q -v ON_ERROR_STOP=1 -U postgres -d app"
sed -e '/^\[kubernetes\]/,/^$/d' -e '/^kubernetes = /d' examples/postgres-redis/ephem.toml >"$ws/ephem.toml"
# The setup and the snapshot go into the postgres table (before [services.redis]).
awk -v sql="$sql" '
	/^\[services.redis\]/ {
		gsub(/"/, "\\\"", sql)
		print "setup = { exec = [\"sh\", \"-c\", \"" sql "\"] }"
		print "snapshot = { inputs = [\"migrations/**\"] }"
		print ""
	}
	{ print }
' "$ws/ephem.toml" >"$ws/ephem.toml.new"
mv "$ws/ephem.toml.new" "$ws/ephem.toml"
sed -i 's/startup-timeout = "60s"/startup-timeout = "300s"/' "$ws/ephem.toml"
echo "-- warm-up $(date +%s)" >"$ws/migrations/0001.sql"

now() { date +%s.%N; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
# timed NEEDLE ARGS...: runs the tests, checks stderr has NEEDLE, prints
# "WALL SUMMARY READY" (seconds: the wall time, the Summary line's time, and
# start to the last shard's environment ready).
timed() {
	local needle=$1 t0 t1 log
	shift
	log=$(mktemp)
	t0=$(now)
	ephem test --manifest-path "$manifest" --config "$ws/ephem.toml" --image-cache "$cache" \
		--shards 4 "$@" >/dev/null 2>"$log" || {
		cat "$log" >&2
		exit 1
	}
	t1=$(now)
	if ! grep -q -- "$needle" "$log"; then
		echo "expected \"$needle\" in the run's output:" >&2
		cat "$log" >&2
		exit 1
	fi
	printf '%s %s %s\n' "$(echo "$t1 - $t0" | bc)" \
		"$(sed -n 's/^Summary \[ *\([0-9.]*\)s\].*/\1/p' "$log")" \
		"$(sed -n 's/^ *READY \[ *\([0-9.]*\)s\] environment.*/\1/p' "$log" | sort -n | tail -1)"
	rm -f "$log"
}

