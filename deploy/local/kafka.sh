#!/usr/bin/env bash
# Single-node Kafka 4.x in KRaft mode (broker+controller) on 127.0.0.1:$MD_KAFKA_PORT.
# MD_KAFKA_BROKERS=N (N > 1): N broker-only KRaft nodes and 3 dedicated controllers instead,
# broker i (1..N) on 127.0.0.1:$((MD_KAFKA_PORT + 2(i-1))), controller j (1..3) on
# $((MD_KAFKA_CONTROLLER_PORT + 2(j-1))), state in $VAR/kafka-<i> / kafka-c<j>, logs in
# $VAR/log/kafka-<i>, pid $VAR/run/kafka-<i>.pid; topics default to RF min(N,3), min ISR RF-1.
# Every broker also listens on CHAOS (its port + 100) and advertises it at its port + 200, where
# `make chaos` runs a fault-injecting proxy (loadtests/faultproxy.py): a client bootstrapped there
# reaches every broker only through the proxy, which can then partition it (nothing listens on
# port + 200 otherwise).
# usage: kafka.sh start|stop|status
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
DATA="$VAR/kafka/data"
LOGDIR="$VAR/log/kafka"
PIDF="$VAR/run/kafka.pid"
CONF="$VAR/kafka/server.properties"

write_conf() {
  mkdir -p "$DATA" "$LOGDIR" "$(dirname "$CONF")"
  cat >"$CONF" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT,CHAOS://127.0.0.1:$((KAFKA_PORT + 100))
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CHAOS://127.0.0.1:$((KAFKA_PORT + 200))
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,CHAOS:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$DATA
num.partitions=6
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=10
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
default.replication.factor=1
min.insync.replicas=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
log.retention.hours=168
log.segment.bytes=268435456
message.max.bytes=4194304
# the compacted topics (snapshots, control, checkpoints) hold hundreds of keys, not millions: the
# cleaner clears its whole dedupe map before each cleaning (a 128 MB Arrays.fill by default, 6 a
# minute for the snapshot partitions' one-minute segments)
log.cleaner.dedupe.buffer.size=8388608
PROPS
}

start() {
  if port_open "$KAFKA_PORT"; then log "Kafka already answers on 127.0.0.1:$KAFKA_PORT"; return 0; fi
  [[ -f "$KAFKA_LIBS/.complete" ]] || die "Kafka jars missing in $KAFKA_LIBS: run deploy/local/install.sh"
  command -v java >/dev/null || die "java not found: Java 17+ is required for Kafka"
  write_conf
  local cp="$KAFKA_LIBS/*"
  local jopts=(-Xms256m -Xmx768m -XX:+UseG1GC -Djava.awt.headless=true
    -Dkafka.logs.dir="$LOGDIR" -Dlog4j2.configurationFile="$ROOT/deploy/local/kafka/log4j2.properties")
  if [[ ! -f "$DATA/meta.properties" ]]; then
    log "formatting Kafka storage (once)"
    java "${jopts[@]}" -cp "$cp" kafka.tools.StorageTool format --standalone \
      -t "$(cat "$VAR/kafka/cluster-id" 2>/dev/null || echo 'mdLocalCluster0000000A')" -c "$CONF" \
      >"$LOGDIR/format.log" 2>&1 || die "Kafka storage format failed (see $LOGDIR/format.log)"
  fi
  # every partition holds several files open (log, index, time index per segment): a test suite
  # that creates thousands of partitions exhausts a small limit and the broker stops its log dir
  ulimit -n 1048576 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
  log "starting Kafka on 127.0.0.1:$KAFKA_PORT (open files limit $(ulimit -n))"
  # own session: a Ctrl-C in the terminal of `make run` reaches the stack script, which stops
  # the services first and Kafka last
  nohup setsid java "${jopts[@]}" -cp "$cp" kafka.Kafka "$CONF" >"$LOGDIR/stdout.log" 2>&1 &
  echo $! >"$PIDF"
  wait_port 127.0.0.1 "$KAFKA_PORT" 90 Kafka
}

stop() {
  if pid_alive "$PIDF"; then
    local pid; pid=$(cat "$PIDF"); kill "$pid"
    for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true
    log "Kafka stopped"
  fi
  rm -f "$PIDF"
}

