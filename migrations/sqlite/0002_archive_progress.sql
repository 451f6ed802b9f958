-- The archive's progress travels with the checkpoint: every record before it is in a
-- written Parquet file. NULL (checkpoints from before the archive) means "from next_offset".
ALTER TABLE checkpoints ADD COLUMN archived_offset BIGINT;
-- Disaster-recovery snapshots export the documents changed since the last manifest.
CREATE INDEX doc_snapshots_by_partition ON doc_snapshots (job, partition_id, log_offset);
