#!/usr/bin/env bash
# Adds COUNT tokens (at most 10,000) with random values to POOL (an admin route: set
# ADMIN_API_KEY) and prints their ids; the values go only to each token's holders. With
# IDEMPOTENCY_KEY set, a retry prints the first call's tokens instead of adding more.
#   scripts/generate.sh POOL COUNT
set -euo pipefail
source "$(dirname "$0")/_request.sh"
[[ $# -eq 2 && $2 =~ ^[0-9]+$ ]] || usage 'POOL COUNT'
check_id "$1"
request POST "/api/admin/pools/$1/tokens/generate" "{\"count\":$((10#$2))}"
