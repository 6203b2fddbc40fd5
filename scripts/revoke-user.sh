#!/usr/bin/env bash
# Ends every open lease of one user, in every pool, as revoked, and prints how many with each
# lease. An admin route: set ADMIN_API_KEY when the server has one.
#   scripts/revoke-user.sh USER_ID
set -euo pipefail
source "$(dirname "$0")/_request.sh"
[[ $# -eq 1 ]] || usage 'USER_ID'
check_id "$1"
request POST "/api/admin/users/$1/revoke"
