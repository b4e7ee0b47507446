#!/usr/bin/env bash
# Putting the example's images back into an empty Docker image store: the
# warm image cache (`cargo ephem images pull --image-cache DIR`) against the
# usual CI workaround (`docker load` of a `docker save` tar) and against a
# cold pull over a CI-like link.
#
#   scripts/bench/images.sh [RUNS]          (default RUNS=5)
#
# Images: those of examples/postgres-redis (postgres:15-bookworm and
# redis:7-bookworm), from the registry on 127.0.0.1:5000 that
# scripts/provision-test-env.sh runs. Each timed step starts from an empty
# image store (pruned, checked empty, then `sync` so no step pays for the
# previous one's writes), on a Docker daemon of our own (see below), and the
# steps of a round run in a rotating order, reversed every other round:
#   load      `docker load -i images.tar`; the tar is a `docker save` of both
#             images, made once beforehand (not timed);
#   restore   `cargo ephem images pull --image-cache CACHE` with CACHE filled
#             beforehand and EPHEM_REGISTRY_MIRROR=localhost:5000; once per
#             mode the binary knows: EPHEM_IMAGE_SERVE=stored|decompressed,
#             or EPHEM_IMAGE_RESTORE=serve|load (the daemon pulls from the
#             cache's loopback registry, or `docker load`s a stream of it);
#   pull      both images at once, `docker pull 127.0.0.1:PROXY/library/...`,
#             through throttle-proxy.py: 100 Mbit/s shared by all
#             connections, 10 ms added to every new connection;
#   local     the same two pulls straight from the registry (no proxy): what
#             a pull costs beyond the transfer (decompress, untar, register);
#   untar     no Docker: `tar -xzf` of the two compressed layers (fetched
#             once beforehand) into a folder next to our daemon's data, both
#             at once: what decompressing and writing the files costs on
#             this machine by itself (a reference, not a floor: GNU tar and
#             gzip are not the daemon's Go code);
#   fill      `cargo ephem images pull --image-cache EMPTY` through the same
#             proxy (EPHEM_REGISTRY_MIRROR=127.0.0.1:PROXY): the cold pull
#             that also fills the cache.
# After the rounds, one more restore runs with the mirror set to the proxy
# and the proxy's log counts the registry requests it made (expected: none;
# the cache records the digests).
# It prints the median (min-max) of each step, the median of the per-round
# ratios restore/load and restore/pull, and the load average before/after.
# The cache steps are skipped, with a note, if the binary has no `images`
# command.
#
# Environment:
#   EPHEM_BIN        cargo-ephem binary to use instead of building target/release
#   BENCH_REGISTRY   registry to pull from (default 127.0.0.1:5000; the mirror
#                    the restore uses is localhost:5000, the same registry)
#   BENCH_MBIT, BENCH_DELAY_MS   the proxy's link (default 100 and 10)
#   BENCH_RESTORE_VARIANTS  restore variants to time, space-separated
#                    VAR=value (default: found in the binary as above; an
#                    empty value times the plain restore only)
#
# Our own daemon: the main daemon (/var/run/docker.sock) holds images other
# people's tests need, so nothing here removes images from it. The script
# starts a second dockerd (data in /var/tmp/ephem-bench-docker, socket
# /run/ephem-bench-docker.sock, a bridge of its own (ephem-bench0: started
# with --bridge=none, dockerd deletes docker0, the main daemon's default
# bridge), no iptables, the main daemon's storage driver, its own config file so /etc/docker/daemon.json does not
# apply) and empties that daemon's store between steps. On exit it stops that
# daemon and the proxy and removes their folders; a rerun first cleans up
# after a run that was killed. Run as root.
set -euo pipefail

