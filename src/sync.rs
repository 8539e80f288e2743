//! The one policy for poisoned locks: they fail closed.
//!
//! A `Mutex` is poisoned when a thread panicked while holding it, so what it guards may be half
//! updated. Nothing in Aura reads such a value as if it were fine, nor as if it were empty:
//! [`lock`] turns poison into [`Poisoned`], an error the caller must handle, and every request
//! path answers it as an internal error (never, say, as "no tokens configured", which would let
//! every caller in). Background bookkeeping that may carry on says so where it calls [`lock`].

use std::sync::{Mutex, MutexGuard};

/// A lock was poisoned by a panic while it was held.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the {0} lock is poisoned: a thread panicked while holding it")]
pub struct Poisoned(pub &'static str);

/// Locks `mutex`, or says it is poisoned; `what` names it in the error.
pub fn lock<'a, T>(mutex: &'a Mutex<T>, what: &'static str) -> Result<MutexGuard<'a, T>, Poisoned> {
    mutex.lock().map_err(|_| Poisoned(what))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_lock_is_an_error_not_its_value() {
        let m = std::sync::Arc::new(Mutex::new(vec![1]));
        let m2 = m.clone();
        let _ = std::thread::spawn(move || {
            let _guard = m2.lock();
            panic!("poison it");
        })
        .join();
        assert!(lock(&m, "test").is_err());
    }
}
