-- Reference schema of the control plane's org_instances table, for tests,
-- the demo, benchmarks and rehearsals. rekey never applies this to a
-- production database: the control plane owns its table.
CREATE TABLE IF NOT EXISTS org_instances (
    org_id                 UUID PRIMARY KEY,
    slug                   TEXT NOT NULL UNIQUE,
    status                 TEXT NOT NULL DEFAULT 'running',
    region                 TEXT NOT NULL DEFAULT 'ord',
    neon_project_id        TEXT,
    neon_branch_id         TEXT,
    fly_app                TEXT,
    fly_machine_id         TEXT,
    database_url_encrypted BYTEA,
    redis_url_encrypted    BYTEA,
    created_at             TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at             TIMESTAMPTZ NOT NULL DEFAULT now()
);
