#!/usr/bin/env bash
# Extends USER_ID's lease LEASE_ID of TOKEN_ID to LEASE_TTL_MS from now. Naming the lease makes a
# retry safe: a lease that has ended is refused, and a newer lease is never renewed in its place.
#   scripts/renew.sh TOKEN_ID USER_ID LEASE_ID
set -euo pipefail
source "$(dirname "$0")/_request.sh"
[[ $# -eq 3 ]] || usage 'TOKEN_ID USER_ID LEASE_ID'
check_id "$1"
check_id "$2"
check_id "$3"
request POST "/api/tokens/$1/renew" "{\"user_id\":$(json_string "$2"),\"lease_id\":$(json_string "$3")}"
