//! A job's status and its five stages, with the band of overall percent each stage spans.
//!
//! The leaf of the domain: events name a status and a stage, the job's state folds them, and
//! neither needs the other to say what a status or a stage is.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub enum JobStatus {
    Queued,
    Running,
    Cancelling,
    Completed,
    Failed,
    Cancelled,
}

impl JobStatus {
    pub const ALL: [JobStatus; 6] = [
        JobStatus::Queued,
        JobStatus::Running,
        JobStatus::Cancelling,
        JobStatus::Completed,
        JobStatus::Failed,
        JobStatus::Cancelled,
    ];

    pub fn is_terminal(self) -> bool {
        matches!(self, JobStatus::Completed | JobStatus::Failed | JobStatus::Cancelled)
    }

    pub fn name(self) -> &'static str {
        match self {
            JobStatus::Queued => "Queued",
            JobStatus::Running => "Running",
            JobStatus::Cancelling => "Cancelling",
            JobStatus::Completed => "Completed",
            JobStatus::Failed => "Failed",
            JobStatus::Cancelled => "Cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.name() == s)
    }
}

/// The five stages of a render, in order.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
pub enum Stage {
    Script,
    Audio,
    Visuals,
    Timeline,
    Render,
}

impl Stage {
    pub const ALL: [Stage; 5] = [Stage::Script, Stage::Audio, Stage::Visuals, Stage::Timeline, Stage::Render];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Script => "Script",
            Stage::Audio => "Audio",
            Stage::Visuals => "Visuals",
            Stage::Timeline => "Timeline",
            Stage::Render => "Render",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.name() == s)
    }

    /// The span of overall percent this stage covers (API.md).
    pub fn band(self) -> (f64, f64) {
        match self {
            Stage::Script => (0.0, 15.0),
            Stage::Audio => (15.0, 35.0),
            Stage::Visuals => (35.0, 65.0),
            Stage::Timeline => (65.0, 85.0),
            Stage::Render => (85.0, 100.0),
        }
    }

    /// Overall percent for `pct` percent of the way through this stage.
    pub fn overall(self, pct: f64) -> f64 {
        let (lo, hi) = self.band();
        round1(lo + (hi - lo) * pct.clamp(0.0, 100.0) / 100.0)
    }
}

/// Rounds to one decimal, the precision percent travels with.
pub fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}
