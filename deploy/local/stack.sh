#!/usr/bin/env bash
# The whole platform on this machine, no Docker.
#   stack.sh run    infra + every service in the foreground; Ctrl-C / SIGTERM stops all cleanly
#   stack.sh up     the same in the background; returns once every service answers /health
#   stack.sh stop   stops what `up` started (services, then Kafka, PostgreSQL, Redis)
#   stack.sh stop-services   stops the services only, keeps Kafka, PostgreSQL and Redis
#   stack.sh logs   where the logs are
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
HERE="$ROOT/deploy/local"
SVC_RUN="$VAR/run/services"
SVC_LOG="$VAR/log/services"
mkdir -p "$SVC_RUN" "$SVC_LOG"

services() { grep -v '^\s*#' "$HERE/services.conf" | grep -v '^\s*$'; }
# fields may name ${MD_...:-default} variables so ports follow the environment
field() { eval "echo \"$(echo "$1" | cut -d'|' -f"$2" | sed 's/^ *//;s/ *$//')\""; }

start_one() {  # name cmd
  local name=$1 cmd=$2 tag=$1
  if pid_alive "$SVC_RUN/$tag.pid"; then log "$tag already running"; return; fi
  # shellcheck disable=SC2086
  (cd "$ROOT" && exec setsid "$ROOT/.venv/bin/"$cmd >>"$SVC_LOG/$tag.log" 2>&1) &
  echo $! >"$SVC_RUN/$tag.pid"
}

wait_health() {  # name url
  local name=$1 url=$2 i
  for ((i = 0; i < 300; i++)); do
    if "$PY" - "$url" <<'PY' 2>/dev/null; then return 0; fi
import sys, urllib.request
try:
    urllib.request.urlopen(sys.argv[1], timeout=1)
except Exception:
    sys.exit(1)
PY
    sleep 0.2
  done
  die "$name did not become healthy at $url (see $SVC_LOG/$name.log)"
}

# the aggregator pair's direct feeds (core/feed.py): every gateway connects to both
export MD_AGG_FEED_PORT="${MD_AGG_FEED_PORT:-8031}" MD_AGG_B_FEED_PORT="${MD_AGG_B_FEED_PORT:-8032}"
export MD_AGG_FEED="${MD_AGG_FEED-127.0.0.1:$MD_AGG_FEED_PORT,127.0.0.1:$MD_AGG_B_FEED_PORT}"

start_all() {
  "$HERE/infra.sh" up
  local line name url cmd n
  n="${MD_WS_PROCESSES:-$(nproc)}"
  while IFS= read -r line; do
    name=$(field "$line" 1); url=$(field "$line" 2); cmd=$(field "$line" 3)
    if [[ "$url" == "-" ]]; then
      log "running $name"
      (cd "$ROOT" && "$ROOT/.venv/bin/"$cmd >>"$SVC_LOG/$name.log" 2>&1) || die "$name failed (see $SVC_LOG/$name.log)"
      continue
    fi
    start_one "$name" "$cmd"
  done < <(services)
  while IFS= read -r line; do
    name=$(field "$line" 1); url=$(field "$line" 2)
    [[ "$url" == "-" ]] || wait_health "$name" "$url"
  done < <(services)
  cat >&2 <<MSG

[local] the platform is up:
  REST        http://127.0.0.1:${MD_REST_PORT:-8000}/api/v1/market/BTC-USD/orderbook?depth=10   (docs: /docs)
  WebSocket   ws://127.0.0.1:${MD_WS_PORT:-8001}/ws   ($n processes)
  FIX 4.4     127.0.0.1:${MD_FIX_PORT:-9876}  SenderCompID=CLIENT1 TargetCompID=MDGW
  Kafka       127.0.0.1:$KAFKA_PORT   PostgreSQL 127.0.0.1:$PG_PORT   Redis 127.0.0.1:$REDIS_PORT
  metrics     aggregator :${MD_AGGREGATOR_HTTP_PORT:-8011}  storage :${MD_STORAGE_HTTP_PORT:-8012}  simulator :${MD_SIMULATOR_HTTP_PORT:-8013}  fix :${MD_FIX_HTTP_PORT:-8014}  (/metrics, /health)
  logs        $SVC_LOG/
MSG
}

stop_services() {
  local f pids=()
  for f in "$SVC_RUN"/*.pid; do
    [[ -f "$f" ]] || continue
    if kill -0 "$(cat "$f")" 2>/dev/null; then kill -TERM "$(cat "$f")" 2>/dev/null && pids+=("$(cat "$f")"); fi
  done
  local i
  for ((i = 0; i < 100; i++)); do
    local alive=0 p
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [[ $alive -eq 0 ]] && break
    sleep 0.2
  done
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  rm -f "$SVC_RUN"/*.pid
  [[ ${#pids[@]} -gt 0 ]] && log "services stopped"
  return 0
}

case "${1:-}" in
  run)
    TAIL_PID=""
    trap 'set +e; echo; log "stopping"; [[ -n "$TAIL_PID" ]] && kill "$TAIL_PID" 2>/dev/null; stop_services; "$HERE/infra.sh" down; exit 0' INT TERM
    start_all
    log "running; Ctrl-C stops everything (logs: make logs)"
    tail -n0 -q -F "$SVC_LOG"/*.log &
    TAIL_PID=$!
    wait
    ;;
  up) start_all ;;
  stop) stop_services; "$HERE/infra.sh" down ;;
  stop-services) stop_services ;;
  logs)
    echo "service logs (JSON lines): $SVC_LOG/"; ls -1 "$SVC_LOG" 2>/dev/null | sed 's/^/  /'
    echo "Kafka: $VAR/log/kafka/server.log  PostgreSQL: $VAR/log/postgres.log  Redis: $VAR/log/redis.log"
    echo "follow all: tail -F $SVC_LOG/*.log" ;;
  *) die "usage: stack.sh run|up|stop|stop-services|logs" ;;
esac
