//! The stored request and the printable one: a [`TriggerRequest`] is what a
//! rule rendered for one event, stored with its job as JSON; at send time the
//! [`Target`] of the current config turns it into an [`OutboundRequest`].

use serde::{Deserialize, Serialize};

use super::encode::has_dot_segment;
use super::{
    OutboundRequest, Target, TargetKind, buildkite, circleci, gitea_actions, github_actions, gitlab,
    http_endpoint, jenkins,
};
use crate::config::secret::Secret;

/// What a matched rule asks a target to do, fully rendered: one variant per
/// target kind, each holding that target's own request. Stored with the job;
/// it never holds a secret (tokens come from the config at send time).
///
/// Its JSON is that of the private `Stored` enum below, unchanged since
/// jobs were first stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(into = "Stored", from = "Stored")]
pub enum TriggerRequest {
    Circleci(circleci::Request),
    Gitlab(gitlab::Request),
    GithubActions(github_actions::Request),
    GiteaActions(gitea_actions::Request),
    Buildkite(buildkite::Request),
    Jenkins(jenkins::Request),
    Http(http_endpoint::Request),
}

impl TriggerRequest {
    pub fn target_kind(&self) -> TargetKind {
        match self {
            TriggerRequest::Circleci(_) => TargetKind::Circleci,
            TriggerRequest::Gitlab(_) => TargetKind::Gitlab,
            TriggerRequest::GithubActions(_) => TargetKind::GithubActions,
            TriggerRequest::GiteaActions(_) => TargetKind::GiteaActions,
            TriggerRequest::Buildkite(_) => TargetKind::Buildkite,
            TriggerRequest::Jenkins(_) => TargetKind::Jenkins,
            TriggerRequest::Http(_) => TargetKind::Http,
        }
    }
}

/// The stored JSON of a [`TriggerRequest`]: one flat object tagged by `api`.
/// Jobs in existing databases hold it, so its names never change: a new API
/// is a new variant here.
#[derive(Serialize, Deserialize)]
#[serde(tag = "api", rename_all = "snake_case")]
enum Stored {
    /// CircleCI API v1.1: run one job on a branch.
    CircleciJob(circleci::JobRequest),
    /// CircleCI API v2: trigger a pipeline (`/project/{slug}/pipeline`).
    CircleciPipeline(circleci::PipelineRequest),
    /// CircleCI API v2: run a pipeline definition (`/pipeline/run`).
    CircleciPipelineRun(circleci::PipelineRunRequest),
    /// GitLab: `/projects/:id/trigger/pipeline`.
    GitlabPipeline(gitlab::Request),
    /// GitHub Actions: `workflow_dispatch`.
    GithubWorkflowDispatch(github_actions::WorkflowDispatch),
    /// GitHub Actions: `repository_dispatch`.
    GithubRepositoryDispatch(github_actions::RepositoryDispatch),
    /// Gitea and Forgejo Actions: `workflow_dispatch`.
    GiteaWorkflowDispatch(gitea_actions::Request),
    /// Buildkite: create a build.
    BuildkiteBuild(buildkite::Request),
    /// Jenkins: `buildWithParameters`.
    JenkinsBuild(jenkins::Request),
    /// Any HTTP endpoint.
    HttpRequest(http_endpoint::Request),
}

impl From<TriggerRequest> for Stored {
    fn from(request: TriggerRequest) -> Stored {
        match request {
            TriggerRequest::Circleci(circleci::Request::Job(r)) => Stored::CircleciJob(r),
            TriggerRequest::Circleci(circleci::Request::Pipeline(r)) => Stored::CircleciPipeline(r),
            TriggerRequest::Circleci(circleci::Request::PipelineRun(r)) => Stored::CircleciPipelineRun(r),
            TriggerRequest::Gitlab(r) => Stored::GitlabPipeline(r),
            TriggerRequest::GithubActions(github_actions::Request::Workflow(r)) => {
                Stored::GithubWorkflowDispatch(r)
            }
            TriggerRequest::GithubActions(github_actions::Request::Repository(r)) => {
                Stored::GithubRepositoryDispatch(r)
            }
            TriggerRequest::GiteaActions(r) => Stored::GiteaWorkflowDispatch(r),
            TriggerRequest::Buildkite(r) => Stored::BuildkiteBuild(r),
            TriggerRequest::Jenkins(r) => Stored::JenkinsBuild(r),
            TriggerRequest::Http(r) => Stored::HttpRequest(r),
        }
    }
}

