-- A tenant whose password was (or may have been) reset on its own branch
-- (`--neon-strategy reset-in-place`) can only be taken forward: its
-- machine cannot open new sessions until it runs with the new password,
-- so giving it up would leave it locked out. Set before the reset is
-- sent; read by every later attempt and run, whatever their flags.
ALTER TABLE rekey.items ADD COLUMN forward_only BOOLEAN NOT NULL DEFAULT false;
