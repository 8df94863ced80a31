//! The cases.
use crate::Harness;
/// placeholder
pub async fn client_lifecycle(_h: Harness) {}