impl From<Stored> for TriggerRequest {
    fn from(stored: Stored) -> TriggerRequest {
        match stored {
            Stored::CircleciJob(r) => TriggerRequest::Circleci(circleci::Request::Job(r)),
            Stored::CircleciPipeline(r) => TriggerRequest::Circleci(circleci::Request::Pipeline(r)),
            Stored::CircleciPipelineRun(r) => TriggerRequest::Circleci(circleci::Request::PipelineRun(r)),
            Stored::GitlabPipeline(r) => TriggerRequest::Gitlab(r),
            Stored::GithubWorkflowDispatch(r) => {
                TriggerRequest::GithubActions(github_actions::Request::Workflow(r))
            }
            Stored::GithubRepositoryDispatch(r) => {
                TriggerRequest::GithubActions(github_actions::Request::Repository(r))
            }
            Stored::GiteaWorkflowDispatch(r) => TriggerRequest::GiteaActions(r),
            Stored::BuildkiteBuild(r) => TriggerRequest::Buildkite(r),
            Stored::JenkinsBuild(r) => TriggerRequest::Jenkins(r),
            Stored::HttpRequest(r) => TriggerRequest::Http(r),
        }
    }
}

/// Why a stored request cannot be sent with the current config. Each is
/// permanent for the job (retrying will not change the config): the
/// dispatcher dead-letters it with this text, and `explain` shows it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The job was stored when its target had another `type`.
    #[error(
        "target `{target}` is now a {} target and cannot send this {} trigger",
        .now.as_str(),
        .stored.as_str()
    )]
    KindChanged {
        target: String,
        now: TargetKind,
        stored: TargetKind,
    },
    /// The stored CircleCI project slug does not fit its API.
    #[error(transparent)]
    Slug(#[from] circleci::SlugError),
    /// A stored value does not fit the target's API (`owner/repo`, say).
    #[error("{0}")]
    Invalid(String),
    /// Neither the rule nor the target has a token.
    #[error("no token is available for target `{0}`")]
    NoToken(String),
    /// A value became a `.` or `..` path segment, which the HTTP client
    /// would resolve: the request (and its token) would reach another
    /// endpoint than the one shown.
    #[error(
        "the request URL `{0}` has a `.` or `..` path segment (a project or branch named `.` or `..`); it would be sent elsewhere, so it is not sent"
    )]
    DotSegment(String),
}

impl Target {
    /// The request for `req`, with [`REDACTED`](super::REDACTED) where the
    /// token goes: safe to print and store. The token joins it only on the
    /// wire ([`client`](super::client)).
    pub fn request(&self, req: &TriggerRequest) -> Result<OutboundRequest, RequestError> {
        let request = self.build(req)?;
        if has_dot_segment(&request.url) {
            return Err(RequestError::DotSegment(request.url));
        }
        Ok(request)
    }

    fn build(&self, req: &TriggerRequest) -> Result<OutboundRequest, RequestError> {
        let base = &self.base_url;
        match (self.kind, req) {
            (TargetKind::Circleci, TriggerRequest::Circleci(r)) => Ok(circleci::request(base, r)?),
            (TargetKind::Gitlab, TriggerRequest::Gitlab(r)) => Ok(gitlab::request(base, r)),
            (TargetKind::GithubActions, TriggerRequest::GithubActions(r)) => {
                Ok(github_actions::request(base, r)?)
            }
            (TargetKind::GiteaActions, TriggerRequest::GiteaActions(r)) => {
                Ok(gitea_actions::request(base, r)?)
            }
            (TargetKind::Buildkite, TriggerRequest::Buildkite(r)) => Ok(buildkite::request(base, r)),
            (TargetKind::Jenkins, TriggerRequest::Jenkins(r)) => Ok(jenkins::request(
                base,
                self.user.as_deref().unwrap_or_default(),
                r,
            )?),
            (TargetKind::Http, TriggerRequest::Http(r)) => {
                let credential = http_endpoint::credential(self.has_token, self.token_header.as_deref());
                Ok(http_endpoint::request(base, r, credential, self.signs)?)
            }
            // The job was stored when this target had another `type`.
            (now, _) => Err(RequestError::KindChanged {
                target: self.name.clone(),
                now,
                stored: req.target_kind(),
            }),
        }
    }

