#!/usr/bin/env bash
# Shows a page of the event log, oldest first; pass the answer's next_after to get the next page.
# For the live stream: curl -sN "$BASE_URL/api/events/stream" (docs/events.md).
#   scripts/events.sh [AFTER] [LIMIT]
set -euo pipefail
source "$(dirname "$0")/_request.sh"
[[ $# -le 2 && ${1:-0} =~ ^[0-9]+$ && ${2:-100} =~ ^[0-9]+$ ]] || usage '[AFTER] [LIMIT]'
request GET "/api/events?after=${1:-0}&limit=${2:-100}"
