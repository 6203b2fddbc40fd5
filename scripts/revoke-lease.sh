#!/usr/bin/env bash
# Ends one lease now, whoever holds it, as revoked: its token is free at once, and its holder's
# release, renew and validate answer "revoked". Revoking it again answers the same. An admin
# route: set ADMIN_API_KEY when the server has one.
#   scripts/revoke-lease.sh LEASE_ID
set -euo pipefail
source "$(dirname "$0")/_request.sh"
[[ $# -eq 1 ]] || usage 'LEASE_ID'
check_id "$1"
request POST "/api/admin/leases/$1/revoke"
