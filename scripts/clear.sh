#!/usr/bin/env bash
# Ends every active lease (an admin route: set ADMIN_API_KEY when the server has one).
#   scripts/clear.sh
set -euo pipefail
source "$(dirname "$0")/_request.sh"
[[ $# -eq 0 ]] || usage ''
request POST /api/tokens/clear
