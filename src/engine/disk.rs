//! [`Disk`]: is there room on the data folder's disk (`AURA_MIN_FREE_MB`)?
//!
//! PostgreSQL and Kafka refuse writes before their disk is full rather than corrupt or lose
//! what they hold; Aura does the same. Below the floor, workers claim nothing new, job creation
//! answers 507 and health 503, and a job parked for lack of space waits until the free space is
//! back above it. The answer is one `statvfs` call, cached for [`CACHE_FOR`] so that a burst of
//! requests costs one system call a second.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::sync::lock;

/// How long one measurement of the free space is trusted.
pub const CACHE_FOR: Duration = Duration::from_secs(1);

/// The data folder's disk and the free space it must keep.
pub struct Disk {
    dir: PathBuf,
    floor_bytes: u64,
    cache: Mutex<Option<(Instant, Option<u64>)>>,
}

impl Disk {
    pub fn new(dir: &Path, floor_bytes: u64) -> Self {
        Disk { dir: dir.to_path_buf(), floor_bytes, cache: Mutex::new(None) }
    }

    /// Bytes an unprivileged writer may still use on the data folder's disk, or `None` when the
    /// disk cannot be asked (logged).
    pub fn free_bytes(&self) -> Option<u64> {
        if let Ok(cache) = lock(&self.cache, "free space")
            && let Some((at, free)) = *cache
            && at.elapsed() < CACHE_FOR
        {
            return free;
        }
        let free = match nix::sys::statvfs::statvfs(&self.dir) {
            Ok(s) => Some(available(&s)),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the free space of the data folder's disk");
                None
            }
        };
        if let Ok(mut cache) = lock(&self.cache, "free space") {
            *cache = Some((Instant::now(), free));
        }
        free
    }

    /// Whether the free space is below the floor. A disk that cannot be asked counts as low:
    /// starting work that may not fit is what the floor is there to prevent.
    pub fn is_low(&self) -> bool {
        self.free_bytes().is_none_or(|free| free < self.floor_bytes)
    }

    /// Forgets the cached measurement, so the next question asks the disk.
    pub fn refresh(&self) {
        if let Ok(mut cache) = lock(&self.cache, "free space") {
            *cache = None;
        }
    }
}

/// Free blocks times their size. The field types differ between platforms (they are `u64` on
/// 64-bit Linux), hence the conversions.
#[allow(clippy::useless_conversion)]
fn available(s: &nix::sys::statvfs::Statvfs) -> u64 {
    u64::from(s.blocks_available()).saturating_mul(u64::from(s.fragment_size()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tokio's paused clock: the answer is kept for [`CACHE_FOR`], then the disk is asked again.
    /// The disk stops answering (its folder is removed) while the answer is still kept.
    #[tokio::test(start_paused = true)]
    async fn one_answer_is_kept_for_a_second_and_a_refresh_forgets_it() {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let data = dir.path().join("data");
        std::fs::create_dir(&data).expect("the data folder");
        let disk = Disk::new(&data, 1);
        assert!(disk.free_bytes().is_some() && !disk.is_low());
        std::fs::remove_dir(&data).expect("removing the data folder");

        tokio::time::advance(CACHE_FOR - Duration::from_millis(1)).await;
        assert!(disk.free_bytes().is_some(), "the kept answer, without a system call");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(disk.free_bytes(), None, "asked again after a second: no folder, no answer");
        assert!(disk.is_low(), "a disk that cannot be asked counts as low");

        std::fs::create_dir(&data).expect("the data folder again");
        assert!(disk.is_low(), "the failed answer is kept too");
        disk.refresh();
        assert!(!disk.is_low(), "a refresh asks the disk at once");
    }
}
