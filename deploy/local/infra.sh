#!/usr/bin/env bash
# Infrastructure of the local stack: install what is missing, then Kafka, PostgreSQL, Redis.
# usage: infra.sh up|down|status
# MD_EXTERNAL_KAFKA / MD_EXTERNAL_PG / MD_EXTERNAL_REDIS=1 skip starting that server (point the
# MD_KAFKA_BOOTSTRAP / MD_PG_DSN / MD_REDIS_URL settings at yours instead).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
HERE="$ROOT/deploy/local"
case "${1:-}" in
  up)
    "$HERE/install.sh"
    [[ -n "${MD_EXTERNAL_REDIS:-}" ]] || "$HERE/redis.sh" start
    [[ -n "${MD_EXTERNAL_PG:-}" ]] || "$HERE/postgres.sh" start
    [[ -n "${MD_EXTERNAL_KAFKA:-}" ]] || "$HERE/kafka.sh" start
    "$PY" -m core.bootstrap
    ;;
  down)
    "$HERE/kafka.sh" stop; "$HERE/postgres.sh" stop; "$HERE/redis.sh" stop ;;
  status)
    "$HERE/kafka.sh" status; "$HERE/postgres.sh" status; "$HERE/redis.sh" status ;;
  *) die "usage: infra.sh up|down|status" ;;
esac
