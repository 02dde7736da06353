# Shared settings for the native local stack (sourced, not run).
# Every port and path here can be overridden from the environment; README "Configuration".
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VAR="${MD_VAR_DIR:-$ROOT/var}"
PY="$ROOT/.venv/bin/python"
KAFKA_PORT="${MD_KAFKA_PORT:-19092}"
KAFKA_CONTROLLER_PORT="${MD_KAFKA_CONTROLLER_PORT:-19093}"
# MD_KAFKA_BROKERS=3: a KRaft cluster on loopback, node i (0-based) on ports KAFKA_PORT + 2i
# (broker) and KAFKA_CONTROLLER_PORT + 2i (controller); the services then get the brokers'
# bootstrap list, RF 3 and min ISR 2 unless those are set (deploy/local/kafka.sh)
KAFKA_BROKERS="${MD_KAFKA_BROKERS:-1}"
PG_PORT="${MD_PG_PORT:-15432}"
REDIS_PORT="${MD_REDIS_PORT:-16379}"
KAFKA_LIBS="$VAR/cache/kafka-libs"
mkdir -p "$VAR/log" "$VAR/run"

log() { printf '[local] %s\n' "$*" >&2; }
die() { printf '[local] ERROR: %s\n' "$*" >&2; exit 1; }

[[ "$KAFKA_BROKERS" =~ ^[1-9][0-9]*$ ]] || die "MD_KAFKA_BROKERS must be a positive integer, got '$KAFKA_BROKERS'"
if ((KAFKA_BROKERS > 1)); then
  _rf=$((KAFKA_BROKERS < 3 ? KAFKA_BROKERS : 3)) _bs=""
  for ((_i = 0; _i < KAFKA_BROKERS; _i++)); do _bs+="${_bs:+,}127.0.0.1:$((KAFKA_PORT + 2 * _i))"; done
  export MD_KAFKA_BOOTSTRAP="${MD_KAFKA_BOOTSTRAP:-$_bs}"
  export MD_KAFKA_REPLICATION_FACTOR="${MD_KAFKA_REPLICATION_FACTOR:-$_rf}"
  export MD_KAFKA_MIN_ISR="${MD_KAFKA_MIN_ISR:-$((_rf > 1 ? _rf - 1 : 1))}"
  unset _rf _bs _i
fi

# wait_port HOST PORT SECONDS NAME: block until something accepts TCP on HOST:PORT.
wait_port() {
  local host=$1 port=$2 secs=$3 name=$4 i
  for ((i = 0; i < secs * 5; i++)); do
    if (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; then return 0; fi
    sleep 0.2
  done
  die "$name did not answer on $host:$port within ${secs}s (see $VAR/log)"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

pid_alive() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

# find_pg_bin NAME: PostgreSQL server binaries live outside PATH on Debian.
find_pg_bin() {
  local b r
  for b in "$(command -v "$1" 2>/dev/null || true)" /usr/lib/postgresql/*/bin/"$1"; do
    [[ -n "$b" && -x "$b" ]] || continue
    # a symlink on PATH (e.g. /usr/local/bin/initdb -> /usr/lib/postgresql/15/bin/initdb) is
    # followed, so that its directory holds the server's other binaries and names its major
    # version; a wrapper under another name (Debian's pg_wrapper) is not
    r=$(readlink -f "$b") && [[ "$(basename "$r")" == "$1" ]] && b=$r
    echo "$b"; return 0
  done
  return 1
}
