//! The one policy for poisoned locks: they fail closed.
//!
//! A `Mutex` or `RwLock` is poisoned when a thread panicked while holding it, so what it guards
//! may be half updated. Nothing in Aura reads such a value as if it were fine, nor as if it were
//! empty: [`lock`], [`read`] and [`write`] turn poison into [`Poisoned`], an error the caller
//! must handle, and they log it (at `error` the first time a lock is found poisoned, at `debug`
//! after that), so no caller skips one silently. What a caller does with the error:
//!
//! - a request path returns it, and it answers as an internal error (never, say, as "no tokens
//!   configured", which would let every caller in);
//! - background bookkeeping that may carry on without the value skips its step, and says so
//!   where it calls [`lock`] when skipping is not obviously the safe side.
//!
//! These are the only calls of `std::sync::Mutex::lock` and `RwLock::{read, write}` in `src/`:
//! `clippy.toml` forbids them elsewhere.

use std::collections::BTreeSet;
use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// A lock was poisoned by a panic while it was held.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the {0} lock is poisoned: a thread panicked while holding it")]
pub struct Poisoned(pub &'static str);

/// Locks `mutex`, or says it is poisoned; `what` names it in the error.
#[allow(clippy::disallowed_methods)]
#[inline]
pub fn lock<'a, T>(mutex: &'a Mutex<T>, what: &'static str) -> Result<MutexGuard<'a, T>, Poisoned> {
    mutex.lock().map_err(|_| poisoned(what))
}

/// Takes `rwlock` to read, or says it is poisoned; `what` names it in the error.
#[allow(clippy::disallowed_methods)]
#[inline]
pub fn read<'a, T>(rwlock: &'a RwLock<T>, what: &'static str) -> Result<RwLockReadGuard<'a, T>, Poisoned> {
    rwlock.read().map_err(|_| poisoned(what))
}

/// Takes `rwlock` to write, or says it is poisoned; `what` names it in the error.
#[allow(clippy::disallowed_methods)]
#[inline]
pub fn write<'a, T>(rwlock: &'a RwLock<T>, what: &'static str) -> Result<RwLockWriteGuard<'a, T>, Poisoned> {
    rwlock.write().map_err(|_| poisoned(what))
}

/// Logs a poisoned lock, loudly only the first time each is found (a poisoned lock stays
/// poisoned, and a hot path would otherwise log it on every call), and makes its error.
#[cold]
fn poisoned(what: &'static str) -> Poisoned {
    static REPORTED: Mutex<BTreeSet<&str>> = Mutex::new(BTreeSet::new());
    #[allow(clippy::disallowed_methods)]
    let first = REPORTED.lock().map_or(true, |mut reported| reported.insert(what));
    if first {
        tracing::error!(
            lock = what,
            "a lock is poisoned: a thread panicked while holding it; what it guards is not used again"
        );
    } else {
        tracing::debug!(lock = what, "a poisoned lock is not used");
    }
    Poisoned(what)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// Runs `hold` on a thread that panics while it holds what `hold` took.
    fn poison<T: Send + Sync + 'static>(value: T, hold: fn(&T)) -> Arc<T> {
        let shared = Arc::new(value);
        let held = shared.clone();
        let _ = std::thread::spawn(move || hold(&held)).join();
        shared
    }

    #[test]
    #[allow(clippy::disallowed_methods)]
    fn a_poisoned_lock_is_an_error_not_its_value() {
        let m = poison(Mutex::new(vec![1]), |m| {
            let _guard = m.lock();
            panic!("poison it");
        });
        assert!(lock(&m, "test").is_err());
        assert!(lock(&m, "test").is_err(), "it stays an error");
        let rw = poison(RwLock::new(1), |rw| {
            let _guard = rw.write();
            panic!("poison it");
        });
        assert!(read(&rw, "test rw").is_err());
        assert!(write(&rw, "test rw").is_err());
    }

    #[test]
    fn a_healthy_lock_is_its_value() -> Result<(), Poisoned> {
        let m = Mutex::new(1);
        *lock(&m, "test")? += 1;
        assert_eq!(*lock(&m, "test")?, 2);
        let rw = RwLock::new(1);
        *write(&rw, "test rw")? += 1;
        assert_eq!(*read(&rw, "test rw")?, 2);
        Ok(())
    }
}
