-- Replays: a live replay (`docfold replay --live`) bumps its partition's generation, and
-- every projection and cache entry the partition writes from then on carries it; the
-- sinks' guard compares (generation, version), so a replay rewrites what the version
-- guard alone would drop. updated_ms is the owner's heartbeat (0: released on a clean
-- stop): a replay is refused while a live owner holds the partition.
ALTER TABLE partition_owners ADD COLUMN generation BIGINT NOT NULL DEFAULT 0;
