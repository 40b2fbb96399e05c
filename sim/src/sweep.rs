//! Seed sweeps on every core: each run is single-threaded and deterministic on its own, so
//! seeds are shared out over threads and the results come back in seed order.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Runs `run` for every seed in `seeds` on `available_parallelism` threads; returns the
/// results in seed order.
pub fn sweep<R: Send>(seeds: RangeInclusive<u64>, run: impl Fn(u64) -> R + Sync) -> Vec<R> {
    let (first, last) = (*seeds.start(), *seeds.end());
    if first > last {
        return Vec::new();
    }
    let next = AtomicU64::new(first);
    let done = Mutex::new(BTreeMap::new());
    let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed > last || seed < first {
                    break;
                }
                let result = run(seed);
                done.lock().unwrap_or_else(|p| p.into_inner()).insert(seed, result);
            });
        }
    });
    done.into_inner().unwrap_or_else(|p| p.into_inner()).into_values().collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_seed_once_in_order() {
        assert_eq!(super::sweep(3..=9, |s| s * 2), vec![6, 8, 10, 12, 14, 16, 18]);
        assert!(super::sweep(std::ops::RangeInclusive::new(5, 4), |s| s).is_empty());
    }
}
