#!/usr/bin/env bash
# The whole platform on this machine, no Docker.
#   stack.sh run    infra + every service in the foreground; Ctrl-C / SIGTERM stops all cleanly
#   stack.sh up     the same in the background; returns once every service answers /health
#   stack.sh up-services     the services only (Kafka, PostgreSQL and Redis must be up)
#   stack.sh stop   stops what `up` started (services, then Kafka, PostgreSQL, Redis)
#   stack.sh stop-services   stops the services only, keeps Kafka, PostgreSQL and Redis
#   stack.sh status pid, supervisor and restart count of each service
#   stack.sh logs   where the logs are
# Every service runs under a supervisor (`supervise` below) that restarts it when it dies.
# MD_SERVICES_CONF replaces deploy/local/services.conf (the tests run a tiny one).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
HERE="$ROOT/deploy/local"
CONF="${MD_SERVICES_CONF:-$HERE/services.conf}"
SVC_RUN="$VAR/run/services"   # <name>.pid: the service process (tools read these)
SUP_RUN="$VAR/run/supervisor" # <name>.pid: its supervisor, <name>.restarts: restarts so far
SVC_LOG="$VAR/log/services"
SUP_LOG="$SVC_LOG/supervisor.log"
mkdir -p "$SVC_RUN" "$SUP_RUN" "$SVC_LOG"

services() { grep -v '^\s*#' "$CONF" | grep -v '^\s*$'; }
# fields may name ${MD_...:-default} variables so ports follow the environment
field() { eval "echo \"$(echo "$1" | cut -d'|' -f"$2" | sed 's/^ *//;s/ *$//')\""; }

