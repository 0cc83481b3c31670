//! Bitbucket Cloud build statuses:
//! `POST {url}/2.0/repositories/{workspace}/{slug}/commit/{sha}/statuses/build`
//! with `{type, key, state, name, url, description, refname}`, and
//! `Authorization: Bearer` (a repository, project or workspace access token
//! with `repository:write`) or `Basic` with `user` (an Atlassian account's
//! e-mail and API token; app passwords stop working on 2026-06-09).
//!
//! A status is named by its `key`: posting the same key again updates it,
//! so the key is the context, or, where the context is longer than
//! Bitbucket's 40 characters or holds other characters, a digest of it
//! ([`key`]), the same for every post of one context. `url` is required:
//! without a pipeline URL yet, the commit's own page stands in. The
//! published schema (`commitstatus`) requires `type`, which Bitbucket's
//! answers set to `build`; it is sent so. Bitbucket has no `running`
//! (`INPROGRESS`) and no `error` (`FAILED`).

use serde_json::{Map, Value};
use sha2::Digest as _;

use super::{StatusPost, bearer_or_basic, checked, post, short_ref, two_parts};
use crate::store::status::StatusState;
use crate::target::OutboundRequest;
use crate::target::encode::path_segment;

/// The longest key Bitbucket takes.
pub const KEY_MAX: usize = 40;

/// Bitbucket's word for `state`.
pub fn state(state: StatusState) -> &'static str {
    match state {
        StatusState::Pending | StatusState::Running => "INPROGRESS",
        StatusState::Success => "SUCCESSFUL",
        StatusState::Failure | StatusState::Error => "FAILED",
        StatusState::Canceled => "STOPPED",
    }
}

/// The build key of a context: the context itself when it is at most
/// [`KEY_MAX`] plain characters, else `hookbridge-` and the start of its
/// SHA-256 in hex, [`KEY_MAX`] characters in all. Both products use it.
pub fn key(context: &str) -> String {
    let plain = |b: u8| b.is_ascii_alphanumeric() || b"-_./:".contains(&b);
    if context.len() <= KEY_MAX && context.bytes().all(plain) {
        return context.to_owned();
    }
    let prefix = "hookbridge-";
    let digest = hex::encode(sha2::Sha256::digest(context.as_bytes()));
    format!("{prefix}{}", &digest[..KEY_MAX - prefix.len()])
}

/// The API root: the configured URL plus `/2.0` unless it already ends so.
fn api_root(base: &str) -> String {
    if base.ends_with("/2.0") {
        base.to_owned()
    } else {
        format!("{base}/2.0")
    }
}

pub(super) fn request(base: &str, user: Option<&str>, p: &StatusPost<'_>) -> Result<OutboundRequest, String> {
    let (workspace, slug) = two_parts(p.repository, "workspace/repo_slug")?;
    let url = checked(format!(
        "{}/repositories/{}/{}/commit/{}/statuses/build",
        api_root(base),
        path_segment(workspace),
        path_segment(slug),
        path_segment(p.sha)
    ))?;
    let link = match p.target_url {
        Some(u) => u.to_owned(),
        None => format!(
            "https://bitbucket.org/{}/{}/commits/{}",
            path_segment(workspace),
            path_segment(slug),
            path_segment(p.sha)
        ),
    };
    let mut body = Map::new();
    body.insert("type".into(), "build".into());
    body.insert("key".into(), key(p.context).into());
    body.insert("state".into(), state(p.state).into());
    body.insert("name".into(), p.context.into());
    body.insert("url".into(), link.into());
    body.insert("description".into(), p.description.into());
    if let Some(r) = short_ref(p.git_ref) {
        body.insert("refname".into(), r.into());
    }
    let (headers, credential) = bearer_or_basic(user)?;
    Ok(post(url, headers, Value::Object(body), credential))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::store::status::Vcs;
    use crate::target::Credential;
    use crate::vcs::tests::{ALL, SHA, api, sample};
    use crate::vcs::{Api, status_request};

    #[test]
    fn each_state_is_one_build_status_keyed_by_the_context() {
        let words = [
            "INPROGRESS",
            "INPROGRESS",
            "SUCCESSFUL",
            "FAILED",
            "FAILED",
            "STOPPED",
        ];
        for (s, word) in ALL.into_iter().zip(words) {
            let mut p = sample(s);
            p.repository = "my-team/my-repo";
            let r = status_request(Vcs::BitbucketCloud, &api("https://api.bitbucket.org"), &p).unwrap();
            assert_eq!(r.method, "POST");
            assert_eq!(
                r.url,
                format!(
                    "https://api.bitbucket.org/2.0/repositories/my-team/my-repo/commit/{SHA}/statuses/build"
                )
            );
            assert_eq!(
                r.body,
                json!({
                    "type": "build",
                    "key": "hookbridge/deploy",
                    "state": word,
                    "name": "hookbridge/deploy",
                    "url": "https://gitlab.example.com/g/p/-/pipelines/1234",
                    "description": "GitLab pipeline #1234 running",
                    "refname": "main",
                })
            );
            assert_eq!(r.credential, Credential::Authorization("Bearer"));
        }
    }

    #[test]
    fn basic_with_a_user_and_the_commit_page_without_a_pipeline() {
        let mut p = sample(StatusState::Pending);
        p.repository = "ws/repo";
        p.target_url = None;
        let a = Api {
            user: Some("dev@example.com".into()),
            ..api("https://api.bitbucket.org/2.0")
        };
        let r = status_request(Vcs::BitbucketCloud, &a, &p).unwrap();
        assert!(
            r.url
                .starts_with("https://api.bitbucket.org/2.0/repositories/ws/repo/"),
            "{}",
            r.url
        );
        assert_eq!(r.credential, Credential::Basic("dev@example.com".into()));
        assert!(
            r.headers
                .iter()
                .any(|h| h.name == "Authorization" && h.value == "Basic ***")
        );
        assert_eq!(
            r.body["url"],
            format!("https://bitbucket.org/ws/repo/commits/{SHA}")
        );
        let bad = Api {
            user: Some("a:b".into()),
            ..api("https://api.bitbucket.org")
        };
        assert!(
            status_request(Vcs::BitbucketCloud, &bad, &p)
                .unwrap_err()
                .contains("has a `:`")
        );
    }

    #[test]
    fn a_long_or_unusual_context_is_keyed_by_its_digest() {
        let long = "hookbridge/a-very-long-rule-name-that-goes-on/and-on";
        let k = key(long);
        assert_eq!(k.len(), KEY_MAX);
        assert!(k.starts_with("hookbridge-"), "{k}");
        assert_eq!(k, key(long), "stable");
        assert_ne!(k, key("hookbridge/another"));
        assert_ne!(key("ctx with space"), "ctx with space");
        assert_eq!(key("ci/deploy:prod"), "ci/deploy:prod");
        assert_eq!(key(&"x".repeat(40)), "x".repeat(40));
        assert_ne!(key(&"x".repeat(41)), "x".repeat(41));
    }
}
