#!/usr/bin/env bash
# Environment snapshots on a fresh daemon: a CI job's first run, where the
# daemon holds no image and everything comes out of the image cache.
#
#   scripts/bench/snapshot-fresh-daemon.sh [RUNS]   (default RUNS=3;
#       MIGRATIONS=300, DRIVER=overlay2, UNPIGZ="on off",
#       DAEMON_DIR=/var/tmp: where the daemon's data root goes; /dev/shm
#       puts it on tmpfs)
#
# The workspace of snapshot.sh (snapshot-lib.sh), 4 shards, its own image
# cache. A private dockerd (its own socket, data root, exec root and
# containerd; storage driver DRIVER; its own default bridge, no iptables
# rules: published ports go through docker-proxy) is started empty for every
# run and removed after it, so both runs restore their images from the cache:
#   fresh     --no-snapshot: postgres and redis restored, then initdb and
#             the setup in every shard;
#   snapshot  the snapshot image (with the postgres layers under it) and
#             redis restored, every shard starts from it.
# Then, on that daemon (its images present now), three more runs: fresh,
# from the snapshot in the daemon, and from the snapshot restored from the
# cache with the base images present (the snapshot image removed first).
# For each UNPIGZ value the daemon runs with unpigz on its PATH ("on") or
# with MOBY_DISABLE_PIGZ=1 ("off": Go's gzip decompresses the layers).
# Figures: start to all 4 shards ready (and the empty daemon's walls).
# Targets (issue 18): from an empty daemon <= 0.5x fresh; images present,
# <= 0.3x.
#
# Needs root and the machine scripts/provision-test-env.sh makes (the
# registry on 127.0.0.1:5000 fills the cache in the warm-up). The shared
# daemon is not touched.
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-3}
driver=${DRIVER:-overlay2}
cache=$PWD/target/bench-snapshot/cache-fresh-daemon
# shellcheck source=scripts/bench/snapshot-lib.sh
source scripts/bench/snapshot-lib.sh

# Short: containerd's sockets live under the exec root (108-byte limit).
root=$(mktemp -d "${DAEMON_DIR:-/var/tmp}/ephem-d2.XXXX")
export DOCKER_HOST="unix://$root/docker.sock"
echo '{}' >"$root/daemon.json"
daemon_pid=
# A bridge of its own: a dockerd started with `--bridge none` deletes the
# host's docker0, which the shared daemon's containers need.
bridge=ephd2-$$
trap 'stop_daemon; rm -rf "$root"; ip link del "$bridge" 2>/dev/null' EXIT
ip link add "$bridge" type bridge
ip addr add 10.214.0.1/24 dev "$bridge"
ip link set "$bridge" mtu 1400 up

stop_daemon() {
	[ -n "$daemon_pid" ] || return 0
	docker ps -aq | xargs -r docker rm -f >/dev/null 2>&1 || true
	kill "$daemon_pid" 2>/dev/null || true
	for _ in $(seq 1 150); do
		kill -0 "$daemon_pid" 2>/dev/null || break
		sleep 0.2
	done
	kill -9 "$daemon_pid" 2>/dev/null || true
	wait "$daemon_pid" 2>/dev/null || true
	daemon_pid=
	# Whatever the daemon left mounted under its data root.
	grep -o " $root/[^ ]*" /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
	rm -rf "$root/data" "$root/exec"
}
# start_daemon on|off: an empty daemon, unpigz on its PATH or not.
start_daemon() {
	stop_daemon
	local pigz_env=()
	[ "$1" = off ] && pigz_env=(MOBY_DISABLE_PIGZ=1)
	# pigz reads options from PIGZ and GZIP: none of ours may reach it.
	env -u PIGZ -u GZIP "${pigz_env[@]}" dockerd --config-file "$root/daemon.json" \
		--data-root "$root/data" --exec-root "$root/exec" --pidfile "$root/docker.pid" \
		-H "$DOCKER_HOST" --storage-driver "$driver" --bridge "$bridge" \
		--iptables=false --ip-masq=false --mtu 1400 \
		--default-address-pool base=10.213.0.0/16,size=24 >>"$root/dockerd.log" 2>&1 &
	daemon_pid=$!
	for _ in $(seq 1 150); do
		docker info >/dev/null 2>&1 && break
		kill -0 "$daemon_pid" 2>/dev/null || {
			tail -20 "$root/dockerd.log" >&2
			exit 1
		}
		sleep 0.2
	done
	[ -z "$(docker images -q)" ] || {
		echo "the private daemon is not empty" >&2
		exit 1
	}
}

