-- Re-provisioning work that makes a leak harmless is never given up
-- (docs/design.md, "Re-provision state machine"): a tenant whose row
-- already points at its new resources but whose old ones are not yet
-- retired (step `cleanup`), or a tenant given up whose created resources
-- are not yet removed (step `compensate`), is parked as `owed` once an
-- invocation has spent its attempts on it, and every later `rekey run`
-- takes it up again. `finalize` refuses while any is owed or pending.
ALTER TABLE rekey.items DROP CONSTRAINT items_state_check;
ALTER TABLE rekey.items ADD CONSTRAINT items_state_check
    CHECK (state IN ('pending', 'done', 'failed', 'owed'));

-- The step at which a tenant was given up, kept while its compensation
-- runs (its `step` is then `compensate`), so the report still says where
-- it stopped.
ALTER TABLE rekey.items ADD COLUMN gave_up_step TEXT;

CREATE INDEX items_owed ON rekey.items (state) WHERE state = 'owed';
