//! The conformance suite, run against the in-memory backend.

async fn harness() -> authstore_testsuite::Harness {
    authstore_testsuite::Harness::new(std::sync::Arc::new(authstore_memory::MemoryStore::new()))
}

authstore_testsuite::conformance_tests!(harness);
