//! Admission control: a bound on the request bytes held in memory at once. A request that
//! would go past it is refused at once (429 / RESOURCE_EXHAUSTED with a retry delay) rather
//! than queued, so memory stays flat under overload and clients back off.

use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The in-flight byte budget shared by every receiver.
#[derive(Clone)]
pub struct Admission {
    budget: Arc<Semaphore>,
}

/// Bytes held by one request; given back when dropped.
pub struct Admitted {
    _permit: OwnedSemaphorePermit,
    bytes: u32,
}

impl Admission {
    /// A budget of `max_bytes` (capped at what a semaphore can count).
    pub fn new(max_bytes: usize) -> Self {
        Self {
            budget: Arc::new(Semaphore::new(max_bytes.min(Semaphore::MAX_PERMITS))),
        }
    }

    /// Takes `bytes` from the budget, or `None` when that would go past it.
    pub fn try_admit(&self, bytes: usize) -> Option<Admitted> {
        let bytes = u32::try_from(bytes.max(1)).ok()?;
        let permit = self.budget.clone().try_acquire_many_owned(bytes).ok()?;
        metrics::gauge!("weir_receiver_inflight_bytes").increment(f64::from(bytes));
        Some(Admitted {
            _permit: permit,
            bytes,
        })
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        metrics::gauge!("weir_receiver_inflight_bytes").decrement(f64::from(self.bytes));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_past_the_budget_and_recovers_on_drop() {
        let a = Admission::new(100);
        let first = a.try_admit(60).unwrap();
        assert!(a.try_admit(50).is_none());
        let second = a.try_admit(40).unwrap();
        drop(first);
        assert!(a.try_admit(60).is_some());
        drop(second);
    }
}
