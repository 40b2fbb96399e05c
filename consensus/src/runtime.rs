//! The async runtime openraft runs on: tokio, except that every random draw openraft makes
//! (election timeouts, tick jitter) comes from a per-node seed when one is set.
//!
//! openraft 0.10 routes its selects (biased, argument order), channels, mutexes, time and
//! randomness through [`AsyncRuntime`]. Tokio's runtime draws randomness from the OS; this
//! wrapper keeps a seed in a task-local instead. [`with_seed`] sets it around a future (build
//! each node's `Raft` inside it); tasks spawned by openraft inherit a child seed derived from
//! their parent's, so every node has its own reproducible tree of seeds however the tasks of
//! several nodes interleave on one thread.
//!
//! A draw outside any seeded scope does not panic: it falls back to the OS generator and is
//! counted in [`unseeded_draws`], which the simulator asserts stays at zero. Real nodes use
//! [`with_seed`] too, with a seed from the OS ([`os_seed`]).

use std::cell::Cell;
use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;

use openraft::AsyncRuntime;
use openraft::OptionalSend;
use openraft_rt_tokio::TokioRuntime;
use rand::rngs::Xoshiro256PlusPlus;
use rand::SeedableRng;

tokio::task_local! {
    static SEED: Cell<u64>;
}

/// Random draws made outside a [`with_seed`] scope since the process started.
static UNSEEDED_DRAWS: AtomicU64 = AtomicU64::new(0);

/// Runs `future` with `seed` as the root of its task-local seed tree.
pub fn with_seed<F: Future>(seed: u64, future: F) -> impl Future<Output = F::Output> {
    SEED.scope(Cell::new(seed), future)
}

/// How many times openraft drew randomness outside a seeded scope (process-wide). A
/// deterministic simulation requires this to stay 0.
pub fn unseeded_draws() -> u64 {
    UNSEEDED_DRAWS.load(Ordering::Relaxed)
}

/// A seed from the OS, for real nodes.
pub fn os_seed() -> u64 {
    use rand::Rng;
    rand::rng().next_u64()
}

