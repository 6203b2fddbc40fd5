#!/usr/bin/env bash
# Lists every token of the pool with its status.
#   scripts/list.sh
set -euo pipefail
source "$(dirname "$0")/_request.sh"
[[ $# -eq 0 ]] || usage ''
request GET /api/tokens
