-- authstore SQLite schema, version 2: users, groups, passwords, login failures.
--
-- This file is immutable once released (see 0001_initial.sql).
--
-- The *_key columns hold the case-folded forms computed by authstore-core
-- (`fold_case`); uniqueness and search use them, never SQLite's own folding.
-- A user's OAuth subject is the text of its id: what they were issued (grants,
-- tokens, PATs, consents, sessions) is found by subject, not by foreign key.

CREATE TABLE users (
    id              BLOB    NOT NULL PRIMARY KEY CHECK (length(id) = 16),
    username        TEXT    NOT NULL,
    username_key    TEXT    NOT NULL UNIQUE,
    email           TEXT,
    email_key       TEXT             UNIQUE, -- NULL when there is no email
    email_verified  INTEGER NOT NULL DEFAULT 0 CHECK (email_verified IN (0, 1)),
    active          INTEGER NOT NULL DEFAULT 1 CHECK (active IN (0, 1)),
    metadata        TEXT    NOT NULL, -- JSON object
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    CHECK ((email IS NULL) = (email_key IS NULL))
);

CREATE TABLE groups (
    id          BLOB    NOT NULL PRIMARY KEY CHECK (length(id) = 16),
    name        TEXT    NOT NULL,
    name_key    TEXT    NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL
);

CREATE TABLE group_members (
    group_id  BLOB NOT NULL REFERENCES groups (id) ON DELETE CASCADE,
    user_id   BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    PRIMARY KEY (group_id, user_id)
) WITHOUT ROWID;
CREATE INDEX group_members_user ON group_members (user_id, group_id);

CREATE TABLE passwords (
    user_id     BLOB    NOT NULL PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    phc         TEXT    NOT NULL, -- Argon2id PHC string
    updated_at  INTEGER NOT NULL
);

CREATE TABLE login_failures (
    id       INTEGER NOT NULL PRIMARY KEY,
    user_id  BLOB             REFERENCES users (id) ON DELETE CASCADE,
    source   TEXT,            -- IP address as text
    at       INTEGER NOT NULL
);
CREATE INDEX login_failures_user ON login_failures (user_id, at);
CREATE INDEX login_failures_source ON login_failures (source, at);
CREATE INDEX login_failures_at ON login_failures (at);

-- Erasing a user finds their sessions by subject.
CREATE INDEX authorization_sessions_subject ON authorization_sessions (subject) WHERE subject IS NOT NULL;
