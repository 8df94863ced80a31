-- authstore PostgreSQL schema, version 3: login sessions, one-time tokens, TOTP,
-- recovery codes, passkeys, WebAuthn ceremonies, linked accounts.
--
-- This file is immutable once released (see 0001_initial.sql).
--
-- Everything here belongs to a user and cascades from it, so erasing a user
-- erases it. Handles and codes are stored as 32-byte keyed hashes, never
-- themselves; sealed values (TOTP secrets, provider tokens) are `bytea`, opened
-- only by authstore-core with keys that never reach the database.

CREATE TABLE login_sessions (
    hash             bytea       NOT NULL PRIMARY KEY CHECK (length(hash) = 32),
    id               uuid        NOT NULL CONSTRAINT login_sessions_id_key UNIQUE,
    user_id          uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at       timestamptz NOT NULL,
    last_seen_at     timestamptz NOT NULL,
    idle_expires_at  timestamptz NOT NULL,
    expires_at       timestamptz NOT NULL,
    ip               inet,
    user_agent       text,
    revoked_at       timestamptz
);
CREATE INDEX login_sessions_user ON login_sessions (user_id, id);
CREATE INDEX login_sessions_expires_at ON login_sessions (expires_at);
CREATE INDEX login_sessions_idle_expires_at ON login_sessions (idle_expires_at);
CREATE INDEX login_sessions_revoked_at ON login_sessions (revoked_at) WHERE revoked_at IS NOT NULL;

CREATE TABLE one_time_tokens (
    hash         bytea       NOT NULL PRIMARY KEY CHECK (length(hash) = 32),
    user_id      uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    purpose      text        NOT NULL,
    email        text,
    issued_at    timestamptz NOT NULL,
    expires_at   timestamptz NOT NULL,
    consumed_at  timestamptz
);
CREATE INDEX one_time_tokens_user ON one_time_tokens (user_id, purpose);
CREATE INDEX one_time_tokens_expires_at ON one_time_tokens (expires_at);
CREATE INDEX one_time_tokens_consumed_at ON one_time_tokens (consumed_at) WHERE consumed_at IS NOT NULL;

CREATE TABLE totp (
    user_id     uuid        NOT NULL PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    secret      bytea       NOT NULL,
    last_step   bigint,
    created_at  timestamptz NOT NULL
);

CREATE TABLE recovery_codes (
    user_id  uuid  NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    hash     bytea NOT NULL CHECK (length(hash) = 32),
    PRIMARY KEY (user_id, hash)
);

CREATE TABLE passkeys (
    credential_id  bytea       NOT NULL PRIMARY KEY,
    user_id        uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name           text        NOT NULL,
    credential     jsonb       NOT NULL,
    counter        bigint      NOT NULL CHECK (counter >= 0),
    backup_state   boolean     NOT NULL,
    created_at     timestamptz NOT NULL,
    last_used_at   timestamptz
);
CREATE INDEX passkeys_user ON passkeys (user_id, created_at, credential_id);

CREATE TABLE ceremonies (
    hash        bytea       NOT NULL PRIMARY KEY CHECK (length(hash) = 32),
    kind        text        NOT NULL,
    user_id     uuid                 REFERENCES users (id) ON DELETE CASCADE,
    state       jsonb       NOT NULL,
    expires_at  timestamptz NOT NULL
);
CREATE INDEX ceremonies_expires_at ON ceremonies (expires_at);
CREATE INDEX ceremonies_user ON ceremonies (user_id) WHERE user_id IS NOT NULL;

CREATE TABLE linked_accounts (
    id                uuid        NOT NULL PRIMARY KEY,
    provider          text        NOT NULL,
    provider_subject  text        NOT NULL,
    user_id           uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    access_token      bytea,
    refresh_token     bytea,
    token_expires_at  timestamptz,
    created_at        timestamptz NOT NULL,
    updated_at        timestamptz NOT NULL,
    CONSTRAINT linked_accounts_provider_key UNIQUE (provider, provider_subject)
);
CREATE INDEX linked_accounts_user ON linked_accounts (user_id, id);
