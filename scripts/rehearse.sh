#!/usr/bin/env bash
# The staging rehearsal of a key rotation: everything `rekey` would do to
# production, done to a restored snapshot of the control-plane database and
# a fake cloud, timed.
#
#   scripts/rehearse.sh [OPTION...] SNAPSHOT [-- RUN-OPTION...]
#
# SNAPSHOT is a pg_dump of the control-plane database: custom (-Fc),
# directory (-Fd) or tar (-Ft) format, or plain SQL (optionally gzipped);
# the format is detected. The rehearsal
#   1. restores it into a scratch database, rekey_rehearsal_<pid>;
#   2. starts the fake cloud (target/release/fake-cloud) on 127.0.0.1 and
#      registers in it the Neon projects/branches and Fly apps/machines the
#      rows name (`rekey register-fake-cloud`);
#   3. generates a fresh new key (`rekey keygen`, a 0600 file in a private
#      temporary directory);
#   4. runs `rekey plan`, `rekey run` (timed: its wall time is the outage
#      window production should expect), `rekey verify`, `rekey status`;
#   5. checks the fake cloud holds as many live machines per app as before;
#   6. drops the scratch database, stops the fake cloud and removes the
#      temporary directory, on success, on failure and on ctrl-c alike.
#
# The old key is the compromised production key, which the operator has:
#   --old-key-file FILE  or the environment variable OLD_SECRETS_ENCRYPTION_KEY
#   --no-old-key         rehearse the lost-key path (every tenant re-provisioned)
# Other options:
#   --rekey-opt OPT      pass OPT to every rekey command that reads the table
#                        (register-fake-cloud, plan, run, verify; repeatable),
#                        e.g. --rekey-opt=--table=public.instances
#   --cloud-latency-ms N, --cloud-op-ms N, --cloud-boot-ms N
#                        make the fake cloud as slow as the real one (per
#                        call latency, Neon operation time, machine boot)
#   RUN-OPTION           passed to `rekey run`, e.g. --workers 8 --neon-rps 10
#
# It never talks to a real cloud: it always uses its own fake, passes its URLs
# explicitly, replaces NEON_API_KEY/FLY_API_TOKEN with throwaway tokens, and
# refuses to start when NEON_API_URL or FLY_API_URL point anywhere but
# loopback. DATABASE_URL and NEW_SECRETS_ENCRYPTION_KEY are ignored.
#
# Environment: REKEY_ADMIN_URL (default postgres://postgres@127.0.0.1:5432/postgres),
# a server where this user may CREATE DATABASE; REKEY_BIN and FAKE_CLOUD_BIN
# to use given binaries instead of building the release ones;
# REHEARSAL_TENANT_REDIS_URL, the Redis URL re-provisioned tenants get
# (default: a throwaway loopback URL).
#
# Exit status: 0 when the run finished and verify passed, 1 when the
# rehearsal found a problem (run or verify not clean, cloud resources
# doubled or missing), 2 for a usage or setup error.
set -euo pipefail

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
}

old_key_file=
no_old_key=0
rekey_opts=()
fake_args=()
snapshot=
while [ $# -gt 0 ]; do
    case $1 in
        --old-key-file) [ $# -ge 2 ] || usage; old_key_file=$2; shift 2 ;;
        --old-key-file=*) old_key_file=${1#*=}; shift ;;
        --no-old-key) no_old_key=1; shift ;;
        --rekey-opt) [ $# -ge 2 ] || usage; rekey_opts+=("$2"); shift 2 ;;
        --rekey-opt=*) rekey_opts+=("${1#*=}"); shift ;;
        --cloud-latency-ms | --cloud-op-ms | --cloud-boot-ms)
            if [ $# -lt 2 ] || ! [[ $2 =~ ^[0-9]+$ ]]; then usage; fi
            fake_args+=("--${1#--cloud-}" "$2")
            shift 2
            ;;
        -h | --help) usage ;;
        --) shift; break ;;
        -*) echo "rehearse.sh: unknown option $1" >&2; usage ;;
        *)
            [ -z "$snapshot" ] || usage
            snapshot=$1
            shift
            ;;
    esac