# ---- MD_KAFKA_BROKERS > 1: a cluster on loopback ---------------------------------------------
# N broker-only nodes and a quorum of 3 dedicated controllers (what production runs: in combined
# mode, killing the node that is also the active controller first costs a controller election,
# then a fresh broker session: 5 s measured). Broker i (1..N): node id i, port
# MD_KAFKA_PORT + 2(i-1); controller j (1..3): node id 100+j, port MD_KAFKA_CONTROLLER_PORT + 2(j-1).
CONTROLLERS=3
node_port() { echo $((KAFKA_PORT + 2 * ($1 - 1))); }
node_cport() { echo $((KAFKA_CONTROLLER_PORT + 2 * ($1 - 1))); }
voters() {
  local j v=""
  for ((j = 1; j <= CONTROLLERS; j++)); do v+="${v:+,}$((100 + j))@127.0.0.1:$(node_cport "$j")"; done
  echo "$v"
}

write_controller_conf() {
  local j=$1 dir="$VAR/kafka-c$1"
  mkdir -p "$dir/data" "$VAR/log/kafka-c$j"
  cat >"$dir/server.properties" <<PROPS
process.roles=controller
node.id=$((100 + j))
controller.quorum.voters=$(voters)
listeners=CONTROLLER://127.0.0.1:$(node_cport "$j")
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT
log.dirs=$dir/data
# a broker that stops heartbeating is fenced, and its partitions get new leaders, after this
# long: it is most of the write pause after a broker's kill -9 (default 9 s; issue 11: <= 1 s).
# Loopback only: on real networks 2-3 s avoids fencing a broker through a GC pause.
broker.session.timeout.ms=500
# a lost active controller: the voters notice after the fetch timeout and elect another
controller.quorum.fetch.timeout.ms=1000
controller.quorum.election.timeout.ms=500
controller.quorum.election.backoff.max.ms=500
PROPS
}

write_node_conf() {
  local i=$1 dir="$VAR/kafka-$1"
  local port; port=$(node_port "$i")
  local rf=$((KAFKA_BROKERS < 3 ? KAFKA_BROKERS : 3))
  local isr=$((rf > 1 ? rf - 1 : 1))
  mkdir -p "$dir/data" "$VAR/log/kafka-$i"
  cat >"$dir/server.properties" <<PROPS
process.roles=broker
node.id=$i
controller.quorum.voters=$(voters)
listeners=PLAINTEXT://127.0.0.1:$port,CHAOS://127.0.0.1:$((port + 100))
advertised.listeners=PLAINTEXT://127.0.0.1:$port,CHAOS://127.0.0.1:$((port + 200))
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,CHAOS:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$dir/data
num.partitions=6
offsets.topic.replication.factor=$rf
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=$rf
transaction.state.log.min.isr=$isr
transaction.state.log.num.partitions=10
share.coordinator.state.topic.replication.factor=$rf
share.coordinator.state.topic.min.isr=$isr
default.replication.factor=$rf
min.insync.replicas=$isr
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
log.retention.hours=168
log.segment.bytes=268435456
message.max.bytes=4194304
# well inside the controllers' broker.session.timeout.ms
broker.heartbeat.interval.ms=100
# a follower whose leader died retries after this long (default 1 s): until it fetches from the
# new leader, acks=all writes there wait for it
replica.fetch.backoff.ms=50
# a broker back from a crash does not take its partitions back by itself: moving leadership is a
# second interruption, at the moment the returning broker is slowest (log recovery, catch-up);
# run kafka-leader-election when it suits (make chaos broker-kill measured a 20 s stall)
auto.leader.rebalance.enable=false
# see write_conf: hundreds of keys in the compacted topics, not millions
log.cleaner.dedupe.buffer.size=8388608
PROPS
}

# start_node <name> <conf> <logdir> <pidfile> <heap>
start_node() {
  local name=$1 conf=$2 logdir=$3 pidf=$4 heap=$5 cp="$KAFKA_LIBS/*"
  local cid; cid=$(cat "$VAR/kafka/cluster-id" 2>/dev/null || echo 'mdLocalCluster0000000A')
  local jopts=(-Xms64m "-Xmx$heap" -XX:+UseG1GC -Djava.awt.headless=true
    -Dkafka.logs.dir="$logdir" -Dlog4j2.configurationFile="$ROOT/deploy/local/kafka/log4j2.properties")
  if [[ ! -f "$(dirname "$conf")/data/meta.properties" ]]; then
    log "formatting $name storage (once)"
    java "${jopts[@]}" -cp "$cp" kafka.tools.StorageTool format -t "$cid" -c "$conf" \
      >"$logdir/format.log" 2>&1 || die "$name storage format failed (see $logdir/format.log)"
  fi
  nohup setsid java "${jopts[@]}" -cp "$cp" kafka.Kafka "$conf" >"$logdir/stdout.log" 2>&1 &
  echo $! >"$pidf"
}

