//! Locks that survive a panicking holder, and the cell an exit status is published through.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// Locks `m`, recovering from a panic in another thread that held it. What cocoon keeps behind
/// its locks is plain data (device registers, process tables, pending replies): a poisoned lock
/// must not take the VM, the agent or the shim down with it.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A value set once (a process's exit), which any number of waiters block on.
pub struct ExitCell<T> {
    value: Mutex<Option<T>>,
    set: Condvar,
}

impl<T> Default for ExitCell<T> {
    fn default() -> Self {
        Self {
            value: Mutex::new(None),
            set: Condvar::new(),
        }
    }
}

impl<T: Copy> ExitCell<T> {
    /// The value, if it has been set.
    pub fn get(&self) -> Option<T> {
        *lock(&self.value)
    }

    /// Records the value and wakes every waiter.
    pub fn set(&self, value: T) {
        *lock(&self.value) = Some(value);
        self.set.notify_all();
    }

    /// Blocks until the value is set.
    pub fn wait(&self) -> T {
        let mut value = lock(&self.value);
        loop {
            if let Some(v) = *value {
                return v;
            }
            value = self
                .set
                .wait(value)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }

    /// Like [`wait`](Self::wait), giving up after `timeout`.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<T> {
        let value = lock(&self.value);
        let (value, _) = self
            .set
            .wait_timeout_while(value, timeout, |v| v.is_none())
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *value
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_poisoned_lock_still_opens() {
        let m = Arc::new(Mutex::new(1));
        let held = m.clone();
        let _ = std::thread::spawn(move || {
            let _guard = held.lock().unwrap();
            panic!("poison it");
        })
        .join();
        assert!(m.is_poisoned());
        *lock(&m) += 1;
        assert_eq!(*lock(&m), 2);
    }

    #[test]
    fn waiters_get_the_value_set_later() {
        let cell = Arc::new(ExitCell::<u32>::default());
        assert_eq!(cell.get(), None);
        assert_eq!(cell.wait_timeout(Duration::from_millis(10)), None);
        let waiter = {
            let cell = cell.clone();
            std::thread::spawn(move || cell.wait())
        };
        std::thread::sleep(Duration::from_millis(20));
        cell.set(7);
        assert_eq!(waiter.join().unwrap(), 7);
        assert_eq!(cell.get(), Some(7));
        assert_eq!(cell.wait_timeout(Duration::from_secs(1)), Some(7));
    }
}
