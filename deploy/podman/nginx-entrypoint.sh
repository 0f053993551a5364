#!/bin/sh
# Entry point of the nginx stand-in (see nginx.Dockerfile).
#
# nginx/compose.conf marks each upstream server `resolve` (nginx 1.27.3+): nginx follows the
# worker's name in DNS, so a web container that is started again - with a new address - gets
# its share of clients again. Debian's nginx 1.22 refuses that parameter. So the stand-in runs a
# copy of the file without it (the names are then resolved when the configuration is loaded)
# and does the following itself: every 5 s it resolves those names, and when every one
# resolves and an address has changed, it tells nginx to reload (SIGHUP to PID 1, nginx's
# graceful reload: open connections stay). A name that does not resolve (its container is down)
# is waited for; nginx meanwhile keeps the last addresses and passes over a dead one.
set -eu
conf=/etc/nginx/nginx.conf
if [ "${1:-}" = nginx ] && grep -q ' resolve;' "$conf"; then
  run_conf=/run/nginx-1.22.conf
  sed 's/ resolve;/;/' "$conf" > "$run_conf"
  set -- "$@" -c "$run_conf"
  # "server NAME:PORT ... resolve;" -> NAME
  names=$(sed -n 's/^[[:space:]]*server[[:space:]][[:space:]]*\([^:[:space:]]*\).*[[:space:]]resolve;.*$/\1/p' \
          "$conf" | sort -u)
  addresses() {
    for name in $names; do
      found=$(getent ahostsv4 "$name" | awk '{print $1}' | sort -u | tr '\n' ' ')
      [ -n "$found" ] || return 1
      printf '%s=%s\n' "$name" "$found"
    done
  }
  (
    last=$(addresses || true)
    while sleep 5; do
      now=$(addresses) || continue
      [ "$now" = "$last" ] && continue
      echo "nginx-entrypoint: worker addresses changed, reloading: $(echo "$now" | tr '\n' ' ')" >&2
      kill -HUP 1 && last=$now
    done
  ) &
fi
exec "$@"
