-- The tool's own state. Everything lives in schema `rekey`; the control
-- plane's tables are never created or altered by the tool.

CREATE TABLE rekey.runs (
    id                BIGSERIAL PRIMARY KEY,
    mode              TEXT NOT NULL CHECK (mode IN ('auto', 'reencrypt', 'reprovision')),
    old_key_id        TEXT,
    new_key_id        TEXT NOT NULL,
    target_table      TEXT NOT NULL,
    state             TEXT NOT NULL DEFAULT 'running'
                      CHECK (state IN ('running', 'finished', 'failed')),
    reason            TEXT,
    started_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at       TIMESTAMPTZ,
    verified_at       TIMESTAMPTZ,
    backups_purged_at TIMESTAMPTZ,
    -- Final figures, written once when the run ends. Live counters are
    -- derived from rekey.backups and rekey.items so that workers never
    -- contend on this row.
    summary           JSONB
);

-- At most one open run: a second new key while a run is open is refused.
CREATE UNIQUE INDEX runs_one_open ON rekey.runs ((true)) WHERE state = 'running';

-- One record per in-place batch: the ciphertexts as they were before the
-- batch rewrote them, so a botched run can be undone. Arrays per batch
-- rather than one row per tenant: fleet-bench measured it cheaper (README).
CREATE TABLE rekey.backups (
    id         BIGSERIAL PRIMARY KEY,
    run_id     BIGINT NOT NULL REFERENCES rekey.runs (id),
    written_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    org_ids    TEXT[] NOT NULL,
    old_db     BYTEA[] NOT NULL,
    old_redis  BYTEA[] NOT NULL,
    CHECK (cardinality(org_ids) = cardinality(old_db)
           AND cardinality(org_ids) = cardinality(old_redis))
);
CREATE INDEX backups_run ON rekey.backups (run_id);
-- Ciphertexts are random bytes: trying to compress them only costs time
-- (measured: a 1000-row batch's backup INSERT went from ~12 ms to ~2 ms).
ALTER TABLE rekey.backups
    ALTER COLUMN org_ids SET STORAGE EXTERNAL,
    ALTER COLUMN old_db SET STORAGE EXTERNAL,
    ALTER COLUMN old_redis SET STORAGE EXTERNAL;

-- One row per tenant being re-provisioned in a run: its state machine.
-- No secret is ever stored here: connection URIs are fetched again from
-- Neon after a crash, and ciphertexts are not secrets.
CREATE TABLE rekey.items (
    run_id          BIGINT NOT NULL REFERENCES rekey.runs (id),
    org_id          TEXT NOT NULL,
    slug            TEXT,
    state           TEXT NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'done', 'failed')),
    step            TEXT NOT NULL DEFAULT 'queued',
    attempts        INT NOT NULL DEFAULT 0,
    last_error      TEXT,
    neon_project_id TEXT,
    old_branch_id   TEXT,
    new_branch_id   TEXT,
    fly_app         TEXT,
    old_machine_id  TEXT,
    new_machine_id  TEXT,
    old_db          BYTEA,
    old_redis       BYTEA,
    owner           TEXT,
    lease_until     TIMESTAMPTZ,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, org_id)
);
CREATE INDEX items_pending ON rekey.items (run_id, state) WHERE state = 'pending';
