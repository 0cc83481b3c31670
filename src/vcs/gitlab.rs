//! GitLab commit statuses: `POST {url}/api/v4/projects/{path}/statuses/{sha}`
//! with `{state, name, ref, target_url, description}` and the token in
//! `PRIVATE-TOKEN` (a personal, group or project access token with the `api`
//! scope, Developer role or above).
//!
//! The project is its path (`group/sub/project`), URL-encoded into one
//! segment as GitLab asks, or its numeric id. `ref` is the branch or tag
//! name; without one GitLab picks the commit's latest pipeline. GitLab has
//! no `error`: it is `failed`.

use serde_json::{Map, Value};

use super::{StatusPost, checked, headers, is_segment, post, short_ref, shown};
use crate::store::status::StatusState;
use crate::target::encode::path_segment;
use crate::target::{Credential, OutboundRequest, REDACTED};

/// The header GitLab reads an access token from.
pub const TOKEN_HEADER: &str = "PRIVATE-TOKEN";

/// GitLab's word for `state`.
pub fn state(state: StatusState) -> &'static str {
    match state {
        StatusState::Pending => "pending",
        StatusState::Running => "running",
        StatusState::Success => "success",
        StatusState::Failure | StatusState::Error => "failed",
        StatusState::Canceled => "canceled",
    }
}

/// The API root: the configured URL plus `/api/v4` unless it already ends so.
fn api_root(base: &str) -> String {
    if base.ends_with("/api/v4") {
        base.to_owned()
    } else {
        format!("{base}/api/v4")
    }
}

pub(super) fn request(base: &str, p: &StatusPost<'_>) -> Result<OutboundRequest, String> {
    // `group/sub/project`: every part a name, at least two of them (a
    // numeric project id is one part).
    let parts: Vec<&str> = p.repository.split('/').collect();
    let numeric = parts.len() == 1 && parts[0].bytes().all(|b| b.is_ascii_digit()) && !parts[0].is_empty();
    if !numeric && (parts.len() < 2 || !parts.iter().all(|part| is_segment(part))) {
        return Err(format!(
            "repository {} is not a GitLab project path `group/project`",
            shown(p.repository)
        ));
    }
    let url = checked(format!(
        "{}/projects/{}/statuses/{}",
        api_root(base),
        path_segment(p.repository),
        path_segment(p.sha)
    ))?;
    if p.context.chars().count() > 255 {
        return Err(format!(
            "the context {} is longer than GitLab's 255 characters",
            shown(p.context)
        ));
    }
    let mut body = Map::new();
    body.insert("state".into(), state(p.state).into());
    body.insert("name".into(), p.context.into());
    if let Some(r) = short_ref(p.git_ref) {
        body.insert("ref".into(), r.into());
    }
    if let Some(target) = p.target_url {
        body.insert("target_url".into(), target.into());
    }
    body.insert("description".into(), p.description.into());
    Ok(post(
        url,
        headers(TOKEN_HEADER, REDACTED.into()),
        Value::Object(body),
        Credential::Header(TOKEN_HEADER.into()),
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
    fn each_state_is_one_request_to_the_statuses_of_the_commit() {
        let words = ["pending", "running", "success", "failed", "failed", "canceled"];
        for (s, word) in ALL.into_iter().zip(words) {
            let mut p = sample(s);
            p.repository = "group/sub/app";
            let r = status_request(Vcs::Gitlab, &api("https://gitlab.com"), &p).unwrap();
            assert_eq!(r.method, "POST");
            assert_eq!(
                r.url,
                format!("https://gitlab.com/api/v4/projects/group%2Fsub%2Fapp/statuses/{SHA}")
            );
            assert_eq!(
                r.body,
                json!({
                    "state": word,
                    "name": "hookbridge/deploy",
                    "ref": "main",
                    "target_url": "https://gitlab.example.com/g/p/-/pipelines/1234",
                    "description": "GitLab pipeline #1234 running",
                })
            );
            assert_eq!(r.credential, Credential::Header("PRIVATE-TOKEN".into()));
            assert!(
                r.headers
                    .iter()
                    .any(|h| h.name == "PRIVATE-TOKEN" && h.value == "***"),
                "{:?}",
                r.headers
            );
        }
    }

    #[test]
    fn ref_is_the_branch_or_tag_name() {
        let cases = [
            (Some("refs/heads/feature/x"), Some("feature/x")),
            (Some("refs/tags/v1.2"), Some("v1.2")),
            (Some("refs/merge-requests/3/head"), None),
            (Some("main"), Some("main")),
            (Some(""), None),
            (None, None),
        ];
        for (git_ref, want) in cases {
            let mut p = sample(StatusState::Success);
            p.git_ref = git_ref;
            p.target_url = None;
            let r = status_request(Vcs::Gitlab, &api("https://gitlab.example.com/api/v4"), &p).unwrap();
            assert!(
                r.url.starts_with("https://gitlab.example.com/api/v4/projects/"),
                "{}",
                r.url
            );
            assert_eq!(r.body.get("ref").and_then(Value::as_str), want, "{git_ref:?}");
            assert!(r.body.get("target_url").is_none());
        }
    }

    #[test]
    fn a_project_is_a_path_or_an_id() {
        let mut p = sample(StatusState::Pending);
        p.repository = "42";
        let r = status_request(Vcs::Gitlab, &api("https://gitlab.com"), &p).unwrap();
        assert!(r.url.contains("/projects/42/statuses/"), "{}", r.url);
        for repo in ["", "app", "group/", "group//app", "../app", "group/.."] {
            p.repository = repo;
            let e = status_request(Vcs::Gitlab, &api("https://gitlab.com"), &p).unwrap_err();
            assert!(e.contains("GitLab project path"), "{repo}: {e}");
        }
    }
}
