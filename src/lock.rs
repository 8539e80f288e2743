//! One server per data folder: an exclusive OS lock on `<data-dir>/aura.lock`.
//!
//! The lock is held by the open file, so the kernel drops it when the process dies, however it
//! dies: no stale PID file can ever block a restart.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};

/// Held for as long as the server runs.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
    path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "another aura process is already using the data folder {0} (stop it first, or give this one its own --data-dir)"
    )]
    Busy(String),
    #[error("cannot lock the data folder {0}: {1}")]
    Io(String, std::io::Error),
}

impl DataDirLock {
    pub fn acquire(data_dir: &Path) -> Result<DataDirLock, LockError> {
        let path = data_dir.join("aura.lock");
        let shown = data_dir.display().to_string();
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| LockError::Io(shown.clone(), e))?;
        match file.try_lock() {
            Ok(()) => Ok(DataDirLock { _file: file, path }),
            Err(TryLockError::WouldBlock) => Err(LockError::Busy(shown)),
            Err(TryLockError::Error(e)) => Err(LockError::Io(shown, e)),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}
