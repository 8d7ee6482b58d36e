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
# Crash safety (the journal's promise that a killed run resumes to the same
# result):
#   --chaos N            restore a second copy with a fake cloud of its own and
#                        run `rekey run` on it uninterrupted (the reference);
#                        then SIGKILL `rekey run` on the first copy N times, at
#                        points of journal progress (committed backup batches
#                        plus re-provisioning steps) drawn at random from the
#                        reference run's, resuming each time with the same
#                        command, and let the last resume finish. PASS when
#                        the result equals the reference: one finished run,
#                        verify clean, the same rows rotated in place, each
#                        backed up once with its pre-run ciphertexts and
#                        opening under the new key to the plaintext the old
#                        key opens in the snapshot (`rekey rollback --dry-run`
#                        judges that), the same tenants re-provisioned, and
#                        the same cloud resources (no machine or branch
#                        doubled, no live machine that no row names).
#                        Prints "CHAOS PASS" or "CHAOS FAIL"; exits 1 on FAIL.
#                        Unless RUN-OPTION sets --lease-secs, runs get
#                        --lease-secs 2, so that a resume takes over a killed
#                        run's tenants soon.
#   --seed S             the seed of the kill points (default: random, printed):
#                        the same seed on the same snapshot replays the same
#                        kill points
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
chaos=0
seed=
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
        --chaos | --seed)
            if [ $# -lt 2 ] || ! [[ $2 =~ ^[0-9]+$ ]]; then usage; fi
            if [ "$1" = --chaos ]; then chaos=$2; else seed=$2; fi
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
# The fake cloud's tenant databases exist only as names: the proof that a
# new DATABASE_URL opens a real session cannot pass against it, so it is off
# unless the options say otherwise.
case " ${run_opts[*]} " in
    *" --prove-connect "*) ;;
    *) run_opts+=(--prove-connect off) ;;
esac
# The rehearsal acts on its own scratch copy, not on production: it never
# stops to ask, even when started from a terminal.
run_opts+=(--yes)
[ -n "$snapshot" ] || usage
[ -z "$seed" ] || [ "$chaos" -gt 0 ] || { echo "rehearse.sh: --seed needs --chaos N" >&2; usage; }
# The seed of the kill points, printed with the report so a failure replays.
[ -n "$seed" ] || seed=$(($(od -An -tu2 -N2 /dev/urandom)))

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

if [ "$chaos" -gt 0 ]; then
    command -v curl >/dev/null 2>&1 && command -v jq >/dev/null 2>&1 ||
        die "--chaos needs curl and jq (to compare the fake clouds' state)"
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
# With --chaos, the reference run's copy and fake cloud.
ref_scratch=${scratch}_ref
ref_db_url=$(scratch_url "$ref_scratch")
tmp=
databases=()
fake_pids=()

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
# then the fake clouds it may be talking to, the scratch databases, the
# temporary directory. A second ctrl-c does not cut the clean-up short.
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
    local rc=$? pid db
    trap - EXIT
    trap '' INT TERM
    if [ -n "$child_pid" ]; then
        say "stopping rekey (pid $child_pid)"
        stop_process "$child_pid" INT 30 "rekey"
    fi
    for pid in "${fake_pids[@]}"; do
        stop_process "$pid" TERM 5 "the fake cloud"
    done
    for db in "${databases[@]}"; do
        psql -X -q "$ADMIN_URL" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 ||
            say "warning: could not drop the scratch database $db; drop it by hand"
    done
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

