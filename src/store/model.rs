//! The job model both backends share: the states a job moves through.
//! SQL stays per backend; the vocabulary is written once, here.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::StoreError;

/// Where a job is. Stored and shown as the lowercase name (`"pending"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Waits for its next attempt (`next_attempt_at`).
    Pending,
    /// Leased to a worker until its lease expires.
    Running,
    /// The CI accepted the trigger.
    Done,
    /// Dead-lettered: out of attempts, or a failure no retry fixes.
    Dead,
    /// The CI chose not to run it.
    Skipped,
}

impl JobState {
    pub const ALL: [JobState; 5] = [
        JobState::Pending,
        JobState::Running,
        JobState::Done,
        JobState::Dead,
        JobState::Skipped,
    ];

    /// The stored name.
    pub const fn as_str(self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Dead => "dead",
            JobState::Skipped => "skipped",
        }
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stored state name this build does not know: the row is unreadable.
impl FromStr for JobState {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| StoreError::corrupt(format!("unknown job state `{s}`")))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn states_read_and_write_their_stored_names() {
        for state in JobState::ALL {
            assert_eq!(state.as_str().parse::<JobState>().unwrap(), state);
            assert_eq!(serde_json::to_string(&state).unwrap(), format!("\"{state}\""));
        }
        let e = "waiting".parse::<JobState>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "stored data is unreadable: unknown job state `waiting`"
        );
    }
}
