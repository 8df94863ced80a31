//! Placeholder while the module is written (replaced in this change).

use axum::Router;

use crate::state::AppState;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
}
