-- authstore PostgreSQL schema, version 5: tokens no longer reference their client.
--
-- This file is immutable once released (see 0001_initial.sql).
--
-- access_tokens and refresh_tokens lose their `client_id REFERENCES clients (id)
-- ON DELETE CASCADE` foreign keys (named by PostgreSQL's default, <table>_client_id_fkey,
-- in 0001_initial.sql) and the indexes access_tokens_client and refresh_tokens_client,
-- which existed only to serve them: every issued token updated them and checked its client
-- under FOR KEY SHARE, and no query reads tokens by client. A token still goes when its
-- client goes: deleting a client deletes its grants (grants.client_id cascades), which
-- delete their codes and tokens (grant_id cascades, through the *_grant indexes).
-- client_id stays, NOT NULL: the store checks it is the grant's client when it issues,
-- and validation joins the client through it.
--
-- Catalog changes only, no row is read or rewritten: each statement takes a brief ACCESS
-- EXCLUSIVE lock on its table (dropping a foreign key also on clients), held to the end
-- of the migration's transaction.

ALTER TABLE access_tokens DROP CONSTRAINT access_tokens_client_id_fkey;
ALTER TABLE refresh_tokens DROP CONSTRAINT refresh_tokens_client_id_fkey;
DROP INDEX access_tokens_client;
DROP INDEX refresh_tokens_client;
