#!/usr/bin/env bash
# The one test command: makes sure PostgreSQL is reachable (starting the
# local cluster if it is installed but down), that the independent AES-GCM
# implementation used by the compatibility tests is present, then runs the
# whole suite: unit tests, integration tests against real PostgreSQL and the
# fake cloud over loopback HTTP, and doc tests.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/pg.sh

ensure_postgres

# Tests create one scratch database each through this server.
export DATABASE_URL=${REKEY_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}

if ! python3 -c 'import cryptography.hazmat.primitives.ciphers.aead' 2>/dev/null; then
    echo "installing Python 'cryptography' (the independent AES-GCM the vector tests compare against)" >&2
    python3 -m pip install --quiet cryptography
fi

cargo test --locked --workspace "$@"
