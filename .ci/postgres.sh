# Sourced by .ci/run: start_postgres installs Debian's PostgreSQL if missing, starts a throwaway server on
# 127.0.0.1:54329 for this run, exports PARETOSCOPE_TEST_POSTGRES_URL and stops the server on exit.
# It returns non-zero instead of failing the run: without a server the PostgreSQL tests skip with a reason.
start_postgres() {
  if ! ls -d /usr/lib/postgresql/*/bin >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null || return 1
  fi
  PG_BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
  PG_DATA=$(mktemp -d /tmp/paretoscope-pg.XXXXXX) || return 1
  chown postgres "$PG_DATA" || return 1
  su postgres -s /bin/sh -c "$PG_BIN/initdb -D $PG_DATA -A trust -U postgres >/dev/null" || return 1
  su postgres -s /bin/sh -c "$PG_BIN/pg_ctl -D $PG_DATA -o '-h 127.0.0.1 -p 54329 -k /tmp' \
    -l $PG_DATA/server.log -w start >/dev/null" || return 1
  export PARETOSCOPE_TEST_POSTGRES_URL="postgresql+psycopg://postgres@127.0.0.1:54329/postgres"
  trap 'su postgres -s /bin/sh -c "$PG_BIN/pg_ctl -D $PG_DATA -m fast stop >/dev/null"; rm -rf "$PG_DATA"' EXIT
}
