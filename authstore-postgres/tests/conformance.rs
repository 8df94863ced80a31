//! The shared conformance suite, on a fresh migrated schema per case.

// Test helpers outside #[test] fns count as non-test code for clippy's allow-*-in-tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

async fn harness() -> authstore_testsuite::Harness {
    let (store, schema) = common::store().await;
    authstore_core::backend::Maintenance::migrate(&store)
        .await
        .unwrap();
    authstore_testsuite::Harness::with_guard(std::sync::Arc::new(store), common::DropSchema(schema))
}

authstore_testsuite::conformance_tests!(harness);
