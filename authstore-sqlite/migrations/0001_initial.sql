-- authstore SQLite schema, version 1.
--
-- This file is immutable once released: its blake3 checksum is recorded in
-- schema_migrations when applied. Change the schema by adding 0002_*.sql.
--
-- Conventions:
--   * ids are 16-byte BLOBs (UUID bytes; memcmp order = UUID order);
--   * token hashes are 32-byte BLOBs (keyed BLAKE3; never the token itself);
--   * timestamps are INTEGER unix microseconds (UTC);
--   * scopes are TEXT, space-separated; lists and objects are JSON TEXT;
--   * everything that belongs to a client cascades from it, and every code and
--     token cascades from its grant. Audit events never cascade.

CREATE TABLE clients (
    id                          BLOB    NOT NULL PRIMARY KEY CHECK (length(id) = 16),
    name                        TEXT    NOT NULL,
    client_type                 TEXT    NOT NULL,
    secret_hash                 BLOB             CHECK (secret_hash IS NULL OR length(secret_hash) = 32),
    redirect_uris               TEXT    NOT NULL, -- JSON array of strings
    grant_types                 TEXT    NOT NULL, -- space-separated
    scopes                      TEXT    NOT NULL,
    token_endpoint_auth_method  TEXT    NOT NULL,
    access_token_ttl_us         INTEGER,
    refresh_token_ttl_us        INTEGER,
    refresh_idle_ttl_us         INTEGER,
    authorization_code_ttl_us   INTEGER,
    metadata                    TEXT    NOT NULL, -- JSON object
    created_at                  INTEGER NOT NULL,
    updated_at                  INTEGER NOT NULL,
    disabled                    INTEGER NOT NULL DEFAULT 0 CHECK (disabled IN (0, 1))
);
-- Lets the token validation join read `disabled` from the index alone.
CREATE INDEX clients_id_disabled ON clients (id, disabled);

CREATE TABLE grants (
    id          BLOB    NOT NULL PRIMARY KEY CHECK (length(id) = 16),
    client_id   BLOB    NOT NULL REFERENCES clients (id) ON DELETE CASCADE,
    subject     TEXT,
    scope       TEXT    NOT NULL,
    auth        TEXT    NOT NULL, -- JSON AuthContext
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER
) WITHOUT ROWID;
CREATE INDEX grants_client ON grants (client_id);
CREATE INDEX grants_subject ON grants (subject) WHERE subject IS NOT NULL;
CREATE INDEX grants_revoked_at ON grants (revoked_at) WHERE revoked_at IS NOT NULL;
CREATE INDEX grants_created_at ON grants (created_at) WHERE revoked_at IS NULL;

CREATE TABLE authorization_codes (
    hash                   BLOB    NOT NULL PRIMARY KEY CHECK (length(hash) = 32),
    grant_id               BLOB    NOT NULL REFERENCES grants (id) ON DELETE CASCADE,
    client_id              BLOB    NOT NULL REFERENCES clients (id) ON DELETE CASCADE,
    subject                TEXT    NOT NULL,
    redirect_uri           TEXT    NOT NULL,
    scope                  TEXT    NOT NULL,
    code_challenge         TEXT,
    code_challenge_method  TEXT,
    nonce                  TEXT,
    issued_at              INTEGER NOT NULL,
    expires_at             INTEGER NOT NULL,
    consumed_at            INTEGER
) WITHOUT ROWID;
CREATE INDEX authorization_codes_grant ON authorization_codes (grant_id);
CREATE INDEX authorization_codes_client ON authorization_codes (client_id);
CREATE INDEX authorization_codes_expires_at ON authorization_codes (expires_at);

