//! The VCS REST APIs hookbridge calls (`[sources.NAME.api]`): commit
//! statuses now, changed files later. One file per VCS.

use crate::config::secret::Secret;

/// A source's `[sources.NAME.api]`: where its VCS's REST API is, and the
/// token that may write commit statuses there.
#[derive(Debug, Clone)]
pub struct Api {
    /// The API's base URL, without a trailing slash.
    pub url: String,
    pub token: Secret,
    /// For Basic authentication (`user:token`): Bitbucket API tokens and
    /// app passwords. Bearer (or the VCS's own header) without it.
    pub user: Option<String>,
}
