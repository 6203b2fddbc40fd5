#!/usr/bin/env bash
# Gives TOKEN_ID back now, ending USER_ID's lease of it.
#   scripts/release.sh TOKEN_ID USER_ID
set -euo pipefail
source "$(dirname "$0")/_request.sh"
[[ $# -eq 2 ]] || usage 'TOKEN_ID USER_ID'
check_id "$1"
check_id "$2"
request POST "/api/tokens/$1/release" "{\"user_id\":$(json_string "$2")}"
