-- `docfold mirror`'s progress: per mirrored topic (`<source region>.<topic>`) and partition,
-- the next source offset to copy. Written after the copies are flushed to the target log,
-- so a crash repeats some records (the fold dedupes them) and never skips one.
CREATE TABLE mirror_checkpoints (
    job TEXT NOT NULL,
    topic TEXT NOT NULL,
    partition_id BIGINT NOT NULL,
    next_offset BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL,
    PRIMARY KEY (job, topic, partition_id)
);
