-- authstore SQLite schema, version 5: tokens no longer reference their client.
--
-- This file is immutable once released (see 0001_initial.sql).
--
-- access_tokens and refresh_tokens lose their `client_id REFERENCES clients (id)
-- ON DELETE CASCADE` foreign key and with it the indexes access_tokens_client and
-- refresh_tokens_client, which existed only to serve it: every issued token updated them
-- (docs/SQLITE.md has the figures) and no query reads tokens by client. A token still
-- goes when its client goes: deleting a client deletes its grants (grants.client_id
-- cascades), which delete their codes and tokens (grant_id cascades, through the *_grant
-- indexes). client_id stays, NOT NULL: the store checks it is the grant's client when it
-- issues, and validation reads the client's `disabled` through it.
--
-- SQLite cannot drop a constraint, so both tables are rebuilt as its documentation says
-- (lang_altertable.html#otheralter): create the new table, copy the rows, drop the old
-- one, rename the new one, recreate the indexes. Every other column, constraint and index
-- is exactly as in 0001_initial.sql (0002-0004 did not change these tables).
--
-- The migration runner applies this file in one BEGIN IMMEDIATE transaction on a
-- connection whose foreign_keys setting cannot change inside it (the store's writer has it
-- ON). That is safe here without the procedure's "foreign_keys=OFF" step, because no
-- table, trigger or view refers to access_tokens or refresh_tokens: the DROP runs no
-- implicit DELETE and cascades nothing, and the RENAME rewrites no reference. With
-- foreign_keys ON, every copied row is checked against grants as it is inserted; any
-- failure rolls the whole migration back. On a large database this copies both token
-- tables once (see docs/SQLITE.md).

CREATE TABLE access_tokens_v5 (
    hash        BLOB    NOT NULL PRIMARY KEY CHECK (length(hash) = 32),
    grant_id    BLOB    NOT NULL REFERENCES grants (id) ON DELETE CASCADE,
    client_id   BLOB    NOT NULL, -- the grant's client; no foreign key since version 5
    subject     TEXT,
    scope       TEXT    NOT NULL,
    audience    TEXT    NOT NULL, -- JSON array of strings
    issued_at   INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    revoked_at  INTEGER,
    cnf_kind    TEXT,             -- 'jkt' or 'x5t#S256'
    cnf_value   TEXT,
    auth        TEXT    NOT NULL, -- JSON AuthContext
    claims      TEXT    NOT NULL  -- JSON object
) WITHOUT ROWID;
INSERT INTO access_tokens_v5 (hash, grant_id, client_id, subject, scope, audience,
                              issued_at, expires_at, revoked_at, cnf_kind, cnf_value,
                              auth, claims)
    SELECT hash, grant_id, client_id, subject, scope, audience,
           issued_at, expires_at, revoked_at, cnf_kind, cnf_value,
           auth, claims
    FROM access_tokens;
DROP TABLE access_tokens;
ALTER TABLE access_tokens_v5 RENAME TO access_tokens;
CREATE INDEX access_tokens_grant ON access_tokens (grant_id);
CREATE INDEX access_tokens_expires_at ON access_tokens (expires_at);
CREATE INDEX access_tokens_revoked_at ON access_tokens (revoked_at) WHERE revoked_at IS NOT NULL;

CREATE TABLE refresh_tokens_v5 (
    hash             BLOB    NOT NULL PRIMARY KEY CHECK (length(hash) = 32),
    grant_id         BLOB    NOT NULL REFERENCES grants (id) ON DELETE CASCADE,
    client_id        BLOB    NOT NULL, -- the grant's client; no foreign key since version 5
    subject          TEXT,
    scope            TEXT    NOT NULL,
    issued_at        INTEGER NOT NULL,
    expires_at       INTEGER NOT NULL,
    idle_expires_at  INTEGER NOT NULL,
    rotated_at       INTEGER,
    successor        BLOB             CHECK (successor IS NULL OR length(successor) = 32),
    reuse_count      INTEGER NOT NULL DEFAULT 0,
    revoked_at       INTEGER,
    cnf_kind         TEXT,
    cnf_value        TEXT
) WITHOUT ROWID;
INSERT INTO refresh_tokens_v5 (hash, grant_id, client_id, subject, scope, issued_at,
                               expires_at, idle_expires_at, rotated_at, successor,
                               reuse_count, revoked_at, cnf_kind, cnf_value)
    SELECT hash, grant_id, client_id, subject, scope, issued_at,
           expires_at, idle_expires_at, rotated_at, successor,
           reuse_count, revoked_at, cnf_kind, cnf_value
    FROM refresh_tokens;
DROP TABLE refresh_tokens;
ALTER TABLE refresh_tokens_v5 RENAME TO refresh_tokens;
CREATE INDEX refresh_tokens_grant ON refresh_tokens (grant_id);
CREATE INDEX refresh_tokens_expires_at ON refresh_tokens (expires_at);
CREATE INDEX refresh_tokens_idle_expires_at ON refresh_tokens (idle_expires_at);
CREATE INDEX refresh_tokens_revoked_at ON refresh_tokens (revoked_at) WHERE revoked_at IS NOT NULL;
