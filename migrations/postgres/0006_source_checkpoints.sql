-- A partition folds several source topics (the job's own and each peer region's mirrored
-- one), so its checkpoint is one row per (partition, topic); the owner epoch is the
-- partition's, kept apart. The job's own topic is stored as '' (this migration runs
-- before the config is known; the pipeline resolves it to `log.topic`).
CREATE TABLE partition_owners (
    job          TEXT   NOT NULL,
    partition_id BIGINT NOT NULL,
    owner_epoch  BIGINT NOT NULL,
    updated_ms   BIGINT NOT NULL,
    PRIMARY KEY (job, partition_id)
);

CREATE TABLE source_checkpoints (
    job             TEXT   NOT NULL,
    partition_id    BIGINT NOT NULL,
    topic           TEXT   NOT NULL,
    next_offset     BIGINT NOT NULL,
    archived_offset BIGINT NOT NULL,
    updated_ms      BIGINT NOT NULL,
    PRIMARY KEY (job, partition_id, topic)
);

INSERT INTO partition_owners (job, partition_id, owner_epoch, updated_ms)
    SELECT job, partition_id, owner_epoch, updated_ms FROM checkpoints;
INSERT INTO source_checkpoints (job, partition_id, topic, next_offset, archived_offset, updated_ms)
    SELECT job, partition_id, '', next_offset, COALESCE(archived_offset, next_offset), updated_ms FROM checkpoints;
DROP TABLE checkpoints;
