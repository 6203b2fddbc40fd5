#!/usr/bin/env bash
# Checks that USER_ID still holds TOKEN_ID under lease number FENCE.
#   scripts/validate.sh TOKEN_ID USER_ID FENCE
set -euo pipefail
source "$(dirname "$0")/_request.sh"
[[ $# -eq 3 && $3 =~ ^[0-9]+$ ]] || usage 'TOKEN_ID USER_ID FENCE'
check_id "$1"
check_id "$2"
request POST "/api/tokens/$1/validate" "{\"user_id\":$(json_string "$2"),\"fence\":$3}"