# 1. The snapshot, restored into a scratch database ($1, its URL $2).
restore_into() {
    local name=$1 url=$2 started errors
    say "restoring $snapshot ($format) into scratch database $name"
    databases+=("$name")
    psql -X -q -v ON_ERROR_STOP=1 "$ADMIN_URL" -c "CREATE DATABASE $name" >/dev/null
    started=$(now)
    if [ "$format" = archive ]; then
        pg_restore --no-owner --no-privileges --exit-on-error -d "$url" "$snapshot"
    else
        # Ownership and grants name production roles this server lacks; those
        # errors are expected and harmless here. Any other error stops.
        sql_text | psql -X -q -v ON_ERROR_STOP=0 "$url" >/dev/null 2>"$tmp/restore.err" || true
        errors=$(grep -E 'ERROR:' "$tmp/restore.err" | grep -vE 'role "[^"]+" does not exist' || true)
        if [ -n "$errors" ]; then
            printf '%s\n' "$errors" | head -n 5 >&2
            die "restoring $snapshot failed (errors above)"
        fi
    fi
    say "restored in $(seconds_since "$started") s"
}
restore_into "$scratch" "$scratch_db_url"
[ "$chaos" = 0 ] || restore_into "$ref_scratch" "$ref_db_url"

# 2. A fake cloud, holding what the rows of the database at $2 name; $1
# names it in messages. Sets started_url.
neon_key=$(random_hex)
fly_token=$(random_hex)
start_fake_cloud() {
    local label=$1 url=$2 out="$tmp/fake-cloud-${#fake_pids[@]}" pid
    : >"$out.out"
    # In a session of its own, so that a ctrl-c at the terminal does not stop
    # it under a rekey command finishing its work; cleanup stops it. (Without
    # job control, a background job is no process-group leader: setsid execs
    # in place and $! is the fake cloud's own pid.)
    FAKE_NEON_API_KEY=$neon_key FAKE_FLY_API_TOKEN=$fly_token \
        setsid "$FAKE_CLOUD_BIN" --listen 127.0.0.1:0 "${fake_args[@]}" >"$out.out" 2>"$out.err" &
    pid=$!
    fake_pids+=("$pid")
    started_url=
    for _ in $(seq 1 100); do
        started_url=$(sed -n '1s/^listening on \(http:\/\/[^ ]*\)$/\1/p' "$out.out" || true)
        [ -z "$started_url" ] || break
        kill -0 "$pid" 2>/dev/null || { cat "$out.err" >&2; die "the fake cloud did not start"; }
        sleep 0.1
    done
    [ -n "$started_url" ] || die "the fake cloud printed no listening line in 10 s"
    is_loopback_url "$started_url" || die "the fake cloud listens on $started_url, not loopback"
    say "${label}fake cloud at $started_url (pid $pid)"
    DATABASE_URL=$url "$REKEY_BIN" register-fake-cloud "${rekey_opts[@]}" --url "$started_url"
}
start_fake_cloud "" "$scratch_db_url"
cloud=$started_url
if [ "$chaos" -gt 0 ]; then
    start_fake_cloud "reference " "$ref_db_url"
    ref_cloud=$started_url
fi
export DATABASE_URL=$scratch_db_url

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
rekey_args() {
    local command=$1
    shift
    rekey_argv=("$command" "$@")
    case $command in
        plan | verify | rollback) rekey_argv+=("${rekey_opts[@]}" "${key_args[@]}") ;;
        run) rekey_argv+=("${rekey_opts[@]}" "${key_args[@]}" "${cloud_args[@]}") ;;
    esac
}
rekey() {
    rekey_args "$@"
    "$REKEY_BIN" "${rekey_argv[@]}" &
    child_pid=$!
    local rc=0
    wait "$child_pid" || rc=$?
    child_pid=
    return "$rc"
}

# --- --chaos N: the run killed N times and resumed, against the reference.

# One query's rows, tab-separated, in byte order (for cmp and comm).
rows_of() {
    psql -X -qAt -F $'\t' -v ON_ERROR_STOP=1 "$1" -c "$2" | LC_ALL=C sort
}

