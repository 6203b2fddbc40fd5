#!/usr/bin/env bash
# Manages API clients: applications that call the service with a key of their own
# (AUTH_MODE=api_key; see docs/security.md). Admin routes: set ADMIN_API_KEY, or API_TOKEN to a
# key with the admin scope.
#   scripts/clients.sh create NAME SCOPE...   makes a client; SCOPE is lease, read or admin. Prints
#                                             the client with its key, shown this once only
#   scripts/clients.sh list                   every client not revoked, with its last use, no keys
#   scripts/clients.sh revoke CLIENT_ID       its key is refused from its next request on
set -euo pipefail
source "$(dirname "$0")/_request.sh"
readonly USAGE='create NAME SCOPE... | list | revoke CLIENT_ID'
# Plain names only, so that nothing needs escaping in JSON.
readonly NAME='^[A-Za-z0-9 ._:-]{1,100}$'

case ${1:-} in
  create)
    [[ $# -ge 3 ]] || usage "$USAGE"
    if [[ ! $2 =~ $NAME ]]; then
      echo "invalid name: $2 (letters, digits, spaces and . _ : -, at most 100)" >&2
      exit 2
    fi
    scopes=''
    for scope in "${@:3}"; do
      if [[ $scope != lease && $scope != read && $scope != admin ]]; then
        echo "invalid scope: $scope (lease, read or admin)" >&2
        exit 2
      fi
      scopes+="${scopes:+,}$(json_string "$scope")"
    done
    request POST /api/admin/clients "{\"name\":$(json_string "$2"),\"scopes\":[${scopes}]}"
    ;;
  list)
    [[ $# -eq 1 ]] || usage "$USAGE"
    request GET /api/admin/clients
    ;;
  revoke)
    [[ $# -eq 2 ]] || usage "$USAGE"
    check_id "$2"
    request DELETE "/api/admin/clients/$2"
    ;;
  *)
    usage "$USAGE"
    ;;
esac