/// SplitMix64 finaliser over `seed + gamma`: a bijection with good avalanche.
fn splitmix64(seed: u64, gamma: u64) -> u64 {
    let z = seed.wrapping_add(gamma);
    let z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Takes the current task's seed and advances it, or `None` outside a seeded scope.
fn take_seed() -> Option<u64> {
    SEED.try_with(|cell| {
        let seed = cell.get();
        cell.set(splitmix64(seed, 0x6a09_e667_f3bc_c908));
        seed
    })
    .ok()
}

/// openraft's runtime for shoal: tokio plus seeded randomness (see the module docs).
#[derive(Debug)]
pub struct ShoalRuntime {
    inner: TokioRuntime,
}

type Tokio = TokioRuntime;

impl AsyncRuntime for ShoalRuntime {
    type JoinError = <Tokio as AsyncRuntime>::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = <Tokio as AsyncRuntime>::JoinHandle<T>;
    type Sleep = <Tokio as AsyncRuntime>::Sleep;
    type Instant = <Tokio as AsyncRuntime>::Instant;
    type TimeoutError = <Tokio as AsyncRuntime>::TimeoutError;
    type Timeout<R, T: Future<Output = R> + OptionalSend> = <Tokio as AsyncRuntime>::Timeout<R, T>;
    type ThreadLocalRng = Xoshiro256PlusPlus;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        match take_seed() {
            Some(parent) => {
                let child = splitmix64(parent, 0x9e37_79b9_7f4a_7c15);
                Tokio::spawn(SEED.scope(Cell::new(child), future))
            }
            None => Tokio::spawn(future),
        }
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        Tokio::sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        Tokio::sleep_until(deadline)
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(
        duration: Duration,
        future: F,
    ) -> Self::Timeout<R, F> {
        Tokio::timeout(duration, future)
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(
        deadline: Self::Instant,
        future: F,
    ) -> Self::Timeout<R, F> {
        Tokio::timeout_at(deadline, future)
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        Tokio::is_panic(join_error)
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        match take_seed() {
            Some(seed) => Xoshiro256PlusPlus::seed_from_u64(seed),
            None => {
                UNSEEDED_DRAWS.fetch_add(1, Ordering::Relaxed);
                Xoshiro256PlusPlus::seed_from_u64(os_seed())
            }
        }
    }

    type Mpsc = <Tokio as AsyncRuntime>::Mpsc;
    type Watch = watch::OrderedWatch;
    type Oneshot = <Tokio as AsyncRuntime>::Oneshot;
    type Mutex<T: OptionalSend + 'static> = <Tokio as AsyncRuntime>::Mutex<T>;

    fn new(threads: usize) -> Self {
        Self {
            inner: Tokio::new(threads),
        }
    }

    fn block_on<F, T>(&mut self, future: F) -> T
    where
        F: Future<Output = T>,
    {
        self.inner.block_on(future)
    }
}

/// A watch channel whose receivers wake in a fixed order.
///
/// **Entropy source (found by the simulator):** `tokio::sync::watch` parks each waiting
/// receiver on one of 8 `Notify` shards picked with tokio's thread-local `FastRand`
/// (`BigNotify::notified`, tokio 1.54 `sync/watch.rs`), and a send wakes the shards in
/// order. That rng is seeded from the OS for every runtime (only `tokio_unstable`'s
/// `Builder::rng_seed` fixes it), so two runs of one seed woke openraft's replication tasks
/// in different orders. This watch keeps the value under a `RwLock` and parks every receiver
/// on one `Notify`, which wakes waiters in the order they registered.
pub mod watch {
    use std::sync::atomic::AtomicBool;
    use std::sync::atomic::AtomicU64;
    use std::sync::atomic::AtomicUsize;
    use std::sync::atomic::Ordering;
    use std::sync::Arc;
    use std::sync::RwLock;
    use std::sync::RwLockReadGuard;

    use openraft::async_runtime::watch::RecvError;
    use openraft::async_runtime::watch::SendError;
    use openraft::async_runtime::watch::Watch;
    use openraft::async_runtime::watch::WatchReceiver;
    use openraft::async_runtime::watch::WatchSender;
    use openraft::OptionalSend;
    use openraft::OptionalSync;
    use tokio::sync::Notify;

    /// The [`Watch`] of [`super::ShoalRuntime`].
    pub struct OrderedWatch;

    struct Shared<T> {
        value: RwLock<T>,
        /// Bumped on every change.
        version: AtomicU64,
        senders: AtomicUsize,
        receivers: AtomicUsize,
        closed: AtomicBool,
        notify: Notify,
    }

    impl<T> Shared<T> {
        fn read(&self) -> RwLockReadGuard<'_, T> {
            self.value.read().unwrap_or_else(|p| p.into_inner())
        }
    }

    /// Sending half.
    pub struct Sender<T>(Arc<Shared<T>>);

    /// Receiving half: remembers the last version it has seen.
    pub struct Receiver<T> {
        shared: Arc<Shared<T>>,
        seen: u64,
    }

    impl<T> Clone for Sender<T> {
        fn clone(&self) -> Self {
            self.0.senders.fetch_add(1, Ordering::Relaxed);
            Self(self.0.clone())
        }
    }

    impl<T> Drop for Sender<T> {
        fn drop(&mut self) {
            if self.0.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
                self.0.closed.store(true, Ordering::Release);
                self.0.notify.notify_waiters();
            }
        }
    }

    impl<T> Clone for Receiver<T> {
        fn clone(&self) -> Self {
            self.shared.receivers.fetch_add(1, Ordering::Relaxed);
            Self {
                shared: self.shared.clone(),
                seen: self.seen,
            }
        }
    }

    impl<T> Drop for Receiver<T> {
        fn drop(&mut self) {
            self.shared.receivers.fetch_sub(1, Ordering::AcqRel);
        }
    }

    impl Watch for OrderedWatch {
        type Sender<T: OptionalSend + OptionalSync> = Sender<T>;
        type Receiver<T: OptionalSend + OptionalSync> = Receiver<T>;
        type Ref<'a, T: OptionalSend + 'a> = RwLockReadGuard<'a, T>;

        fn channel<T: OptionalSend + OptionalSync>(init: T) -> (Sender<T>, Receiver<T>) {
            let shared = Arc::new(Shared {
                value: RwLock::new(init),
                version: AtomicU64::new(0),
                senders: AtomicUsize::new(1),
                receivers: AtomicUsize::new(1),
                closed: AtomicBool::new(false),
                notify: Notify::new(),
            });
            (
                Sender(shared.clone()),
                Receiver { shared, seen: 0 },
            )
        }
    }

    impl<T: OptionalSend + OptionalSync> WatchSender<OrderedWatch, T> for Sender<T> {
        /// Like tokio's: fails (and keeps the old value) when every receiver is gone.
        fn send(&self, value: T) -> Result<(), SendError<T>> {
            if self.0.receivers.load(Ordering::Acquire) == 0 {
                return Err(SendError(value));
            }
            self.send_if_modified(|v| {
                *v = value;
                true
            });
            Ok(())
        }

        fn send_if_modified<F>(&self, modify: F) -> bool
        where
            F: FnOnce(&mut T) -> bool,
        {
            let modified = {
                let mut v = self.0.value.write().unwrap_or_else(|p| p.into_inner());
                modify(&mut v)
            };
            if modified {
                self.0.version.fetch_add(1, Ordering::AcqRel);
                self.0.notify.notify_waiters();
            }
            modified
        }

        fn borrow_watched(&self) -> RwLockReadGuard<'_, T> {
            self.0.read()
        }

        fn subscribe(&self) -> Receiver<T> {
            self.0.receivers.fetch_add(1, Ordering::Relaxed);
            Receiver {
                shared: self.0.clone(),
                seen: self.0.version.load(Ordering::Acquire),
            }
        }
    }

    impl<T: OptionalSend + OptionalSync> WatchReceiver<OrderedWatch, T> for Receiver<T> {
        async fn changed(&mut self) -> Result<(), RecvError> {
            loop {
                let notified = self.shared.notify.notified();
                let mut notified = std::pin::pin!(notified);
                // Registered before the checks, so a send in between is not missed.
                notified.as_mut().enable();
                let version = self.shared.version.load(Ordering::Acquire);
                if version != self.seen {
                    self.seen = version;
                    return Ok(());
                }
                if self.shared.closed.load(Ordering::Acquire) {
                    return Err(RecvError(()));
                }
                notified.await;
            }
        }

        fn borrow_watched(&self) -> RwLockReadGuard<'_, T> {
            self.shared.read()
        }

        fn borrow_and_update(&mut self) -> RwLockReadGuard<'_, T> {
            let guard = self.shared.read();
            self.seen = self.shared.version.load(Ordering::Acquire);
            guard
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::RngExt;

    use super::*;

    fn draws() -> Vec<u64> {
        (0..4)
            .map(|_| ShoalRuntime::thread_rng().random_range(150..300))
            .collect()
    }

    #[tokio::test]
    async fn same_seed_same_draws_including_spawned_tasks() {
        let run = |seed| {
            with_seed(seed, async {
                let mine = draws();
                let child = ShoalRuntime::spawn(async { draws() }).await.expect("join");
                (mine, child)
            })
        };
        let a = run(7).await;
        let b = run(7).await;
        let c = run(8).await;
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(
            a.0, a.1,
            "a child task must not replay its parent's sequence"
        );
    }

    #[tokio::test]
    async fn unseeded_draws_are_counted_not_fatal() {
        let before = unseeded_draws();
        let _ = ShoalRuntime::thread_rng();
        assert!(unseeded_draws() > before);
    }
}
