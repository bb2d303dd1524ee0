#!/usr/bin/env bash
# The launch baseline: the Docker objects that `bottle run AGENT --detach` makes (engine/steps.ts,
# machines/specs.ts), made by hand with the docker CLI, in the same order, with the same options
# and the same parallelism. Returns once the agent container runs. Tear down with teardown.sh IDENTITY.
#
#   BENCH_AGENT_IMAGE=bot-bottle/agent:TAG BENCH_SIDECAR_IMAGE=bot-bottle/sidecar:TAG \
#     bench/launch/baseline.sh IDENTITY
#
# Environment:
#   BENCH_AGENT_IMAGE, BENCH_SIDECAR_IMAGE  image tags (default: the newest local bot-bottle/agent, bot-bottle/sidecar)
#   BENCH_RUNTIME     the agent's runtime, runc (default) or runsc; like the product, only the agent gets it
#   BENCH_BOTTLE      the bottle's name in the manifest, the egress sidecar's BOTTLE_BOTTLE (default bench)
#   BENCH_RUN_ID      the run label and BOTTLE_RUN (default: baseline-<nanoseconds>)
#   BENCH_STAGE_DIR   where env-file, prompt and allowlist are staged (default: /tmp/bottle-baseline-IDENTITY)
#   BENCH_HOME        the bot-bottle.home label, the store the product would name (default: the stage dir)
#   BENCH_POLL        pause between readiness probes, seconds (default 0.05, the product's pollMs)
#   BENCH_TRACE       when set, prints "phase NAME MS_SINCE_START MS_IN_LANE" lines on stderr; NAME is
#                     "netns/…" for the lane that runs in the background, else the main lane
#
# Everything it creates carries bot-bottle.identity=IDENTITY; it talks to nothing but the
# local Docker daemon and its own containers.
set -euo pipefail

id="${1:?usage: baseline.sh IDENTITY}"
agent_image="${BENCH_AGENT_IMAGE:-$(docker images bot-bottle/agent --format '{{.Repository}}:{{.Tag}}' | head -n1)}"
sidecar_image="${BENCH_SIDECAR_IMAGE:-$(docker images bot-bottle/sidecar --format '{{.Repository}}:{{.Tag}}' | head -n1)}"
runtime="${BENCH_RUNTIME:-runc}"
bottle="${BENCH_BOTTLE:-bench}"
run_id="${BENCH_RUN_ID:-baseline-$(date +%s%N)}"
stage="${BENCH_STAGE_DIR:-/tmp/bottle-baseline-$id}"
poll="${BENCH_POLL:-0.05}"
home="${BENCH_HOME:-$stage}"

start_us=${EPOCHREALTIME/./}
lane_us=$start_us
# phase NAME: ms since the start, and ms since the previous mark of the same lane.
phase() {
  local now=${EPOCHREALTIME/./}
  if [ -n "${BENCH_TRACE:-}" ]; then echo "phase $1 $(( (now - start_us) / 1000 )) $(( (now - lane_us) / 1000 ))" >&2; fi
  lane_us=$now
}

base="bottle-$id"
internal="$base-internal" egress_net="$base-egress-net" egress="$base-egress"
holder="$base-netns" fixer="$base-netfix" volume="$base-workspace" agent="$base"
# Labels as machines/specs.ts labelsFor gives them (no spaces in the values: word-split below).
labels() { echo --label "bot-bottle.identity=$id" --label "bot-bottle.run=$run_id" --label "bot-bottle.role=$1" --label "bot-bottle.version=0.1.0" --label "bot-bottle.home=$home"; }
hardened=(--cap-drop ALL --security-opt no-new-privileges)

# stageFiles: the env-file (0600; docker's format has no quoting), the prompt and the allowlist.
umask 077
mkdir -p "$stage"
printf 'BENCH_VAR=launch benchmark\n' >"$stage/agent.env"
printf 'sleep for ten minutes' >"$stage/prompt"
printf 'allowed.test\n' >"$stage/allowlist"
phase staged

# createNetworks: internal (no gateway address on the host) then egress; their gateways are the
# egress proxy's deny list (the product inspects each network after creating it).
# shellcheck disable=SC2046
docker network create --driver bridge --internal -o com.docker.network.bridge.inhibit_ipv4=true $(labels network) "$internal" >/dev/null
# shellcheck disable=SC2046
docker network create --driver bridge $(labels network) "$egress_net" >/dev/null
deny=$(docker network inspect -f '{{range .IPAM.Config}}{{if .Gateway}}{{.Gateway}}{{"\n"}}{{end}}{{end}}' "$internal" "$egress_net" | sed '/^$/d' | paste -sd, -)
phase networks

