-- Incremental snapshots: a flush writes a changed document's new ops (its records, one
-- after another) instead of its whole state, and its whole state only once those add up to
-- a share of it. A load is the full state in doc_snapshots plus its deltas in offset order;
-- writing a full state deletes them. delta_bytes counts the deltas a row has.
CREATE TABLE doc_deltas (
    job        TEXT   NOT NULL,
    doc_id     TEXT   NOT NULL,
    log_offset BIGINT NOT NULL,
    ops        BLOB  NOT NULL,
    PRIMARY KEY (job, doc_id, log_offset)
);

ALTER TABLE doc_snapshots ADD COLUMN delta_bytes BIGINT NOT NULL DEFAULT 0;
