-- `rekey rollback`: the marks that make undoing an in-place run as
-- crash-safe and resumable as the run itself (docs/design.md, "Rollback").

-- When a rollback of the run began (from then on `finalize` refuses it,
-- even before the rollback is complete) and when it ended with every
-- backup batch restored.
ALTER TABLE rekey.runs
    ADD COLUMN rollback_started_at TIMESTAMPTZ,
    ADD COLUMN rolled_back_at      TIMESTAMPTZ;

-- Per backup batch, written in the transaction that puts its rows back:
-- a batch with restored_at set is done, and a rollback killed at any
-- instant resumes with the first batch without it. What the batch left
-- (rows the control plane changed since the run) is kept so that a
-- resumed rollback still reports rows an earlier invocation left.
ALTER TABLE rekey.backups
    ADD COLUMN restored_at TIMESTAMPTZ,
    ADD COLUMN restored    INT,
    ADD COLUMN left_ids    TEXT[];
