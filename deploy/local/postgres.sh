#!/usr/bin/env bash
# PostgreSQL cluster owned by the project, in var/postgres, on 127.0.0.1:$MD_PG_PORT.
# usage: postgres.sh start|stop|status
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
DATA="$VAR/postgres"
LOGF="$VAR/log/postgres.log"
RUNAS=()
cd /  # every path here is absolute; the 'postgres' user may not be allowed into the checkout
# initdb refuses to run as root: run the server as the unprivileged 'postgres' user then.
if [[ $(id -u) -eq 0 ]]; then
  id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
  RUNAS=(runuser -u postgres --)
  # a checkout under a private folder (e.g. /root) is not reachable by that user: keep the
  # cluster in a world-traversable place named after this checkout, linked from var/.
  if ! runuser -u postgres -- test -x "$VAR"; then
    alt="/var/tmp/md-postgres-$(echo "$ROOT" | sha1sum | cut -c1-10)"
    mkdir -p "$alt"
    ln -sfn "$alt" "$VAR/postgres-data"
    DATA="$alt/data"
    LOGF="$alt/postgres.log"
  fi
fi

# TimescaleDB (built by install.sh) must be in shared_preload_libraries before the server starts;
# the project owns this cluster, so it configures the preload itself (an external database that
# lacks it makes the storage fall back to plain PostgreSQL with a warning: docs/storage.md).
tsdb_installed() {
  local pg_config
  pg_config="$(dirname "$(find_pg_bin initdb)")/pg_config"
  [[ -x "$pg_config" ]] || pg_config=$(find_pg_bin pg_config) || return 1
  [[ -f "$("$pg_config" --pkglibdir)/timescaledb.so" ]]
}

configure_timescaledb() {
  [[ -f "$DATA/postgresql.conf" ]] || return 0
  tsdb_installed || return 0
  grep -q "^shared_preload_libraries *= *'timescaledb'" "$DATA/postgresql.conf" && return 0
  log "PostgreSQL: preloading TimescaleDB (shared_preload_libraries)"
  cat >>"$DATA/postgresql.conf" <<CONF
shared_preload_libraries = 'timescaledb'
timescaledb.telemetry_level = off
timescaledb.max_background_workers = 8
max_worker_processes = 16
CONF
}

start() {
  if port_open "$PG_PORT"; then
    # a cluster started before TimescaleDB was installed: add the preload and restart it once
    if [[ -f "$DATA/postmaster.pid" ]] && tsdb_installed \
      && ! grep -q "^shared_preload_libraries *= *'timescaledb'" "$DATA/postgresql.conf" 2>/dev/null; then
      configure_timescaledb
      log "restarting PostgreSQL once to load TimescaleDB"
      "${RUNAS[@]}" "$(find_pg_bin pg_ctl)" -D "$DATA" -l "$LOGF" -m fast -w -t 60 restart >/dev/null \
        || die "PostgreSQL did not restart (see $LOGF)"
      wait_port 127.0.0.1 "$PG_PORT" 30 PostgreSQL
    fi
    log "PostgreSQL already answers on 127.0.0.1:$PG_PORT"; return 0
  fi
  local initdb pg_ctl
  initdb=$(find_pg_bin initdb) || die "PostgreSQL server binaries (initdb) not found: run deploy/local/install.sh or apt-get install postgresql"
  pg_ctl=$(find_pg_bin pg_ctl) || die "pg_ctl not found"
  SOCK="$(dirname "$DATA")/pgsock"
  [[ "$DATA" == "$VAR/postgres" ]] && SOCK="$VAR/run/pgsock"
  mkdir -p "$DATA" "$SOCK"
  if [[ ${#RUNAS[@]} -gt 0 ]]; then chown -R postgres "$DATA" "$SOCK"; touch "$LOGF"; chown postgres "$LOGF"; fi
  if [[ ! -f "$DATA/PG_VERSION" ]]; then
    log "initdb into $DATA (once)"
    "${RUNAS[@]}" "$initdb" -D "$DATA" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >"$VAR/log/initdb.log" 2>&1 \
      || die "initdb failed (see $VAR/log/initdb.log)"
    cat >>"$DATA/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$SOCK'
max_connections = 200
shared_buffers = 256MB
synchronous_commit = off
fsync = on
CONF
  fi
  configure_timescaledb
  log "starting PostgreSQL on 127.0.0.1:$PG_PORT"
  "${RUNAS[@]}" "$pg_ctl" -D "$DATA" -l "$LOGF" -o "-p $PG_PORT" -w -t 60 start >/dev/null \
    || die "PostgreSQL did not start (see $LOGF)"
  wait_port 127.0.0.1 "$PG_PORT" 30 PostgreSQL
  # the application database; tests create their own
  psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname='marketdata'" | grep -q 1 \
    || psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -qc "CREATE DATABASE marketdata" >/dev/null
}

stop() {
  local pg_ctl
  pg_ctl=$(find_pg_bin pg_ctl) || return 0
  [[ -f "$DATA/postmaster.pid" ]] && "${RUNAS[@]}" "$pg_ctl" -D "$DATA" -m fast -w stop >/dev/null 2>&1 && log "PostgreSQL stopped"
  return 0
}

case "${1:-}" in
  start) start ;; stop) stop ;;
  status) port_open "$PG_PORT" && echo "postgres: up 127.0.0.1:$PG_PORT" || echo "postgres: down" ;;
  *) die "usage: postgres.sh start|stop|status" ;;
esac
