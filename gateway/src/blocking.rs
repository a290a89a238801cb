//! A bound on the request work that runs off the async workers at once: decoding a large
//! body, inflating one. Each such section calls `block_in_place`, which hands the worker's
//! core to another thread; without a bound, 64 concurrent large bodies grew the runtime by
//! 30 or more threads (tokio's blocking pool allows 512), each allocating in a glibc malloc
//! arena of its own. A request over the bound waits for a turn asynchronously, its body
//! already counted in the admission budget, so neither threads nor memory grow with the
//! number of concurrent large requests.

use std::sync::Arc;
use tokio::sync::Semaphore;

/// The blocking sections of request work, at most one per runtime worker at once.
#[derive(Clone)]
pub struct BlockingSections {
    turns: Arc<Semaphore>,
}

impl BlockingSections {
    /// At most `max` sections at once (at least one).
    pub fn new(max: usize) -> Self {
        Self {
            turns: Arc::new(Semaphore::new(max.max(1))),
        }
    }

    /// As many sections at once as the current runtime has workers: CPU-bound work gains
    /// nothing from more threads than cores, and the workers keep serving while they run.
    /// Outside a runtime, one per CPU (tokio's default worker count).
    pub fn per_runtime_worker() -> Self {
        let workers = tokio::runtime::Handle::try_current()
            .map(|runtime| runtime.metrics().num_workers())
            .unwrap_or_else(|_| std::thread::available_parallelism().map_or(1, |n| n.get()));
        Self::new(workers)
    }

    /// Runs `work` in `block_in_place` once a turn is free, waiting for one asynchronously.
    pub async fn run<R>(&self, work: impl FnOnce() -> R) -> R {
        // The semaphore is never closed, so a turn always comes; were it closed, running
        // without a turn is still correct, only unbounded.
        let _turn = self.turns.acquire().await;
        tokio::task::block_in_place(work)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn no_more_sections_run_at_once_than_the_bound() {
        let sections = BlockingSections::new(2);
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let (sections, running, most) = (sections.clone(), running.clone(), most.clone());
                tokio::spawn(async move {
                    sections
                        .run(|| {
                            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                            most.fetch_max(now, Ordering::SeqCst);
                            std::thread::sleep(Duration::from_millis(20));
                            running.fetch_sub(1, Ordering::SeqCst);
                        })
                        .await
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(most.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 3)]
    async fn the_bound_is_the_runtimes_worker_count() {
        assert_eq!(
            BlockingSections::per_runtime_worker()
                .turns
                .available_permits(),
            3
        );
    }
}
