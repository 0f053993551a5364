# Stand-in for postgres:17-alpine where no registry can be reached (CI runs docker-compose.yml
# under podman): Debian's PostgreSQL 15 on the local debian:bookworm-slim.
# tests/compose/ builds it with: podman build -f postgres.Dockerfile -t postgres:17-alpine deploy/podman
#
# The contract docker-compose.yml relies on, as in the official image:
# - on first start with an empty data directory, a cluster owned by POSTGRES_USER (default
#   postgres) with the password POSTGRES_PASSWORD (required), and the database POSTGRES_DB
#   (default: the user's name); password (scram-sha-256) logins over TCP from anywhere,
#   local socket logins trusted (so `psql -U chat -d chat` works inside the container);
# - the data in /var/lib/postgresql/data (PGDATA), the pg-data volume;
# - port 5432 on every address; `postgres` in the foreground as the user postgres;
#   SIGINT (fast shutdown) as the stop signal;
# - pg_isready and psql on the PATH (the health check, and tests).
# Version 15, not 17: the schema migrations use nothing newer.
FROM debian:bookworm-slim

ENV PG_MAJOR=15 \
    LANG=C.UTF-8 \
    PGDATA=/var/lib/postgresql/data
ENV PATH=/usr/lib/postgresql/$PG_MAJOR/bin:$PATH

# postgresql-common first, to turn off Debian's automatic "main" cluster (the entry point makes
# the cluster in PGDATA, as the official image does); listen on every address by default.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends postgresql-common \
 && sed -ri 's/#?(create_main_cluster) .*$/\1 = false/' /etc/postgresql-common/createcluster.conf \
 && apt-get install -y --no-install-recommends "postgresql-$PG_MAJOR" \
 && rm -rf /var/lib/apt/lists/* \
 && sed -ri "s!^#?(listen_addresses)\s*=\s*\S+.*!\1 = '*'!" \
      "/usr/share/postgresql/$PG_MAJOR/postgresql.conf.sample" \
 && mkdir -p "$PGDATA" /var/run/postgresql \
 && chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql \
 && chmod 1777 /var/run/postgresql

COPY --chmod=755 postgres-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
VOLUME /var/lib/postgresql/data
EXPOSE 5432
STOPSIGNAL SIGINT
LABEL org.strangers-chat.stand-in="postgres"
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["postgres"]
