# Stand-in for nginx:1.28-alpine where no registry can be reached (CI runs docker-compose.yml
# under podman): Debian's nginx (1.22) on the local debian:bookworm-slim.
# tests/compose/ builds it with: podman build -f nginx.Dockerfile -t nginx:1.28-alpine deploy/podman
#
# The contract docker-compose.yml relies on, as in the official image:
# - the configuration at /etc/nginx/nginx.conf (compose mounts nginx/compose.conf there), which
#   names the user `nginx`, the pid file /var/run/nginx.pid, logs to /dev/stdout and /dev/stderr;
# - nginx in the foreground (`daemon off;`) as PID 1, SIGQUIT (graceful) as the stop signal;
# - port 80; wget for the health check.
# One difference, handled by the entry point: nginx 1.22 lacks the `resolve` parameter of an
# upstream server (1.27.3+), see nginx-entrypoint.sh.
FROM debian:bookworm-slim

# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends nginx wget \
 && rm -rf /var/lib/apt/lists/* /etc/nginx/sites-enabled/* \
 && useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin \
      --user-group nginx

COPY --chmod=755 nginx-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
EXPOSE 80
STOPSIGNAL SIGQUIT
LABEL org.strangers-chat.stand-in="nginx"
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["nginx", "-g", "daemon off;"]
