# shellcheck shell=bash
# Shared by scripts/rehearse.sh and scripts/make_snapshot.sh: messages,
# the binaries to run, and URLs of scratch databases. Source it from the
# repository root (the scripts cd there first).

# Prints a message to stderr, prefixed with the script's name.
say() {
    echo "${0##*/}: $*" >&2
}

# Prints an error to stderr and exits 2 (usage or setup error, as rekey).
die() {
    say "error: $*"
    exit 2
}

# Sets REKEY_BIN and FAKE_CLOUD_BIN. Given in the environment (tests point
# them at their debug builds), they are used as they are; otherwise the
# release binaries are built (cargo does nothing when they are up to date:
# a rehearsal must not run yesterday's code) and used.
resolve_binaries() {
    if [ -n "${REKEY_BIN:-}" ] && [ -n "${FAKE_CLOUD_BIN:-}" ]; then
        :
    elif command -v cargo >/dev/null 2>&1; then
        say "building the release binaries (cargo build --release --locked --bins)"
        cargo build --release --locked --bins --quiet >&2 || die "cargo build failed"
        REKEY_BIN=${REKEY_BIN:-$PWD/target/release/rekey}
        FAKE_CLOUD_BIN=${FAKE_CLOUD_BIN:-$PWD/target/release/fake-cloud}
    else
        REKEY_BIN=${REKEY_BIN:-$PWD/target/release/rekey}
        FAKE_CLOUD_BIN=${FAKE_CLOUD_BIN:-$PWD/target/release/fake-cloud}
        say "warning: no cargo here; using the binaries already in target/release"
    fi
    [ -x "$REKEY_BIN" ] || die "no rekey binary at $REKEY_BIN (set REKEY_BIN)"
    [ -x "$FAKE_CLOUD_BIN" ] || die "no fake-cloud binary at $FAKE_CLOUD_BIN (set FAKE_CLOUD_BIN)"
}

# The admin URL (REKEY_ADMIN_URL, as scripts/test.sh) with its database
# replaced by $1; query parameters (sslmode and the like) are kept.
scratch_url() {
    local name=$1 base query rest
    base=${ADMIN_URL%%\?*}
    query=${ADMIN_URL#"$base"}
    rest=${base#*://}
    case $rest in
        */*) base=${base%/*} ;;
        *) ;;
    esac
    printf '%s/%s%s\n' "$base" "$name" "$query"
}

# True when the URL's host is loopback: 127.0.0.0/8, ::1 or localhost.
is_loopback_url() {
    local rest host
    rest=${1#*://}
    rest=${rest%%/*}
    rest=${rest##*@}
    case $rest in
        \[*\]*) host=${rest#\[}; host=${host%%\]*} ;;
        *) host=${rest%%:*} ;;
    esac
    case $host in
        localhost | ::1 | 0:0:0:0:0:0:0:1) return 0 ;;
        127.*) [[ $host =~ ^127\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}$ ]] ;;
        *) return 1 ;;
    esac
}

# 32 random bytes as hex: throwaway credentials for the fake cloud.
random_hex() {
    od -An -tx1 -N32 /dev/urandom | tr -d ' \n'
}

# --- Chaos (rehearse.sh --chaos N) -----------------------------------------

# How far a run has got, as the journal of the database at URL $1 tells:
# one per committed in-place backup batch plus one per re-provisioning step
# a tenant has passed (queued 0 ... done 7). It grows as a run
# works, whatever process does the work, so it names kill points that mean
# the same in a killed run and a resumed one. 0 before the journal exists.
journal_progress() {
    psql -X -qAt "$1" -c "
        SELECT (SELECT count(*) FROM rekey.backups)
             + (SELECT coalesce(sum(array_position(
                   ARRAY['queued','branch','password','machine','started','row','cleanup','done'],
                   step) - 1), 0) FROM rekey.items)" 2>/dev/null || echo 0
}

# Sets kill_points to $1 distinct points in 1..$2-1, ascending (fewer when
# the range holds fewer), drawn from bash's RANDOM: seed it first. It draws
# in this shell, not in a $(...): bash reseeds RANDOM in every subshell.
pick_kill_points() {
    local want=$1 total=$2 span p
    kill_points=()
    span=$((total - 1))
    [ "$span" -ge 1 ] || return 0
    [ "$want" -le "$span" ] || want=$span
    while [ "${#kill_points[@]}" -lt "$want" ]; do
        p=$((1 + (RANDOM * 32768 + RANDOM) % span))
        case " ${kill_points[*]} " in
            *" $p "*) ;;
            *) kill_points+=("$p") ;;
        esac
    done
    mapfile -t kill_points < <(printf '%s\n' "${kill_points[@]}" | sort -n)
}

# The state letter of process $1 (R, S, Z...), empty once it is gone: a
# child that has exited but is not yet waited for still answers kill -0.
process_state() {
    local state=
    { read -r _ _ state _ </proc/"$1"/stat; } 2>/dev/null || true
    printf '%s\n' "$state"
}

# The value of rekey option $1 among the --rekey-opt words ("--table=x" or
# "--table" "x"), else $2: the chaos checks read the table rekey reads.
rekey_opt_value() {
    local name=$1 value=$2 i
    for ((i = 0; i < ${#rekey_opts[@]}; i++)); do
        case ${rekey_opts[i]} in
            "$name="*) value=${rekey_opts[i]#*=} ;;
            "$name") [ $((i + 1)) -ge ${#rekey_opts[@]} ] || value=${rekey_opts[i + 1]} ;;
        esac
    done
    printf '%s\n' "$value"
}
