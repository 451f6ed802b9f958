-- Consumer checkpoint per (job, partition): the next log offset to fold. Written in the same
-- transaction as the document snapshots it covers.
CREATE TABLE checkpoints (
    job          TEXT    NOT NULL,
    partition_id BIGINT  NOT NULL,
    next_offset  BIGINT  NOT NULL,
    updated_ms   BIGINT  NOT NULL,
    PRIMARY KEY (job, partition_id)
);

-- One folded document per (job, doc id): its state (schemas/docfold/state/v1/snapshot.proto).
CREATE TABLE doc_snapshots (
    job          TEXT    NOT NULL,
    doc_id       TEXT    NOT NULL,
    partition_id BIGINT  NOT NULL,
    version      BIGINT  NOT NULL,
    log_offset   BIGINT  NOT NULL,
    state        BYTEA   NOT NULL,
    updated_ms   BIGINT  NOT NULL,
    PRIMARY KEY (job, doc_id)
);