# Starts `rekey run` on the chaos copy and SIGKILLs it once the journal's
# progress reaches point $1 (or, if an earlier attempt got past it, once
# this attempt has made progress of its own), output to $2. Returns 0 when
# it killed the run (killed_at: the progress then), 1 when the run ended by
# itself first (attempt_rc: its exit status).
chaos_attempt() {
    local point=$1 log=$2 start target progress state rc=0
    start=$(journal_progress "$scratch_db_url")
    target=$((point > start ? point : start + 1))
    rekey_args run "${run_opts[@]}"
    "$REKEY_BIN" "${rekey_argv[@]}" >"$log" 2>&1 &
    child_pid=$!
    while state=$(process_state "$child_pid") && [ -n "$state" ] && [ "$state" != Z ]; do
        progress=$(journal_progress "$scratch_db_url")
        if [ "$progress" -ge "$target" ]; then
            kill -KILL "$child_pid" 2>/dev/null || true
            break
        fi
        sleep 0.05
    done
    # (Braces: bash's "Killed" notice goes to the redirected stderr.)
    { wait "$child_pid"; } 2>/dev/null || rc=$?
    child_pid=
    # 137 is 128 + SIGKILL: a run that ended by itself just before the kill
    # has its own status.
    if [ "$rc" = 137 ]; then
        killed_at=$progress
        return 0
    fi
    attempt_rc=$rc
    return 1
}

# The reference run, then the run killed at random points of its progress
# and resumed, then one resume let finish. Returns the last run's status.
chaos_run() {
    local o has_lease=0 point n=0 rc=0
    for o in "${run_opts[@]}"; do
        case $o in --lease-secs | --lease-secs=*) has_lease=1 ;; esac
    done
    [ "$has_lease" = 1 ] || run_opts+=(--lease-secs 2)
    chaos_kills=0
    chaos_table=$(rekey_opt_value --table org_instances)
    chaos_id=$(rekey_opt_value --id-column org_id)
    chaos_machine=$(rekey_opt_value --fly-machine-column fly_machine_id)
    rows_of "$scratch_db_url" "SELECT $chaos_id::text,
                                      md5($(rekey_opt_value --db-column database_url_encrypted)),
                                      md5($(rekey_opt_value --redis-column redis_url_encrypted))
                                 FROM $chaos_table" >"$tmp/snapshot.rows"

    echo "== reference: rekey run ${run_opts[*]} (uninterrupted, on $ref_scratch)"
    local ours=("${cloud_args[@]}")
    cloud_args=(--neon-api-url "$ref_cloud/api/v2" --fly-api-url "$ref_cloud/v1")
    DATABASE_URL=$ref_db_url
    ref_started=$(now)
    ref_rc=0
    rekey run "${run_opts[@]}" >"$tmp/reference.log" 2>&1 || ref_rc=$?
    ref_secs=$(seconds_since "$ref_started")
    DATABASE_URL=$scratch_db_url
    cloud_args=("${ours[@]}")
    if [ "$ref_rc" != 0 ]; then
        tail -n 20 "$tmp/reference.log" >&2
        say "the reference run did not finish (exit $ref_rc): there is nothing to compare with"
        return "$ref_rc"
    fi
    ref_progress=$(journal_progress "$ref_db_url")
    say "reference run finished in $ref_secs s at journal progress $ref_progress"

    # Kill points in the first nine tenths of the work: a point in the last
    # instants would often find the run already gone.
    RANDOM=$seed
    pick_kill_points "$chaos" "$((ref_progress * 9 / 10 + 1))"
    echo "== chaos: seed $seed, kill points ${kill_points[*]} of $ref_progress (journal progress)"
    for point in "${kill_points[@]}"; do
        n=$((n + 1))
        if chaos_attempt "$point" "$tmp/chaos-$n.log"; then
            chaos_kills=$((chaos_kills + 1))
            echo "  attempt $n: SIGKILL at journal progress $killed_at (point $point)"
        else
            echo "  attempt $n: rekey run ended by itself (exit $attempt_rc) before point $point"
            [ "$attempt_rc" = 0 ] && return 0
            tail -n 20 "$tmp/chaos-$n.log" >&2
        fi
    done
    echo "== rekey run ${run_opts[*]} (resumed after $chaos_kills kills, let finish)"
    rekey run "${run_opts[@]}" || rc=$?
    return "$rc"
}

