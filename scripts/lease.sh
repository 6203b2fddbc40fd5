#!/usr/bin/env bash
# Shows one lease, open or ended: its token, pool, user, fence, times and end reason. With
# AUTH_MODE other than none, for its holder (API_TOKEN) and for read or admin callers.
#   scripts/lease.sh LEASE_ID
set -euo pipefail
source "$(dirname "$0")/_request.sh"
[[ $# -eq 1 ]] || usage 'LEASE_ID'
check_id "$1"
request GET "/api/leases/$1"
