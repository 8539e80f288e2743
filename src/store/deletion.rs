//! Deleting a job, as both backends do it: the request the writer takes ([`Deletion`]), what a
//! deletion did ([`Deleted`]), and what it means for webhook endpoints that had not yet been
//! given the job's events ([`missed`]).
//!
//! A deletion is one transaction of the writer: it records the job in `deletions` (refused by the
//! schema unless the job has finished), writes a `missed` entry into the delivery log of every
//! endpoint whose position is below some of the job's events of its types, and removes the job's
//! events (the schema lets a `DELETE` on `events` through only for a job recorded there) and its
//! `jobs` row. The job's files go after that commit, and the `deletions` row last
//! ([`Deletion::Finish`]): a crash in between leaves the row, and whichever node sees it finishes
//! the deletion. Ids are never reused: the counter does not go back.

use tokio::sync::oneshot;
use uuid::Uuid;

use super::{ApplyError, Refusal, StoreError};
use crate::domain::job::JobStatus;

/// A history write, run by the writer in a transaction of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Deletion {
    /// Removes a finished job's events and row, recording the deletion.
    Delete(Uuid),
    /// Forgets a recorded deletion whose files are gone.
    Finish(Uuid),
}

/// What a deletion removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Deleted {
    pub events: u64,
}

pub(super) struct DeletionRequest {
    pub deletion: Deletion,
    pub reply: oneshot::Sender<Result<Deleted, ApplyError>>,
}

/// Why a job cannot be deleted: it does not exist, or it has not finished.
pub(super) fn refusal(status: Option<&str>) -> Option<ApplyError> {
    match status.map(JobStatus::parse) {
        None => Some(Refusal::NotFound.into()),
        Some(Some(status)) if status.is_terminal() => None,
        Some(Some(status)) => Some(
            Refusal::Conflict(format!("the job is {}: only a finished job can be deleted", status.name()))
                .into(),
        ),
        Some(None) => Some(StoreError::Corrupt("a jobs row has an unknown status".into()).into()),
    }
}

/// An endpoint as a deletion sees it: its id, the event types it asked for, its position.
pub(super) type EndpointPosition = (String, Vec<String>, i64);

/// For each endpoint that had not been given some of the job's events (`(id, type)`, in id
/// order) of its types: how many, and the last of them `(id, type)`.
pub(super) fn missed(
    events: &[(i64, String)],
    endpoints: &[EndpointPosition],
) -> Vec<(String, i64, (i64, String))> {
    endpoints
        .iter()
        .filter_map(|(endpoint, types, position)| {
            let missed: Vec<&(i64, String)> =
                events.iter().filter(|(id, kind)| id > position && types.contains(kind)).collect();
            let last = missed.last()?;
            Some((endpoint.clone(), missed.len() as i64, (*last).clone()))
        })
        .collect()
}

/// The outcome and error of a delivery-log entry for events deleted before delivery.
pub(super) const MISSED_OUTCOME: &str = "missed";
pub(super) const MISSED_ERROR: &str = "deleted-before-delivery";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_misses_the_events_of_its_types_after_its_position_and_no_other() {
        let events: Vec<(i64, String)> = [(10, "job-status"), (11, "step-progress"), (12, "job-completed")]
            .into_iter()
            .map(|(id, kind)| (id, kind.to_owned()))
            .collect();
        let types = |t: &[&str]| t.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let endpoints = vec![
            ("behind".to_owned(), types(&["job-status", "job-completed"]), 9),
            ("halfway".to_owned(), types(&["job-status", "job-completed"]), 10),
            ("past".to_owned(), types(&["job-completed"]), 12),
            ("other-types".to_owned(), types(&["job-failed"]), 0),
        ];
        assert_eq!(
            missed(&events, &endpoints),
            vec![
                ("behind".to_owned(), 2, (12, "job-completed".to_owned())),
                ("halfway".to_owned(), 1, (12, "job-completed".to_owned())),
            ]
        );
    }

    #[test]
    fn only_a_finished_job_can_be_deleted() {
        assert!(matches!(refusal(None), Some(ApplyError::Refused(Refusal::NotFound))));
        for finished in ["Completed", "Failed", "Cancelled"] {
            assert!(refusal(Some(finished)).is_none(), "{finished}");
        }
        for live in ["Queued", "Running", "Cancelling"] {
            assert!(matches!(refusal(Some(live)), Some(ApplyError::Refused(Refusal::Conflict(_)))), "{live}");
        }
    }
}
