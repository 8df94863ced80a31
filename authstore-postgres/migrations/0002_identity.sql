-- authstore PostgreSQL schema, version 2: users, groups, passwords, login failures.
--
-- This file is immutable once released (see 0001_initial.sql).
--
-- A user's OAuth subject is its id as text: grants, tokens, PATs, consents and
-- authorization sessions refer to it by `subject` text, not by foreign key, so
-- erasing a user deletes them explicitly. Everything below that belongs to a
-- user cascades from it.
--
-- Unique keys (`*_key`) are the case-folded forms computed by authstore-core
-- (`fold_case`), stored as given: never folded here.

CREATE TABLE users (
    id              uuid        NOT NULL PRIMARY KEY,
    username        text        NOT NULL,
    username_key    text        NOT NULL CONSTRAINT users_username_key UNIQUE,
    email           text,
    email_key       text                 CONSTRAINT users_email_key UNIQUE,
    email_verified  boolean     NOT NULL DEFAULT false,
    active          boolean     NOT NULL DEFAULT true,
    metadata        jsonb       NOT NULL,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    CHECK ((email IS NULL) = (email_key IS NULL))
);

CREATE TABLE groups (
    id          uuid        NOT NULL PRIMARY KEY,
    name        text        NOT NULL,
    name_key    text        NOT NULL CONSTRAINT groups_name_key UNIQUE,
    created_at  timestamptz NOT NULL
);

CREATE TABLE group_members (
    group_id  uuid NOT NULL REFERENCES groups (id) ON DELETE CASCADE,
    user_id   uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    PRIMARY KEY (group_id, user_id)
);
CREATE INDEX group_members_user ON group_members (user_id);

CREATE TABLE passwords (
    user_id     uuid        NOT NULL PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    phc         text        NOT NULL,
    updated_at  timestamptz NOT NULL
);

CREATE TABLE login_failures (
    id       bigserial   NOT NULL PRIMARY KEY,
    user_id  uuid                 REFERENCES users (id) ON DELETE CASCADE,
    source   inet,
    at       timestamptz NOT NULL
);
CREATE INDEX login_failures_user ON login_failures (user_id, at) WHERE user_id IS NOT NULL;
CREATE INDEX login_failures_source ON login_failures (source, at) WHERE source IS NOT NULL;
CREATE INDEX login_failures_at ON login_failures (at);

-- Erasing a user deletes their authorization sessions by subject.
CREATE INDEX authorization_sessions_subject ON authorization_sessions (subject) WHERE subject IS NOT NULL;
