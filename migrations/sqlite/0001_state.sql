-- Consumer checkpoint per (job, partition): the next log offset to fold. Written in the same
-- transaction as the document snapshots it covers.
CREATE TABLE checkpoints (
    job          TEXT    NOT NULL,
    partition_id INTEGER NOT NULL,
    next_offset  INTEGER NOT NULL,
    updated_ms   INTEGER NOT NULL,
    PRIMARY KEY (job, partition_id)
);

-- One folded document per (job, doc id): its state (schemas/docfold/state/v1/snapshot.proto).
CREATE TABLE doc_snapshots (
    job          TEXT    NOT NULL,
    doc_id       TEXT    NOT NULL,
    partition_id INTEGER NOT NULL,
    version      INTEGER NOT NULL,
    log_offset   INTEGER NOT NULL,
    state        BLOB    NOT NULL,
    updated_ms   INTEGER NOT NULL,
    PRIMARY KEY (job, doc_id)
);
