-- One rotation per new key: a later `rekey run` with a key that already has
-- a run re-opens that run instead of starting a second one, so that its
-- backups, verify and finalize all name one run (docs/design.md, "Run
-- lifecycle").
--
-- Journals written before this rule may hold several runs for one new key
-- (each `run` after the first finished made a new, mostly empty, run). They
-- are folded into the earliest run of their key before the rule is
-- enforced: its backups and re-provision items move over (an item whose
-- tenant the earliest run already holds stays where it is, and then the
-- index below refuses to build, naming the key: such a journal needs a
-- person), and the earliest run takes the latest one's state and figures.

CREATE TEMPORARY TABLE rekey_folded ON COMMIT DROP AS
SELECT r.id, first_value(r.id) OVER w AS keep, last_value(r.id) OVER w AS latest
  FROM rekey.runs r
WINDOW w AS (PARTITION BY r.new_key_id ORDER BY r.id
             ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING);
DELETE FROM rekey_folded WHERE id = keep;

UPDATE rekey.backups b SET run_id = f.keep FROM rekey_folded f WHERE b.run_id = f.id;

UPDATE rekey.items i SET run_id = f.keep
  FROM rekey_folded f
 WHERE i.run_id = f.id
   AND NOT EXISTS (SELECT 1 FROM rekey.items k WHERE k.run_id = f.keep AND k.org_id = i.org_id);

-- The latest run's state goes to the earliest; the later runs are deleted
-- first so that an open one does not meet itself in runs_one_open.
CREATE TEMPORARY TABLE rekey_latest ON COMMIT DROP AS
SELECT DISTINCT f.keep, r.mode, r.old_key_id, r.state, r.reason, r.finished_at, r.verified_at,
       r.backups_purged_at, r.summary
  FROM rekey_folded f JOIN rekey.runs r ON r.id = f.latest;

DELETE FROM rekey.runs r
 USING rekey_folded f
 WHERE r.id = f.id
   AND NOT EXISTS (SELECT 1 FROM rekey.items i WHERE i.run_id = r.id);

UPDATE rekey.runs r
   SET mode = l.mode, old_key_id = l.old_key_id, state = l.state, reason = l.reason,
       finished_at = l.finished_at, verified_at = l.verified_at, summary = l.summary,
       backups_purged_at = CASE
           WHEN EXISTS (SELECT 1 FROM rekey.backups b WHERE b.run_id = r.id) THEN NULL
           ELSE coalesce(l.backups_purged_at, r.backups_purged_at)
       END
  FROM rekey_latest l
 WHERE r.id = l.keep
   AND NOT EXISTS (SELECT 1 FROM rekey_folded f JOIN rekey.runs d ON d.id = f.id
                    WHERE f.keep = r.id);

CREATE UNIQUE INDEX runs_one_per_new_key ON rekey.runs (new_key_id);

-- How many times the run was re-opened. A process closes the run only in
-- the opening it joined: one still busy in an earlier opening must not
-- close the one a later `run` started.
ALTER TABLE rekey.runs ADD COLUMN reopened INT NOT NULL DEFAULT 0;
