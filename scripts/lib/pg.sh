# Shared by the scripts: make sure the local PostgreSQL answers, starting the
# cluster when it is installed but down. Fails loudly otherwise.
ensure_postgres() {
    local host=${PGHOST_CHECK:-127.0.0.1} port=${PGPORT_CHECK:-5432}
    if pg_isready -q -h "$host" -p "$port" 2>/dev/null; then
        return 0
    fi
    if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
        local version
        version=$(ls /etc/postgresql | sort -V | tail -1)
        echo "PostgreSQL on $host:$port is down; starting cluster $version/main" >&2
        pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
        for _ in $(seq 1 30); do
            pg_isready -q -h "$host" -p "$port" && return 0
            sleep 1
        done
    fi
    echo "error: no PostgreSQL answers on $host:$port and none could be started." >&2
    echo "       Install PostgreSQL 15 (Debian: apt-get install postgresql) or point" >&2
    echo "       REKEY_ADMIN_URL at a server where this user may CREATE DATABASE." >&2
    return 1
}
