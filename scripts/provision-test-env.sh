#!/usr/bin/env bash
# Makes a Debian bookworm machine ready for cargo-ephem's test suite:
#   1. host tools the tests call (xmllint, curl, chromium);
#   2. a reachable Docker daemon;
#   3. a plain-HTTP registry on 127.0.0.1:5000 (also reached as localhost:5000);
#   4. stand-ins for postgres:15-bookworm, redis:7-bookworm and busybox:1.36,
#      built from Debian packages and pushed to that registry;
#   5. kubernetes-validate, which checks rendered Kubernetes objects against
#      the API's strict schemas without a cluster;
#   6. with EPHEM_TEST_PODMAN=1 only: Podman from Debian, its Docker-compatible
#      service rootful on /run/podman/podman.sock and rootless for the user
#      ephem-podman, both pulling from the local registry.
# No public container registry can be reached from our machines, so the
# images the tests pull have to be made here, from the Debian mirror.
#
# Run as root. Idempotent: when everything is in place it only checks, in a
# second or two. Used by .ci/run (CI=true, no stdin) and by developers.
# EPHEM_DEBIAN_MIRROR overrides the mirror debootstrap uses.
#
# `EPHEM_PROVISION_LIB=1 source scripts/provision-test-env.sh` only defines
# the functions, so the end-to-end tests can call one of them on its own; the
# caller's shell options and ERR trap stay its own (die still exits the
# caller's shell). Executed, the script ignores the variable. (`return`
# succeeds only in a sourced file; comparing BASH_SOURCE with $0 would take
# `bash -c 'source "$0"' script` for an execution.)
PROVISION_AS_LIB=
if [ "${EPHEM_PROVISION_LIB:-}" = 1 ] && (return 0 2>/dev/null); then
	PROVISION_AS_LIB=1
else
	set -Eeuo pipefail
fi

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
readonly SCRIPT_DIR
readonly IMAGES_DIR="$SCRIPT_DIR/images"

readonly REGISTRY_ADDR=127.0.0.1:5000
readonly REGISTRY_URL="http://$REGISTRY_ADDR"
readonly REGISTRY_CONFIG=/etc/ephem-registry/config.yml
# Temporary storage on purpose: everything in it can be rebuilt by this script.
readonly REGISTRY_STORAGE=/var/tmp/ephem-registry
readonly REGISTRY_LOG=/var/log/ephem-registry.log
readonly DOCKERD_LOG=/var/log/ephem-dockerd.log
# debootstrap takes ~40 s per image; keeping the root filesystems lets a rerun
# after a registry wipe skip it.
readonly IMAGE_CACHE=/var/cache/ephem-images
readonly SUITE=bookworm
readonly DEBIAN_MIRROR="${EPHEM_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
readonly LOCK_FILE=/run/lock/ephem-provision.lock

export DEBIAN_FRONTEND=noninteractive

say() { printf 'provision: %s\n' "$*"; }
die() { printf 'provision: ERROR: %s\n' "$*" >&2; exit 1; }
[ -n "$PROVISION_AS_LIB" ] || trap 'die "command failed (line $LINENO): $BASH_COMMAND"' ERR

# quietly LOG WHAT CMD...: keeps the output of long, chatty commands out of
# the CI log unless they fail.
quietly() {
	local log="$1" what="$2"
	shift 2
	if ! "$@" >>"$log" 2>&1; then
		printf 'provision: ERROR: %s failed; last lines of %s:\n' "$what" "$log" >&2
		tail -n 25 "$log" | sed 's/^/    /' >&2
		exit 1
	fi
}

# wait_for SECONDS CMD...: polls until CMD succeeds.
wait_for() {
	local deadline=$((SECONDS + $1))
	shift
	until "$@" >/dev/null 2>&1; do
		((SECONDS < deadline)) || return 1
		sleep 0.5
	done
}

# Daemons must outlive this script (and CI's process group), and must not
# inherit our stdout (CI would wait for it to close) nor the lock's fd 9.
start_background() {
	local log="$1"
	shift
	setsid nohup "$@" >>"$log" 2>&1 </dev/null 9>&- &
}

