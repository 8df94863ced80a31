//! The shared conformance suite, on a fresh migrated SQLite file per case.

// Test helpers outside #[test] fns count as non-test code for clippy's allow-*-in-tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

async fn harness() -> authstore_testsuite::Harness {
    let dir = tempfile::tempdir().unwrap();
    let store =
        authstore_sqlite::SqliteStore::open(dir.path().join("t.db"), Default::default()).unwrap();
    authstore_core::backend::Maintenance::migrate(&store)
        .await
        .unwrap();
    let files = store.files();
    authstore_testsuite::Harness::with_files(std::sync::Arc::new(store), files, dir)
}

authstore_testsuite::conformance_tests!(harness);
authstore_testsuite::file_tests!(harness);