runs=${1:-5}
if ! [[ $runs =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: $0 [RUNS]  (RUNS a positive integer, default 5)" >&2
    exit 2
fi

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
registry=${BENCH_REGISTRY:-127.0.0.1:5000}
mirror=localhost:${registry##*:}
mbit=${BENCH_MBIT:-100}
delay_ms=${BENCH_DELAY_MS:-10}
manifest=$root/examples/postgres-redis/Cargo.toml
images=(postgres:15-bookworm redis:7-bookworm)

bench_root=/var/tmp/ephem-bench-docker
untar_dir=$bench_root-untar
bench_exec=/run/ephem-bench-docker
bench_sock=/run/ephem-bench-docker.sock
bench_pid=/run/ephem-bench-docker.pid
proxy_pid=/run/ephem-bench-proxy.pid
lock=/run/lock/ephem-bench-images.lock

die() {
    echo "images.sh: $*" >&2
    exit 1
}
say() { echo "images.sh: $*" >&2; }

[[ $(id -u) == 0 ]] || die "run as root (it starts a dockerd)"
for cmd in docker dockerd python3 curl; do
    command -v "$cmd" >/dev/null || die "$cmd not found"
done
exec 9>"$lock"
flock -n 9 || die "another images.sh holds $lock"
for image in "${images[@]}"; do
    curl -sf -m 5 -o /dev/null -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
        "http://$registry/v2/library/${image%%:*}/manifests/${image#*:}" ||
        die "$registry does not serve library/$image (run scripts/provision-test-env.sh)"
done

# --- the binary ---------------------------------------------------------------

if [[ -n ${EPHEM_BIN:-} ]]; then
    ephem_bin=$EPHEM_BIN
else
    say "building cargo-ephem (release)..."
    cargo build --quiet --release -p cargo-ephem --manifest-path "$root/Cargo.toml"
    ephem_bin=$root/target/release/cargo-ephem
fi
[[ -x $ephem_bin ]] || die "no cargo-ephem binary at $ephem_bin"
have_cache=1
if ! "$ephem_bin" ephem images pull --help >/dev/null 2>&1; then
    have_cache=
    say "NOTE: $ephem_bin has no 'images pull' command: the cache steps (restore, fill, requests) are skipped"
fi
# Restore variants: environment assignments, one timed step each.
if [[ -n ${BENCH_RESTORE_VARIANTS+set} ]]; then
    variants=($BENCH_RESTORE_VARIANTS)
elif [[ -n $have_cache ]] && grep -aq EPHEM_IMAGE_SERVE "$ephem_bin"; then
    variants=(EPHEM_IMAGE_SERVE=stored EPHEM_IMAGE_SERVE=decompressed)
elif [[ -n $have_cache ]] && grep -aq EPHEM_IMAGE_RESTORE "$ephem_bin"; then
    variants=(EPHEM_IMAGE_RESTORE=serve EPHEM_IMAGE_RESTORE=load)
else
    variants=()
fi

# --- our daemon and the proxy -----------------------------------------------------

# stop_pidfile FILE WORD: stops the process FILE names if its command line
# contains WORD (so a stale pid file never kills someone else's process).
stop_pidfile() {
    local pid
    [[ -s $1 ]] || return 0
    pid=$(cat "$1")
    if [[ -r /proc/$pid/cmdline ]] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$2"; then
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.2
        done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$1"
}

# Unmounts anything left below a folder, then removes it without crossing
# into other file systems.
remove_tree() {
    local mnt
    [[ -e $1 ]] || return 0
    awk -v d="$1/" 'index($2, d) == 1 { print $2 }' /proc/mounts | sort -r |
        while read -r mnt; do umount -l "$mnt" 2>/dev/null || true; done
    rm -rf --one-file-system "$1"
}

tmp=
cleanup() {
    stop_pidfile "$proxy_pid" throttle-proxy.py
    stop_pidfile "$bench_pid" "$bench_sock"
    remove_tree "$bench_exec"
    remove_tree "$bench_root"
    remove_tree "$untar_dir"
    rm -f "$bench_sock"
    ip link del ephem-bench0 2>/dev/null || true
    [[ -z $tmp ]] || remove_tree "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
cleanup # whatever a killed run left behind

tmp=$(mktemp -d /var/tmp/ephem-bench-images.XXXXXX)
driver=$(docker info --format '{{.Driver}}' 2>/dev/null) || die "main daemon not reachable"
printf '{"storage-driver": "%s"}\n' "$driver" >"$tmp/daemon.json"
mkdir -p "$bench_root" "$bench_exec"
ip link add ephem-bench0 type bridge
ip addr add 172.31.254.1/24 dev ephem-bench0
ip link set ephem-bench0 up
say "starting our dockerd ($driver, $bench_sock; log $tmp/dockerd.log)"
setsid dockerd --config-file "$tmp/daemon.json" --data-root "$bench_root" --exec-root "$bench_exec" \
    --pidfile "$bench_pid" -H "unix://$bench_sock" --bridge=ephem-bench0 --iptables=false --ip6tables=false \
    >"$tmp/dockerd.log" 2>&1 </dev/null 9>&- &
export DOCKER_HOST=unix://$bench_sock
for _ in $(seq 120); do
    docker version >/dev/null 2>&1 && break
    sleep 0.5
done
docker version >/dev/null 2>&1 || { tail -n 20 "$tmp/dockerd.log" >&2; die "our dockerd did not start"; }

python3 "$root/scripts/bench/throttle-proxy.py" --upstream "$registry" --mbit "$mbit" \
    --connect-delay-ms "$delay_ms" --log "$tmp/proxy.log" --port-file "$tmp/proxy.port" \
    >/dev/null 2>"$tmp/proxy.err" </dev/null 9>&- &
echo $! >"$proxy_pid"
for _ in $(seq 50); do
    [[ -s $tmp/proxy.port ]] && break
    sleep 0.1
done
[[ -s $tmp/proxy.port ]] || { cat "$tmp/proxy.err" >&2; die "throttle-proxy did not start"; }
proxy=127.0.0.1:$(cat "$tmp/proxy.port")

# --- helpers ------------------------------------------------------------------------

now_ns() { date +%s%N; }
secs() { awk -v d="$1" 'BEGIN { printf "%.3f\n", d / 1e9 }'; }

# Also writes back what the previous step left dirty, so that no step pays
# for the writes of the one before it.
empty_store() {
    docker image prune -af >/dev/null
    [[ -z $(docker images -aq) ]] || die "our daemon still holds images after prune"
    rm -rf "$untar_dir"
    sync
}

# Both images present, whatever their names: their ids are recorded from the
# first pull.
check_images() {
    local id present
    present=$(docker images -aq --no-trunc)
    for id in "${ids[@]}"; do
        grep -qx "$id" <<<"$present" || die "$1: image $id missing afterwards"
    done
}

ephem_pull() { # CACHE MIRROR [VAR=value]
    env EPHEM_REGISTRY_MIRROR="$2" ${3:+"$3"} CI=1 \
        "$ephem_bin" ephem images pull --image-cache "$1" --manifest-path "$manifest"
}

# The timed steps. Each runs on an empty store; its output goes to
# $tmp/<step>.out.
step_load() { docker load -i "$tmp/images.tar"; }
# pull_both REGISTRY: both images at once, as a CI job's parallel pulls.
pull_both() {
    local image pids=() pid rc=0
    for image in "${images[@]}"; do
        docker pull -q "$1/library/$image" &
        pids+=($!)
    done
    for pid in "${pids[@]}"; do wait "$pid" || rc=1; done
    return $rc
}
step_pull() { pull_both "$proxy"; }
step_local() { pull_both "$registry"; }
step_untar() {
    local blob pids=() pid rc=0
    for blob in "$tmp"/blobs/*; do
        mkdir -p "$untar_dir/${blob##*/}"
        tar -xzf "$blob" -C "$untar_dir/${blob##*/}" &
        pids+=($!)
    done
    for pid in "${pids[@]}"; do wait "$pid" || rc=1; done
    return $rc
}
step_fill() {
    rm -rf "$tmp/fill-cache"
    ephem_pull "$tmp/fill-cache" "$proxy"
}
# restore (plain) or restore_VALUE (the variant VAR=VALUE).
declare -A variant_of=()
for v in "${variants[@]}"; do variant_of[restore_${v#*=}]=$v; done
step() {
    case $1 in
    restore*) ephem_pull "$tmp/cache" "$mirror" "${variant_of[$1]:-}" ;;
    *) "step_$1" ;;
    esac
}

requests() { grep -c $'^req\t' "$tmp/proxy.log" || true; }

# timed STEP: appends the wall time (s) to $tmp/STEP.times, and the number of
# requests the proxy forwarded meanwhile to $tmp/STEP.reqs.
timed() {
    local a b r
    empty_store
    r=$(requests)
    a=$(now_ns)
    step "$1" >"$tmp/$1.out" 2>&1 || { tail -n 20 "$tmp/$1.out" >&2; die "step $1 failed"; }
    b=$(now_ns)
    echo $(($(requests) - r)) >>"$tmp/$1.reqs"
    [[ $1 == untar ]] || check_images "$1"
    secs $((b - a)) >>"$tmp/$1.times"
}

# --- preparation (not timed) ------------------------------------------------------------

say "preparing: pull from $registry, docker save, fill the cache"
ids=()
for image in "${images[@]}"; do
    docker pull -q "$registry/library/$image" >/dev/null
    ids+=("$(docker image inspect --format '{{.Id}}' "$registry/library/$image")")
done
refs=()
for image in "${images[@]}"; do refs+=("$registry/library/$image"); done
a=$(now_ns)
docker save -o "$tmp/images.tar" "${refs[@]}"
b=$(now_ns)
save_s=$(secs $((b - a)))
tar_mb=$(du -m "$tmp/images.tar" | cut -f1)
# What a pull transfers: the compressed layers and configs in the manifests.
pull_mb=$(for image in "${images[@]}"; do
    curl -sf -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
        "http://$registry/v2/library/${image%%:*}/manifests/${image#*:}"
done | python3 -c '
import json, sys
d = json.JSONDecoder(); s = sys.stdin.read().strip(); i = 0; total = 0
while i < len(s):
    m, i = d.raw_decode(s, i)
    total += m["config"]["size"] + sum(l["size"] for l in m["layers"])
    while i < len(s) and s[i].isspace(): i += 1
print(f"{total / 1e6:.1f}")')

# The layers themselves, for the untar step.
mkdir -p "$tmp/blobs"
for image in "${images[@]}"; do
    for digest in $(curl -sf -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
        "http://$registry/v2/library/${image%%:*}/manifests/${image#*:}" |
        python3 -c 'import json, sys; print(*(l["digest"] for l in json.load(sys.stdin)["layers"]))'); do
        curl -sf -o "$tmp/blobs/${image%%:*}-${digest:7:12}" "http://$registry/v2/library/${image%%:*}/blobs/$digest"
    done
done

steps=(load pull local untar)
if [[ -n $have_cache ]]; then
    empty_store
    a=$(now_ns)
    ephem_pull "$tmp/cache" "$mirror" >"$tmp/fill-local.out" 2>&1 ||
        { tail -n 20 "$tmp/fill-local.out" >&2; die "filling the cache failed"; }
    b=$(now_ns)
    fill_local_s=$(secs $((b - a)))
    check_images "cache fill"
    cache_mb=$(du -sm "$tmp/cache" | cut -f1)
    if ((${#variants[@]})); then
        for v in "${variants[@]}"; do steps+=("restore_${v#*=}"); done
    else
        steps+=(restore)
    fi
    steps+=(fill)
fi

# --- the rounds -------------------------------------------------------------------------

say "timing $runs rounds of: ${steps[*]} (proxy $proxy: $mbit Mbit/s, +$delay_ms ms per connection)"
load_before=$(cut -d ' ' -f 1-3 /proc/loadavg)
n=${#steps[@]}
for ((i = 0; i < runs; i++)); do
    line="round $((i + 1)):"
    for ((k = 0; k < n; k++)); do
        if ((i % 2)); then j=$(((i + n - 1 - k) % n)); else j=$(((i + k) % n)); fi
        timed "${steps[j]}"
        line+=" ${steps[j]} $(tail -n 1 "$tmp/${steps[j]}.times")"
    done
    say "$line"
done
load_after=$(cut -d ' ' -f 1-3 /proc/loadavg)

# Registry requests of a restore whose daemon is empty and whose cache is
# full, counted by the proxy it is pointed at.
if [[ -n $have_cache ]]; then
    empty_store
    before=$(requests)
    ephem_pull "$tmp/cache" "$proxy" >"$tmp/requests.out" 2>&1 ||
        { tail -n 20 "$tmp/requests.out" >&2; die "restore through the proxy failed"; }
    check_images "restore through the proxy"
    restore_requests=$(($(requests) - before))
fi

# --- report ---------------------------------------------------------------------------------

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) printf "%.2f\n", v[(NR + 1) / 2]; else printf "%.2f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
range() { sort -g "$1" | awk 'NR == 1 { lo = $1 } { hi = $1 } END { printf "%.2f-%.2f", lo, hi }'; }
ratio() { paste -d ' ' "$tmp/$1.times" "$tmp/$2.times" | awk '{ printf "%.3f\n", $1 / $2 }' | median; }

echo
echo "cargo-ephem: $ephem_bin${have_cache:+ (has images pull)}"
echo "docker $(docker version --format '{{.Server.Version}}') ($driver), our own daemon; $(nproc) CPUs; $runs rounds, order rotating"
echo "images: ${images[*]} from $registry; pull transfers $pull_mb MB (compressed), save tar $tar_mb MiB (docker save took $save_s s)"
[[ -z $have_cache ]] || echo "cache: $cache_mb MiB, filled in $fill_local_s s from $mirror"
echo "proxy: $mbit Mbit/s shared, +$delay_ms ms per new connection"
echo "load average before/after timing: $load_before / $load_after"
echo
fmt='%-22s %10s %14s %16s\n'
printf "$fmt" step "median(s)" "min-max" "proxy requests"
for s in "${steps[@]}"; do
    printf "$fmt" "${s/_/ }" "$(median <"$tmp/$s.times")" "$(range "$tmp/$s.times")" \
        "$(sort -n "$tmp/$s.reqs" | uniq | tr '\n' ' ')"
done
echo
if [[ -n $have_cache ]]; then
    for s in "${steps[@]}"; do
        [[ $s == restore* ]] || continue
        printf '%-22s restore/load %s (target <= 1.0, aim 0.6)   restore/pull %s (target <= 0.3)\n' \
            "${s/_/ }" "$(ratio "$s" load)" "$(ratio "$s" pull)"
    done
    printf '%-22s fill/pull %s\n' fill "$(ratio fill pull)"
    echo "registry requests of a restore with a full cache, through the proxy: $restore_requests (expected 0)"
    echo
fi
for s in "${steps[@]}"; do
    echo "times (s) ${s/_/ }: $(tr '\n' ' ' <"$tmp/$s.times")"
done
echo
# What cargo-ephem said it did, in the last round of each cache step.
for s in "${steps[@]}" requests; do
    [[ $s == restore* || $s == fill || $s == requests ]] && [[ -s $tmp/$s.out ]] || continue
    echo "cargo-ephem's output, ${s/_/ }:"
    sed 's/^/    /' "$tmp/$s.out"
done
echo
echo "reproduce: ${EPHEM_BIN:+EPHEM_BIN=$EPHEM_BIN }${BENCH_RESTORE_VARIANTS+BENCH_RESTORE_VARIANTS=\"$BENCH_RESTORE_VARIANTS\" }${BENCH_MBIT:+BENCH_MBIT=$BENCH_MBIT }${BENCH_DELAY_MS:+BENCH_DELAY_MS=$BENCH_DELAY_MS }scripts/bench/images.sh $runs"
