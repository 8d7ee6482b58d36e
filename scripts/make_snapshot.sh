#!/usr/bin/env bash
# Makes a control-plane snapshot to rehearse on: a scratch database with the
# reference schema (scripts/schema.sql), a synthetic fleet seeded by
# `rekey seed` under the key in KEYFILE (created with `rekey keygen` when it
# does not exist), dumped with pg_dump, and the scratch database dropped,
# also on failure.
#
#   scripts/make_snapshot.sh [--plain] OUT KEYFILE ROWS [-- SEED-OPTION...]
#
#   --plain     a plain SQL dump (default: pg_dump's custom format, -Fc)
#   SEED-OPTION passed to `rekey seed`, e.g. --undecryptable-share 0.1
#               (tenants sealed under a throwaway key: a rehearsal
#               re-provisions them) or --kms-share 0.01
#
# Then: OLD_SECRETS_ENCRYPTION_KEY= scripts/rehearse.sh --old-key-file KEYFILE OUT
#
# Environment: REKEY_ADMIN_URL (default postgres://postgres@127.0.0.1:5432/postgres),
# a server where this user may CREATE DATABASE; REKEY_BIN and FAKE_CLOUD_BIN
# to use given binaries instead of building the release ones.
set -euo pipefail
# The snapshot holds ciphertexts of production secrets: keep it private.
umask 077

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
}

format=custom
while [ $# -gt 0 ]; do
    case $1 in
        --plain) format=plain; shift ;;
        -h | --help) usage ;;
        --) break ;;
        -*) echo "make_snapshot.sh: unknown option $1" >&2; usage ;;
        *) break ;;
    esac
done
[ $# -ge 3 ] || usage
out=$1 keyfile=$2 rows=$3
shift 3
if [ $# -gt 0 ]; then
    [ "$1" = "--" ] || usage
    shift
fi
seed_args=("$@")
[[ $rows =~ ^[0-9]+$ ]] || { echo "make_snapshot.sh: ROWS must be a number, not $rows" >&2; exit 2; }

# Paths are the caller's; the script works from the repository root.
abspath() { case $1 in /*) printf '%s\n' "$1" ;; *) printf '%s/%s\n' "$PWD" "$1" ;; esac; }
out=$(abspath "$out")
keyfile=$(abspath "$keyfile")
cd "$(dirname "$0")/.."
. scripts/lib/pg.sh
. scripts/lib/rehearsal.sh

[ ! -e "$out" ] || die "$out exists; a snapshot is never overwritten"
ensure_postgres
ADMIN_URL=${REKEY_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
resolve_binaries

scratch=rekey_snapshot_$$
scratch_db_url=$(scratch_url "$scratch")
created=0

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [ "$created" = 1 ]; then
        psql -X -q "$ADMIN_URL" -c "DROP DATABASE IF EXISTS $scratch WITH (FORCE)" >/dev/null 2>&1 ||
            say "warning: could not drop the scratch database $scratch; drop it by hand"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

created=1
psql -X -q -v ON_ERROR_STOP=1 "$ADMIN_URL" -c "CREATE DATABASE $scratch" >/dev/null
psql -X -q -v ON_ERROR_STOP=1 "$scratch_db_url" -f scripts/schema.sql >/dev/null

if [ ! -e "$keyfile" ]; then
    "$REKEY_BIN" keygen --out "$keyfile"
fi
env -u OLD_SECRETS_ENCRYPTION_KEY -u SEED_SECRETS_ENCRYPTION_KEY DATABASE_URL="$scratch_db_url" \
    "$REKEY_BIN" seed --rows "$rows" --key-file "$keyfile" "${seed_args[@]}"

if [ "$format" = plain ]; then
    pg_dump --no-owner --no-privileges -f "$out" "$scratch_db_url"
else
    pg_dump -Fc --no-owner --no-privileges -f "$out" "$scratch_db_url"
fi
say "wrote a $format snapshot of $rows tenants to $out (sealed under the key in $keyfile)"
