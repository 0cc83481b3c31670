//! GitHub and GitHub Enterprise Server commit statuses:
//! `POST {url}/repos/{owner}/{repo}/statuses/{sha}` with
//! `{state, target_url, description, context}` and `Authorization: Bearer`.
//!
//! `url` is `https://api.github.com`, or `https://HOST/api/v3` for GHES:
//! both serve the same call under their root. GitHub has no `running` (it
//! is `pending`) and no `canceled` (it is `error`). The token needs
//! "Commit statuses: write" (fine-grained) or `repo:status` (classic).

use serde_json::{Map, Value};

use super::{StatusPost, checked, post, shown, two_parts};
use crate::store::status::StatusState;
use crate::target::encode::path_segment;
use crate::target::github_actions::API_VERSION;
use crate::target::{AUTHORIZATION, Credential, Header, OutboundRequest, REDACTED, USER_AGENT};

/// GitHub's word for `state`.
pub fn state(state: StatusState) -> &'static str {
    match state {
        StatusState::Pending | StatusState::Running => "pending",
        StatusState::Success => "success",
        StatusState::Failure => "failure",
        StatusState::Error | StatusState::Canceled => "error",
    }
}

pub(super) fn request(base: &str, p: &StatusPost<'_>) -> Result<OutboundRequest, String> {
    let (owner, repo) = two_parts(p.repository, "owner/repo")?;
    let url = checked(format!(
        "{base}/repos/{}/{}/statuses/{}",
        path_segment(owner),
        path_segment(repo),
        path_segment(p.sha)
    ))?;
    if p.context.chars().count() > 255 {
        return Err(format!(
            "the context {} is longer than GitHub's 255 characters",
            shown(p.context)
        ));
    }
    let mut body = Map::new();
    body.insert("state".into(), state(p.state).into());
    if let Some(target) = p.target_url {
        body.insert("target_url".into(), target.into());
    }
    body.insert("description".into(), p.description.into());
    body.insert("context".into(), p.context.into());
    Ok(post(
        url,
        headers(),
        Value::Object(body),
        Credential::Authorization("Bearer"),
    ))
}

/// GitHub's media type and API version, and the token's place.
fn headers() -> Vec<Header> {
    let header = |name: &'static str, value: String| Header {
        name: name.into(),
        value,
    };
    vec![
        header("Accept", "application/vnd.github+json".into()),
        header("Content-Type", "application/json".into()),
        header("X-GitHub-Api-Version", API_VERSION.into()),
        header("User-Agent", USER_AGENT.into()),
        header(AUTHORIZATION, format!("Bearer {REDACTED}")),
    ]
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
    fn each_state_is_one_request_to_the_statuses_of_the_commit() {
        let words = ["pending", "pending", "success", "failure", "error", "error"];
        for (s, word) in ALL.into_iter().zip(words) {
            let r = status_request(Vcs::Github, &api("https://api.github.com/"), &sample(s)).unwrap();
            assert_eq!(r.method, "POST");
            assert_eq!(
                r.url,
                format!("https://api.github.com/repos/octo-org/hello-world/statuses/{SHA}")
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
            assert_eq!(r.credential, Credential::Authorization("Bearer"));
            let h: Vec<(&str, &str)> = r
                .headers
                .iter()
                .map(|h| (h.name.as_ref(), h.value.as_str()))
                .collect();
            assert!(h.contains(&("Authorization", "Bearer ***")), "{h:?}");
            assert!(h.contains(&("Accept", "application/vnd.github+json")), "{h:?}");
            assert!(h.contains(&("X-GitHub-Api-Version", API_VERSION)), "{h:?}");
        }
    }

    #[test]
    fn enterprise_server_is_the_same_call_under_api_v3() {
        let mut p = sample(StatusState::Pending);
        p.target_url = None;
        let r = status_request(Vcs::Github, &api("https://ghe.example.com/api/v3"), &p).unwrap();
        assert_eq!(
            r.url,
            format!("https://ghe.example.com/api/v3/repos/octo-org/hello-world/statuses/{SHA}")
        );
        assert!(r.body.get("target_url").is_none(), "{}", r.body);
    }

    #[test]
    fn a_repository_not_owner_repo_is_refused() {
        for repo in ["octo", "octo/", "/x", "a/b/c", "../x", "a/..", " /x"] {
            let mut p = sample(StatusState::Pending);
            p.repository = repo;
            let e = status_request(Vcs::Github, &api("https://api.github.com"), &p).unwrap_err();
            assert!(e.contains("is not `owner/repo`"), "{repo}: {e}");
        }
        let mut p = sample(StatusState::Pending);
        p.repository = "my org/a?b#c";
        let r = status_request(Vcs::Github, &api("https://api.github.com"), &p).unwrap();
        assert!(r.url.contains("/repos/my%20org/a%3Fb%23c/statuses/"), "{}", r.url);
    }
}
