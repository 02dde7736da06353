#!/usr/bin/env bash
# Redis for the hot cache, data in var/redis, on 127.0.0.1:$MD_REDIS_PORT.
# MD_REDIS_PASSWORD set: Redis requires AUTH with it (the services read the same variable and
# send it; docs/security.md). It reaches redis-server through a 0600 config file, never argv.
# usage: redis.sh start|stop|status
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
DATA="$VAR/redis"
PIDF="$VAR/run/redis.pid"
AUTH_CONF="$VAR/run/redis-auth.conf"
export REDISCLI_AUTH="${MD_REDIS_PASSWORD:-}"  # redis-cli reads the password from here

start() {
  if port_open "$REDIS_PORT"; then log "Redis already answers on 127.0.0.1:$REDIS_PORT"; return 0; fi
  command -v redis-server >/dev/null || die "redis-server not found: run deploy/local/install.sh or apt-get install redis-server"
  mkdir -p "$DATA"
  (umask 077 && : >"$AUTH_CONF")
  if [[ -n "${MD_REDIS_PASSWORD:-}" ]]; then
    [[ "$MD_REDIS_PASSWORD" != *$'\n'* && "$MD_REDIS_PASSWORD" != *'"'* && "$MD_REDIS_PASSWORD" != *'\'* ]] ||
      die "MD_REDIS_PASSWORD must not contain a newline, a double quote or a backslash"
    printf 'requirepass "%s"\n' "$MD_REDIS_PASSWORD" >"$AUTH_CONF"
  fi
  log "starting Redis on 127.0.0.1:$REDIS_PORT${MD_REDIS_PASSWORD:+ (AUTH required)}"
  redis-server "$AUTH_CONF" --bind 127.0.0.1 --port "$REDIS_PORT" --dir "$DATA" --daemonize yes \
    --pidfile "$PIDF" --logfile "$VAR/log/redis.log" --save "" --appendonly no \
    --maxmemory 2gb --maxmemory-policy noeviction || die "redis-server failed (see $VAR/log/redis.log)"
  wait_port 127.0.0.1 "$REDIS_PORT" 20 Redis
}

stop() {
  if pid_alive "$PIDF"; then
    redis-cli -h 127.0.0.1 -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || kill "$(cat "$PIDF")"
    log "Redis stopped"
  fi
  rm -f "$PIDF"
}

case "${1:-}" in
  start) start ;; stop) stop ;;
  status) port_open "$REDIS_PORT" && echo "redis: up 127.0.0.1:$REDIS_PORT" || echo "redis: down" ;;
  *) die "usage: redis.sh start|stop|status" ;;
esac
