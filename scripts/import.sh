#!/usr/bin/env bash
# Adds tokens with the values in FILE (or standard input), one a line, to POOL (an admin route:
# set ADMIN_API_KEY), and prints what became of each value: stored, duplicate or invalid, with
# the totals. At most 10,000 values a call. With IDEMPOTENCY_KEY set, a retry prints the first
# call's result instead of importing again.
#   scripts/import.sh POOL [FILE]
set -euo pipefail
source "$(dirname "$0")/_request.sh"
[[ $# -ge 1 && $# -le 2 ]] || usage 'POOL [FILE]'
check_id "$1"
file=${2:--}
if [[ $file != - && ! -r $file ]]; then
  echo "cannot read $file" >&2
  exit 2
fi
request POST "/api/admin/pools/$1/tokens/import" "@$file" 0 text/plain
