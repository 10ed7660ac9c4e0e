-- The coordinator's store on PostgreSQL: the embedded store's tables, one
-- for one, with the same stored bytes (crates/coordinator/src/store/format.rs),
-- and the leadership row that fences writers.

-- Exactly one row: who leads, under which epoch, until when (the database's clock).
-- Every store transaction first checks, under a share lock on this row, that
-- its coordinator's epoch is still the one here.
CREATE TABLE smsmesh_leader (
    id int PRIMARY KEY CHECK (id = 1),
    holder text NOT NULL,
    epoch bigint NOT NULL,
    expires_at timestamptz NOT NULL
);
INSERT INTO smsmesh_leader VALUES (1, '', 0, '-infinity');

-- Batch ids are u64, stored as bigint with the same bits.
CREATE TABLE smsmesh_batches (id bigint PRIMARY KEY, record bytea NOT NULL);
CREATE TABLE smsmesh_batch_state (id bigint PRIMARY KEY, record bytea NOT NULL);
-- One row per 4,096 messages, 4 bytes each, rewritten as outcomes come.
CREATE TABLE smsmesh_outcomes (
    batch bigint NOT NULL,
    chunk int NOT NULL,
    slots bytea NOT NULL,
    PRIMARY KEY (batch, chunk)
);
-- Rows that change often and do not compress well: no TOAST compression.
ALTER TABLE smsmesh_outcomes ALTER COLUMN slots SET STORAGE EXTERNAL;
CREATE TABLE smsmesh_errors (
    batch bigint NOT NULL,
    idx int NOT NULL,
    error text NOT NULL,
    PRIMARY KEY (batch, idx)
);
CREATE TABLE smsmesh_idempotency (key text PRIMARY KEY, batch bigint NOT NULL);
CREATE TABLE smsmesh_nodes (idx int PRIMARY KEY, name text NOT NULL);
CREATE TABLE smsmesh_recipients (
    batch bigint NOT NULL,
    row_no int NOT NULL,
    bytes bytea NOT NULL,
    PRIMARY KEY (batch, row_no)
);
CREATE TABLE smsmesh_client_refs (
    batch bigint NOT NULL,
    row_no int NOT NULL,
    bytes bytea NOT NULL,
    PRIMARY KEY (batch, row_no)
);
CREATE TABLE smsmesh_receipt_waits (
    batch bigint NOT NULL,
    idx int NOT NULL,
    record bytea NOT NULL,
    PRIMARY KEY (batch, idx)
);
CREATE TABLE smsmesh_deliveries (
    batch bigint NOT NULL,
    idx int NOT NULL,
    record bytea NOT NULL,
    PRIMARY KEY (batch, idx)
);
