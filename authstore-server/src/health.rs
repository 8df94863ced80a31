//! `/healthz` (the process answers) and `/readyz` (the database answers one indexed read).

use authstore_core::ClientId;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::state::AppState;

pub(crate) async fn healthz() -> &'static str {
    "ok\n"
}

pub(crate) async fn readyz(State(state): State<AppState>) -> Response {
    // One primary-key read of a client that cannot exist (the nil UUID is never minted).
    match state
        .store
        .backend()
        .get_client(ClientId::from_uuid(uuid::Uuid::nil()))
        .await
    {
        Ok(_) => "ready\n".into_response(),
        Err(e) => {
            tracing::warn!(code = e.code(), error = %e, "readiness check failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: database error {}\n", e.code()),
            )
                .into_response()
        }
    }
}
