-- authstore SQLite schema, version 3: login sessions, one-time tokens, TOTP,
-- recovery codes, passkeys, WebAuthn ceremonies, linked accounts.
--
-- This file is immutable once released (see 0001_initial.sql).
--
-- Everything here belongs to a user by foreign key and cascades from it: erasing a
-- user erases all of it in the same statement. Sealed values (TOTP secrets,
-- provider tokens) are BLOBs in the format of authstore-core's `Sealed`; they are
-- never opened here.

CREATE TABLE login_sessions (
    hash             BLOB    NOT NULL PRIMARY KEY CHECK (length(hash) = 32),
    id               BLOB    NOT NULL UNIQUE CHECK (length(id) = 16),
    user_id          BLOB    NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at       INTEGER NOT NULL,
    last_seen_at     INTEGER NOT NULL,
    idle_expires_at  INTEGER NOT NULL,
    expires_at       INTEGER NOT NULL,
    ip               TEXT,             -- IP address as text
    user_agent       TEXT,
    revoked_at       INTEGER
) WITHOUT ROWID;
CREATE INDEX login_sessions_user ON login_sessions (user_id, id);
CREATE INDEX login_sessions_expires_at ON login_sessions (expires_at);
CREATE INDEX login_sessions_idle_expires_at ON login_sessions (idle_expires_at);
CREATE INDEX login_sessions_revoked_at ON login_sessions (revoked_at) WHERE revoked_at IS NOT NULL;

CREATE TABLE one_time_tokens (
    hash         BLOB    NOT NULL PRIMARY KEY CHECK (length(hash) = 32),
    user_id      BLOB    NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    purpose      TEXT    NOT NULL,
    email        TEXT,
    issued_at    INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL,
    consumed_at  INTEGER
) WITHOUT ROWID;
CREATE INDEX one_time_tokens_user_purpose ON one_time_tokens (user_id, purpose);
CREATE INDEX one_time_tokens_expires_at ON one_time_tokens (expires_at);
CREATE INDEX one_time_tokens_consumed_at ON one_time_tokens (consumed_at) WHERE consumed_at IS NOT NULL;

CREATE TABLE totp (
    user_id     BLOB    NOT NULL PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    secret      BLOB    NOT NULL, -- sealed for (totp, secret, user id bytes)
    last_step   INTEGER,
    created_at  INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE recovery_codes (
    user_id  BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    hash     BLOB NOT NULL CHECK (length(hash) = 32),
    PRIMARY KEY (user_id, hash)
) WITHOUT ROWID;

CREATE TABLE passkeys (
    credential_id  BLOB    NOT NULL PRIMARY KEY CHECK (length(credential_id) BETWEEN 1 AND 1023),
    user_id        BLOB    NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name           TEXT    NOT NULL,
    credential     TEXT    NOT NULL, -- JSON (serialized webauthn-rs Passkey)
    counter        INTEGER NOT NULL,
    backup_state   INTEGER NOT NULL CHECK (backup_state IN (0, 1)),
    created_at     INTEGER NOT NULL,
    last_used_at   INTEGER
) WITHOUT ROWID;
CREATE INDEX passkeys_user ON passkeys (user_id, created_at, credential_id);

CREATE TABLE ceremonies (
    hash        BLOB    NOT NULL PRIMARY KEY CHECK (length(hash) = 32),
    kind        TEXT    NOT NULL,
    user_id     BLOB             REFERENCES users (id) ON DELETE CASCADE,
    state       TEXT    NOT NULL, -- JSON
    expires_at  INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX ceremonies_expires_at ON ceremonies (expires_at);
CREATE INDEX ceremonies_user ON ceremonies (user_id);

CREATE TABLE linked_accounts (
    id                BLOB    NOT NULL PRIMARY KEY CHECK (length(id) = 16),
    provider          TEXT    NOT NULL,
    provider_subject  TEXT    NOT NULL,
    user_id           BLOB    NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    access_token      BLOB,   -- sealed for (linked_accounts, access_token, id)
    refresh_token     BLOB,   -- sealed for (linked_accounts, refresh_token, id)
    token_expires_at  INTEGER,
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL,
    UNIQUE (provider, provider_subject)
) WITHOUT ROWID;
CREATE INDEX linked_accounts_user ON linked_accounts (user_id, id);
