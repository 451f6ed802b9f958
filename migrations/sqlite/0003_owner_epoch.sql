-- A worker that takes a partition claims it: the epoch goes up by one, and every commit
-- carries the claimer's epoch, so a stale owner (evicted from its group, stalled, a second
-- process on the same log) is refused and steps down (DESIGN.md invariant 7).
ALTER TABLE checkpoints ADD COLUMN owner_epoch BIGINT NOT NULL DEFAULT 0;
