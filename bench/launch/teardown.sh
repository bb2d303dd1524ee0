#!/usr/bin/env bash
# Removes what baseline.sh IDENTITY made: its containers, networks and volume (found by the
# bot-bottle.identity label, never by name) and its staged files.
#   bench/launch/teardown.sh IDENTITY
set -uo pipefail
id="${1:?usage: teardown.sh IDENTITY}"
filter="label=bot-bottle.identity=$id"
containers=$(docker ps -aq --filter "$filter")
[ -n "$containers" ] && docker rm -f $containers >/dev/null
networks=$(docker network ls -q --filter "$filter")
[ -n "$networks" ] && docker network rm $networks >/dev/null
volumes=$(docker volume ls -q --filter "$filter")
[ -n "$volumes" ] && docker volume rm $volumes >/dev/null
rm -rf "${BENCH_STAGE_DIR:-/tmp/bottle-baseline-$id}"
left=$(docker ps -aq --filter "$filter"; docker network ls -q --filter "$filter"; docker volume ls -q --filter "$filter")
if [ -n "$left" ]; then echo "teardown: objects of $id are left: $left" >&2; exit 1; fi
exit 0
