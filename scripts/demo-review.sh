#!/usr/bin/env bash
# Capability review, end to end: the demo agent of examples/review asks for jq, this script
# plays the human (shows the proposal as a diff, approves it), and the agent carries on in a
# container rebuilt with jq. Sets things up like scripts/demo.sh first.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
M=examples/review/bottle.yaml
# A store of its own: an approved Dockerfile stays with its bottle (bottles/<id>/Dockerfile),
# so in the usual store a second demo would start with jq already there.
export BOTTLE_HOME="${BOTTLE_HOME:-$(mktemp -d /tmp/bot-bottle-review.XXXXXX)}"
echo "demo: BOTTLE_HOME=$BOTTLE_HOME"
id=$(./bin/bottle run reviewer -f "$M" --detach)
trap './bin/bottle stop "$id" >/dev/null 2>&1 || true' EXIT
pending() { ./bin/bottle proposals "$id" --json | node -e 'let s="";process.stdin.on("data",(d)=>(s+=d)).on("end",()=>{const p=JSON.parse(s).find((x)=>x.status==="pending");console.log(p?p.id:"")})'; }
echo "demo: waiting for the agent to ask for something"
p=""
for _ in $(seq 1 120); do p=$(pending); [ -n "$p" ] && break; sleep 1; done
[ -n "$p" ] || { echo "demo: the agent asked for nothing; its output:"; ./bin/bottle logs "$id"; exit 1; }
echo "demo: as the human, review it:"
./bin/bottle proposals "$id"
echo "demo: and approve it (the image is built with jq, the agent's container recreated):"
./bin/bottle approve "$id" "$p"
for _ in $(seq 1 300); do ./bin/bottle logs "$id" | grep -q '^agent: finished' && break; sleep 1; done
echo "demo: the agent's output, across both containers:"
./bin/bottle logs "$id"
echo "demo: what the audit recorded of the decision:"
./bin/bottle audit "$id" 2>&1 | grep -E ' (proposal\.(received|approve)|command\.approve) ' || true
