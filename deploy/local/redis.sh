#!/usr/bin/env bash
# Redis for the hot cache, data in var/redis, on 127.0.0.1:$MD_REDIS_PORT.
# usage: redis.sh start|stop|status
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
DATA="$VAR/redis"
PIDF="$VAR/run/redis.pid"

start() {
  if port_open "$REDIS_PORT"; then log "Redis already answers on 127.0.0.1:$REDIS_PORT"; return 0; fi
  command -v redis-server >/dev/null || die "redis-server not found: run deploy/local/install.sh or apt-get install redis-server"
  mkdir -p "$DATA"
  log "starting Redis on 127.0.0.1:$REDIS_PORT"
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --dir "$DATA" --daemonize yes \
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
