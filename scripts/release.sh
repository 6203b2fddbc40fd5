#!/usr/bin/env bash
# Ends USER_ID's lease LEASE_ID of TOKEN_ID now. Naming the lease makes a retry safe: it answers
# the same ended lease and never touches a newer lease of the same token.
#   scripts/release.sh TOKEN_ID USER_ID LEASE_ID
set -euo pipefail
source "$(dirname "$0")/_request.sh"
[[ $# -eq 3 ]] || usage 'TOKEN_ID USER_ID LEASE_ID'
check_id "$1"
check_id "$2"
check_id "$3"
request POST "/api/tokens/$1/release" "{\"user_id\":$(json_string "$2"),\"lease_id\":$(json_string "$3")}"
