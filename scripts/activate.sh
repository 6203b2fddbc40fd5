#!/usr/bin/env bash
# Leases a token to USER_ID (or returns the lease USER_ID already holds). With WAIT_SECONDS
# (at most 60), waits that long for a token when the pool is full.
#   scripts/activate.sh USER_ID [WAIT_SECONDS]
set -euo pipefail
source "$(dirname "$0")/_request.sh"
[[ $# -ge 1 && $# -le 2 ]] || usage 'USER_ID [WAIT_SECONDS]'
check_id "$1"
query=''
wait=0
if [[ $# -eq 2 ]]; then
  [[ $2 =~ ^[0-9]+(\.[0-9]+)?$ ]] || usage 'USER_ID [WAIT_SECONDS]'
  query="?wait=$2"
  wait=$((10#${2%%.*} + 1))
fi
request POST "/api/tokens/activate${query}" "{\"user_id\":$(json_string "$1")}" "$wait"
