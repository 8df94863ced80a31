-- authstore PostgreSQL schema, version 1.
--
-- This file is immutable once released: its blake3 checksum is recorded in
-- schema_migrations when applied. Change the schema by adding 0002_*.sql.
--
-- Tables are created unqualified, in the first schema of the connection's
-- search_path (PostgresOptions::schema sets it), so several deployments or
-- tests can share one database.
--
-- Conventions:
--   * ids are `uuid` (UUIDv7; uuid order is byte order, which is id order);
--   * token hashes are 32-byte `bytea` (keyed BLAKE3; never the token itself);
--   * times are `timestamptz` (microsecond precision, exactly a Timestamp);
--   * per-client lifetimes are `bigint` microseconds;
--   * scopes are space-separated `text`; lists are `text[]`; objects `jsonb`;
--   * everything that belongs to a client cascades from it, and every code and
--     token cascades from its grant. Audit events never cascade.

CREATE TABLE clients (
    id                          uuid        NOT NULL PRIMARY KEY,
    name                        text        NOT NULL,
    client_type                 text        NOT NULL,
    secret_hash                 bytea                CHECK (secret_hash IS NULL OR length(secret_hash) = 32),
    redirect_uris               text[]      NOT NULL,
    grant_types                 text[]      NOT NULL,
    scopes                      text        NOT NULL,
    token_endpoint_auth_method  text        NOT NULL,
    access_token_ttl_us         bigint,
    refresh_token_ttl_us        bigint,
    refresh_idle_ttl_us         bigint,
    authorization_code_ttl_us   bigint,
    metadata                    jsonb       NOT NULL,
    created_at                  timestamptz NOT NULL,
    updated_at                  timestamptz NOT NULL,
    disabled                    boolean     NOT NULL DEFAULT false
);

CREATE TABLE grants (
    id          uuid        NOT NULL PRIMARY KEY,
    client_id   uuid        NOT NULL REFERENCES clients (id) ON DELETE CASCADE,
    subject     text,
    scope       text        NOT NULL,
    auth        jsonb       NOT NULL,
    created_at  timestamptz NOT NULL,
    revoked_at  timestamptz
);
CREATE INDEX grants_client ON grants (client_id);
CREATE INDEX grants_subject ON grants (subject, client_id) WHERE subject IS NOT NULL;
CREATE INDEX grants_revoked_at ON grants (revoked_at) WHERE revoked_at IS NOT NULL;
CREATE INDEX grants_created_at ON grants (created_at) WHERE revoked_at IS NULL;

CREATE TABLE authorization_codes (
    hash                   bytea       NOT NULL PRIMARY KEY CHECK (length(hash) = 32),
    grant_id               uuid        NOT NULL REFERENCES grants (id) ON DELETE CASCADE,
    client_id              uuid        NOT NULL REFERENCES clients (id) ON DELETE CASCADE,
    subject                text        NOT NULL,
    redirect_uri           text        NOT NULL,
    scope                  text        NOT NULL,
    code_challenge         text,
    code_challenge_method  text,
    nonce                  text,
    issued_at              timestamptz NOT NULL,
    expires_at             timestamptz NOT NULL,
    consumed_at            timestamptz
);
CREATE INDEX authorization_codes_grant ON authorization_codes (grant_id);
CREATE INDEX authorization_codes_client ON authorization_codes (client_id);
CREATE INDEX authorization_codes_expires_at ON authorization_codes (expires_at);

CREATE TABLE access_tokens (
    hash        bytea       NOT NULL PRIMARY KEY CHECK (length(hash) = 32),
    grant_id    uuid        NOT NULL REFERENCES grants (id) ON DELETE CASCADE,
    client_id   uuid        NOT NULL REFERENCES clients (id) ON DELETE CASCADE,
    subject     text,
    scope       text        NOT NULL,
    audience    text[]      NOT NULL,
    issued_at   timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL,
    revoked_at  timestamptz,
    cnf_kind    text,        -- 'jkt' or 'x5t#S256'
    cnf_value   text,
    auth        jsonb       NOT NULL,
    claims      jsonb       NOT NULL
);
CREATE INDEX access_tokens_grant ON access_tokens (grant_id);
CREATE INDEX access_tokens_client ON access_tokens (client_id);
CREATE INDEX access_tokens_expires_at ON access_tokens (expires_at);
CREATE INDEX access_tokens_revoked_at ON access_tokens (revoked_at) WHERE revoked_at IS NOT NULL;

