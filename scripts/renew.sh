#!/usr/bin/env bash
# Extends USER_ID's lease of TOKEN_ID to LEASE_TTL_MS from now.
#   scripts/renew.sh TOKEN_ID USER_ID
set -euo pipefail
source "$(dirname "$0")/_request.sh"
[[ $# -eq 2 ]] || usage 'TOKEN_ID USER_ID'
check_id "$1"
check_id "$2"
request POST "/api/tokens/$1/renew" "{\"user_id\":$(json_string "$2")}"
