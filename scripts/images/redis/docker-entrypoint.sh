#!/bin/sh
# Entrypoint of cargo-ephem's stand-in for the official redis:7-bookworm
# image, built from Debian's redis-server package by
# scripts/provision-test-env.sh (no container registry is reachable here).
#
# Same contract as the official image: the default command is redis-server;
# arguments starting with "-" (or a *.conf file) are passed to redis-server;
# the server runs in the foreground as user redis, logging to stdout, and
# accepts connections from outside the container (the official image patches
# protected mode out; here it is switched off on the command line).
set -eu

if [ "$#" -eq 0 ] || [ "${1#-}" != "$1" ] || [ "${1%.conf}" != "$1" ]; then
	set -- redis-server "$@"
fi

case "${2:-}" in
	# Informational modes: nothing to configure, and they reject extra options.
	-v | --version | -h | --help | --test-memory | --check-system) exec "$@" ;;
esac

if [ "$1" = 'redis-server' ]; then
	shift
	# A config file must be redis-server's first argument; our defaults go
	# before the user's options so that theirs win.
	conf=
	if [ "$#" -gt 0 ] && [ "${1#-}" = "$1" ]; then
		conf="$1"
		shift
	fi
	set -- redis-server ${conf:+"$conf"} --bind 0.0.0.0 --protected-mode no --daemonize no "$@"

	if [ "$(id -u)" = 0 ]; then
		# /data may be a fresh root-owned volume.
		find . \! -user redis -exec chown redis '{}' +
		# setpriv (util-linux) execs in place: redis-server becomes PID 1 and
		# gets `docker stop`'s SIGTERM, on which it shuts down cleanly.
		exec setpriv --reuid=redis --regid=redis --init-groups "$@"
	fi
fi

exec "$@"
