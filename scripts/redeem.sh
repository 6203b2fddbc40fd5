#!/usr/bin/env bash
# USER_ID, who holds the token with VALUE, uses it up: the lease ends as redeemed and the token
# is retired. Again, 409 already_redeemed. VALUE is read from standard input when it is -.
#   scripts/redeem.sh USER_ID VALUE
set -euo pipefail
source "$(dirname "$0")/_request.sh"
[[ $# -eq 2 ]] || usage 'USER_ID VALUE'
check_id "$1"
value=$2
[[ $value != - ]] || IFS= read -r value
check_value "$value"
request POST /api/tokens/redeem "{\"user_id\":$(json_string "$1"),\"value\":$(json_value "$value")}"
