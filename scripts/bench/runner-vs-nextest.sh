#!/usr/bin/env bash
# Wall time and peak memory of `cargo ephem test` against `cargo nextest run`
# on 2,000 trivial tests in 20 test binaries (see gen-workspace.sh).
# A third contender, "nextest-ds0", is nextest with NEXTEST_DOUBLE_SPAWN=0:
# by default nextest starts every test through a copy of itself (the
# "double spawn", which sets up signals before exec'ing the test), and on
# this workload that extra exec of a large binary is most of its cost; the
# third column shows what is left without it. Set BENCH_NO_DS0=1 to skip it.
#
# Usage: scripts/bench/runner-vs-nextest.sh [RUNS]     (default RUNS=7)
#
# Environment:
#   EPHEM_BENCH_WS   workspace to generate/reuse (default target/bench-workspace)
#   EPHEM_BIN        cargo-ephem binary to use instead of building target/release
#
# Method, and why:
#   * The tests do no work, so what is measured is the runner's own cost:
#     cargo start-up, `cargo test --no-run` (a no-op once built), listing the
#     20 binaries, spawning 2,000 processes and collecting their output.
#   * Builds are excluded: the workspace is built once, then each tool gets
#     one untimed warm-up run (which also checks that 2,000 tests pass), so
#     the `cargo test --no-run` both tools still run at start only checks
#     fingerprints — the same cost for both, and part of both wall times.
#   * Both are started through cargo (`cargo ephem` with target/release on
#     PATH, `cargo nextest`), as users run them, so both pay the same ~30 ms
#     of cargo start-up.
#   * CI=1 so neither draws a progress bar; output goes to /dev/null; -j is
#     left at both tools' default, the number of CPUs.
#   * The machine is small and noisy, so runs alternate, in ABBA order
#     (ephem first on odd rounds, nextest first on even rounds) to cancel
#     drift, and we report medians plus the median of per-round ratios.
#   * Peak RSS: /usr/bin/time's "maximum resident set size" is the largest
#     single process of the whole tree (tool, cargo, test binaries), which
#     for runners this light is often cargo itself; so we also sample the
#     tool process's own high-water mark (VmHWM) in separate untimed runs.
set -euo pipefail

