//! GitLab `Pipeline Hook` (`object_kind: pipeline`): a pipeline's state, as
//! a `pipeline` event whose action is the pipeline's status and whose
//! [`PipelineRun`] names the pipeline, so a job that created it can learn
//! its result. The payload's `ref` is a bare branch or tag name, with `tag`
//! telling which.

use serde::Deserialize;

use crate::event::{Event, PipelineRun, Provider};

#[derive(Deserialize)]
pub(super) struct PipelineHook {
    object_attributes: Option<Attributes>,
    project: Option<Project>,
    user: Option<User>,
}

#[derive(Deserialize)]
struct Attributes {
    id: Option<u64>,
    iid: Option<u64>,
    #[serde(rename = "ref")]
    git_ref: Option<String>,
    /// `null` in some GitLab versions' hooks, as any field here may be.
    tag: Option<bool>,
    sha: Option<String>,
    status: Option<String>,
    /// Newer GitLab versions send the pipeline's web URL.
    url: Option<String>,
}

#[derive(Deserialize)]
struct Project {
    path_with_namespace: Option<String>,
}

#[derive(Deserialize)]
struct User {
    username: Option<String>,
}

pub(super) fn describe(event: &mut Event, p: PipelineHook) {
    event.repository = p.project.and_then(|p| p.path_with_namespace);
    event.sender = p.user.and_then(|u| u.username);
    let Some(a) = p.object_attributes else {
        return;
    };
    event.action = a.status.clone().filter(|s| !s.is_empty());
    event.sha = a.sha.filter(|s| !s.is_empty());
    match a.git_ref.as_deref().filter(|r| !r.is_empty()) {
        // Merge request pipelines run on `refs/merge-requests/1/head`.
        Some(full) if full.starts_with("refs/") => event.set_ref(full),
        Some(tag) if a.tag == Some(true) => event.set_ref(&format!("refs/tags/{tag}")),
        Some(branch) => event.set_ref(&format!("refs/heads/{branch}")),
        None => {}
    }
    if let (Some(id), Some(status)) = (a.id, event.action.clone()) {
        event.pipeline = Some(PipelineRun {
            ci: Provider::Gitlab.as_str().to_owned(),
            id: id.to_string(),
            number: a.iid,
            status,
            workflow: None,
            workflow_id: None,
            url: a.url.filter(|u| !u.is_empty()),
        });
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::super::payload;

    fn fixture() -> Value {
        let path = format!(
            "{}/tests/fixtures/payloads/gitlab/pipeline-hook.json",
            env!("CARGO_MANIFEST_DIR")
        );
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    }

    fn describe(body: &Value) -> crate::event::Event {
        payload::describe(
            "gl",
            "Pipeline Hook",
            "d".into(),
            &serde_json::to_vec(body).unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn the_documented_pipeline_hook_is_a_pipeline_event() {
        let e = describe(&fixture());
        assert_eq!(
            (e.kind.as_str(), e.name.as_str(), e.action.as_deref()),
            ("pipeline", "Pipeline Hook", Some("success"))
        );
        assert_eq!(e.sha.as_deref(), Some("bcbb5ec396a2c0f828686f14fac9b80b780504f2"));
        assert_eq!(
            (e.git_ref.as_deref(), e.branch.as_deref(), e.tag.as_deref()),
            (Some("refs/heads/master"), Some("master"), None)
        );
        assert_eq!(e.repository.as_deref(), Some("gitlab-org/gitlab-test"));
        assert_eq!(e.sender.as_deref(), Some("user1"));
        assert_eq!(
            serde_json::to_value(e.pipeline).unwrap(),
            json!({"ci": "gitlab", "id": "31", "number": 123, "status": "success", "workflow": null, "workflow_id": null, "url": null})
        );
    }

    #[test]
    fn tags_urls_and_missing_attributes() {
        let mut body = fixture();
        body["object_attributes"]["tag"] = json!(true);
        body["object_attributes"]["ref"] = json!("v1.0.0");
        body["object_attributes"]["status"] = json!("running");
        body["object_attributes"]["url"] =
            json!("https://gitlab.example.com/gitlab-org/gitlab-test/-/pipelines/31");
        let e = describe(&body);
        assert_eq!((e.tag.as_deref(), e.branch.as_deref()), (Some("v1.0.0"), None));
        let p = e.pipeline.unwrap();
        assert_eq!(p.status, "running");
        assert_eq!(
            p.url.as_deref(),
            Some("https://gitlab.example.com/gitlab-org/gitlab-test/-/pipelines/31")
        );
        let e = describe(&json!({"object_kind": "pipeline"}));
        assert_eq!((e.kind.as_str(), e.action, e.pipeline), ("pipeline", None, None));
        let e = describe(&json!({"object_kind": "pipeline", "object_attributes": {"id": 7}}));
        assert_eq!((e.action, e.pipeline), (None, None));
    }

    /// GitLab may send `null` for any attribute: `tag: null` is a branch
    /// pipeline, and a hook whose other fields are null is still read.
    #[test]
    fn null_attributes_are_read_as_missing() {
        let mut body = fixture();
        body["object_attributes"]["tag"] = Value::Null;
        let e = describe(&body);
        assert_eq!(
            (e.git_ref.as_deref(), e.branch.as_deref(), e.tag.as_deref()),
            (Some("refs/heads/master"), Some("master"), None)
        );
        assert_eq!(e.pipeline.unwrap().id, "31");
        for key in ["iid", "ref", "sha", "url"] {
            body["object_attributes"][key] = Value::Null;
        }
        body["project"] = Value::Null;
        body["user"] = Value::Null;
        let e = describe(&body);
        assert_eq!(
            (e.git_ref, e.sha, e.repository, e.sender),
            (None, None, None, None)
        );
        let p = e.pipeline.unwrap();
        assert_eq!(
            (p.id.as_str(), p.number, p.status.as_str(), p.url),
            ("31", None, "success", None)
        );
        body["object_attributes"]["status"] = Value::Null;
        body["object_attributes"]["id"] = Value::Null;
        let e = describe(&body);
        assert_eq!((e.kind.as_str(), e.action, e.pipeline), ("pipeline", None, None));
    }
}