start_cluster() {
  [[ -f "$KAFKA_LIBS/.complete" ]] || die "Kafka jars missing in $KAFKA_LIBS: run deploy/local/install.sh"
  command -v java >/dev/null || die "java not found: Java 17+ is required for Kafka"
  local i j port
  ulimit -n 1048576 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
  for ((j = 1; j <= CONTROLLERS; j++)); do
    if port_open "$(node_cport "$j")"; then log "Kafka controller $j already answers"; continue; fi
    write_controller_conf "$j"
    log "starting Kafka controller $j on 127.0.0.1:$(node_cport "$j")"
    start_node "Kafka controller $j" "$VAR/kafka-c$j/server.properties" "$VAR/log/kafka-c$j" \
      "$VAR/run/kafka-c$j.pid" 256m
  done
  for ((i = 1; i <= KAFKA_BROKERS; i++)); do
    port=$(node_port "$i")
    if port_open "$port"; then log "Kafka broker $i already answers on 127.0.0.1:$port"; continue; fi
    write_node_conf "$i"
    log "starting Kafka broker $i on 127.0.0.1:$port"
    start_node "Kafka broker $i" "$VAR/kafka-$i/server.properties" "$VAR/log/kafka-$i" \
      "$VAR/run/kafka-$i.pid" 512m
  done
  # a broker opens its port once it has registered with the active controller
  for ((i = 1; i <= KAFKA_BROKERS; i++)); do wait_port 127.0.0.1 "$(node_port "$i")" 120 "Kafka broker $i"; done
  log "Kafka cluster up: $MD_KAFKA_BOOTSTRAP (RF $MD_KAFKA_REPLICATION_FACTOR, min ISR $MD_KAFKA_MIN_ISR, $CONTROLLERS controllers)"
}

stop_pidfile() {
  local pidf=$1 name=$2
  if pid_alive "$pidf"; then
    local pid; pid=$(cat "$pidf"); kill "$pid"
    for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true
    log "$name stopped"
  fi
  rm -f "$pidf"
}

# stops every node a cluster run left (whatever MD_KAFKA_BROKERS says now), in parallel: brokers
# first (a broker's controlled shutdown needs the controllers), then the controllers
stop_cluster() {
  local f n pids=() glob
  for glob in "kafka-[0-9]*.pid" "kafka-c[0-9]*.pid"; do
    pids=()
    for f in "$VAR"/run/$glob; do
      [[ -e "$f" ]] || continue
      n=${f##*/kafka-}; n=${n%.pid}
      stop_pidfile "$f" "Kafka node $n" &
      pids+=($!)
    done
    for f in "${pids[@]}"; do wait "$f" || true; done
  done
}

status_cluster() {
  local i port
  for ((i = 1; i <= KAFKA_BROKERS; i++)); do
    port=$(node_port "$i")
    port_open "$port" && echo "kafka-$i: up 127.0.0.1:$port" || echo "kafka-$i: down"
  done
  for ((i = 1; i <= CONTROLLERS; i++)); do
    port=$(node_cport "$i")
    port_open "$port" && echo "kafka-c$i: up 127.0.0.1:$port (controller)" || echo "kafka-c$i: down"
  done
}

if ((KAFKA_BROKERS > 1)); then
  case "${1:-}" in
    start) start_cluster ;; stop) stop; stop_cluster ;; status) status_cluster ;;
    *) die "usage: kafka.sh start|stop|status" ;;
  esac
  exit 0
fi

case "${1:-}" in
  start) start ;; stop) stop; stop_cluster ;;
  status) port_open "$KAFKA_PORT" && echo "kafka: up 127.0.0.1:$KAFKA_PORT" || echo "kafka: down" ;;
  *) die "usage: kafka.sh start|stop|status" ;;
esac