# running PID: alive and not a zombie (an exited process stays one until init reaps it)
running() { local s; s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1; s=${s##*) }; [[ ${s:0:1} != Z ]]; }
# session_running SID: a live process is left in the session SID (a service and its children)
session_running() { ps -o stat= --sid "$1" 2>/dev/null | grep -qv '^Z'; }

# sup_log LEVEL MSG [JSON fields]: one JSON line (the services' log format) in the service's log
# and in supervisor.log. Only in the supervisor process (NAME set).
sup_log() {
  local t=$EPOCHREALTIME ts
  TZ=UTC printf -v ts '%(%Y-%m-%dT%H:%M:%S)T' "${t%[.,]*}"
  printf -v ts '{"ts":"%s.%sZ","level":"%s","service":"%s","logger":"supervisor","msg":"%s"%s}' \
    "$ts" "${t#*[.,]}" "$1" "$NAME" "$2" "${3:+,$3}"
  printf '%s\n' "$ts" >>"$SVC_LOG/$NAME.log"
  printf '%s\n' "$ts" >>"$SUP_LOG"
}

# supervise NAME CMD (`stack.sh supervise`, one per service, in its own session): runs CMD in its
# own session with its pid in $SVC_RUN/NAME.pid and starts it again whenever it exits. The delay
# before a restart is drawn in [c/2, c], c = 0.2 s doubling per restart up to 10 s and back to
# 0.2 s once the process stayed up 30 s. Leftovers of a dead service (gateway_ws workers whose
# parent was killed) are stopped first: its process group, SIGTERM then SIGKILL after 5 s.
# SIGTERM/SIGINT/SIGHUP end the supervision only; stop_services then stops the service.
supervise() {
  NAME=$1
  local cmd=$2 child rc started uptime ceil=200 delay i restarts=0 status
  local stopping=0
  trap 'stopping=1' TERM INT HUP
  echo $$ >"$SUP_RUN/$NAME.pid"
  echo 0 >"$SUP_RUN/$NAME.restarts"
  while :; do
    # shellcheck disable=SC2086
    (cd "$ROOT" && exec setsid "$ROOT/.venv/bin/"$cmd </dev/null >>"$SVC_LOG/$NAME.log" 2>&1) &
    child=$!
    echo "$child" >"$SVC_RUN/$NAME.pid"
    started=$EPOCHSECONDS
    sup_log info "started" "\"pid\":$child,\"restarts\":$restarts"
    rc=0
    if ((stopping == 0)); then wait "$child" 2>/dev/null || rc=$?; fi
    if ((stopping)); then break; fi # the service keeps running: stop_services stops it
    uptime=$((EPOCHSECONDS - started))
    status="\"status\":$rc"
    if ((rc > 128)); then status+=",\"signal\":\"$(kill -l $((rc - 128)))\""; fi
    if session_running "$child"; then # orphans left in its process group
      kill -TERM -- "-$child" 2>/dev/null || true
      for ((i = 0; i < 25; i++)); do session_running "$child" || break; sleep 0.2; done
      kill -KILL -- "-$child" 2>/dev/null || true
    fi
    if ((uptime >= 30)); then ceil=200; fi
    delay=$((ceil / 2 + RANDOM % (ceil / 2 + 1)))
    ceil=$((ceil * 2 > 10000 ? 10000 : ceil * 2))
    restarts=$((restarts + 1))
    echo "$restarts" >"$SUP_RUN/$NAME.restarts"
    sup_log warning "exited, restarting" \
      "$status,\"uptime_s\":$uptime,\"delay_s\":$((delay / 1000)).$(printf %03d $((delay % 1000))),\"restarts\":$restarts"
    sleep "$((delay / 1000)).$(printf %03d $((delay % 1000)))" &
    wait $! || kill $! 2>/dev/null || true
    if ((stopping)); then break; fi
  done
  sup_log info "supervision stopped" "\"pid\":$child"
  rm -f "$SUP_RUN/$NAME.pid"
}

start_one() {  # name cmd: the service under its supervisor, both in their own sessions
  local name=$1 cmd=$2 i
  if pid_alive "$SUP_RUN/$name.pid"; then log "$name already running (supervised)"; return; fi
  if pid_alive "$SVC_RUN/$name.pid"; then log "$name already running, NOT supervised (stack.sh stop-services, then up)"; return; fi
  rm -f "$SVC_RUN/$name.pid"
  setsid "$HERE/stack.sh" supervise "$name" "$cmd" </dev/null >>"$SUP_LOG" 2>&1 &
  for ((i = 0; i < 50; i++)); do [[ -f "$SVC_RUN/$name.pid" ]] && return; sleep 0.1; done
  die "the supervisor of $name did not start (see $SUP_LOG)"
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
# the source's feed (core/input_feed.py): the aggregator leader takes acknowledged records from it
export MD_SOURCE_FEED_PORT="${MD_SOURCE_FEED_PORT:-8033}"
export MD_AGG_SOURCE_FEED="${MD_AGG_SOURCE_FEED-127.0.0.1:$MD_SOURCE_FEED_PORT}"

start_all() {
  "$HERE/infra.sh" up
  start_services
}

start_services() {
  local line name url cmd n
  n="${MD_WS_PROCESSES:-$(nproc)}"
  while IFS= read -r line; do
    name=$(field "$line" 1); url=$(field "$line" 2); cmd=$(field "$line" 3)
    if [[ "$url" == "-" ]]; then
      log "running $name"
      local logged; logged=$(stat -c %s "$SVC_LOG/$name.log" 2>/dev/null || echo 0)
      (cd "$ROOT" && "$ROOT/.venv/bin/"$cmd >>"$SVC_LOG/$name.log" 2>&1) || die "$name failed (see $SVC_LOG/$name.log)"
      # what a one-shot step asks of the operator (storage migrate: a native database on a
      # server with TimescaleDB, and the convert command) is shown here, not only logged
      tail -c +$((logged + 1)) "$SVC_LOG/$name.log" | grep -E '^\[[a-z_]+\] WARNING' >&2 || true
      continue
    fi
    start_one "$name" "$cmd"
  done < <(services)
  while IFS= read -r line; do
    name=$(field "$line" 1); url=$(field "$line" 2)
    [[ "$url" == "-" ]] || wait_health "$name" "$url"
  done < <(services)
  if [[ -n "${MD_SERVICES_CONF:-}" ]]; then log "the services of $CONF are up (logs: $SVC_LOG/)"; return; fi
  local kafka="127.0.0.1:$KAFKA_PORT"
  if ((KAFKA_BROKERS > 1)); then kafka=$MD_KAFKA_BOOTSTRAP; fi
  cat >&2 <<MSG

[local] the platform is up:
  REST        http://127.0.0.1:${MD_REST_PORT:-8000}/api/v1/market/BTC-USD/orderbook?depth=10   (docs: /docs)
  WebSocket   ws://127.0.0.1:${MD_WS_PORT:-8001}/ws   ($n processes)
  Replay      ws://127.0.0.1:${MD_REPLAY_PORT:-8002}/ws   (stored history: {"type":"replay",...}, docs/websocket.md)
  FIX 4.4     127.0.0.1:${MD_FIX_PORT:-9876}  SenderCompID=CLIENT1 TargetCompID=MDGW
  Kafka       $kafka   PostgreSQL 127.0.0.1:$PG_PORT   Redis 127.0.0.1:$REDIS_PORT
  metrics     aggregator :${MD_AGGREGATOR_HTTP_PORT:-8011}  storage :${MD_STORAGE_HTTP_PORT:-8012}  simulator :${MD_SIMULATOR_HTTP_PORT:-8013}  fix :${MD_FIX_HTTP_PORT:-8014}  (/metrics, /health)
  logs        $SVC_LOG/
MSG
}

stop_services() {
  local f p i pids=()
  # the supervisors first, so that none restarts what is stopped below
  for f in "$SUP_RUN"/*.pid; do
    p=$(cat "$f" 2>/dev/null) || continue
    if kill -TERM "$p" 2>/dev/null; then pids+=("$p"); fi
  done
  for ((i = 0; i < 50; i++)); do
    local alive=0
    for p in "${pids[@]}"; do running "$p" && alive=1; done
    [[ $alive -eq 0 ]] && break
    sleep 0.2
  done
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  rm -f "$SUP_RUN"/*.pid
  pids=()
  for f in "$SVC_RUN"/*.pid; do
    p=$(cat "$f" 2>/dev/null) || continue
    if kill -TERM "$p" 2>/dev/null; then pids+=("$p"); fi
  done
  for ((i = 0; i < 100; i++)); do
    local alive=0
    for p in "${pids[@]}"; do running "$p" && alive=1; done
    [[ $alive -eq 0 ]] && break
    sleep 0.2
  done
  # each service leads its own process group: this also ends children it left behind
  for p in "${pids[@]}"; do kill -KILL -- "-$p" 2>/dev/null || kill -KILL "$p" 2>/dev/null || true; done
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
    logs=()  # the services' logs (they hold the supervisor's lines about them too)
    for f in "$SVC_LOG"/*.log; do [[ "$f" == "$SUP_LOG" ]] || logs+=("$f"); done
    tail -n0 -q -F "${logs[@]}" &
    TAIL_PID=$!
    wait
    ;;
  up) start_all ;;
  up-services) start_services ;;
  stop) stop_services; "$HERE/infra.sh" down ;;
  stop-services) stop_services ;;
  supervise) supervise "$2" "$3" ;;
  status)
    while IFS= read -r line; do
      name=$(field "$line" 1)
      [[ "$(field "$line" 2)" == "-" ]] && continue
      svc=$(cat "$SVC_RUN/$name.pid" 2>/dev/null || echo -); sup=$(cat "$SUP_RUN/$name.pid" 2>/dev/null || echo -)
      printf '%-14s pid %-8s %-5s supervisor %-8s %-5s restarts %s\n' "$name" \
        "$svc" "$(running "$svc" && echo up || echo down)" \
        "$sup" "$(running "$sup" && echo up || echo down)" \
        "$(cat "$SUP_RUN/$name.restarts" 2>/dev/null || echo -)"
    done < <(services) ;;
  logs)
    echo "service logs (JSON lines): $SVC_LOG/"; ls -1 "$SVC_LOG" 2>/dev/null | sed 's/^/  /'
    echo "supervisor (starts, restarts with exit status and delay): $SUP_LOG"
    klog="$VAR/log/kafka/server.log"
    if ((KAFKA_BROKERS > 1)); then klog="$VAR/log/kafka-<n>/server.log (n = 1..$KAFKA_BROKERS)"; fi
    echo "Kafka: $klog  PostgreSQL: $VAR/log/postgres.log  Redis: $VAR/log/redis.log"
    echo "follow all: tail -F $SVC_LOG/*.log" ;;
  *) die "usage: stack.sh run|up|up-services|stop|stop-services|status|logs" ;;
esac
