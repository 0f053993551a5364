# Stand-in for redis:7.4-alpine where no registry can be reached (CI runs docker-compose.yml
# under podman): Debian's redis-server (7.0) on the local debian:bookworm-slim.
# tests/compose/ builds it with: podman build -f redis.Dockerfile -t redis:7.4-alpine deploy/podman
#
# The contract docker-compose.yml relies on, as in the official image:
# - `redis-server ARGS...` as the command, run in the foreground, as the user redis (not root);
# - port 6379 reachable from the other containers without a password (the official image turns
#   protected mode off at build time; Debian's default, on, refuses every non-local client);
# - /data is the working directory, so the append-only file lands on the redis-data volume;
# - redis-cli for the health check (`redis-cli ping`).
FROM debian:bookworm-slim

# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends redis-server redis-tools \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir /data && chown redis:redis /data

COPY --chmod=755 redis-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
WORKDIR /data
VOLUME /data
EXPOSE 6379
LABEL org.strangers-chat.stand-in="redis"
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["redis-server"]
