#!/usr/bin/env bash
# The main job on a local default: a scratch database on the local
# PostgreSQL, a seeded fleet of tenants under an "old" key (some of them
# sealed under a key nobody has any more, a few holding KMS blobs), the fake
# cloud on loopback holding their Neon branches and Fly machines, then
# keygen, plan, run, verify, status and finalize. Everything it makes is
# removed on exit. ROWS=N changes the fleet size (default 10000).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/pg.sh

ROWS=${ROWS:-10000}
ADMIN_URL=${REKEY_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
DB=rekey_demo_$$
WORK=$(mktemp -d)
FAKE_PID=

cleanup() {
    [ -n "$FAKE_PID" ] && kill "$FAKE_PID" 2>/dev/null || true
    psql -q "$ADMIN_URL" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

ensure_postgres
step "building rekey and fake-cloud (release; the first build takes a few minutes)"
cargo build --release --locked --bins
REKEY=target/release/rekey

step "scratch database $DB with the reference org_instances table"
psql -q "$ADMIN_URL" -c "CREATE DATABASE $DB"
export DATABASE_URL=${ADMIN_URL%/*}/$DB
psql -q "$DATABASE_URL" -f scripts/schema.sql

step "fake cloud (Neon and Fly APIs) on loopback"
target/release/fake-cloud --listen 127.0.0.1:0 --latency-ms 20 --op-ms 100 --boot-ms 100 >"$WORK/fake.out" 2>"$WORK/fake.err" &
FAKE_PID=$!
for _ in $(seq 1 50); do grep -q listening "$WORK/fake.out" 2>/dev/null && break; sleep 0.1; done
FAKE_URL=$(sed -n 's/^listening on //p' "$WORK/fake.out")
[ -n "$FAKE_URL" ] || { echo "fake cloud did not start:"; cat "$WORK/fake.err"; exit 1; }
echo "fake cloud at $FAKE_URL"

step "the compromised key, and a fleet of $ROWS tenants sealed under it"
$REKEY keygen --out "$WORK/old.key"
$REKEY seed --rows "$ROWS" --key-file "$WORK/old.key" \
    --undecryptable-share 0.02 --kms-share 0.005 --null-redis-share 0.05 \
    --register-fake-cloud "$FAKE_URL"

step "incident: generate the new key (file mode 0600, never printed)"
$REKEY keygen --out "$WORK/new.key"

KEYS=(--old-key-file "$WORK/old.key" --new-key-file "$WORK/new.key")
export NEON_API_URL=$FAKE_URL/api/v2 FLY_API_URL=$FAKE_URL/v1
export NEON_API_KEY=demo-neon-key FLY_API_TOKEN=demo-fly-token
export TENANT_REDIS_URL=rediss://default:demo-redis-password@tenant-redis.internal:6379
# The fake cloud has no real rate limit; the real Neon API allows ~10 req/s.
# The fake cloud's tenant databases exist only as names, so the proof that a
# new DATABASE_URL opens a real session (on by default) is off here.
CLOUD=(--neon-rps 200 --fly-rps 200 --poll-ms 100 --lookup-settle-ms 100 --provision-concurrency 32 --prove-connect off)

step "plan (read-only)"
$REKEY plan "${KEYS[@]}" --neon-rps 200 --fly-rps 200

step "run"
start=$(date +%s%N)
set +e
$REKEY run --yes "${KEYS[@]}" "${CLOUD[@]}"  # a scratch database: no question
status=$?
set -e
end=$(date +%s%N)
echo "run exited $status after $(( (end - start) / 1000000 )) ms"

step "verify (every row opens under the new key)"
$REKEY verify "${KEYS[@]}"

step "status"
$REKEY status
RUN_ID=$($REKEY status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["run"]["id"])')

step "finalize (purge the backup ciphertexts)"
$REKEY finalize --run "$RUN_ID"
exit "$status"