done
run_opts=("$@")
[ -n "$snapshot" ] || usage

abspath() { case $1 in /*) printf '%s\n' "$1" ;; *) printf '%s/%s\n' "$PWD" "$1" ;; esac; }
snapshot=$(abspath "$snapshot")
[ -z "$old_key_file" ] || old_key_file=$(abspath "$old_key_file")
cd "$(dirname "$0")/.."
. scripts/lib/pg.sh
. scripts/lib/rehearsal.sh

# --- Refusals first: nothing is made before every check has passed. -------

for var in NEON_API_URL FLY_API_URL; do
    value=${!var:-}
    if [ -n "$value" ] && ! is_loopback_url "$value"; then
        die "$var is set to a non-loopback address ($value). A rehearsal only ever talks to its own fake cloud; unset $var (and keep real cloud credentials out of this shell)."
    fi
done
[ -e "$snapshot" ] || die "no snapshot at $snapshot"
key_args=()
if [ "$no_old_key" = 1 ]; then
    [ -z "$old_key_file" ] || die "--old-key-file and --no-old-key contradict each other"
    unset OLD_SECRETS_ENCRYPTION_KEY
elif [ -n "$old_key_file" ]; then
    [ -r "$old_key_file" ] || die "cannot read the old key file $old_key_file"
    unset OLD_SECRETS_ENCRYPTION_KEY
    key_args+=(--old-key-file "$old_key_file")
elif [ -z "${OLD_SECRETS_ENCRYPTION_KEY:-}" ]; then
    die "no old key: pass --old-key-file FILE or set OLD_SECRETS_ENCRYPTION_KEY (or --no-old-key to rehearse re-provisioning every tenant)"
fi

# Detects the snapshot's format: what pg_restore reads, or plain SQL.
snapshot_format() {
    local f=$1
    if [ -d "$f" ]; then
        [ -f "$f/toc.dat" ] && { echo archive; return; }
        die "$f is a directory without toc.dat: not a pg_dump -Fd snapshot"
    fi
    if [ "$(head -c 5 "$f")" = PGDMP ]; then
        echo archive
    elif [ "$(dd if="$f" bs=1 skip=257 count=5 2>/dev/null)" = ustar ]; then
        echo archive
    elif [ "$(head -c 2 "$f" | od -An -tx1 | tr -d ' \n')" = 1f8b ]; then
        echo gzip-sql
    else
        echo sql
    fi
}
format=$(snapshot_format "$snapshot")

sql_text() {
    if [ "$format" = gzip-sql ]; then gzip -dc "$snapshot"; else cat "$snapshot"; fi
}
# Counts (rather than grep -q) read the whole dump: an early exit of grep
# would kill the reader with SIGPIPE and, under pipefail, flip the test.
if [ "$format" != archive ]; then
    # A dump made with --create would CREATE and \connect to the original
    # database: it would restore over whatever that database is on this server.
    connects=$(sql_text | grep -cE '^(\\connect|\\c |CREATE DATABASE)' || true)
    [ "$connects" = 0 ] ||
        die "$snapshot connects to or creates a database (pg_dump --create); dump without --create"
    # psql loads a truncated COPY block without complaint: only pg_dump's
    # closing line tells a whole dump from a cut one.
    complete=$(sql_text | tail -n 10 | grep -c 'PostgreSQL database dump complete' || true)
    [ "$complete" != 0 ] ||
        die "$snapshot does not end with pg_dump's \"dump complete\" line: truncated, or not a pg_dump"
fi

ensure_postgres
ADMIN_URL=${REKEY_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
resolve_binaries

# Nothing of the operator's environment reaches rekey but the old key: no
# production database, no new key, no real cloud credentials or URLs.
unset DATABASE_URL NEW_SECRETS_ENCRYPTION_KEY NEON_API_URL FLY_API_URL TENANT_REDIS_URL
unset NEON_API_KEY FLY_API_TOKEN

# --- Everything made from here on is undone by cleanup. -------------------

scratch=rekey_rehearsal_$$
scratch_db_url=$(scratch_url "$scratch")
tmp=
fake_pid=
db_created=0

child_pid=

# Stops process $1 with signal $2, waiting up to $3 seconds before SIGKILL.
# shellcheck disable=SC2317 # called by cleanup
stop_process() {
    local pid=$1 signal=$2 seconds=$3 what=$4
    kill -0 "$pid" 2>/dev/null || return 0
    kill "-$signal" "$pid" 2>/dev/null || true
    for _ in $(seq 1 "$((seconds * 10))"); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        say "warning: $what (pid $pid) did not stop within $seconds s of SIG$signal; killing it"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

# Undoes everything, in order: the rekey command still running (ctrl-c
# semantics: it finishes its batches in flight, the journal keeps the rest),
# then the fake cloud it may be talking to, the scratch database, the
# temporary directory. A second ctrl-c does not cut the clean-up short.
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
    local rc=$?
    trap - EXIT
    trap '' INT TERM
    if [ -n "$child_pid" ]; then
        say "stopping rekey (pid $child_pid)"
        stop_process "$child_pid" INT 30 "rekey"
    fi
    [ -z "$fake_pid" ] || stop_process "$fake_pid" TERM 5 "the fake cloud"
    if [ "$db_created" = 1 ]; then
        psql -X -q "$ADMIN_URL" -c "DROP DATABASE IF EXISTS $scratch WITH (FORCE)" >/dev/null 2>&1 ||
            say "warning: could not drop the scratch database $scratch; drop it by hand"
    fi
    [ -z "$tmp" ] || rm -rf -- "$tmp"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

tmp=$(mktemp -d "${TMPDIR:-/tmp}/rekey-rehearsal.XXXXXX")
chmod 700 "$tmp"
now() { date +%s.%N; }
seconds_since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
rehearsal_started=$(now)

# 1. The snapshot, restored into a scratch database.
say "restoring $snapshot ($format) into scratch database $scratch"
db_created=1
psql -X -q -v ON_ERROR_STOP=1 "$ADMIN_URL" -c "CREATE DATABASE $scratch" >/dev/null
restore_started=$(now)
if [ "$format" = archive ]; then
    pg_restore --no-owner --no-privileges --exit-on-error -d "$scratch_db_url" "$snapshot"
else
    # Ownership and grants name production roles this server lacks; those
    # errors are expected and harmless here. Any other error stops.
    sql_text | psql -X -q -v ON_ERROR_STOP=0 "$scratch_db_url" >/dev/null 2>"$tmp/restore.err" || true
    errors=$(grep -E 'ERROR:' "$tmp/restore.err" | grep -vE 'role "[^"]+" does not exist' || true)
    if [ -n "$errors" ]; then
        printf '%s\n' "$errors" | head -n 5 >&2
        die "restoring $snapshot failed (errors above)"
    fi
fi
say "restored in $(seconds_since "$restore_started") s"
export DATABASE_URL=$scratch_db_url

# 2. The fake cloud, holding what the rows name.
neon_key=$(random_hex)
fly_token=$(random_hex)
: >"$tmp/fake-cloud.out"
# In a session of its own, so that a ctrl-c at the terminal does not stop it
# under a rekey command finishing its work; cleanup stops it. (Without job
# control, a background job is no process-group leader: setsid execs in
# place and $! is the fake cloud's own pid.)
FAKE_NEON_API_KEY=$neon_key FAKE_FLY_API_TOKEN=$fly_token \
    setsid "$FAKE_CLOUD_BIN" --listen 127.0.0.1:0 "${fake_args[@]}" >"$tmp/fake-cloud.out" 2>"$tmp/fake-cloud.err" &
fake_pid=$!
cloud=
for _ in $(seq 1 100); do
    cloud=$(sed -n '1s/^listening on \(http:\/\/[^ ]*\)$/\1/p' "$tmp/fake-cloud.out" || true)
    [ -z "$cloud" ] || break
    kill -0 "$fake_pid" 2>/dev/null || { cat "$tmp/fake-cloud.err" >&2; die "the fake cloud did not start"; }
    sleep 0.1
done
[ -n "$cloud" ] || die "the fake cloud printed no listening line in 10 s"
is_loopback_url "$cloud" || die "the fake cloud listens on $cloud, not loopback"
say "fake cloud at $cloud (pid $fake_pid)"
"$REKEY_BIN" register-fake-cloud "${rekey_opts[@]}" --url "$cloud"

# Live machines per app, as the fake cloud holds them.
live_machines() {
    curl -fsS "$cloud/_fake/state" | jq -S '[.fly.apps[] | {(.name): .live_machines}] | add // {}'
}
cloud_check=0
if command -v curl >/dev/null 2>&1 && command -v jq >/dev/null 2>&1; then
    live_machines >"$tmp/machines.before"
    cloud_check=1
else
    say "warning: no curl or jq here; the check of cloud resources is skipped"
fi

# 3. A fresh new key, private to this rehearsal.
"$REKEY_BIN" keygen --out "$tmp/new.key"
key_args+=(--new-key-file "$tmp/new.key")
cloud_args=(--neon-api-url "$cloud/api/v2" --fly-api-url "$cloud/v1")
export NEON_API_KEY=$neon_key FLY_API_TOKEN=$fly_token
export TENANT_REDIS_URL=${REHEARSAL_TENANT_REDIS_URL:-redis://rehearsal:$(random_hex)@127.0.0.1:6379/0}

# 4. Plan, run (timed), verify, status. Each rekey command runs in the
# background and is waited for: bash runs a trap only once the foreground
# command has ended, so a SIGTERM to this script would otherwise wait for a
# whole `rekey run`; `wait` is interrupted at once, and cleanup then stops
# the command gracefully.
# Options follow the command, and each command gets only the groups it
# takes: status reads the journal alone, only run talks to the cloud.
rekey() {
    local command=$1
    shift
    local extra=()
    case $command in
        plan | verify) extra=("${rekey_opts[@]}" "${key_args[@]}") ;;
        run) extra=("${rekey_opts[@]}" "${key_args[@]}" "${cloud_args[@]}") ;;
    esac
    "$REKEY_BIN" "$command" "$@" "${extra[@]}" &
    child_pid=$!
    local rc=0
    wait "$child_pid" || rc=$?
    child_pid=
    return "$rc"
}
echo "== rekey plan"
rekey plan
echo "== rekey run ${run_opts[*]}"
run_started=$(now)
run_rc=0
rekey run "${run_opts[@]}" || run_rc=$?
run_secs=$(seconds_since "$run_started")
echo "== rekey verify"
verify_rc=0
rekey verify || verify_rc=$?
echo "== rekey status"
rekey status || true

# 5. Nothing doubled or lost in the cloud: as many live machines per app.
cloud_rc=0
if [ "$cloud_check" = 1 ]; then
    if ! live_machines >"$tmp/machines.after"; then
        say "could not read the fake cloud's state after the run"
        cloud_rc=1
    elif ! cmp -s "$tmp/machines.before" "$tmp/machines.after"; then
        say "live machines per app changed (before, after):"
        diff "$tmp/machines.before" "$tmp/machines.after" | head -20 >&2 || true
        cloud_rc=1
    fi
fi

echo "== rehearsal"
echo "  rekey run wall time:  $run_secs s (the outage window to expect; exit $run_rc)"
echo "  rekey verify:         $([ "$verify_rc" = 0 ] && echo passed || echo "FAILED (exit $verify_rc)")"
if [ "$cloud_check" = 1 ]; then
    echo "  cloud resources:      $([ "$cloud_rc" = 0 ] && echo "live machines per app unchanged" || echo "CHANGED (see above)")"
fi
echo "  rehearsal wall time:  $(seconds_since "$rehearsal_started") s (restore included)"
if [ "$run_rc" = 0 ] && [ "$verify_rc" = 0 ] && [ "$cloud_rc" = 0 ]; then
    echo "  result:               passed"
    exit 0
fi
echo "  result:               FAILED"
exit 1
