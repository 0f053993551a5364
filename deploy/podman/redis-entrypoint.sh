#!/bin/sh
# The official redis image's entry point, for what the stand-in needs (see redis.Dockerfile).
set -eu

# `docker run redis --appendonly yes` and `... redis.conf` mean redis-server with those arguments.
case "${1:-}" in
  -*|*.conf) set -- redis-server "$@" ;;
esac

if [ "${1:-}" = redis-server ]; then
  shift
  # Protected mode off, as the official image's build does; an explicit --protected-mode given
  # by the caller still wins (a later argument overrides an earlier one). A config file, if
  # any, must stay the first argument.
  case "${1:-}" in
    *.conf) conf=$1; shift; set -- redis-server "$conf" --protected-mode no "$@" ;;
    *) set -- redis-server --protected-mode no "$@" ;;
  esac
  if [ "$(id -u)" = 0 ]; then
    # the volume may come owned by root: hand /data to redis, then drop root
    find . \! -user redis -exec chown redis:redis '{}' +
    exec setpriv --reuid=redis --regid=redis --init-groups "$@"
  fi
fi
exec "$@"
