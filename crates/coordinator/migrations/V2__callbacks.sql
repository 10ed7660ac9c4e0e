-- Callback events waiting to be delivered to clients' URLs: one row per group
-- commit and URL, numbered in the order they were made (store/callbacks.rs
-- holds the record's format). Rows are removed once delivered or given up.
CREATE TABLE smsmesh_callbacks (seq bigint PRIMARY KEY, record bytea NOT NULL);