# Warm-up, fresh daemons both: the cache gets the base images and (a new
# warm-up key from snapshot-lib.sh) the snapshot.
start_daemon on
timed "built by shard" >/dev/null
start_daemon on
timed ", restored from the image cache (" >/dev/null

for pigz in ${UNPIGZ:-on off}; do
	fresh=() snap=() rfresh=() rsnap=() rpfresh=() rpdaemon=() rpcache=()
	for ((i = 1; i <= runs; i++)); do
		start_daemon "$pigz"
		read -r f _ rf < <(timed Summary --no-snapshot)
		start_daemon "$pigz"
		read -r s _ rs < <(timed ", restored from the image cache (")
		# The same daemon, its images present now: fresh, the snapshot in
		# the daemon, and the snapshot alone restored from the cache.
		read -r _ _ rpf < <(timed Summary --no-snapshot)
		read -r _ _ rpd < <(timed "(in the daemon)")
		docker images -q cargo-ephem-snapshot/postgres | xargs -r docker rmi -f >/dev/null
		read -r _ _ rpc < <(timed ", restored from the image cache (")
		fresh+=("$f") snap+=("$s") rfresh+=("$rf") rsnap+=("$rs")
		rpfresh+=("$rpf") rpdaemon+=("$rpd") rpcache+=("$rpc")
		printf 'unpigz %s, round %d: empty daemon: all 4 ready after fresh %.2f s, snapshot %.2f s (wall %.2f s, %.2f s); images present: fresh %.2f s, snapshot in the daemon %.2f s, snapshot from the cache %.2f s\n' \
			"$pigz" "$i" "$rf" "$rs" "$f" "$s" "$rpf" "$rpd" "$rpc"
	done
	f=$(printf '%s\n' "${fresh[@]}" | median)
	s=$(printf '%s\n' "${snap[@]}" | median)
	rf=$(printf '%s\n' "${rfresh[@]}" | median)
	rs=$(printf '%s\n' "${rsnap[@]}" | median)
	rpf=$(printf '%s\n' "${rpfresh[@]}" | median)
	rpd=$(printf '%s\n' "${rpdaemon[@]}" | median)
	rpc=$(printf '%s\n' "${rpcache[@]}" | median)
	printf 'unpigz %s, medians, empty daemon: ready fresh %.2f s, snapshot %.2f s: %.2fx (target <= 0.5); wall fresh %.2f s, snapshot %.2f s: %.2fx\n' \
		"$pigz" "$rf" "$rs" "$(echo "$rs / $rf" | bc -l)" "$f" "$s" "$(echo "$s / $f" | bc -l)"
	printf 'unpigz %s, medians, images present: ready fresh %.2f s, snapshot in the daemon %.2f s: %.2fx (target <= 0.3), snapshot from the cache %.2f s: %.2fx\n' \
		"$pigz" "$rpf" "$rpd" "$(echo "$rpd / $rpf" | bc -l)" "$rpc" "$(echo "$rpc / $rpf" | bc -l)"
done
echo "storage driver: $driver; load: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "reproduce: MIGRATIONS=$migrations DRIVER=$driver scripts/bench/snapshot-fresh-daemon.sh $runs"