    /// The token a job sends: its rule's own (GitLab), else the target's (`http`: maybe none).
    pub fn token_for<'a>(
        &'a self,
        rule_token: Option<&'a Secret>,
    ) -> Result<Option<&'a Secret>, RequestError> {
        match rule_token.or(self.token.as_ref()) {
            Some(token) => Ok(Some(token)),
            None if self.kind == TargetKind::Http && !self.has_token => Ok(None),
            None => Err(RequestError::NoToken(self.name.clone())),
        }
    }

    /// Sign `request` for one attempt of job `id` at `now` (`signing`).
    pub fn sign(
        &self,
        request: &mut OutboundRequest,
        id: &str,
        now: std::time::SystemTime,
    ) -> Result<(), RequestError> {
        if !self.signs {
            return Ok(());
        }
        let secret = self
            .signing
            .as_ref()
            .ok_or_else(|| RequestError::Invalid(format!("target `{}` has no signing_secret", self.name)))?;
        http_endpoint::sign(request, id, secret, now).map_err(RequestError::Invalid)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::target::GitRef;

    /// Stored jobs hold their request as this JSON: rows written by earlier
    /// versions decode, and re-encode byte for byte. One example of every
    /// variant with its optional fields set, and one with them left out.
    const STORED: &[(TargetKind, &str)] = &[
        (
            TargetKind::Circleci,
            r#"{"api":"circleci_job","project":"gh/acme/app","branch":"feature/x y","job":"build","revision":"0123abc","parallel":4,"build_parameters":{"CIRCLE_JOB":"build","FOO":"bar"}}"#,
        ),
        (
            TargetKind::Circleci,
            r#"{"api":"circleci_job","project":"bb/acme/app","branch":"main","job":"test","build_parameters":{}}"#,
        ),
        (
            TargetKind::Circleci,
            r#"{"api":"circleci_pipeline","project":"gh/acme/app","branch":"main","parameters":{"deploy":true,"level":3,"name":"x y/é"}}"#,
        ),
        (
            TargetKind::Circleci,
            r#"{"api":"circleci_pipeline","project":"github/acme/app","tag":"v1","parameters":{}}"#,
        ),
        (
            TargetKind::Circleci,
            r#"{"api":"circleci_pipeline_run","project":"circleci/9d3c/7a1f","definition_id":"d-1","config":{"branch":"main"},"checkout":{"tag":"v1.2.0"},"parameters":{"deploy":true,"level":3}}"#,
        ),
        (
            TargetKind::Circleci,
            r#"{"api":"circleci_pipeline_run","project":"circleci/9d3c/7a1f","definition_id":"d-2","config":{},"checkout":{"branch":"main"},"parameters":{}}"#,
        ),
        (
            TargetKind::Gitlab,
            r#"{"api":"gitlab_pipeline","project":"group/sub/app","ref":"main","variables":{"A":"1","B_2":"two"},"inputs":{"level":3,"tags":["a","b"]},"rule_token":true}"#,
        ),
        (
            TargetKind::Gitlab,
            r#"{"api":"gitlab_pipeline","project":"42","ref":"v1.0","variables":{},"inputs":{},"rule_token":false}"#,
        ),
        (
            TargetKind::GithubActions,
            r#"{"api":"github_workflow_dispatch","repository":"acme/app","workflow":"deploy.yml","ref":"main","inputs":{"dry":true,"env":"prod","n":3}}"#,
        ),
        (
            TargetKind::GithubActions,
            r#"{"api":"github_repository_dispatch","repository":"acme/app","event_type":"deploy","client_payload":{"sha":"abc","tags":["a"]}}"#,
        ),
        (
            TargetKind::GiteaActions,
            r#"{"api":"gitea_workflow_dispatch","repository":"acme/app","workflow":"ci.yaml","ref":"v1","inputs":{"env":"prod"}}"#,
        ),
        (
            TargetKind::Buildkite,
            r#"{"api":"buildkite_build","organization":"acme","pipeline":"app","commit":"HEAD","branch":"main","message":"m","env":{"A":"1"},"meta_data":{"k":"v"}}"#,
        ),
        (
            TargetKind::Jenkins,
            r#"{"api":"jenkins_build","job":"team/app","parameters":{"SHA":"abc"}}"#,
        ),
        (
            TargetKind::Http,
            r#"{"api":"http_request","method":"POST","path":"/deploy","headers":{"X-Env":"prod"},"body":"deploy main","text":true}"#,
        ),
    ];

    /// A job stored for a CircleCI target that the config now calls a GitLab
    /// one (or the reverse) is not sent, and says why.
    #[test]
    fn a_request_for_another_kind_of_target_is_refused() {
        for (kind, stored) in STORED {
            let request: TriggerRequest = serde_json::from_str(stored).unwrap();
            let other = match kind {
                TargetKind::Circleci => TargetKind::Gitlab,
                _ => TargetKind::Circleci,
            };
            let target = Target {
                name: "ci".into(),
                kind: other,
                base_url: "https://ci.example.com".into(),
                token: None,
                has_token: false,
                api_token: None,
                has_api_token: false,
                user: None,
                token_header: None,
                signing: None,
                signs: false,
                reconcile: true,
                retry: crate::config::retry::RetryPolicy::default(),
            };
            let e = target.request(&request).unwrap_err();
            assert_eq!(
                e.to_string(),
                format!(
                    "target `ci` is now a {} target and cannot send this {} trigger",
                    other.as_str(),
                    kind.as_str()
                )
            );
        }
    }

    #[test]
    fn stored_requests_decode_and_reencode_byte_for_byte() {
        for (kind, stored) in STORED {
            let request: TriggerRequest = serde_json::from_str(stored).unwrap();
            assert_eq!(request.target_kind(), *kind, "{stored}");
            assert_eq!(serde_json::to_string(&request).unwrap(), *stored);
            let value: serde_json::Value = serde_json::from_str(stored).unwrap();
            assert_eq!(serde_json::to_value(&request).unwrap(), value);
            let again: TriggerRequest = serde_json::from_value(value).unwrap();
            assert_eq!(again, request);
        }
    }

    /// What the stored JSON means, field by field, for the examples above.
    #[test]
    fn stored_requests_decode_to_their_fields() {
        let decoded: Vec<TriggerRequest> = STORED
            .iter()
            .map(|(_, s)| serde_json::from_str(s).unwrap())
            .collect();
        assert_eq!(
            decoded[0],
            TriggerRequest::Circleci(circleci::Request::Job(circleci::JobRequest {
                project: "gh/acme/app".into(),
                branch: "feature/x y".into(),
                job: "build".into(),
                revision: Some("0123abc".into()),
                parallel: Some(4),
                build_parameters: serde_json::from_str(r#"{"CIRCLE_JOB":"build","FOO":"bar"}"#).unwrap(),
            }))
        );
        assert_eq!(
            decoded[3],
            TriggerRequest::Circleci(circleci::Request::Pipeline(circleci::PipelineRequest {
                project: "github/acme/app".into(),
                branch: None,
                tag: Some("v1".into()),
                parameters: serde_json::Map::new(),
            }))
        );
        assert_eq!(
            decoded[4],
            TriggerRequest::Circleci(circleci::Request::PipelineRun(circleci::PipelineRunRequest {
                project: "circleci/9d3c/7a1f".into(),
                definition_id: "d-1".into(),
                config: GitRef {
                    branch: Some("main".into()),
                    tag: None
                },
                checkout: GitRef {
                    branch: None,
                    tag: Some("v1.2.0".into())
                },
                parameters: serde_json::from_str(r#"{"deploy":true,"level":3}"#).unwrap(),
            }))
        );
        assert_eq!(
            decoded[6],
            TriggerRequest::Gitlab(gitlab::Request {
                project: "group/sub/app".into(),
                git_ref: "main".into(),
                variables: BTreeMap::from([("A".into(), "1".into()), ("B_2".into(), "two".into())]),
                inputs: serde_json::from_str(r#"{"level":3,"tags":["a","b"]}"#).unwrap(),
                rule_token: true,
            })
        );
    }

    /// Rows may leave out fields with defaults; they decode, and are written
    /// back with the defaults spelled out. An unknown `api` is an error.
    #[test]
    fn stored_requests_without_defaulted_fields_decode() {
        let cases = [
            (
                r#"{"api":"gitlab_pipeline","project":"acme/app","ref":"main"}"#,
                r#"{"api":"gitlab_pipeline","project":"acme/app","ref":"main","variables":{},"inputs":{},"rule_token":false}"#,
            ),
            (
                r#"{"api":"circleci_job","project":"gh/a/b","branch":"main","job":"build"}"#,
                r#"{"api":"circleci_job","project":"gh/a/b","branch":"main","job":"build","build_parameters":{}}"#,
            ),
            (
                r#"{"api":"circleci_pipeline","project":"gh/a/b"}"#,
                r#"{"api":"circleci_pipeline","project":"gh/a/b","parameters":{}}"#,
            ),
            (
                r#"{"api":"circleci_pipeline_run","project":"circleci/o/p","definition_id":"d","config":{},"checkout":{}}"#,
                r#"{"api":"circleci_pipeline_run","project":"circleci/o/p","definition_id":"d","config":{},"checkout":{},"parameters":{}}"#,
            ),
        ];
        for (old, written) in cases {
            let request: TriggerRequest = serde_json::from_str(old).unwrap();
            assert_eq!(serde_json::to_string(&request).unwrap(), written);
        }
        let e = serde_json::from_str::<TriggerRequest>(r#"{"api":"teamcity_build","project":"a"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("unknown variant `teamcity_build`"), "{e}");
        assert!(serde_json::from_str::<TriggerRequest>(r#"{"project":"a"}"#).is_err());
    }
}

#[cfg(test)]
mod dot_segments {
    use super::*;

    fn target(kind: TargetKind) -> Target {
        Target {
            name: "ci".into(),
            kind,
            base_url: "https://ci.example.com".into(),
            token: None,
            has_token: false,
            api_token: None,
            has_api_token: false,
            user: None,
            token_header: None,
            signing: None,
            signs: false,
            reconcile: true,
            retry: crate::config::retry::RetryPolicy::default(),
        }
    }

    /// A project or branch that is exactly `.` or `..` (a templated value
    /// from a payload) would be resolved away by the HTTP client, sending
    /// the token to another endpoint: refused. Dots inside a value are fine.
    #[test]
    fn a_value_that_is_a_dot_segment_is_refused() {
        for (kind, stored) in [
            (
                TargetKind::Circleci,
                r#"{"api":"circleci_pipeline","project":"gh/../app","branch":"main","parameters":{}}"#,
            ),
            (
                TargetKind::Circleci,
                r#"{"api":"circleci_pipeline","project":"gh/acme/.","branch":"main","parameters":{}}"#,
            ),
            (
                TargetKind::Circleci,
                r#"{"api":"circleci_job","project":"gh/acme/app","branch":"..","job":"build","build_parameters":{}}"#,
            ),
            (
                TargetKind::Gitlab,
                r#"{"api":"gitlab_pipeline","project":"..","ref":"main","variables":{},"inputs":{},"rule_token":false}"#,
            ),
        ] {
            let request: TriggerRequest = serde_json::from_str(stored).unwrap();
            let e = target(kind).request(&request).unwrap_err();
            assert!(matches!(e, RequestError::DotSegment(_)), "{stored}: {e}");
        }
        let fine: TriggerRequest = serde_json::from_str(
            r#"{"api":"gitlab_pipeline","project":"acme/..app.","ref":"main","variables":{},"inputs":{},"rule_token":false}"#,
        )
        .unwrap();
        assert!(target(TargetKind::Gitlab).request(&fine).is_ok());
    }
}
