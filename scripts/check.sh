#!/usr/bin/env bash
# Whether the token with VALUE is held now, until when and under which fence (a downstream
# service's check). An unknown value answers held: false. VALUE is read from standard input when
# it is -, so that it need not be on a command line.
#   scripts/check.sh VALUE
set -euo pipefail
source "$(dirname "$0")/_request.sh"
[[ $# -eq 1 ]] || usage 'VALUE'
value=$1
[[ $value != - ]] || IFS= read -r value
check_value "$value"
request POST /api/tokens/check "{\"value\":$(json_value "$value")}"
