#!/usr/bin/env bash
# Installs what the local stack needs and is missing; a second run does nothing and takes a second.
#   - Debian packages: postgresql (server binaries), redis-server, openjdk-17-jdk-headless, maven
#     (each only when missing)
#   - .venv with the project and its dev dependencies (only when pyproject.toml changed)
#   - Kafka jars from Maven Central into var/cache/kafka-libs (only once)
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

need_cmd() { command -v "$1" >/dev/null 2>&1 || die "$1 is required: $2"; }

apt_install() {
  command -v apt-get >/dev/null 2>&1 || die "missing $* and no apt-get to install it; install $* by hand"
  local sudo=""
  [[ $(id -u) -ne 0 ]] && sudo="sudo"
  if [[ ! -f "$VAR/run/apt-updated" ]]; then
    log "apt-get update"
    $sudo apt-get update -qq >"$VAR/log/apt.log" 2>&1 || die "apt-get update failed (see $VAR/log/apt.log)"
    touch "$VAR/run/apt-updated"
  fi
  log "apt-get install $*"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >>"$VAR/log/apt.log" 2>&1 \
    || die "apt-get install $* failed (see $VAR/log/apt.log)"
}

if [[ -z "${MD_EXTERNAL_PG:-}" ]] && ! find_pg_bin initdb >/dev/null; then apt_install postgresql; fi
if [[ -z "${MD_EXTERNAL_REDIS:-}" ]] && ! command -v redis-server >/dev/null 2>&1; then apt_install redis-server; fi

need_cmd python3 "Python 3.11+ (https://www.python.org)"
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "Python 3.11+ is required, found $(python3 --version)"

stamp="$ROOT/.venv/.installed-$(sha1sum "$ROOT/pyproject.toml" | cut -c1-12)"
if [[ ! -f "$stamp" ]]; then
  [[ -x "$PY" ]] || { log "creating .venv"; python3 -m venv "$ROOT/.venv"; }
  log "installing Python dependencies into .venv"
  "$PY" -m pip install -q --upgrade pip >"$VAR/log/pip.log" 2>&1 || true
  "$PY" -m pip install -q -e "$ROOT[dev]" >>"$VAR/log/pip.log" 2>&1 || die "pip install failed (see $VAR/log/pip.log)"
  rm -f "$ROOT"/.venv/.installed-*
  touch "$stamp"
fi

# Java 17+ with javac (Kafka, and the QuickFIX/J test harness) and Maven (resolves both)
if ! command -v java >/dev/null 2>&1 || ! command -v javac >/dev/null 2>&1; then apt_install openjdk-17-jdk-headless; fi
if ! command -v mvn >/dev/null 2>&1; then apt_install maven; fi

if [[ -z "${MD_EXTERNAL_KAFKA:-}" && ! -f "$KAFKA_LIBS/.complete" ]]; then
  need_cmd java "Java 17+ (Debian: openjdk-17-jdk-headless)"
  need_cmd mvn "Maven (Debian: maven)"
  log "resolving Kafka jars from Maven Central (once)"
  mkdir -p "$KAFKA_LIBS"
  mvn -q -B -f "$ROOT/deploy/local/kafka/pom.xml" dependency:copy-dependencies \
    -DoutputDirectory="$KAFKA_LIBS" -DincludeScope=runtime >"$VAR/log/maven.log" 2>&1 \
    || die "Maven could not resolve Kafka (see $VAR/log/maven.log)"
  touch "$KAFKA_LIBS/.complete"
fi
