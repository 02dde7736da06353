#!/usr/bin/env bash
# Single-node Kafka 4.x in KRaft mode (broker+controller) on 127.0.0.1:$MD_KAFKA_PORT.
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
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
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

case "${1:-}" in
  start) start ;; stop) stop ;;
  status) port_open "$KAFKA_PORT" && echo "kafka: up 127.0.0.1:$KAFKA_PORT" || echo "kafka: down" ;;
  *) die "usage: kafka.sh start|stop|status" ;;
esac
