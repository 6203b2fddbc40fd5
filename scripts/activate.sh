#!/usr/bin/env bash
# Leases a token to USER_ID (or returns the lease USER_ID already holds).
#   scripts/activate.sh USER_ID
set -euo pipefail
source "$(dirname "$0")/_request.sh"
[[ $# -eq 1 ]] || usage 'USER_ID'
request POST /api/tokens/activate "{\"user_id\":$(json_string "$1")}"