CREATE TABLE refresh_tokens (
    hash             bytea       NOT NULL PRIMARY KEY CHECK (length(hash) = 32),
    grant_id         uuid        NOT NULL REFERENCES grants (id) ON DELETE CASCADE,
    client_id        uuid        NOT NULL REFERENCES clients (id) ON DELETE CASCADE,
    subject          text,
    scope            text        NOT NULL,
    issued_at        timestamptz NOT NULL,
    expires_at       timestamptz NOT NULL,
    idle_expires_at  timestamptz NOT NULL,
    rotated_at       timestamptz,
    successor        bytea                CHECK (successor IS NULL OR length(successor) = 32),
    reuse_count      integer     NOT NULL DEFAULT 0 CHECK (reuse_count >= 0),
    revoked_at       timestamptz,
    cnf_kind         text,
    cnf_value        text
);
CREATE INDEX refresh_tokens_grant ON refresh_tokens (grant_id);
CREATE INDEX refresh_tokens_client ON refresh_tokens (client_id);
CREATE INDEX refresh_tokens_expires_at ON refresh_tokens (expires_at);
CREATE INDEX refresh_tokens_idle_expires_at ON refresh_tokens (idle_expires_at);
CREATE INDEX refresh_tokens_revoked_at ON refresh_tokens (revoked_at) WHERE revoked_at IS NOT NULL;

CREATE TABLE personal_access_tokens (
    id            uuid        NOT NULL PRIMARY KEY,
    hash          bytea       NOT NULL UNIQUE CHECK (length(hash) = 32),
    user_subject  text        NOT NULL,
    name          text        NOT NULL,
    scope         text        NOT NULL,
    created_at    timestamptz NOT NULL,
    expires_at    timestamptz,
    last_used_at  timestamptz,
    revoked_at    timestamptz
);
CREATE INDEX personal_access_tokens_user ON personal_access_tokens (user_subject, id);
CREATE INDEX personal_access_tokens_expires_at ON personal_access_tokens (expires_at) WHERE expires_at IS NOT NULL;
CREATE INDEX personal_access_tokens_revoked_at ON personal_access_tokens (revoked_at) WHERE revoked_at IS NOT NULL;

CREATE TABLE authorization_sessions (
    hash                   bytea       NOT NULL PRIMARY KEY CHECK (length(hash) = 32),
    client_id              uuid        NOT NULL REFERENCES clients (id) ON DELETE CASCADE,
    redirect_uri           text        NOT NULL,
    scope                  text        NOT NULL,
    state                  text,
    code_challenge         text,
    code_challenge_method  text,
    nonce                  text,
    subject                text,
    created_at             timestamptz NOT NULL,
    expires_at             timestamptz NOT NULL,
    completed_at           timestamptz
);
CREATE INDEX authorization_sessions_client ON authorization_sessions (client_id);
CREATE INDEX authorization_sessions_expires_at ON authorization_sessions (expires_at);
CREATE INDEX authorization_sessions_completed_at ON authorization_sessions (completed_at) WHERE completed_at IS NOT NULL;

CREATE TABLE consents (
    client_id   uuid        NOT NULL REFERENCES clients (id) ON DELETE CASCADE,
    subject     text        NOT NULL,
    scope       text        NOT NULL,
    granted_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL,
    PRIMARY KEY (client_id, subject)
);
CREATE INDEX consents_subject ON consents (subject);

CREATE TABLE audit_events (
    id         uuid        NOT NULL PRIMARY KEY,
    at         timestamptz NOT NULL,
    kind       text        NOT NULL,
    actor      text,
    subject    text,
    client_id  uuid,
    grant_id   uuid,
    ip         inet,
    details    jsonb       NOT NULL -- never a secret
);
CREATE INDEX audit_events_kind ON audit_events (kind, id);
CREATE INDEX audit_events_subject ON audit_events (subject, id) WHERE subject IS NOT NULL;
CREATE INDEX audit_events_client ON audit_events (client_id, id) WHERE client_id IS NOT NULL;
CREATE INDEX audit_events_at ON audit_events (at);
