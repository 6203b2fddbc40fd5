#!/usr/bin/env bash
# Shows one token and its active lease.
#   scripts/show.sh TOKEN_ID
set -euo pipefail
source "$(dirname "$0")/_request.sh"
[[ $# -eq 1 ]] || usage 'TOKEN_ID'
check_id "$1"
request GET "/api/tokens/$1"
