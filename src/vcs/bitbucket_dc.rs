//! Bitbucket Data Center build statuses:
//! `POST {url}/rest/api/latest/projects/{KEY}/repos/{slug}/commits/{sha}/builds`
//! with `{key, state, name, url, description, ref}`, and `Authorization:
//! Bearer` (an HTTP access token with repository write) or `Basic` with
//! `user`.
//!
//! The repository is the event's: `KEY/slug`, as the Data Center source
//! names it from `repository.project.key` and `repository.slug` (a
//! personal project's key is `~USER`). `key`, `state` and `url` are
//! required; the key is [`bitbucket_cloud::key`] of the context, so one
//! context keeps one build across its posts, and without a pipeline URL yet
//! the commit's page on the server stands in. `ref` is the full ref
//! (`refs/heads/main`). Data Center has no `running` (`INPROGRESS`) and no
//! `error` (`FAILED`); a cancelled pipeline is `CANCELLED`.
//!
//! [`bitbucket_cloud::key`]: super::bitbucket_cloud::key

use serde_json::{Map, Value};

use super::bitbucket_cloud::key;
use super::{StatusPost, bearer_or_basic, checked, post, two_parts};
use crate::store::status::StatusState;
use crate::target::OutboundRequest;
use crate::target::encode::path_segment;

/// Data Center's word for `state`.
pub fn state(state: StatusState) -> &'static str {
    match state {
        StatusState::Pending | StatusState::Running => "INPROGRESS",
        StatusState::Success => "SUCCESSFUL",
        StatusState::Failure | StatusState::Error => "FAILED",
        StatusState::Canceled => "CANCELLED",
    }
}

pub(super) fn request(base: &str, user: Option<&str>, p: &StatusPost<'_>) -> Result<OutboundRequest, String> {
    let (project, slug) = two_parts(p.repository, "PROJECT/repo_slug")?;
    let repo = format!("projects/{}/repos/{}", path_segment(project), path_segment(slug));
    let url = checked(format!(
        "{base}/rest/api/latest/{repo}/commits/{}/builds",
        path_segment(p.sha)
    ))?;
    let link = match p.target_url {
        Some(u) => u.to_owned(),
        None => format!("{base}/{repo}/commits/{}", path_segment(p.sha)),
    };
    let mut body = Map::new();
    body.insert("key".into(), key(p.context).into());
    body.insert("state".into(), state(p.state).into());
    body.insert("name".into(), p.context.into());
    body.insert("url".into(), link.into());
    body.insert("description".into(), p.description.into());
    if let Some(r) = p.git_ref.map(str::trim).filter(|r| r.starts_with("refs/")) {
        body.insert("ref".into(), r.into());
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
    fn each_state_is_one_build_of_the_commit() {
        let words = [
            "INPROGRESS",
            "INPROGRESS",
            "SUCCESSFUL",
            "FAILED",
            "FAILED",
            "CANCELLED",
        ];
        for (s, word) in ALL.into_iter().zip(words) {
            let mut p = sample(s);
            p.repository = "PRJ/my-repo";
            let r = status_request(
                Vcs::BitbucketDatacenter,
                &api("https://bitbucket.example.com"),
                &p,
            )
            .unwrap();
            assert_eq!(r.method, "POST");
            assert_eq!(
                r.url,
                format!(
                    "https://bitbucket.example.com/rest/api/latest/projects/PRJ/repos/my-repo/commits/{SHA}/builds"
                )
            );
            assert_eq!(
                r.body,
                json!({
                    "key": "hookbridge/deploy",
                    "state": word,
                    "name": "hookbridge/deploy",
                    "url": "https://gitlab.example.com/g/p/-/pipelines/1234",
                    "description": "GitLab pipeline #1234 running",
                    "ref": "refs/heads/main",
                })
            );
            assert_eq!(r.credential, Credential::Authorization("Bearer"));
        }
    }

    #[test]
    fn personal_projects_basic_auth_and_the_commit_page() {
        let mut p = sample(StatusState::Pending);
        p.repository = "~JDOE/dotfiles";
        p.target_url = None;
        p.git_ref = Some("main");
        let a = Api {
            user: Some("jdoe".into()),
            ..api("https://git.example.com/bitbucket")
        };
        let r = status_request(Vcs::BitbucketDatacenter, &a, &p).unwrap();
        assert_eq!(
            r.url,
            format!(
                "https://git.example.com/bitbucket/rest/api/latest/projects/~JDOE/repos/dotfiles/commits/{SHA}/builds"
            )
        );
        assert_eq!(
            r.body["url"],
            format!("https://git.example.com/bitbucket/projects/~JDOE/repos/dotfiles/commits/{SHA}")
        );
        assert!(r.body.get("ref").is_none(), "not a full ref: {}", r.body);
        assert_eq!(r.credential, Credential::Basic("jdoe".into()));
    }

    #[test]
    fn a_repository_without_its_project_is_refused() {
        // What the source names a repository whose payload has no project key.
        let mut p = sample(StatusState::Pending);
        p.repository = "my-repo";
        let e = status_request(Vcs::BitbucketDatacenter, &api("https://b.example.com"), &p).unwrap_err();
        assert_eq!(e, "repository `my-repo` is not `PROJECT/repo_slug`");
    }
}
