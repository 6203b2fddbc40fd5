#!/usr/bin/env bash
# Manages webhooks: endpoints that receive lease events, signed (docs/events.md#webhooks). Admin
# routes: set ADMIN_API_KEY, or API_TOKEN to a key with the admin scope.
#   scripts/webhooks.sh create URL TYPE...        makes a webhook for these event types
#                                                 (lease.activated, lease.expired, ...). Prints it
#                                                 with its signing secret, shown this once only
#   scripts/webhooks.sh list                      every webhook, without secrets
#   scripts/webhooks.sh delete WEBHOOK_ID         deletes it and its delivery log
#   scripts/webhooks.sh rotate WEBHOOK_ID         a new secret (printed); the old one also signs
#                                                 for WEBHOOK_ROTATION_GRACE_MS
#   scripts/webhooks.sh deliveries WEBHOOK_ID [LIMIT] [BEFORE]
#                                                 its deliveries, newest first, with every attempt
#   scripts/webhooks.sh replay WEBHOOK_ID DELIVERY_ID
#                                                 attempts a delivery again now
set -euo pipefail
source "$(dirname "$0")/_request.sh"
readonly USAGE='create URL TYPE... | list | delete WEBHOOK_ID | rotate WEBHOOK_ID | deliveries WEBHOOK_ID [LIMIT] [BEFORE] | replay WEBHOOK_ID DELIVERY_ID'
# URLs without quotes, backslashes, spaces or control characters, so that nothing needs escaping in JSON.
readonly URL='^https?://[]A-Za-z0-9._~:/?#@!$&()*+,;=%[-]+$'
readonly TYPE='^(lease|token)\.[a-z]+$'

case ${1:-} in
  create)
    [[ $# -ge 3 ]] || usage "$USAGE"
    if [[ ! $2 =~ $URL ]]; then
      echo "invalid url: $2 (http or https, without quotes, spaces or backslashes)" >&2
      exit 2
    fi
    types=''
    for type in "${@:3}"; do
      if [[ ! $type =~ $TYPE ]]; then
        echo "invalid event type: $type (lease.activated, lease.expired, ...)" >&2
        exit 2
      fi
      types+="${types:+,}$(json_string "$type")"
    done
    request POST /api/admin/webhooks "{\"url\":$(json_string "$2"),\"events\":[${types}]}"
    ;;
  list)
    [[ $# -eq 1 ]] || usage "$USAGE"
    request GET /api/admin/webhooks
    ;;
  delete)
    [[ $# -eq 2 ]] || usage "$USAGE"
    check_id "$2"
    request DELETE "/api/admin/webhooks/$2"
    ;;
  rotate)
    [[ $# -eq 2 ]] || usage "$USAGE"
    check_id "$2"
    request POST "/api/admin/webhooks/$2/rotate"
    ;;
  deliveries)
    [[ $# -ge 2 && $# -le 4 && ${3:-50} =~ ^[0-9]+$ && ${4:-1} =~ ^[0-9]+$ ]] || usage "$USAGE"
    check_id "$2"
    request GET "/api/admin/webhooks/$2/deliveries?limit=${3:-50}${4:+&before=$4}"
    ;;
  replay)
    [[ $# -eq 3 && $3 =~ ^[0-9]+$ ]] || usage "$USAGE"
    check_id "$2"
    request POST "/api/admin/webhooks/$2/deliveries/$3/replay"
    ;;
  *)
    usage "$USAGE"
    ;;
esac
