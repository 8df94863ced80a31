//! PostgreSQL beside tokio-postgres: the raw side (same server, schema and tables, prepared
//! statements through a deadpool-postgres pool of the store's size), the bulk loader
//! (binary `COPY`), durability settings and size figures.
//!
//! Both sides connect over plain TCP to 127.0.0.1 (`sslmode=disable` for the store,
//! `NoTls` here), so neither pays for TLS.

use std::hint::black_box;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use authstore_core::{AuthContext, GrantId, Timestamp};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Config, NoTls};

use crate::rows::{Load, Shape};
use crate::tokens::hash;

/// The store's `find_access_token` statement (authstore-postgres/src/stores.rs).
const VALIDATE: &str =
    "SELECT a.grant_id, a.client_id, a.subject, a.scope, a.audience, a.issued_at,
                    a.expires_at, a.revoked_at, a.cnf_kind, a.cnf_value, a.auth, a.claims
             FROM access_tokens AS a
             JOIN grants AS g ON g.id = a.grant_id
             JOIN clients AS c ON c.id = a.client_id
             WHERE a.hash = $1 AND a.expires_at > $2 AND a.revoked_at IS NULL
               AND g.revoked_at IS NULL AND NOT c.disabled";

/// The store's access token insert.
const INSERT_ACCESS: &str =
    "INSERT INTO access_tokens (hash, grant_id, client_id, subject, scope, audience,
             issued_at, expires_at, revoked_at, cnf_kind, cnf_value, auth, claims)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)";

/// The store's consume statement.
const CONSUME: &str = "UPDATE authorization_codes AS k SET consumed_at = $2
                 WHERE k.hash = $1 AND k.consumed_at IS NULL AND k.expires_at > $2
                   AND EXISTS (SELECT 1 FROM grants AS g
                               WHERE g.id = k.grant_id AND g.revoked_at IS NULL)
                   AND EXISTS (SELECT 1 FROM clients AS c
                               WHERE c.id = k.client_id AND NOT c.disabled)
                 RETURNING grant_id, client_id, subject, redirect_uri, scope, code_challenge,
                     code_challenge_method, nonce, issued_at, expires_at, consumed_at";

/// The store's first-rotation statement.
const ROTATE: &str = "UPDATE refresh_tokens AS r SET rotated_at = $2, successor = $3
                     WHERE r.hash = $1 AND r.rotated_at IS NULL AND r.revoked_at IS NULL
                       AND r.expires_at > $2 AND r.idle_expires_at > $2
                       AND EXISTS (SELECT 1 FROM grants AS g
                                   WHERE g.id = r.grant_id AND g.revoked_at IS NULL)
                       AND EXISTS (SELECT 1 FROM clients AS c
                                   WHERE c.id = r.client_id AND NOT c.disabled)
                     RETURNING r.grant_id, r.client_id";

/// The store's grant revocation statement.
const REVOKE: &str = "UPDATE grants SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL";

fn err(e: impl std::fmt::Display) -> String {
    format!("postgres: {e}")
}

