#!/usr/bin/env bash
# The one test command (npm test): brings Docker up when it can, builds, type-checks,
# lints, then runs every test layer (unit, integration, e2e, security, fault).
# Docker missing is a failure with a remedy, never a silent skip.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/docker-up.sh
node scripts/build.mjs
npx tsc --noEmit -p tsconfig.json
npx biome lint .
npx vitest run "$@"
