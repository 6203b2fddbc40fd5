#!/usr/bin/env bash
# Fills POOL (default: default) with COUNT tokens from a provider that hands them out: asks
# PROVIDER_URL with POST PROVIDER_URL?size=N, which answers text/plain, one token a line, and may
# answer fewer than asked (or duplicates, or lines that are not tokens). Each answer goes to
# POST /api/admin/pools/POOL/tokens/import, and the provider is asked again for the shortfall
# (COUNT less what was stored so far), at most 5 times after the first. Prints how many tokens it
# asked for, received, stored, and how many were duplicates or invalid; exits 1 if it stored
# fewer than COUNT. An admin route: set ADMIN_API_KEY. The values never go on a command line.
#   scripts/import-from-provider.sh PROVIDER_URL COUNT [POOL]
set -euo pipefail
source "$(dirname "$0")/_request.sh"
readonly USAGE='PROVIDER_URL COUNT [POOL]'
[[ $# -ge 2 && $# -le 3 && $1 =~ ^https?:// && $2 =~ ^[0-9]+$ ]] || usage "$USAGE"
provider=$1
count=$((10#$2))
pool=${3:-default}
check_id "$pool"
(( count >= 1 && count <= 10000 )) || usage "$USAGE (COUNT from 1 to 10000)"
readonly MAX_RETRIES=5
separator='?'
[[ $provider != *\?* ]] || separator='&'

batch=$(mktemp)
trap 'rm -f "$batch"' EXIT
asked=0 received=0 stored=0 duplicate=0 invalid=0
# One key per batch, so that a retried import of a batch (a lost answer) is not imported twice.
run_id="provider-$(date +%s)-$$-$RANDOM"

for ((ask = 0; ask <= MAX_RETRIES && stored < count; ask++)); do
  size=$((count - stored))
  asked=$((asked + size))
  if ! curl --silent --show-error --fail --max-time "${TIMEOUT_SECONDS:-30}" -X POST \
    "${provider}${separator}size=${size}" -o "$batch"; then
    echo "the provider did not answer ask $((ask + 1)) for $size" >&2
    continue
  fi
  lines=$(grep -c '[^[:space:]]' "$batch" || true)
  received=$((received + lines))
  (( lines > 0 )) || continue
  if ! answer=$(IDEMPOTENCY_KEY="${run_id}-${ask}" request POST "/api/admin/pools/${pool}/tokens/import" "@$batch" 0 text/plain); then
    echo "$answer" >&2
    exit 22
  fi
  totals=$(sed -n 's/.*"totals":{"stored":\([0-9]*\),"duplicate":\([0-9]*\),"invalid":\([0-9]*\)}.*/\1 \2 \3/p' <<<"$answer")
  if [[ -z $totals ]]; then
    echo 'the import answered without totals' >&2
    exit 1
  fi
  read -r s d i <<<"$totals"
  stored=$((stored + s)) duplicate=$((duplicate + d)) invalid=$((invalid + i))
done

printf 'asked %d\nreceived %d\nstored %d\nduplicate %d\ninvalid %d\n' "$asked" "$received" "$stored" "$duplicate" "$invalid"
if (( stored < count )); then
  echo "stored $stored of $count" >&2
  exit 1
fi
