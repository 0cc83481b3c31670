//! Any HTTP endpoint: `<any method> /hook[/…]`. It takes any request, keeps it
//! as it came (tests check it, for instance with
//! [`verify_standard_webhook`](super::verify_standard_webhook)), and answers
//! 200 or the next scripted reply.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::Shared;
use super::reply::scripted_or;

/// The body as JSON (Null when it is not), and the answer.
pub(super) fn receive(shared: &Shared, raw: &[u8], hung: &mut bool) -> (Value, Response) {
    let body = serde_json::from_slice(raw).unwrap_or(Value::Null);
    let reply = shared.script.lock().unwrap().pop_front();
    let response = scripted_or(reply, hung, || StatusCode::OK.into_response());
    (body, response)
}
