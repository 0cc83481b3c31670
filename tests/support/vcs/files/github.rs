//! GitHub's reads of changed files (to be written).
use axum::http::{HeaderMap, Uri};
use axum::response::Response;
use hookbridge::store::status::Vcs;

use super::History;

pub(super) fn serve(
    _ghes: bool,
    _h: &History,
    _uri: &Uri,
    _headers: &HeaderMap,
    _problems: &mut Vec<String>,
) -> Response {
    super::super::server::error(Vcs::Github, 404, "Not Found")
}