# startSidecars: the agent's network namespace is made in the background while the egress
# sidecar comes up, as in engine/steps.ts (Promise.allSettled of netns() and the sidecars).
# netns: the holder (internal network, alias agent, closed DNS), started; then the one-shot
# fixer that deletes the default route in its namespace (docker run --rm: create, start, wait, remove).
netns() {
  # shellcheck disable=SC2046
  docker create --name "$holder" $(labels network) \
    --network "$internal" --network-alias agent \
    --dns 127.0.0.1 --dns-opt timeout:1 --dns-opt attempts:1 \
    "${hardened[@]}" --pids-limit 8 --memory 16m \
    --entrypoint sleep "$sidecar_image" infinity >/dev/null
  docker start "$holder" >/dev/null
  phase netns/holder
  # shellcheck disable=SC2046
  docker run --rm --name "$fixer" $(labels network) \
    --network "container:$holder" \
    "${hardened[@]}" --cap-add NET_ADMIN --pids-limit 16 --memory 32m --user 0:0 \
    --entrypoint sh "$sidecar_image" \
    -c 'ip route del default 2>/dev/null; ip -6 route del default 2>/dev/null; if ip route show default | grep -q .; then echo "default route still present" >&2; exit 1; fi'
  phase netns/fixer
}
netns &
netns_pid=$!

# The egress sidecar on the internal network (alias egress), joined to the egress network, its
# allowlist copied in (uid/gid 1001 = the image's sidecar user, 0600), started, then probed from
# inside with the product's HTTP probe (effects/docker/runtime-ready.ts) every 50 ms until
# GET /healthz answers 2xx/3xx.
# shellcheck disable=SC2046
docker create --name "$egress" $(labels egress) \
  --network "$internal" --network-alias egress \
  "${hardened[@]}" --pids-limit 256 --memory 512m \
  -e BOTTLE_SIDECAR_ROLE=egress -e BOTTLE_SIDECAR_PORT=3128 -e "BOTTLE_IDENTITY=$id" \
  -e "BOTTLE_BOTTLE=$bottle" -e "BOTTLE_RUN=$run_id" \
  -e BOTTLE_EGRESS_ALLOWLIST=/run/bottle/egress/allowlist -e "BOTTLE_EGRESS_DENY=$deny" \
  "$sidecar_image" /opt/bot-bottle/sidecars/egress.mjs >/dev/null
docker network connect "$egress_net" "$egress"
tar -C "$stage" -cf - --owner=1001 --group=1001 --numeric-owner --mode=0600 --transform 's,^,run/bottle/egress/,' allowlist | docker cp - "$egress:/"
docker start "$egress" >/dev/null
phase sidecar-started
probe='exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
printf "GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n" "$2" >&3
IFS= read -r status <&3 || exit 1
case "$status" in "HTTP/1."[01]" "[23]*) exit 0 ;; esac
exit 1'
deadline=$((SECONDS + 30))
until docker exec "$egress" timeout 3 bash -c "$probe" probe 3128 /healthz 2>/dev/null; do
  if [ "$SECONDS" -ge "$deadline" ]; then echo "baseline: $egress not ready within 30 s" >&2; exit 1; fi
  sleep "$poll"
done
phase sidecar-ready
if ! wait "$netns_pid"; then echo "baseline: the agent's network namespace could not be prepared" >&2; exit 1; fi
phase netns-joined

# createAgent: the workspace volume, the agent (in the holder's namespace), its prompt copied in, started.
# Its pids limit: 2048, or 16384 under gVisor, whose sandbox threads count against the cgroup.
agent_pids=2048
if [ "$runtime" = runsc ]; then agent_pids=16384; fi
# shellcheck disable=SC2046
docker volume create $(labels volume) "$volume" >/dev/null
phase volume
proxy=http://egress:3128
# shellcheck disable=SC2046
docker create --name "$agent" $(labels agent) \
  --network "container:$holder" \
  "${hardened[@]}" --pids-limit "$agent_pids" --memory 4g --runtime "$runtime" \
  -i --mount "type=volume,source=$volume,target=/workspace" \
  --env-file "$stage/agent.env" \
  -e "HTTP_PROXY=$proxy" -e "HTTPS_PROXY=$proxy" -e "http_proxy=$proxy" -e "https_proxy=$proxy" \
  -e NO_PROXY=egress -e no_proxy=egress -e BOTTLE_PROMPT_FILE=/run/bottle/prompt \
  -e CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1 -e DISABLE_ERROR_REPORTING=1 \
  "$agent_image" sleep 600 >/dev/null
tar -C "$stage" -cf - --owner=1000 --group=1000 --numeric-owner --mode=0600 --transform 's,^,run/bottle/,' prompt | docker cp - "$agent:/"
docker start "$agent" >/dev/null
phase agent-running
