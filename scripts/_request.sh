#!/usr/bin/env bash
# Shared by the operator scripts: sends one request to the token-lease API, prints the JSON
# answer and exits non-zero (22) on an HTTP error, printing the error body all the same.
#   BASE_URL         the service (default http://localhost:4000)
#   API_TOKEN        sent as "Authorization: Bearer ..." when set (a JWT, with AUTH_MODE=jwt)
#   ADMIN_API_KEY    sent instead when API_TOKEN is not set (admin routes)
#   TIMEOUT_SECONDS  how long to wait for an answer (default 30; an activation's wait comes on top)
#   IDEMPOTENCY_KEY  sent as "Idempotency-Key" when set (generate, import: a retry with the same
#                    key answers the first request's result)
# Needs curl 7.76 or later (--fail-with-body). -h or --help prints a script's usage.
set -euo pipefail

# -h, --help: the comment at the top of the script that sourced this file.
if [[ ${1:-} == -h || ${1:-} == --help ]]; then
  sed -n '2,/^set /p' "$0" | sed -n 's/^# \{0,1\}//p'
  exit 0
fi

# request METHOD PATH [BODY] [EXTRA_SECONDS] [CONTENT_TYPE]: EXTRA_SECONDS is added to the time
# allowed for the answer (an activation that waits for a token). A BODY of @FILE sends the file
# (an import; CONTENT_TYPE text/plain), so that no token's value is on a command line.
request() {
  local method=$1 path=$2 body=${3:-} extra=${4:-0} type=${5:-application/json}
  local args=(--silent --show-error --fail-with-body --max-time "$((${TIMEOUT_SECONDS:-30} + extra))" -X "$method")
  local credential=${API_TOKEN:-${ADMIN_API_KEY:-}}
  if [[ -n $credential ]]; then
    args+=(-H "Authorization: Bearer ${credential}")
  fi
  if [[ -n ${IDEMPOTENCY_KEY:-} ]]; then
    args+=(-H "Idempotency-Key: ${IDEMPOTENCY_KEY}")
  fi
  if [[ -n $body ]]; then
    args+=(-H "Content-Type: ${type}" --data-binary "$body")
  fi
  local status=0
  curl "${args[@]}" "${BASE_URL:-http://localhost:4000}${path}" || status=$?
  echo
  return "$status"
}

# Refuses (exit 2) an id argument with characters that would need escaping in a URL or in JSON:
# ids are UUIDs, and anything else is refused before a request is sent. Call it before
# json_string, and not inside $(...), where exit would only end the subshell.
check_id() {
  if [[ ! $1 =~ ^[A-Za-z0-9._:-]+$ ]]; then
    echo "invalid id: $1" >&2
    exit 2
  fi
}

# Quotes a value checked by check_id as a JSON string.
json_string() {
  printf '"%s"' "$1"
}

# Refuses (exit 2) a token value that is not 1 to 256 printable ASCII characters without spaces.
check_value() {
  if [[ $1 == *$'\n'* ]] || ! LC_ALL=C grep -qxE '[!-~]{1,256}' <<<"$1"; then
    echo 'invalid value: 1 to 256 printable ASCII characters without spaces' >&2
    exit 2
  fi
}

# Quotes a value checked by check_value as a JSON string (\ and " escaped).
json_value() {
  local v=${1//\\/\\\\}
  printf '"%s"' "${v//\"/\\\"}"
}

usage() {
  echo "usage: $0 $1" >&2
  exit 2
}