chaos_problems=()
problem() {
    chaos_problems+=("$*")
}

# What the fake cloud at $1 holds, per app and project, without secrets.
cloud_shape() {
    curl -fsS "$1/_fake/state" | jq -S '{
        apps: ([.fly.apps[] | {name, live_machines}] | sort_by(.name)),
        projects: ([.neon.projects[] | {id, branches: (.branches | length)}] | sort_by(.id))
    }'
}

# Compares the chaos copy with the reference; returns 1 on any difference.
chaos_compare() {
    local runs n dups not_pre undone judged run_id orphans
    runs=$(psql -X -qAt "$scratch_db_url" -c \
        "SELECT count(*) FILTER (WHERE state = 'finished') || ' finished of ' || count(*) FROM rekey.runs" \
        2>/dev/null || echo "no journal:")
    [ "$runs" = "1 finished of 1" ] || problem "journal: $runs runs, not one finished run"

    local backups="SELECT u.o, md5(u.d), md5(u.r)
                     FROM rekey.backups b, unnest(b.org_ids, b.old_db, b.old_redis) AS u(o, d, r)"
    rows_of "$scratch_db_url" "$backups" >"$tmp/chaos.backups" || problem "cannot read the backups"
    rows_of "$ref_db_url" "$backups" >"$tmp/reference.backups" || problem "cannot read the reference's backups"
    n=$(wc -l <"$tmp/chaos.backups")
    dups=$(cut -f1 "$tmp/chaos.backups" | uniq -d | wc -l)
    [ "$dups" = 0 ] || problem "$dups rows backed up more than once (rotated twice)"
    cmp -s "$tmp/chaos.backups" "$tmp/reference.backups" ||
        problem "rows rotated in place: $n, the reference $(wc -l <"$tmp/reference.backups"), or other ciphertexts backed up"
    not_pre=$(LC_ALL=C comm -23 "$tmp/chaos.backups" "$tmp/snapshot.rows" | wc -l)
    [ "$not_pre" = 0 ] || problem "$not_pre backups do not hold the snapshot's ciphertexts"

    local items="SELECT org_id, state FROM rekey.items"
    rows_of "$scratch_db_url" "$items" >"$tmp/chaos.items" || problem "cannot read the re-provisioning items"
    rows_of "$ref_db_url" "$items" >"$tmp/reference.items" || problem "cannot read the reference's items"
    cmp -s "$tmp/chaos.items" "$tmp/reference.items" ||
        problem "tenants re-provisioned: $(wc -l <"$tmp/chaos.items"), the reference $(wc -l <"$tmp/reference.items"), or other tenants"
    undone=$(grep -cv $'\tdone$' "$tmp/chaos.items" || true)
    [ "$undone" = 0 ] || problem "$undone re-provisioned tenants not done"

    # Plaintexts: rollback's dry run puts a row back only when its fields
    # open under the new key to exactly what its backup (the snapshot's
    # ciphertexts, checked above) opens to under the old key.
    run_id=$(psql -X -qAt "$scratch_db_url" -c "SELECT min(id) FROM rekey.runs" 2>/dev/null || true)
    if [ -n "$run_id" ]; then
        rekey rollback --run "$run_id" --dry-run --json >"$tmp/rollback.json" 2>"$tmp/rollback.err" || true
        judged=$(jq -rs 'map(select(.event? == "summary")) | last | .report
                         | "\(.rows_backed_up) \(.restored) \(.changed_total)"' "$tmp/rollback.json" 2>/dev/null || true)
        [ "$judged" = "$n $n 0" ] ||
            problem "plaintexts: of $n rows rotated in place, rollback --dry-run finds (backed up, unchanged, changed) ${judged:-nothing}$(tail -n 3 "$tmp/rollback.err" | sed 's/^/; /' | tr -d '\n')"
    fi

    if ! cloud_shape "$cloud" >"$tmp/chaos.cloud" || ! cloud_shape "$ref_cloud" >"$tmp/reference.cloud"; then
        problem "cannot read a fake cloud's state"
    elif ! cmp -s "$tmp/chaos.cloud" "$tmp/reference.cloud"; then
        diff "$tmp/reference.cloud" "$tmp/chaos.cloud" | head -20 >&2 || true
        problem "cloud resources differ from the reference's (reference <, chaos > above): doubled or missing"
    fi
    curl -fsS "$cloud/_fake/state" |
        jq -r '.fly.apps[].machines[] | select(.state != "destroyed") | .id' | LC_ALL=C sort >"$tmp/live.machines" ||
        problem "cannot list the live machines"
    rows_of "$scratch_db_url" "SELECT $chaos_machine FROM $chaos_table WHERE $chaos_machine IS NOT NULL" \
        >"$tmp/named.machines" || problem "cannot read the rows' machines"
    orphans=$(LC_ALL=C comm -23 "$tmp/live.machines" "$tmp/named.machines" | wc -l)
    [ "$orphans" = 0 ] || problem "$orphans live machines no row names (orphaned)"

    [ "${#chaos_problems[@]}" = 0 ]
}

# The chaos part of the report, and its PASS/FAIL line.
chaos_summary() {
    local p asked=""
    [ "$chaos_kills" = "$chaos" ] || asked=" of $chaos asked: the run finished first"
    echo "  chaos:                $chaos_kills kills$asked (seed $seed; replay with --chaos $chaos --seed $seed)"
    for p in "${chaos_problems[@]}"; do
        echo "    differs: $p"
    done
    if [ "$run_rc" = 0 ] && [ "$verify_rc" = 0 ] && [ "$cloud_rc" = 0 ] && [ "$chaos_rc" = 0 ]; then
        echo "CHAOS PASS: killed $chaos_kills times and resumed, the result equals the uninterrupted run's (seed $seed)"
    else
        echo "CHAOS FAIL: killed $chaos_kills times and resumed, the result differs from the uninterrupted run's (seed $seed)"
    fi
}

echo "== rekey plan"
rekey plan
run_started=$(now)
run_rc=0
if [ "$chaos" -gt 0 ]; then
    chaos_run || run_rc=$?
else
    echo "== rekey run ${run_opts[*]}"
    rekey run "${run_opts[@]}" || run_rc=$?
fi
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
chaos_rc=0
[ "$chaos" = 0 ] || chaos_compare || chaos_rc=$?

echo "== rehearsal"
if [ "$chaos" -gt 0 ]; then
    echo "  rekey run wall time:  $ref_secs s uninterrupted (the outage window to expect; exit $ref_rc)"
    echo "  killed and resumed:   $run_secs s ($chaos_kills kills; last exit $run_rc)"
else
    echo "  rekey run wall time:  $run_secs s (the outage window to expect; exit $run_rc)"
fi
echo "  rekey verify:         $([ "$verify_rc" = 0 ] && echo passed || echo "FAILED (exit $verify_rc)")"
if [ "$cloud_check" = 1 ]; then
    echo "  cloud resources:      $([ "$cloud_rc" = 0 ] && echo "live machines per app unchanged" || echo "CHANGED (see above)")"
fi
echo "  rehearsal wall time:  $(seconds_since "$rehearsal_started") s (restore included)"
[ "$chaos" = 0 ] || chaos_summary
if [ "$run_rc" = 0 ] && [ "$verify_rc" = 0 ] && [ "$cloud_rc" = 0 ] && [ "$chaos_rc" = 0 ]; then
    echo "  result:               passed"
    exit 0
fi
echo "  result:               FAILED"
exit 1
