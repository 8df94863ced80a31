//! Placeholder while the module is written (replaced in this change).

use axum::Router;
use axum::http::StatusCode;
use axum::routing::post;

use crate::state::AppState;

pub(crate) fn routes() -> Router<AppState> {
    Router::new().route(
        crate::paths::TOKEN,
        post(|| async { StatusCode::NOT_IMPLEMENTED }),
    )
}