runs=${1:-7}
if ! [[ $runs =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: $0 [RUNS]  (RUNS a positive integer, default 7)" >&2
    exit 2
fi

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
ws=${EPHEM_BENCH_WS:-$root/target/bench-workspace}
tests_expected=2000

die() {
    echo "runner-vs-nextest: $*" >&2
    exit 1
}

command -v cargo >/dev/null || die "cargo not found"
cargo nextest --version >/dev/null 2>&1 || die "cargo-nextest not installed (cargo install cargo-nextest)"
command -v cargo-nextest >/dev/null || die "cargo-nextest not on PATH"
[[ -x /usr/bin/time ]] || die "/usr/bin/time missing: apt-get install -y time"

if [[ -n ${EPHEM_BIN:-} ]]; then
    ephem_bin=$EPHEM_BIN
else
    echo "building cargo-ephem (release)..." >&2
    cargo build --quiet --release -p cargo-ephem --manifest-path "$root/Cargo.toml"
    ephem_bin=$root/target/release/cargo-ephem
fi
[[ -x $ephem_bin ]] || die "no cargo-ephem binary at $ephem_bin"
# `cargo ephem` finds cargo-ephem on PATH; put ours first.
ephem_dir=$(mktemp -d)
tmp=$(mktemp -d)
trap 'rm -rf "$ephem_dir" "$tmp"' EXIT
ln -s "$(realpath "$ephem_bin")" "$ephem_dir/cargo-ephem"
export PATH="$ephem_dir:$PATH"
export CI=1

"$root/scripts/bench/gen-workspace.sh" "$ws" 20 100
manifest=$ws/Cargo.toml

ephem_cmd=(cargo ephem test --manifest-path "$manifest" --workspace)
nextest_cmd=(cargo nextest run --manifest-path "$manifest" --workspace)
nextest_ds0_cmd=(env NEXTEST_DOUBLE_SPAWN=0 "${nextest_cmd[@]}")
tools=(ephem nextest)
[[ -n ${BENCH_NO_DS0:-} ]] || tools+=(nextest_ds0)
# For the tool-only RSS sample, the tool must be the process we start.
ephem_direct=(cargo-ephem ephem test --manifest-path "$manifest" --workspace)
nextest_direct=(cargo-nextest nextest run --manifest-path "$manifest" --workspace)
nextest_ds0_direct=(env NEXTEST_DOUBLE_SPAWN=0 "${nextest_direct[@]}")

now_ns() { date +%s%N; }

echo "building the workspace ($ws)..." >&2
cargo test --quiet --no-run --manifest-path "$manifest" --workspace >/dev/null 2>&1 ||
    die "cargo test --no-run failed in $ws"
t0=$(now_ns)
cargo nextest run --no-run --manifest-path "$manifest" --workspace >/dev/null 2>&1 ||
    die "cargo nextest run --no-run failed in $ws"
t1=$(now_ns)
nextest_norun_ms=$(((t1 - t0) / 1000000))

# Warm-up, and a check that both ran all the tests and passed.
for tool in "${tools[@]}"; do
    declare -n cmd=${tool}_cmd
    if ! "${cmd[@]}" >"$tmp/warm-$tool.log" 2>&1; then
        tail -n 20 "$tmp/warm-$tool.log" >&2
        die "warm-up run of $tool failed: ${cmd[*]}"
    fi
    grep -q "$tests_expected tests run: $tests_expected passed" "$tmp/warm-$tool.log" ||
        die "$tool did not report $tests_expected passed tests (see ${cmd[*]})"
    unset -n cmd
done

# One timed run: wall from our own clock (ns), CPU and tree-max RSS from
# /usr/bin/time, appended to $tmp/<tool>.tsv as "wall_s user_s sys_s rss_kb".
timed() {
    local tool=$1
    declare -n cmd=${tool}_cmd
    local a b
    a=$(now_ns)
    /usr/bin/time -f '%U %S %M' -o "$tmp/time.out" "${cmd[@]}" >/dev/null 2>&1 ||
        die "$tool failed during the timed runs: ${cmd[*]}"
    b=$(now_ns)
    echo "$(awk -v d=$((b - a)) 'BEGIN { printf "%.3f", d / 1e9 }') $(tail -n 1 "$tmp/time.out")" >>"$tmp/$tool.tsv"
    unset -n cmd
}

echo "timing $runs runs of each, alternating..." >&2
load_before=$(cut -d ' ' -f 1-3 /proc/loadavg)
n=${#tools[@]}
for ((i = 0; i < runs; i++)); do
    # Rotate who goes first each round, and reverse the order on odd
    # rounds, so no tool always runs right after the same other one.
    for ((k = 0; k < n; k++)); do
        if ((i % 2)); then j=$(((i + n - 1 - k) % n)); else j=$(((i + k) % n)); fi
        timed "${tools[j]}"
    done
done

# Tool-only peak RSS: poll the process's VmHWM (a high-water mark, so the
# last sample before exit is the peak up to the final ~10 ms).
tool_hwm() {
    local pid line hwm=0
    "$@" >/dev/null 2>&1 &
    pid=$!
    while kill -0 "$pid" 2>/dev/null; do
        while read -r line; do
            [[ $line == VmHWM:* ]] && { line=${line#VmHWM:}; hwm=${line%kB}; hwm=${hwm// /}; }
        done <"/proc/$pid/status" 2>/dev/null || true
        sleep 0.01
    done
    wait "$pid" || die "RSS run failed: $*"
    echo "$hwm"
}
for tool in "${tools[@]}"; do
    declare -n cmd=${tool}_direct
    peak=$(for _ in 1 2; do tool_hwm "${cmd[@]}"; done | sort -n | tail -n 1)
    printf -v "${tool}_hwm" %s "$peak"
    unset -n cmd
done

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
col() { awk -v c="$2" '{ print $c }' "$tmp/$1.tsv"; }
# Median over rounds of ephem's wall time divided by the other's, same round.
ratio() { paste -d ' ' "$tmp/ephem.tsv" "$tmp/$1.tsv" | awk '{ printf "%.3f\n", $1 / $5 }' | median; }

echo
echo "cargo-ephem $("$ephem_bin" --version | awk '{ print $NF }') vs $(cargo nextest --version | head -n 1)"
echo "workspace: $ws ($tests_expected tests, 20 binaries); $(nproc) CPUs; $runs runs each, alternating"
echo "load average before/after timing: $load_before / $(cut -d ' ' -f 1-3 /proc/loadavg)"
echo "(cargo nextest run --no-run after cargo test --no-run: ${nextest_norun_ms} ms, i.e. the build is shared)"
echo
fmt='%-12s %8s %8s %8s %8s %10s %10s\n'
printf "$fmt" tool "wall(s)" min max "cpu(s)" "rss(MiB)" "ephem/x"
printf "$fmt" "" median "" "" median "tool/tree" median
for tool in "${tools[@]}"; do
    declare -n hwm=${tool}_hwm
    printf "$fmt" "${tool/_ds0/-ds0}" "$(col "$tool" 1 | median)" \
        "$(col "$tool" 1 | sort -g | head -n 1)" "$(col "$tool" 1 | sort -g | tail -n 1)" \
        "$(awk '{ printf "%.2f\n", $2 + $3 }' "$tmp/$tool.tsv" | median)" \
        "$(awk -v a="$hwm" -v b="$(col "$tool" 4 | median)" 'BEGIN { printf "%.0f/%.0f", a / 1024, b / 1024 }')" \
        "$([[ $tool == ephem ]] && echo - || ratio "$tool")"
    unset -n hwm
done
echo
for tool in "${tools[@]}"; do
    echo "walls (s) ${tool/_ds0/-ds0}: $(col "$tool" 1 | tr '\n' ' ')"
done
echo
echo "reproduce: ${EPHEM_BIN:+EPHEM_BIN=$EPHEM_BIN }${EPHEM_BENCH_WS:+EPHEM_BENCH_WS=$EPHEM_BENCH_WS }scripts/bench/runner-vs-nextest.sh $runs"
echo "  timed:   CI=1 ${ephem_cmd[*]}"
echo "           CI=1 ${nextest_cmd[*]}"
[[ -n ${BENCH_NO_DS0:-} ]] || echo "           CI=1 ${nextest_ds0_cmd[*]}"
