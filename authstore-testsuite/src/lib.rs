//! The conformance suite every authstore backend runs.
//!
//! Each case is a plain `pub async fn case(h: Harness)` in [`cases`]; the
//! [`conformance_tests!`] macro stamps every case into a backend's tests as a
//! `#[tokio::test]`. A backend only says how to build a fresh, migrated, empty store:
//!
//! ```text
//! async fn harness() -> authstore_testsuite::Harness {
//!     authstore_testsuite::Harness::new(std::sync::Arc::new(MyBackend::new()))
//! }
//! authstore_testsuite::conformance_tests!(harness);
//! ```

// The suite's job is to panic on a violation: unwrap/expect are its assertions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::any::Any;
use std::path::PathBuf;
use std::sync::Arc;

use authstore_core::Backend;

pub mod cases;

/// A fresh, migrated, empty backend for one test case.
pub struct Harness {
    /// The backend under test.
    pub backend: Arc<dyn Backend>,
    /// Files the backend keeps its data in (database, WAL, …): the leak scan reads them.
    /// Empty for backends without files.
    pub files: Vec<PathBuf>,
    /// Kept alive for the test's duration (temporary directories, servers).
    pub guard: Option<Box<dyn Any + Send + Sync>>,
}

impl std::fmt::Debug for Harness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Harness")
            .field("backend", &self.backend)
            .field("files", &self.files)
            .finish()
    }
}

impl Harness {
    /// A harness for a backend without files.
    pub fn new(backend: Arc<dyn Backend>) -> Self {
        Self {
            backend,
            files: Vec::new(),
            guard: None,
        }
    }

    /// A harness for a backend without files, keeping `guard` alive for the test's duration
    /// (e.g. something that drops a per-test schema).
    pub fn with_guard(backend: Arc<dyn Backend>, guard: impl Any + Send + Sync) -> Self {
        Self {
            backend,
            files: Vec::new(),
            guard: Some(Box::new(guard)),
        }
    }

    /// A harness whose data lives in `files`, keeping `guard` alive.
    pub fn with_files(
        backend: Arc<dyn Backend>,
        files: Vec<PathBuf>,
        guard: impl Any + Send + Sync,
    ) -> Self {
        Self {
            backend,
            files,
            guard: Some(Box::new(guard)),
        }
    }
}

/// Stamps every conformance case into the calling module as `#[tokio::test]`s. `$factory`
/// is an `async fn() -> Harness` giving a fresh, migrated, empty backend.
#[macro_export]
macro_rules! conformance_tests {
    ($factory:path) => {
        $crate::__cases!($factory;
            client_lifecycle,
            client_validation,
            client_credentials,
            access_token_expiry_boundary,
            disabled_client_tokens_inactive,
            authorization_code_flow,
            code_binding_checks,
            code_replay_revokes_grant,
            code_race_exactly_one_wins,
            code_expiry_boundary,
            refresh_rotation_and_reuse,
            refresh_race_grace_zero,
            refresh_grace_period,
            refresh_scope_and_expiry,
            rotation_and_disable_guards,
            revocation_rfc7009,
            revoke_by_grant_client_subject,
            cascade_on_client_delete,
            personal_access_tokens,
            authorization_sessions,
            consents,
            audit_queries,
            cleanup_keeps_live_data,
            cleanup_batches_and_concurrency,
            cleanup_preview_matches_cleanup,
            cleanup_keeps_recently_revoked_empty_grants,
            stats_counts,
            bad_input_changes_nothing,
            secrets_never_shown,
            token_key_rotation,
            key_checks,
            foreign_tokens,
            no_secret_in_logs,
            users,
            user_disable_and_erasure,
            groups,
            passwords_and_logins,
            login_lockout,
            login_sessions,
            one_time_tokens,
            totp_and_recovery_codes,
            second_factor_lockout_survives_the_password,
            passkeys_and_ceremonies,
            linked_accounts_and_reseal,
        );
    };
}

/// Stamps the cases for backends that keep their data in files ([`Harness::files`]): the
/// scan for secrets in clear.
#[macro_export]
macro_rules! file_tests {
    ($factory:path) => {
        $crate::__cases!($factory; no_secret_bytes_in_files, no_password_in_files, no_identity_secrets_in_files);
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __cases {
    ($factory:path; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                $crate::cases::$case($factory().await).await;
            }
        )*
    };
}
