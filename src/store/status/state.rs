//! A pipeline's states, in a module of its own that names nothing else
//! of the crate: the CI readers (`crate::target::watch`) use it, and the
//! store, which they must not depend on, builds on it.

use serde::{Deserialize, Serialize};

/// A pipeline's state as hookbridge last learned it (`jobs.pipeline_state`).
/// It only moves forward: created, running, then one final state, which
/// nothing changes (a late or redelivered "running" after "success" is
/// ignored).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PipelineState {
    Created,
    Running,
    Success,
    Failed,
    Canceled,
}

impl PipelineState {
    pub fn as_str(self) -> &'static str {
        match self {
            PipelineState::Created => "created",
            PipelineState::Running => "running",
            PipelineState::Success => "success",
            PipelineState::Failed => "failed",
            PipelineState::Canceled => "canceled",
        }
    }

    pub fn parse(s: &str) -> Option<PipelineState> {
        [
            PipelineState::Created,
            PipelineState::Running,
            PipelineState::Success,
            PipelineState::Failed,
            PipelineState::Canceled,
        ]
        .into_iter()
        .find(|v| v.as_str() == s)
    }

    pub fn is_final(self) -> bool {
        matches!(
            self,
            PipelineState::Success | PipelineState::Failed | PipelineState::Canceled
        )
    }

    fn rank(self) -> u8 {
        match self {
            PipelineState::Created => 0,
            PipelineState::Running => 1,
            _ => 2,
        }
    }

    /// A GitLab pipeline's `status` word as a state; `None` for a word
    /// this version does not know. Both a `Pipeline Hook` and a read of the
    /// pipeline (`crate::target::watch`) go by it.
    pub fn from_gitlab(status: &str) -> Option<PipelineState> {
        Some(match status {
            "created" | "waiting_for_resource" | "preparing" | "pending" | "scheduled" => {
                PipelineState::Created
            }
            "running" | "manual" | "waiting_for_callback" => PipelineState::Running,
            "success" | "skipped" => PipelineState::Success,
            "failed" => PipelineState::Failed,
            "canceled" | "canceling" => PipelineState::Canceled,
            _ => return None,
        })
    }

    /// Whether learning `next` after `self` moves the pipeline on.
    pub fn advances_to(current: Option<PipelineState>, next: PipelineState) -> bool {
        match current {
            None => true,
            Some(c) => next.rank() > c.rank(),
        }
    }
}
