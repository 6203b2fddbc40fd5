#!/usr/bin/env bash
# Takes TOKEN_ID out of its pool (an admin route: set ADMIN_API_KEY): a free token at once, a
# held one when its lease ends, or at once with now (its lease ends as retired).
#   scripts/retire.sh TOKEN_ID [now]
set -euo pipefail
source "$(dirname "$0")/_request.sh"
[[ $# -eq 1 || ( $# -eq 2 && $2 == now ) ]] || usage 'TOKEN_ID [now]'
check_id "$1"
request POST "/api/admin/tokens/$1/retire" "{\"now\":$([[ $# -eq 2 ]] && echo true || echo false)}"
