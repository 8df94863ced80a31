-- authstore SQLite schema, version 4: key checks.
--
-- This file is immutable once released (see 0001_initial.sql).
--
-- One row per key ever used with this database: its ring ('token' hashes tokens and
-- client secrets, 'sealing' seals reversible secrets), its id, and a 16-byte check
-- derived from the key (BLAKE3 key derivation under a fixed context: it tells keys
-- apart and reveals nothing about them). Authstore::verify_keys refuses a key whose
-- check differs from the one recorded under its id, and a key ring none of whose ids
-- was ever recorded. Rows are only ever inserted: never updated, never deleted.

CREATE TABLE key_checks (
    ring         TEXT    NOT NULL CHECK (ring IN ('token', 'sealing')),
    key_id       TEXT    NOT NULL CHECK (length(key_id) BETWEEN 1 AND 64),
    key_check    BLOB    NOT NULL CHECK (length(key_check) = 16),
    recorded_at  INTEGER NOT NULL,
    PRIMARY KEY (ring, key_id)
) WITHOUT ROWID;
