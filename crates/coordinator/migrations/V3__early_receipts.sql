-- Receipts that came before the result naming their id, held until that
-- result comes (store/early.rs holds the record's format).
CREATE TABLE smsmesh_early_receipts (
    provider text NOT NULL,
    provider_id text NOT NULL,
    record bytea NOT NULL,
    PRIMARY KEY (provider, provider_id)
);
