#!/usr/bin/env bash
# Shows a token's usages, newest first; pass the answer's next_cursor to get the next page.
#   scripts/history.sh TOKEN_ID [LIMIT] [CURSOR]
set -euo pipefail
source "$(dirname "$0")/_request.sh"
[[ $# -ge 1 && $# -le 3 ]] || usage 'TOKEN_ID [LIMIT] [CURSOR]'
check_id "$1"
[[ ${2:-50} =~ ^[0-9]+$ ]] || usage 'TOKEN_ID [LIMIT] [CURSOR]'
[[ -z ${3:-} ]] || check_id "$3"
request GET "/api/tokens/$1/history?limit=${2:-50}${3:+&cursor=$3}"
