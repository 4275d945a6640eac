//! Explicit admission control: a bounded count of requests waiting or running per model.
//!
//! actix mailboxes do not bound `do_send`, so the bound lives here: a request takes a [`Permit`] before
//! it is handed to any actor and gives it back when it is answered, whatever the outcome.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

/// Why a request was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AdmissionError {
    /// Every slot of the queue is taken; the client should retry later (429).
    #[error("queue is full ({capacity} requests waiting or running)")]
    QueueFull {
        /// The capacity of the queue.
        capacity: usize,
    },
    /// The server is shutting down and admits nothing new (503).
    #[error("server is shutting down")]
    Closed,
}

#[derive(Debug)]
struct Inner {
    capacity: usize,
    depth: AtomicUsize,
    closed: AtomicBool,
}

/// A bounded queue counter shared by everything that admits work for one model.
#[derive(Debug, Clone)]
pub struct Admission {
    inner: Arc<Inner>,
}

impl Admission {
    /// A queue admitting at most `capacity` requests at once (waiting plus running).
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                capacity: capacity.max(1),
                depth: AtomicUsize::new(0),
                closed: AtomicBool::new(false),
            }),
        }
    }

    /// Takes a slot, or says at once why not. Never waits.
    pub fn try_admit(&self) -> Result<Permit, AdmissionError> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(AdmissionError::Closed);
        }
        let capacity = self.inner.capacity;
        self.inner
            .depth
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| (d < capacity).then_some(d + 1))
            .map_err(|_| AdmissionError::QueueFull { capacity })?;
        Ok(Permit { inner: self.inner.clone() })
    }

    /// Requests currently admitted (waiting or running).
    pub fn depth(&self) -> usize {
        self.inner.depth.load(Ordering::Acquire)
    }

    /// The most requests admitted at once.
    pub fn capacity(&self) -> usize {
        self.inner.capacity
    }

    /// Stops admitting; requests already admitted keep their permits.
    pub fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
    }
}

/// One admitted request's slot; dropping it frees the slot.
#[derive(Debug)]
pub struct Permit {
    inner: Arc<Inner>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.inner.depth.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_released_on_drop() {
        let queue = Admission::new(2);
        let a = queue.try_admit().unwrap();
        let _b = queue.try_admit().unwrap();
        assert_eq!(queue.try_admit().unwrap_err(), AdmissionError::QueueFull { capacity: 2 });
        assert_eq!(queue.depth(), 2);
        drop(a);
        assert_eq!(queue.depth(), 1);
        assert!(queue.try_admit().is_ok());
    }

    #[test]
    fn closed_queue_refuses() {
        let queue = Admission::new(4);
        let held = queue.try_admit().unwrap();
        queue.close();
        assert_eq!(queue.try_admit().unwrap_err(), AdmissionError::Closed);
        drop(held);
        assert_eq!(queue.depth(), 0);
    }
}
