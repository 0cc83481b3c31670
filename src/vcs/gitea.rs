//! Gitea and Forgejo commit statuses (one API, two forks):
//! `POST {url}/api/v1/repos/{owner}/{repo}/statuses/{sha}` with
//! `{state, target_url, description, context}` and `Authorization: token`
//! (an access token with `write:repository`).
//!
//! `url` is the server's root URL (with its sub-path, if any); `/api/v1` is
//! added unless it is there already. Neither fork has `running` (it is
//! `pending`) or `canceled` (it is `error`).

use serde_json::{Map, Value};

use super::{StatusPost, checked, headers, post, two_parts};
use crate::store::status::StatusState;
use crate::target::encode::path_segment;
use crate::target::{AUTHORIZATION, Credential, OutboundRequest, REDACTED};

/// Gitea's and Forgejo's word for `state`.
pub fn state(state: StatusState) -> &'static str {
    match state {
        StatusState::Pending | StatusState::Running => "pending",
        StatusState::Success => "success",
        StatusState::Failure => "failure",
        StatusState::Error | StatusState::Canceled => "error",
    }
}

/// The API root: the configured URL plus `/api/v1` unless it already ends so.
fn api_root(base: &str) -> String {
    if base.ends_with("/api/v1") {
        base.to_owned()
    } else {
        format!("{base}/api/v1")
    }
}

pub(super) fn request(base: &str, p: &StatusPost<'_>) -> Result<OutboundRequest, String> {
    let (owner, repo) = two_parts(p.repository, "owner/repo")?;
    let url = checked(format!(
        "{}/repos/{}/{}/statuses/{}",
        api_root(base),
        path_segment(owner),
        path_segment(repo),
        path_segment(p.sha)
    ))?;
    let mut body = Map::new();
    body.insert("state".into(), state(p.state).into());
    if let Some(target) = p.target_url {
        body.insert("target_url".into(), target.into());
    }
    body.insert("description".into(), p.description.into());
    body.insert("context".into(), p.context.into());
    Ok(post(
        url,
        headers(AUTHORIZATION, format!("token {REDACTED}")),
        Value::Object(body),
        Credential::Authorization("token"),
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::store::status::Vcs;
    use crate::vcs::status_request;
    use crate::vcs::tests::{ALL, SHA, api, sample};

    #[test]
    fn each_state_is_one_request_to_the_statuses_of_the_commit_on_either_fork() {
        let words = ["pending", "pending", "success", "failure", "error", "error"];
        for vcs in [Vcs::Gitea, Vcs::Forgejo] {
            for (s, word) in ALL.into_iter().zip(words) {
                for base in [
                    "https://git.example.com/sub",
                    "https://git.example.com/sub/api/v1/",
                ] {
                    let r = status_request(vcs, &api(base), &sample(s)).unwrap();
                    assert_eq!(r.method, "POST");
                    assert_eq!(
                        r.url,
                        format!(
                            "https://git.example.com/sub/api/v1/repos/octo-org/hello-world/statuses/{SHA}"
                        )
                    );
                    assert_eq!(
                        r.body,
                        json!({
                            "state": word,
                            "target_url": "https://gitlab.example.com/g/p/-/pipelines/1234",
                            "description": "GitLab pipeline #1234 running",
                            "context": "hookbridge/deploy",
                        })
                    );
                    assert_eq!(r.credential, Credential::Authorization("token"));
                    assert!(
                        r.headers
                            .iter()
                            .any(|h| h.name == "Authorization" && h.value == "token ***")
                    );
                }
            }
        }
    }
}
