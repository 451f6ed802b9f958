-- The regions' leadership lease, one row per scope (`region::lease`): the holder region,
-- its fencing epoch (only grows) and when the lease runs out (ms since the Unix epoch, by
-- the holder's clock). Written only by compare-and-set (`region::sql`).
CREATE TABLE region_leases (
    scope TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    epoch BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL
);