# Matches /proc/PID/comm, so it needs no procps on a minimal machine.
is_running() { grep -qx -- "$1" /proc/[0-9]*/comm 2>/dev/null; }

systemd_is_init() { [ -d /run/systemd/system ]; }

APT_UPDATED=
# need_packages PKG...: installs the ones that are missing; apt-get update
# only runs when something is actually missing, to keep reruns fast.
need_packages() {
	local missing=() pkg
	for pkg; do
		dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed' || missing+=("$pkg")
	done
	((${#missing[@]})) || return 0
	say "apt: installing ${missing[*]}"
	if [ -z "$APT_UPDATED" ]; then
		quietly /var/log/ephem-apt.log "apt-get update" apt-get -o DPkg::Lock::Timeout=300 update
		APT_UPDATED=1
	fi
	quietly /var/log/ephem-apt.log "apt-get install ${missing[*]}" \
		apt-get -o DPkg::Lock::Timeout=300 install -y "${missing[@]}"
}

# --- step 1: tools the test suite calls -------------------------------------

ensure_tools() {
	# libxml2-utils: xmllint validates the JUnit XML reports against the XSD.
	# chromium: renders the HTML run report headless (screenshot and DOM).
	need_packages curl libxml2-utils chromium
	say "tools: curl, xmllint and chromium present"
	# check-jsonschema validates the CI recipes (examples/ci) against the
	# GitHub and GitLab schemas it vendors (no network needed to check).
	need_pip check-jsonschema check-jsonschema==0.39.0
}

# need_pip COMMAND SPEC: installs SPEC from PyPI unless COMMAND already runs.
need_pip() {
	local command="$1" spec="$2"
	if "$command" --version >/dev/null 2>&1; then
		return 0
	fi
	say "pip: installing $spec"
	quietly /var/log/ephem-pip.log "pip install $spec" \
		python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "$spec"
	command -v "$command" >/dev/null || die "pip installed $spec but $command is not on PATH ($(python3 -m site --user-base)/bin?)"
}

# --- step 2: Docker daemon ---------------------------------------------------

ensure_docker() {
	# dockerd decompresses layers with unpigz when it is on PATH (looked up
	# per pull, no restart): snapshot and image restores decompress in parallel.
	need_packages pigz
	if docker info >/dev/null 2>&1; then
		say "docker daemon: already running"
		return
	fi
	if ! command -v dockerd >/dev/null || ! command -v docker >/dev/null; then
		need_packages docker.io
		# With systemd the package starts the daemon itself.
		if wait_for 10 docker info; then
			say "docker daemon: installed and running"
			return
		fi
	fi
	local hint="see $DOCKERD_LOG"
	if is_running dockerd; then
		say "docker daemon: dockerd is starting, waiting for it"
		hint="a dockerd process runs but does not answer${DOCKER_HOST:+ on DOCKER_HOST=$DOCKER_HOST}; check its log"
	elif systemd_is_init && systemctl start docker.service >/dev/null 2>&1; then
		say "docker daemon: started docker.service"
	else
		say "docker daemon: starting dockerd (log: $DOCKERD_LOG)"
		start_background "$DOCKERD_LOG" dockerd
	fi
	wait_for 60 docker info ||
		die "docker daemon: no answer to 'docker info' after 60 s; $hint"
	say "docker daemon: running"
}

# --- step 3: local registry ---------------------------------------------------

# HTTP status of /v2/ on our port, 000 when nothing listens.
registry_status() { curl -s -o /dev/null -m 5 -w '%{http_code}' "$REGISTRY_URL/v2/" || true; }
registry_port_free() { [ "$(registry_status)" = 000 ]; }

# The package's own service listens on all interfaces and wants htpasswd
# auth, so neither the tests nor docker could use it; it must not hold :5000.
stop_packaged_registry() {
	if systemd_is_init; then
		if systemctl is-active --quiet docker-registry.service 2>/dev/null ||
			systemctl is-enabled --quiet docker-registry.service 2>/dev/null; then
			say "registry: stopping and disabling the packaged docker-registry service"
			systemctl disable --now docker-registry.service >/dev/null 2>&1 || true
		fi
	elif [ -s /var/run/docker-registry.pid ] && kill -0 "$(cat /var/run/docker-registry.pid)" 2>/dev/null; then
		say "registry: stopping the packaged docker-registry service"
		/etc/init.d/docker-registry stop >/dev/null 2>&1 || true
	fi
}

write_registry_config() {
	mkdir -p "$(dirname "$REGISTRY_CONFIG")" "$REGISTRY_STORAGE"
	# No blob descriptor cache: should someone wipe the storage directory under
	# a running registry, a cache would claim blobs that are gone.
	cat >"$REGISTRY_CONFIG" <<-EOF
		# Written by cargo-ephem's scripts/provision-test-env.sh.
		version: 0.1
		log:
		  fields:
		    service: ephem-registry
		storage:
		  filesystem:
		    rootdirectory: $REGISTRY_STORAGE
		  delete:
		    enabled: true
		http:
		  addr: $REGISTRY_ADDR
		  headers:
		    X-Content-Type-Options: [nosniff]
	EOF
}

ensure_registry() {
	local status
	status="$(registry_status)"
	if [ "$status" = 200 ]; then
		say "registry: already serving on $REGISTRY_ADDR"
	else
		need_packages docker-registry
		stop_packaged_registry
		wait_for 10 registry_port_free ||
			die "registry: $REGISTRY_ADDR is taken by something that is not a usable registry (HTTP $(registry_status) on /v2/); free port ${REGISTRY_ADDR##*:}"
		write_registry_config
		say "registry: starting docker-registry on $REGISTRY_ADDR (storage: $REGISTRY_STORAGE, log: $REGISTRY_LOG)"
		start_background "$REGISTRY_LOG" docker-registry serve "$REGISTRY_CONFIG"
		if ! wait_for 30 curl -sf -m 5 "$REGISTRY_URL/v2/"; then
			tail -n 15 "$REGISTRY_LOG" | sed 's/^/    /' >&2
			die "registry: no answer on $REGISTRY_URL/v2/ after 30 s; see $REGISTRY_LOG"
		fi
	fi
	# The tests name images localhost:5000/...; Docker only talks plain HTTP to
	# a registry whose address is in 127.0.0.0/8.
	getent ahostsv4 localhost | grep -q '^127\.' ||
		die "registry: 'localhost' does not resolve to 127.0.0.1 (check /etc/hosts); docker could not pull localhost:5000/..."
	curl -sf -m 5 http://localhost:5000/v2/ >/dev/null ||
		die "registry: answers on $REGISTRY_ADDR but not on localhost:5000"
}

# --- step 4: stand-in images ---------------------------------------------------

# Each pushed image carries a label with a hash of how it was made (this
# script's recipe functions, the entrypoint, the package list), so editing an
# entrypoint rebuilds the image on the next run instead of testing a stale one.
readonly RECIPE_LABEL=org.cargo-ephem.recipe

registry_has_image() { # NAME TAG RECIPE_HASH
	local manifest config_digest
	manifest="$(curl -sf -m 10 -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
		"$REGISTRY_URL/v2/library/$1/manifests/$2")" || return 1
	config_digest="$(tr -d ' \t\n' <<<"$manifest" | grep -o '"config":{[^}]*}' | grep -o 'sha256:[0-9a-f]*')" || return 1
	curl -sf -m 10 "$REGISTRY_URL/v2/library/$1/blobs/$config_digest" | grep -qF "\"$RECIPE_LABEL\":\"$3\""
}

# Unmounts whatever a failed debootstrap left mounted (proc, sys) below $1, then
# removes it without ever crossing into another file system.
remove_tree() {
	local mnt
	[ -e "$1" ] || return 0
	awk -v d="$1/" 'index($2, d) == 1 { print $2 }' /proc/mounts | sort -r |
		while read -r mnt; do umount -l "$mnt" || true; done
	rm -rf --one-file-system "$1"
}

# Drops what a container never reads; every byte here is pulled in each test
# run, on every machine.
slim_rootfs() {
	local root="$1"
	rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
		"$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
		"$root"/var/cache/debconf/*-old "$root"/var/log/*.log
	find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 -type d -exec rm -rf {} +
}

# debian_rootfs NAME PACKAGES CUSTOMIZE_FN: sets ROOTFS to a cached minbase
# root file system with PACKAGES, made (or remade, when the recipe changed) on
# demand. CUSTOMIZE_FN ROOT adjusts it once, before it is cached.
debian_rootfs() {
	local name="$1" packages="$2" customize="$3"
	local dir="$IMAGE_CACHE/$name" tmp="$IMAGE_CACHE/$name.tmp" key
	key="$({ echo "$SUITE $packages"; declare -f debian_rootfs slim_rootfs "$customize"; } | sha256sum | cut -c1-16)"
	ROOTFS="$dir"
	if [ "$(cat "$dir/.ephem-rootfs-key" 2>/dev/null)" = "$key" ]; then
		say "image $name: reusing cached root file system $dir"
		return
	fi
	need_packages debootstrap
	mkdir -p "$IMAGE_CACHE"
	remove_tree "$tmp"
	say "image $name: debootstrap $SUITE minbase + $packages (takes ~40 s)"
	local log="/var/log/ephem-debootstrap-$name.log"
	: >"$log"
	quietly "$log" "debootstrap for $name" \
		debootstrap --variant=minbase --include="$packages" "$SUITE" "$tmp" "$DEBIAN_MIRROR"
	slim_rootfs "$tmp"
	"$customize" "$tmp"
	echo "$key" >"$tmp/.ephem-rootfs-key"
	remove_tree "$dir"
	mv "$tmp" "$dir"
}

# import_rootfs ROOT REF CHANGE...: one-layer image from a directory. The
# cache marker and the /dev nodes debootstrap made stay out (docker mounts its
# own /dev); owners go in as numbers, as they are inside the rootfs.
import_rootfs() {
	local root="$1" ref="$2"
	shift 2
	local changes=() change
	for change; do changes+=(--change "$change"); done
	tar -C "$root" --numeric-owner --exclude=./.ephem-rootfs-key --exclude='./dev/*' -c . |
		docker import "${changes[@]}" - "$ref" >/dev/null
}

customize_postgres_rootfs() {
	local root="$1"
	# As in the official image: initdb writes listen_addresses='*' into every
	# new cluster (the setup server overrides it with '').
	sed -ri "s!^#?(listen_addresses)\s*=\s*\S+.*!\1 = '*'!" \
		"$root"/usr/share/postgresql/15/postgresql.conf.sample
	# Debian's own cluster (15/main) is never used: PGDATA is elsewhere.
	rm -rf "$root"/var/lib/postgresql/15 "$root"/etc/postgresql/15
	# LLVM (JIT, ~130 MB) is a third of the image; postgres silently runs
	# without JIT when the provider library is absent, and tests never hit JIT.
	rm -rf "$root"/usr/lib/postgresql/15/lib/llvmjit* "$root"/usr/lib/postgresql/15/lib/bitcode \
		"$root"/usr/lib/*/libLLVM-* "$root"/usr/lib/*/libz3.so*
	mkdir -p "$root"/docker-entrypoint-initdb.d
}

build_postgres() { # REF RECIPE_HASH
	local root
	debian_rootfs postgres postgresql-15 customize_postgres_rootfs
	root="$ROOTFS"
	install -m 0755 "$IMAGES_DIR/postgres/docker-entrypoint.sh" "$root/usr/local/bin/docker-entrypoint.sh"
	import_rootfs "$root" "$1" \
		'ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
		'ENV PG_MAJOR=15' 'ENV LANG=C.UTF-8' 'ENV PGDATA=/var/lib/postgresql/data' \
		'ENTRYPOINT ["docker-entrypoint.sh"]' 'CMD ["postgres"]' 'EXPOSE 5432' \
		"LABEL $RECIPE_LABEL=$2"
	# SIGINT is a fast shutdown (SIGTERM would wait for clients to disconnect),
	# as in the official image. `docker import --change` cannot set STOPSIGNAL,
	# so a metadata-only build adds it.
	printf 'FROM %s\nSTOPSIGNAL SIGINT\n' "$1" |
		quietly /var/log/ephem-images.log "docker build (STOPSIGNAL) of $1" \
			env DOCKER_BUILDKIT=0 docker build -q -t "$1" -
}

customize_redis_rootfs() {
	mkdir -p "$1/data"
	chroot "$1" chown redis:redis /data
}

build_redis() { # REF RECIPE_HASH
	local root
	debian_rootfs redis redis-server customize_redis_rootfs
	root="$ROOTFS"
	install -m 0755 "$IMAGES_DIR/redis/docker-entrypoint.sh" "$root/usr/local/bin/docker-entrypoint.sh"
	import_rootfs "$root" "$1" \
		'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
		'WORKDIR /data' 'ENTRYPOINT ["docker-entrypoint.sh"]' 'CMD ["redis-server"]' \
		'EXPOSE 6379' "LABEL $RECIPE_LABEL=$2"
}

build_busybox() { # REF RECIPE_HASH
	local root applet
	need_packages busybox-static
	# A couple of MB: rebuilt from the host's static binary each time.
	root="$(mktemp -d)"
	chmod 0755 "$root"
	mkdir -p "$root"/{bin,etc,root,tmp,var/www}
	chmod 1777 "$root/tmp"
	cp /bin/busybox "$root/bin/busybox"
	for applet in $("$root/bin/busybox" --list); do
		[ "$applet" = busybox ] || ln -s busybox "$root/bin/$applet"
	done
	printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n' >"$root/etc/passwd"
	printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
	import_rootfs "$root" "$1" 'ENV PATH=/bin' 'CMD ["sh"]' "LABEL $RECIPE_LABEL=$2"
	rm -rf "$root"
}

# recipe_hash NAME: what the image is made of; see RECIPE_LABEL.
recipe_hash() {
	{
		declare -f "build_$1" import_rootfs debian_rootfs slim_rootfs
		declare -f "customize_$1_rootfs" 2>/dev/null || true
		if [ -d "$IMAGES_DIR/$1" ]; then cat "$IMAGES_DIR/$1"/*; fi
	} | sha256sum | cut -c1-16
}

# drop_local_copies NAME TAG: removes the daemon's copies of the image under
# every name it can have here, so none from an older build shadows this one:
# the registry's two spellings, and the Docker Hub name a run tags after
# pulling through the mirror (docker.io/library/NAME:TAG is the same name
# spelt out; listed in case a daemon keeps them apart).
drop_local_copies() {
	local name="$1" tag="$2" local_ref
	for local_ref in "$REGISTRY_ADDR/library/$name:$tag" "localhost:5000/library/$name:$tag" \
		"$name:$tag" "docker.io/library/$name:$tag"; do
		if docker image inspect "$local_ref" >/dev/null 2>&1 && ! docker rmi "$local_ref" >/dev/null 2>&1; then
			say "image $name:$tag: WARNING: could not remove local $local_ref (in use by a container?)"
		fi
	done
}

# ensure_image NAME TAG: build, push, and drop the local copies, so that the
# daemon holds no images and the tests exercise the real pull path.
ensure_image() {
	local name="$1" tag="$2" hash ref="$REGISTRY_ADDR/library/$1:$2" started=$SECONDS
	hash="$(recipe_hash "$name")"
	if registry_has_image "$name" "$tag" "$hash"; then
		say "image $name:$tag: already in the registry"
		return
	fi
	say "image $name:$tag: building"
	"build_$name" "$ref" "$hash"
	quietly /var/log/ephem-images.log "docker push $ref" docker push "$ref"
	registry_has_image "$name" "$tag" "$hash" || die "image $name:$tag: pushed, but the registry does not serve it"
	drop_local_copies "$name" "$tag"
	say "image $name:$tag: pushed to $REGISTRY_ADDR ($((SECONDS - started)) s)"
}

ensure_images() {
	ensure_image busybox 1.36
	ensure_image redis 7-bookworm
	ensure_image postgres 15-bookworm
}

# --- step 5: kubernetes-validate ---------------------------------------------

readonly KUBE_VALIDATE_VERSION=1.37.0
readonly KUBE_VALIDATE_VENV=/opt/ephem-kubernetes-validate
readonly PIP_LOG=/var/log/ephem-pip.log

# The render tests check what `cargo ephem render` prints against the strict
# JSON schemas of the Kubernetes version the backend pins; kubernetes-validate
# bundles those schemas, so no cluster is needed. It gets a venv of its own:
# Debian's Python refuses pip installs into the system (PEP 668).
ensure_kubernetes_validate() {
	if kubernetes-validate --version >/dev/null 2>&1; then
		say "kubernetes-validate: present"
		return
	fi
	command -v python3 >/dev/null || need_packages python3
	if ! python3 -m venv --clear "$KUBE_VALIDATE_VENV" >>"$PIP_LOG" 2>&1; then
		# Debian ships venv's ensurepip separately.
		need_packages python3-venv
		quietly "$PIP_LOG" "python3 -m venv" python3 -m venv --clear "$KUBE_VALIDATE_VENV"
	fi
	quietly "$PIP_LOG" "pip install kubernetes-validate==$KUBE_VALIDATE_VERSION" \
		"$KUBE_VALIDATE_VENV/bin/pip" install --quiet --disable-pip-version-check \
		"kubernetes-validate==$KUBE_VALIDATE_VERSION"
	ln -sf "$KUBE_VALIDATE_VENV/bin/kubernetes-validate" /usr/local/bin/kubernetes-validate
	kubernetes-validate --version >/dev/null 2>&1 ||
		die "kubernetes-validate: installed in $KUBE_VALIDATE_VENV but does not run (is /usr/local/bin on PATH?)"
	say "kubernetes-validate: $KUBE_VALIDATE_VERSION installed"
}

# --- step 6 (EPHEM_TEST_PODMAN=1): Podman --------------------------------------

readonly PODMAN_SOCKET=/run/podman/podman.sock
readonly PODMAN_LOG=/var/log/ephem-podman.log
readonly PODMAN_ROOTLESS_USER=ephem-podman
readonly PODMAN_ROOTLESS_LOG=/var/log/ephem-podman-rootless.log

# podman_answers SOCKET: a Podman service (not Docker) answers there.
podman_answers() {
	curl -sf -m 5 --unix-socket "$1" http://podman/version 2>/dev/null | grep -q '"Podman Engine"'
}

# CAP_SYS_RESOURCE (bit 24) in our effective set: may raise hard rlimits.
may_raise_rlimits() {
	local caps
	caps="$(awk '/^CapEff:/ { print $2 }' /proc/self/status)"
	(((0x$caps >> 24) & 1))
}

# Podman reads these when a service starts (so a running one keeps its old
# view until restarted); they touch only Podman, not Docker's daemon.
write_podman_config() {
	mkdir -p /etc/containers/registries.conf.d /etc/containers/containers.conf.d
	cat >/etc/containers/registries.conf.d/50-ephem-local-registry.conf <<-EOF
		# Written by cargo-ephem's scripts/provision-test-env.sh: the test
		# registry speaks plain HTTP (Docker allows that for 127.0.0.0/8 by itself).
		[[registry]]
		location = "localhost:5000"
		insecure = true

		[[registry]]
		location = "$REGISTRY_ADDR"
		insecure = true
	EOF
	# Podman sets every container's open files and processes to 1048576 unless
	# containers.conf says otherwise; without CAP_SYS_RESOURCE (our CI machines
	# run in a sandbox) raising a hard limit fails, and so does every start
	# ("error setting rlimit type 7"). Docker's containers inherit dockerd's
	# limits; these give Podman's the service's own, which it derives from
	# ours (processes capped at pid_max).
	local ulimits=/etc/containers/containers.conf.d/50-ephem-ulimits.conf
	if may_raise_rlimits; then
		rm -f "$ulimits"
		return
	fi
	local nofile nproc pid_max
	nofile="$(ulimit -Hn)"
	nproc="$(ulimit -Hu)"
	pid_max="$(cat /proc/sys/kernel/pid_max)"
	if [ "$nproc" = unlimited ] || ((nproc > pid_max)); then nproc="$pid_max"; fi
	[ "$nofile" != unlimited ] || nofile=1048576
	cat >"$ulimits" <<-EOF
		# Written by cargo-ephem's scripts/provision-test-env.sh: no CAP_SYS_RESOURCE here.
		[containers]
		default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]
	EOF
}

# start_podman_service SOCKET LOG [USER]: starts `podman system service` on
# SOCKET (as USER: rootless) unless one answers there.
start_podman_service() {
	local socket="$1" log="$2" user="${3:-}" what="podman (rootful)"
	[ -z "$user" ] || what="podman (rootless, user $user)"
	if podman_answers "$socket"; then
		say "$what: already serving on $socket"
		return
	fi
	say "$what: starting podman system service on $socket (log: $log)"
	local run=()
	if [ -n "$user" ]; then
		local runtime_dir
		runtime_dir="$(dirname "$(dirname "$socket")")"
		run=(runuser -u "$user" -- env XDG_RUNTIME_DIR="$runtime_dir" HOME="$(getent passwd "$user" | cut -d: -f6)")
	fi
	# A fresh install has no /run/podman yet (the package makes it only when
	# its systemd socket unit runs, and no systemd runs here).
	[ -n "$user" ] || mkdir -p "$(dirname "$socket")"
	# A socket file left by a service that died is stale: nothing answered.
	rm -f "$socket"
	(cd / && start_background "$log" "${run[@]}" podman system service --time=0 "unix://$socket")
	if ! wait_for 30 podman_answers "$socket"; then
		tail -n 15 "$log" | sed 's/^/    /' >&2
		die "$what: no answer on $socket after 30 s; see $log"
	fi
	# One container through the CLI: registry, storage and rlimits work.
	local smoke=(podman run --rm --pull=always "localhost:5000/library/busybox:1.36" true)
	if [ -n "$user" ]; then
		smoke=("${run[@]}" "${smoke[@]}")
	fi
	quietly "$log" "$what: a first container (${smoke[*]})" "${smoke[@]}"
	say "$what: serving on $socket"
}

# A user of our own, with subordinate ids for its user namespace and a
# runtime directory (no login session makes one here).
ensure_rootless_user() {
	local user="$PODMAN_ROOTLESS_USER" uid
	id -u "$user" >/dev/null 2>&1 || useradd --create-home --shell /bin/sh "$user"
	grep -q "^$user:" /etc/subuid || usermod --add-subuids 300000-365535 "$user"
	grep -q "^$user:" /etc/subgid || usermod --add-subgids 300000-365535 "$user"
	uid="$(id -u "$user")"
	install -d -m 0700 -o "$user" -g "$user" "/run/user/$uid" "/run/user/$uid/podman"
	ROOTLESS_SOCKET="/run/user/$uid/podman/podman.sock"
}

ensure_podman() {
	if [ "${EPHEM_TEST_PODMAN:-}" != 1 ]; then
		return 0
	fi
	# uidmap and slirp4netns: the rootless service's user namespace and network.
	need_packages podman uidmap slirp4netns
	write_podman_config
	start_podman_service "$PODMAN_SOCKET" "$PODMAN_LOG"
	ensure_rootless_user
	start_podman_service "$ROOTLESS_SOCKET" "$PODMAN_ROOTLESS_LOG" "$PODMAN_ROOTLESS_USER"
}

main() {
	[ "$(id -u)" = 0 ] || die "must run as root"
	mkdir -p "$(dirname "$LOCK_FILE")"
	# Two runs at once (a developer and CI, say) would race for port 5000 and
	# the rootfs cache.
	exec 9>"$LOCK_FILE"
	flock -w 900 9 || die "another provision-test-env.sh run holds $LOCK_FILE"
	ensure_tools
	ensure_docker
	ensure_registry
	ensure_images
	ensure_kubernetes_validate
	ensure_podman
	say "done in ${SECONDS} s"
}

[ -z "$PROVISION_AS_LIB" ] || return 0
main "$@"
