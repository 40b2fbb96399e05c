//! Getting the images this node's tasks need.
//!
//! [`Acquisitions::plan`] is pure: given the tasks assigned here with their images and the
//! images the engine holds, it says which tasks wait (not handed to the reconciler yet, so
//! it does not fail them with "image not found" while a transfer runs), which images to go
//! and get, and which tasks to report failed (the last attempt's reason), retrying a failed
//! image every [`RETRY_AFTER_MS`]. [`acquire`] is the job: fetch from a node that holds the
//! image, else pull through the engine, else fail with a reason naming who was asked.

use super::proto::{self, Peer};
use super::ImageStore;
use crate::pki::MutualTls;
use shoal_cluster::scheduler::TaskId;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// A failed image is tried again after this long.
pub const RETRY_AFTER_MS: u64 = 30_000;
/// Images fetched at once by one node.
pub const MAX_JOBS: usize = 2;
/// Progress is logged at most this often per transfer.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Job {
    Running,
    Failed { at_ms: u64, reason: String },
}

/// What to do this pass.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Images to start getting now.
    pub start: Vec<String>,
    /// Tasks to keep from the reconciler this pass (their image is not here).
    pub waiting: BTreeSet<TaskId>,
    /// Tasks to report failed, with the reason.
    pub failed: Vec<(TaskId, String)>,
}

/// The node's image jobs, by image reference as the task spec names it.
#[derive(Debug, Default)]
pub struct Acquisitions {
    jobs: BTreeMap<String, Job>,
}

impl Acquisitions {
    pub fn new() -> Self {
        Self::default()
    }

    /// `needs`: (task, image) for every task assigned here that should run; `present`: the
    /// references among them the engine holds.
    pub fn plan(&mut self, now_ms: u64, needs: &[(TaskId, String)], present: &BTreeSet<String>) -> Plan {
        let mut plan = Plan::default();
        let running = self.jobs.values().filter(|j| **j == Job::Running).count();
        let mut free = MAX_JOBS.saturating_sub(running);
        // Images no task needs any more, or that are here now, are forgotten.
        let needed: BTreeSet<&String> = needs.iter().map(|(_, i)| i).filter(|i| !present.contains(*i)).collect();
        self.jobs.retain(|image, job| needed.contains(image) || *job == Job::Running);
        for (task, image) in needs {
            if present.contains(image) {
                continue;
            }
            plan.waiting.insert(*task);
            match self.jobs.get(image) {
                Some(Job::Running) => {}
                Some(Job::Failed { at_ms, reason }) => {
                    if now_ms.saturating_sub(*at_ms) >= RETRY_AFTER_MS && free > 0 && !plan.start.contains(image) {
                        free -= 1;
                        plan.start.push(image.clone());
                    }
                    plan.failed.push((*task, reason.clone()));
                }
                None if free > 0 && !plan.start.contains(image) => {
                    free -= 1;
                    plan.start.push(image.clone());
                }
                None => {}
            }
        }
        for image in &plan.start {
            self.jobs.insert(image.clone(), Job::Running);
        }
        plan
    }

    /// A job ended: `Ok` forgets it (the image is here), `Err` keeps the reason.
    pub fn finished(&mut self, image: &str, now_ms: u64, result: Result<(), String>) {
        match result {
            Ok(()) => {
                self.jobs.remove(image);
            }
            Err(reason) => {
                self.jobs.insert(image.to_string(), Job::Failed { at_ms: now_ms, reason });
            }
        }
    }
}

/// A member that may hold images.
#[derive(Debug, Clone)]
pub struct Holder {
    pub peer: Peer,
    pub name: String,
}

/// Gets `reference` into `store`: from the first of `peers` that holds it, else by a pull.
/// Returns how it came (for the log), or the reason it could not.
pub async fn acquire(reference: &str, store: &dyn ImageStore, tls: &MutualTls, peers: &[Holder]) -> Result<String, String> {
    // Who has it: every peer's list, asked at once.
    let lists = futures_util::future::join_all(peers.iter().map(|h| async move { (h, proto::list(tls, h.peer).await) })).await;
    let mut asked = Vec::new();
    let mut holders = Vec::new();
    for (h, listed) in lists {
        match listed {
            Ok((images, _)) if images.iter().any(|i| super::matches(i, reference)) => holders.push(h),
            Ok(_) => asked.push(h.name.clone()),
            Err(e) => asked.push(format!("{} (unreachable: {e})", h.name)),
        }
    }
    let mut fetch_errors = Vec::new();
    for h in holders {
        let started = Instant::now();
        let last = std::sync::Mutex::new(Instant::now());
        let progress = |got: u64, expected: u64| {
            let mut last = last.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if last.elapsed() >= PROGRESS_EVERY {
                *last = Instant::now();
                tracing::info!(image = reference, from = %h.name, "fetching image: {} of about {} MB", got >> 20, expected >> 20);
            }
        };
        match proto::fetch(tls, h.peer, reference, store, &progress).await {
            Ok(image) => {
                let how = format!("fetched from {} in {:.1?} ({} MB)", h.name, started.elapsed(), image.size_bytes >> 20);
                return Ok(how);
            }
            Err(e) => fetch_errors.push(format!("{}: {e}", h.name)),
        }
    }
    let log_pull = |line: String| tracing::info!(image = reference, "pulling: {line}");
    match store.pull(reference, &log_pull).await {
        Ok(()) => Ok("pulled from its registry".to_string()),
        Err(pull) => {
            let nodes = if !fetch_errors.is_empty() {
                format!("fetching it from the nodes that hold it failed ({})", fetch_errors.join("; "))
            } else if asked.is_empty() {
                "there is no other node to ask".to_string()
            } else {
                format!("no other node holds it (asked {})", asked.join(", "))
            };
            Err(format!("image {reference} is not on this node; {nodes}, and pulling it failed: {pull}"))
        }
    }
}
