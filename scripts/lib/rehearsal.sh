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
