#!/usr/bin/env bash
# Installs what the local stack needs and is missing; a second run does nothing and takes a second.
#   - Debian packages: postgresql (server binaries), redis-server, openjdk-17-jdk-headless, maven
#     (each only when missing)
#   - .venv with the project and its dev dependencies (only when pyproject.toml changed)
#   - Kafka jars from Maven Central into var/cache/kafka-libs (only once)
#   - TimescaleDB 2.28.3 built from ../shared/vendor (or MD_TIMESCALEDB_TARBALL) in
#     var/cache/timescaledb-<version> and installed into the local PostgreSQL (only when missing)
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

# TimescaleDB for the local cluster (docs/storage.md "TimescaleDB"): Debian ships no package, so
# it is built from the vendored source once (about 3 minutes on 2 cores) in var/cache and
# installed next to the server's own libraries; later runs see it installed and do nothing.
# A lock keeps two concurrent `make install` from building over each other.
TSDB_VERSION="${MD_TIMESCALEDB_VERSION:-2.28.3}"
TSDB_TARBALL="${MD_TIMESCALEDB_TARBALL:-$ROOT/../shared/vendor/timescaledb-$TSDB_VERSION.tar.gz}"
tsdb_pg_config() {  # the pg_config of the server that initdb/pg_ctl belong to
  local bin
  bin=$(find_pg_bin initdb) && [[ -x "$(dirname "$bin")/pg_config" ]] && { echo "$(dirname "$bin")/pg_config"; return 0; }
  find_pg_bin pg_config
}
tsdb_installed() {
  local pg_config=$1
  [[ -f "$("$pg_config" --sharedir)/extension/timescaledb--$TSDB_VERSION.sql" \
    && -f "$("$pg_config" --pkglibdir)/timescaledb-$TSDB_VERSION.so" ]]
}
install_timescaledb() {
  local pg_config major src sudo=""
  if ! pg_config=$(tsdb_pg_config) || [[ ! -f "$("$pg_config" --includedir-server)/postgres.h" ]]; then
    major=$(basename "$(dirname "$(dirname "$(find_pg_bin initdb)")")")
    apt_install "postgresql-server-dev-$major"
    pg_config=$(tsdb_pg_config) || die "pg_config not found after installing postgresql-server-dev-$major"
  fi
  tsdb_installed "$pg_config" && return 0
  if [[ ! -f "$TSDB_TARBALL" ]]; then
    log "TimescaleDB source not found ($TSDB_TARBALL): the storage runs on plain PostgreSQL partitions"
    return 0
  fi
  command -v cmake >/dev/null 2>&1 || apt_install cmake
  [[ -f /usr/include/gssapi/gssapi.h ]] || apt_install libkrb5-dev
  mkdir -p "$VAR/cache"
  exec 9>"$VAR/cache/timescaledb.lock"
  flock 9
  tsdb_installed "$pg_config" && { flock -u 9; return 0; }  # built meanwhile by another run
  src="$VAR/cache/timescaledb-$TSDB_VERSION"
  if [[ ! -f "$src/build/.built" ]]; then
    log "building TimescaleDB $TSDB_VERSION into $src (once, about 3 minutes)"
    rm -rf "$src" && mkdir -p "$src"
    tar xzf "$TSDB_TARBALL" -C "$src" --strip-components=1
    (cd "$src" && ./bootstrap -DREGRESS_CHECKS=OFF -DTAP_CHECKS=OFF -DWARNINGS_AS_ERRORS=OFF -DLINTER=OFF \
      -DCMAKE_BUILD_TYPE=Release -DPG_CONFIG="$pg_config" && make -C build -j"$(nproc)") \
      >"$VAR/log/timescaledb-build.log" 2>&1 || die "TimescaleDB build failed (see $VAR/log/timescaledb-build.log)"
    touch "$src/build/.built"
  fi
  [[ $(id -u) -ne 0 ]] && sudo="sudo"
  log "installing TimescaleDB $TSDB_VERSION into $("$pg_config" --pkglibdir)"
  $sudo make -C "$src/build" install >>"$VAR/log/timescaledb-build.log" 2>&1 \
    || die "TimescaleDB install failed (see $VAR/log/timescaledb-build.log)"
  flock -u 9
}
if [[ -z "${MD_EXTERNAL_PG:-}" && -z "${MD_NO_TIMESCALEDB:-}" ]]; then install_timescaledb; fi