CREATE TABLE access_tokens (
    hash        BLOB    NOT NULL PRIMARY KEY CHECK (length(hash) = 32),
    grant_id    BLOB    NOT NULL REFERENCES grants (id) ON DELETE CASCADE,
    client_id   BLOB    NOT NULL REFERENCES clients (id) ON DELETE CASCADE,
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
CREATE INDEX access_tokens_grant ON access_tokens (grant_id);
CREATE INDEX access_tokens_client ON access_tokens (client_id);
CREATE INDEX access_tokens_expires_at ON access_tokens (expires_at);
CREATE INDEX access_tokens_revoked_at ON access_tokens (revoked_at) WHERE revoked_at IS NOT NULL;

CREATE TABLE refresh_tokens (
    hash             BLOB    NOT NULL PRIMARY KEY CHECK (length(hash) = 32),
    grant_id         BLOB    NOT NULL REFERENCES grants (id) ON DELETE CASCADE,
    client_id        BLOB    NOT NULL REFERENCES clients (id) ON DELETE CASCADE,
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
CREATE INDEX refresh_tokens_grant ON refresh_tokens (grant_id);
CREATE INDEX refresh_tokens_client ON refresh_tokens (client_id);
CREATE INDEX refresh_tokens_expires_at ON refresh_tokens (expires_at);
CREATE INDEX refresh_tokens_idle_expires_at ON refresh_tokens (idle_expires_at);
CREATE INDEX refresh_tokens_revoked_at ON refresh_tokens (revoked_at) WHERE revoked_at IS NOT NULL;

CREATE TABLE personal_access_tokens (
    id            BLOB    NOT NULL PRIMARY KEY CHECK (length(id) = 16),
    hash          BLOB    NOT NULL UNIQUE CHECK (length(hash) = 32),
    user_subject  TEXT    NOT NULL,
    name          TEXT    NOT NULL,
    scope         TEXT    NOT NULL,
    created_at    INTEGER NOT NULL,
    expires_at    INTEGER,
    last_used_at  INTEGER,
    revoked_at    INTEGER
);
CREATE INDEX personal_access_tokens_user ON personal_access_tokens (user_subject, id);
CREATE INDEX personal_access_tokens_expires_at ON personal_access_tokens (expires_at) WHERE expires_at IS NOT NULL;
CREATE INDEX personal_access_tokens_revoked_at ON personal_access_tokens (revoked_at) WHERE revoked_at IS NOT NULL;

CREATE TABLE authorization_sessions (
    hash                   BLOB    NOT NULL PRIMARY KEY CHECK (length(hash) = 32),
    client_id              BLOB    NOT NULL REFERENCES clients (id) ON DELETE CASCADE,
    redirect_uri           TEXT    NOT NULL,
    scope                  TEXT    NOT NULL,
    state                  TEXT,
    code_challenge         TEXT,
    code_challenge_method  TEXT,
    nonce                  TEXT,
    subject                TEXT,
    created_at             INTEGER NOT NULL,
    expires_at             INTEGER NOT NULL,
    completed_at           INTEGER
) WITHOUT ROWID;
CREATE INDEX authorization_sessions_client ON authorization_sessions (client_id);
CREATE INDEX authorization_sessions_expires_at ON authorization_sessions (expires_at);
CREATE INDEX authorization_sessions_completed_at ON authorization_sessions (completed_at) WHERE completed_at IS NOT NULL;

CREATE TABLE consents (
    client_id   BLOB    NOT NULL REFERENCES clients (id) ON DELETE CASCADE,
    subject     TEXT    NOT NULL,
    scope       TEXT    NOT NULL,
    granted_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (client_id, subject)
) WITHOUT ROWID;
CREATE INDEX consents_subject ON consents (subject);

CREATE TABLE audit_events (
    id         BLOB    NOT NULL PRIMARY KEY CHECK (length(id) = 16),
    at         INTEGER NOT NULL,
    kind       TEXT    NOT NULL,
    actor      TEXT,
    subject    TEXT,
    client_id  BLOB,
    grant_id   BLOB,
    ip         TEXT,
    details    TEXT    NOT NULL -- JSON object, never a secret
);
CREATE INDEX audit_events_kind ON audit_events (kind, id);
CREATE INDEX audit_events_subject ON audit_events (subject, id) WHERE subject IS NOT NULL;
CREATE INDEX audit_events_client ON audit_events (client_id, id) WHERE client_id IS NOT NULL;
CREATE INDEX audit_events_at ON audit_events (at);
