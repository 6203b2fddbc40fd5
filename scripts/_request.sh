#!/usr/bin/env bash
# Shared by the operator scripts: sends one request to the token-lease API, prints the JSON
# answer and exits non-zero (22) on an HTTP error, printing the error body all the same.
#   BASE_URL       the service (default http://localhost:4000)
#   ADMIN_API_KEY  sent as "Authorization: Bearer ..." when set
set -euo pipefail

request() {
  local method=$1 path=$2 body=${3:-}
  local args=(--silent --show-error --fail-with-body --max-time "${TIMEOUT_SECONDS:-30}" -X "$method")
  if [[ -n ${ADMIN_API_KEY:-} ]]; then
    args+=(-H "Authorization: Bearer ${ADMIN_API_KEY}")
  fi
  if [[ -n $body ]]; then
    args+=(-H 'Content-Type: application/json' --data-binary "$body")
  fi
  local status=0
  curl "${args[@]}" "${BASE_URL:-http://localhost:4000}${path}" || status=$?
  echo
  return "$status"
}

# Quotes a value as a JSON string (the scripts' arguments are ids, so this only has to refuse
# characters that would need escaping).
json_string() {
  if [[ ! $1 =~ ^[A-Za-z0-9._:-]*$ ]]; then
    echo "invalid value: $1" >&2
    exit 2
  fi
  printf '"%s"' "$1"
}

usage() {
  echo "usage: $0 $1" >&2
  exit 2
}