/// `t` as a `timestamptz` parameter.
fn st(t: Timestamp) -> SystemTime {
    let us = t.as_unix_micros();
    if us >= 0 {
        UNIX_EPOCH + Duration::from_micros(us.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_micros(us.unsigned_abs())
    }
}

/// The connection configuration of `url`, working in `schema`, without TLS.
pub(crate) fn config(url: &str, schema: Option<&str>) -> Result<Config, String> {
    let mut c: Config = url.parse().map_err(|e| err(format!("bad URL: {e}")))?;
    c.ssl_mode(tokio_postgres::config::SslMode::Disable);
    c.application_name("authstore-bench");
    if let Some(s) = schema {
        c.options(format!("-c search_path={s}"));
    }
    Ok(c)
}

/// One plain connection (administration, loads).
pub(crate) async fn connect(
    url: &str,
    schema: Option<&str>,
) -> Result<tokio_postgres::Client, String> {
    let (client, conn) = config(url, schema)?.connect(NoTls).await.map_err(err)?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// Sets the server's durability (`fsync`, `synchronous_commit`, `full_page_writes`) with
/// `ALTER SYSTEM` and reloads; waits until a new session sees it.
pub(crate) async fn set_durability(url: &str, on: bool) -> Result<(), String> {
    let v = if on { "on" } else { "off" };
    let c = connect(url, None).await?;
    for name in ["fsync", "synchronous_commit", "full_page_writes"] {
        c.batch_execute(&format!("ALTER SYSTEM SET {name} = {v}"))
            .await
            .map_err(|e| err(format!("ALTER SYSTEM SET {name} (needs a superuser): {e}")))?;
    }
    c.batch_execute("SELECT pg_reload_conf()")
        .await
        .map_err(err)?;
    for _ in 0..100 {
        let probe = connect(url, None).await?;
        let fsync: String = probe
            .query_one("SHOW fsync", &[])
            .await
            .map_err(err)?
            .get(0);
        if fsync == v {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(err("the server did not take the new durability settings"))
}

/// The server's version and durability settings.
pub(crate) async fn settings(url: &str) -> Result<Vec<(String, String)>, String> {
    let c = connect(url, None).await?;
    let mut out = Vec::new();
    for name in [
        "server_version",
        "fsync",
        "synchronous_commit",
        "full_page_writes",
        "wal_sync_method",
        "shared_buffers",
    ] {
        let v: String = c
            .query_one(&format!("SHOW {name}"), &[])
            .await
            .map_err(err)?
            .get(0);
        out.push((name.to_owned(), v));
    }
    Ok(out)
}

/// Drops `schema` and everything in it (best effort: the server is throwaway).
pub(crate) async fn drop_schema(url: &str, schema: &str) {
    if let Ok(c) = connect(url, None).await {
        let _ = c
            .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
            .await;
    }
}

/// tokio-postgres on the store's schema.
pub(crate) struct PgRaw {
    pool: Pool,
    url: String,
    schema: String,
    shape: Shape,
    issue_grant: GrantId,
    /// The store's encoding of the default auth context (jsonb).
    auth: serde_json::Value,
}

impl PgRaw {
    /// A pool of `pool_size` connections to `url` in `schema` (migrated), and the grant raw
    /// issuance uses.
    pub(crate) async fn connect(
        url: &str,
        schema: &str,
        pool_size: usize,
        shape: Shape,
        now: Timestamp,
    ) -> Result<Self, String> {
        let manager = Manager::from_config(
            config(url, Some(schema))?,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(err)?;
        let auth = serde_json::to_value(AuthContext::default()).map_err(err)?;
        let mut raw = Self {
            pool,
            url: url.to_owned(),
            schema: schema.to_owned(),
            shape,
            issue_grant: GrantId::new_at(now),
            auth,
        };
        let grant = raw.shape.grant(now);
        raw.copy_grants(std::slice::from_ref(&grant)).await?;
        raw.issue_grant = grant.id;
        Ok(raw)
    }

    /// Validation: the keyed hash, then the store's statement (prepared once per pooled
    /// connection), every column read into an owned value (no scope or auth decoding).
    pub(crate) async fn validate(&self, token: &str, now: Timestamp) -> Result<(), String> {
        let h = hash(&self.shape.key, token);
        let c = self.pool.get().await.map_err(err)?;
        let stmt = c.prepare_cached(VALIDATE).await.map_err(err)?;
        let row = c
            .query_opt(&stmt, &[&h.as_slice(), &st(now)])
            .await
            .map_err(err)?;
        drop(c);
        let Some(r) = row else {
            return Err("postgres raw: token not found".into());
        };
        let decoded = (
            r.try_get::<_, uuid::Uuid>(0).map_err(err)?,
            r.try_get::<_, uuid::Uuid>(1).map_err(err)?,
            r.try_get::<_, Option<String>>(2).map_err(err)?,
            r.try_get::<_, String>(3).map_err(err)?,
            r.try_get::<_, Vec<String>>(4).map_err(err)?,
            r.try_get::<_, SystemTime>(5).map_err(err)?,
            r.try_get::<_, SystemTime>(6).map_err(err)?,
            r.try_get::<_, Option<SystemTime>>(7).map_err(err)?,
            r.try_get::<_, Option<String>>(8).map_err(err)?,
            r.try_get::<_, Option<String>>(9).map_err(err)?,
            r.try_get::<_, serde_json::Value>(10).map_err(err)?,
            r.try_get::<_, serde_json::Value>(11).map_err(err)?,
        );
        black_box(decoded);
        Ok(())
    }

    /// Issuance: one access token row, autocommit.
    pub(crate) async fn insert_access(
        &self,
        token: &str,
        now: Timestamp,
        expires: Timestamp,
    ) -> Result<(), String> {
        let h = hash(&self.shape.key, token);
        let t = self.shape.access(self.issue_grant, now, expires);
        let c = self.pool.get().await.map_err(err)?;
        let stmt = c.prepare_cached(INSERT_ACCESS).await.map_err(err)?;
        let params: [&(dyn ToSql + Sync); 13] = [
            &h.as_slice(),
            t.grant_id.as_uuid(),
            t.client_id.as_uuid(),
            &t.subject.as_ref().map(|s| s.as_str()),
            &t.scope.to_string(),
            &t.audience,
            &st(t.issued_at),
            &st(t.expires_at),
            &t.revoked_at.map(st),
            &Option::<&str>::None,
            &Option::<&str>::None,
            &self.auth,
            &t.claims,
        ];
        c.execute(&stmt, &params).await.map_err(err)?;
        Ok(())
    }

    /// Consumption: the store's compare-and-set statement, autocommit.
    pub(crate) async fn consume(&self, token: &str, now: Timestamp) -> Result<(), String> {
        let h = hash(&self.shape.key, token);
        let c = self.pool.get().await.map_err(err)?;
        let stmt = c.prepare_cached(CONSUME).await.map_err(err)?;
        let row = c
            .query_opt(&stmt, &[&h.as_slice(), &st(now)])
            .await
            .map_err(err)?;
        drop(c);
        let Some(r) = row else {
            return Err("postgres raw: code not consumable".into());
        };
        let decoded = (
            r.try_get::<_, uuid::Uuid>(0).map_err(err)?,
            r.try_get::<_, uuid::Uuid>(1).map_err(err)?,
            r.try_get::<_, String>(2).map_err(err)?,
            r.try_get::<_, String>(3).map_err(err)?,
            r.try_get::<_, String>(4).map_err(err)?,
            r.try_get::<_, Option<String>>(5).map_err(err)?,
            r.try_get::<_, Option<String>>(6).map_err(err)?,
            r.try_get::<_, Option<String>>(7).map_err(err)?,
            r.try_get::<_, SystemTime>(8).map_err(err)?,
            r.try_get::<_, SystemTime>(9).map_err(err)?,
            r.try_get::<_, Option<SystemTime>>(10).map_err(err)?,
        );
        black_box(decoded);
        Ok(())
    }

    /// Rotation: the store's first-rotation statement, autocommit.
    pub(crate) async fn rotate(
        &self,
        token: &str,
        successor: &str,
        now: Timestamp,
    ) -> Result<(), String> {
        let h = hash(&self.shape.key, token);
        let next = hash(&self.shape.key, successor);
        let c = self.pool.get().await.map_err(err)?;
        let stmt = c.prepare_cached(ROTATE).await.map_err(err)?;
        let row = c
            .query_opt(&stmt, &[&h.as_slice(), &st(now), &next.as_slice()])
            .await
            .map_err(err)?;
        match row {
            Some(r) => {
                black_box((
                    r.try_get::<_, uuid::Uuid>(0).map_err(err)?,
                    r.try_get::<_, uuid::Uuid>(1).map_err(err)?,
                ));
                Ok(())
            }
            None => Err("postgres raw: refresh token not rotatable".into()),
        }
    }

    /// Revocation: the store's grant update, autocommit.
    pub(crate) async fn revoke(&self, id: GrantId, now: Timestamp) -> Result<(), String> {
        let c = self.pool.get().await.map_err(err)?;
        let stmt = c.prepare_cached(REVOKE).await.map_err(err)?;
        let n = c
            .execute(&stmt, &[id.as_uuid(), &st(now)])
            .await
            .map_err(err)?;
        if n == 1 {
            Ok(())
        } else {
            Err("postgres raw: grant not revocable".into())
        }
    }

    /// Bulk load of access tokens with their grants: binary `COPY`, one statement per chunk
    /// and table (foreign-key checks are queued per statement, so chunks bound that queue).
    pub(crate) async fn load_access(&self, load: Load) -> Result<(), String> {
        for part in load.chunks() {
            let c = part.access(&self.shape);
            self.copy_grants(&c.grants).await?;
            let client = connect(&self.url, Some(&self.schema)).await?;
            let sink = client
                .copy_in(
                    "COPY access_tokens (hash, grant_id, client_id, subject, scope, audience,
                         issued_at, expires_at, revoked_at, cnf_kind, cnf_value, auth, claims)
                     FROM STDIN (FORMAT binary)",
                )
                .await
                .map_err(err)?;
            let w = BinaryCopyInWriter::new(
                sink,
                &[
                    Type::BYTEA,
                    Type::UUID,
                    Type::UUID,
                    Type::TEXT,
                    Type::TEXT,
                    Type::TEXT_ARRAY,
                    Type::TIMESTAMPTZ,
                    Type::TIMESTAMPTZ,
                    Type::TIMESTAMPTZ,
                    Type::TEXT,
                    Type::TEXT,
                    Type::JSONB,
                    Type::JSONB,
                ],
            );
            tokio::pin!(w);
            for (s, t) in &c.records {
                let h = hash(&self.shape.key, s);
                w.as_mut()
                    .write(&[
                        &h.as_slice(),
                        t.grant_id.as_uuid(),
                        t.client_id.as_uuid(),
                        &t.subject.as_ref().map(|s| s.as_str()),
                        &t.scope.to_string(),
                        &t.audience,
                        &st(t.issued_at),
                        &st(t.expires_at),
                        &t.revoked_at.map(st),
                        &Option::<&str>::None,
                        &Option::<&str>::None,
                        &self.auth,
                        &t.claims,
                    ])
                    .await
                    .map_err(err)?;
            }
            w.finish().await.map_err(err)?;
        }
        Ok(())
    }

    /// Bulk load of authorization codes, one grant each; their strings.
    pub(crate) async fn load_codes(&self, load: Load) -> Result<Vec<String>, String> {
        let mut out = Vec::new();
        for part in load.chunks() {
            let c = part.codes(&self.shape);
            self.copy_grants(&c.grants).await?;
            let client = connect(&self.url, Some(&self.schema)).await?;
            let sink = client
                .copy_in(
                    "COPY authorization_codes (hash, grant_id, client_id, subject, redirect_uri,
                         scope, code_challenge, code_challenge_method, nonce, issued_at,
                         expires_at, consumed_at)
                     FROM STDIN (FORMAT binary)",
                )
                .await
                .map_err(err)?;
            let w = BinaryCopyInWriter::new(
                sink,
                &[
                    Type::BYTEA,
                    Type::UUID,
                    Type::UUID,
                    Type::TEXT,
                    Type::TEXT,
                    Type::TEXT,
                    Type::TEXT,
                    Type::TEXT,
                    Type::TEXT,
                    Type::TIMESTAMPTZ,
                    Type::TIMESTAMPTZ,
                    Type::TIMESTAMPTZ,
                ],
            );
            tokio::pin!(w);
            for (s, k) in &c.records {
                let h = hash(&self.shape.key, s);
                w.as_mut()
                    .write(&[
                        &h.as_slice(),
                        k.grant_id.as_uuid(),
                        k.client_id.as_uuid(),
                        &k.subject.as_str(),
                        &k.redirect_uri.as_str(),
                        &k.scope.to_string(),
                        &Option::<&str>::None,
                        &Option::<&str>::None,
                        &k.nonce.as_deref(),
                        &st(k.issued_at),
                        &st(k.expires_at),
                        &k.consumed_at.map(st),
                    ])
                    .await
                    .map_err(err)?;
            }
            w.finish().await.map_err(err)?;
            out.extend(c.records.into_iter().map(|(s, _)| s));
        }
        Ok(out)
    }

    /// Bulk load of refresh tokens, one grant each; their strings.
    pub(crate) async fn load_refresh(&self, load: Load) -> Result<Vec<String>, String> {
        let mut out = Vec::new();
        for part in load.chunks() {
            let c = part.refresh(&self.shape);
            self.copy_grants(&c.grants).await?;
            let client = connect(&self.url, Some(&self.schema)).await?;
            let sink = client
                .copy_in(
                    "COPY refresh_tokens (hash, grant_id, client_id, subject, scope, issued_at,
                         expires_at, idle_expires_at, rotated_at, successor, reuse_count,
                         revoked_at, cnf_kind, cnf_value)
                     FROM STDIN (FORMAT binary)",
                )
                .await
                .map_err(err)?;
            let w = BinaryCopyInWriter::new(
                sink,
                &[
                    Type::BYTEA,
                    Type::UUID,
                    Type::UUID,
                    Type::TEXT,
                    Type::TEXT,
                    Type::TIMESTAMPTZ,
                    Type::TIMESTAMPTZ,
                    Type::TIMESTAMPTZ,
                    Type::TIMESTAMPTZ,
                    Type::BYTEA,
                    Type::INT4,
                    Type::TIMESTAMPTZ,
                    Type::TEXT,
                    Type::TEXT,
                ],
            );
            tokio::pin!(w);
            for (s, t) in &c.records {
                let h = hash(&self.shape.key, s);
                let reuse = i32::try_from(t.reuse_count).unwrap_or(i32::MAX);
                w.as_mut()
                    .write(&[
                        &h.as_slice(),
                        t.grant_id.as_uuid(),
                        t.client_id.as_uuid(),
                        &t.subject.as_ref().map(|s| s.as_str()),
                        &t.scope.to_string(),
                        &st(t.issued_at),
                        &st(t.expires_at),
                        &st(t.idle_expires_at),
                        &t.rotated_at.map(st),
                        &t.successor.as_ref().map(|s| s.as_bytes().as_slice()),
                        &reuse,
                        &t.revoked_at.map(st),
                        &Option::<&str>::None,
                        &Option::<&str>::None,
                    ])
                    .await
                    .map_err(err)?;
            }
            w.finish().await.map_err(err)?;
            out.extend(c.records.into_iter().map(|(s, _)| s));
        }
        Ok(out)
    }

    /// Bulk load of `n` grants; their ids.
    pub(crate) async fn load_grants(
        &self,
        n: usize,
        created: Timestamp,
    ) -> Result<Vec<GrantId>, String> {
        let grants: Vec<_> = (0..n).map(|_| self.shape.grant(created)).collect();
        for part in grants.chunks(crate::rows::CHUNK as usize) {
            self.copy_grants(part).await?;
        }
        Ok(grants.into_iter().map(|g| g.id).collect())
    }

    async fn copy_grants(&self, grants: &[authstore_core::Grant]) -> Result<(), String> {
        if grants.is_empty() {
            return Ok(());
        }
        let client = connect(&self.url, Some(&self.schema)).await?;
        let sink = client
            .copy_in(
                "COPY grants (id, client_id, subject, scope, auth, created_at, revoked_at)
                 FROM STDIN (FORMAT binary)",
            )
            .await
            .map_err(err)?;
        let w = BinaryCopyInWriter::new(
            sink,
            &[
                Type::UUID,
                Type::UUID,
                Type::TEXT,
                Type::TEXT,
                Type::JSONB,
                Type::TIMESTAMPTZ,
                Type::TIMESTAMPTZ,
            ],
        );
        tokio::pin!(w);
        for g in grants {
            let auth = serde_json::to_value(&g.auth).map_err(err)?;
            w.as_mut()
                .write(&[
                    g.id.as_uuid(),
                    g.client_id.as_uuid(),
                    &g.subject.as_ref().map(|s| s.as_str()),
                    &g.scope.to_string(),
                    &auth,
                    &st(g.created_at),
                    &g.revoked_at.map(st),
                ])
                .await
                .map_err(err)?;
        }
        w.finish().await.map_err(err)?;
        Ok(())
    }

    /// `ANALYZE` of the token tables, as autovacuum would do after a load.
    pub(crate) async fn analyze(&self) -> Result<(), String> {
        let c = connect(&self.url, Some(&self.schema)).await?;
        c.batch_execute("ANALYZE grants, access_tokens, authorization_codes, refresh_tokens")
            .await
            .map_err(err)
    }

    /// After a large load: `VACUUM (ANALYZE)` of the loaded tables (what autovacuum would
    /// do soon after, and would otherwise do in the middle of a measurement) and a
    /// `CHECKPOINT` (superuser; skipped if refused), so measurements see the steady state.
    pub(crate) async fn settle(&self) -> Result<(), String> {
        let c = connect(&self.url, Some(&self.schema)).await?;
        c.batch_execute("VACUUM (ANALYZE) grants, access_tokens")
            .await
            .map_err(err)?;
        let _ = c.batch_execute("CHECKPOINT").await;
        Ok(())
    }

    /// `pg_total_relation_size` (table, indexes, TOAST) of `access_tokens` and `grants`,
    /// and the size of the database.
    pub(crate) async fn sizes(&self) -> Result<crate::sqlite::Sizes, String> {
        let c = connect(&self.url, Some(&self.schema)).await?;
        let r = c
            .query_one(
                "SELECT pg_total_relation_size('access_tokens'), pg_total_relation_size('grants'),
                        pg_database_size(current_database())",
                &[],
            )
            .await
            .map_err(err)?;
        let get = |i: usize| -> Result<u64, String> {
            Ok(u64::try_from(r.try_get::<_, i64>(i).map_err(err)?).unwrap_or(0))
        };
        Ok(crate::sqlite::Sizes {
            access_tokens: get(0)?,
            grants: get(1)?,
            database: get(2)?,
        })
    }
}
