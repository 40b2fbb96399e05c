//! One node's simulated disk under openraft: a log store whose writes become durable only
//! when the disk syncs them, and a state machine wrapper that tells the checkers what it
//! applies.
//!
//! **"A crash keeps only what was synced"**, following openraft's storage contract:
//! - `append` puts entries in the process's view at once (reads see them), and queues a sync.
//!   One flusher task per boot syncs the queue in order, each sync taking a disk latency drawn
//!   from the node's `RaftDisk` stream; only after the entries are on the durable disk does it
//!   invoke openraft's flush callback (`IOFlushed::io_completed`).
//! - `save_vote`, `truncate_after` and `purge` are durable when they return (the redb store
//!   commits them with fsync), so a vote is persisted before it is acknowledged.
//! - `save_committed` is not synced by itself (redb writes it with `Durability::None`): it
//!   becomes durable with the next synced append after it.
//! - Snapshots ([`MemSnapshots`]) are durable on save, as `SnapshotStore` requires.
//!
//! A crash either loses everything not synced (power cut) or keeps it (the process died, the
//! OS wrote its page cache out). Either way the boot's handles die with it: they carry an
//! epoch, and a handle of an older boot gets an error for every call, so nothing of a dead
//! node reaches the disk after its crash.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::ops::RangeBounds;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::MutexGuard;
use std::time::Duration;

use futures_util::Stream;
use futures_util::StreamExt;
use rand::rngs::StdRng;
use rand::RngExt;
use shoal_consensus::openraft::storage::EntryResponder;
use shoal_consensus::openraft::storage::IOFlushed;
use shoal_consensus::openraft::storage::LogState;
use shoal_consensus::openraft::storage::RaftLogStorage;
use shoal_consensus::openraft::storage::RaftStateMachine;
use shoal_consensus::openraft::OptionalSend;
use shoal_consensus::openraft::RaftLogReader;
use shoal_consensus::store::mem::MemSnapshots;
use shoal_consensus::types::Entry;
use shoal_consensus::types::LogId;
use shoal_consensus::types::SnapshotData;
use shoal_consensus::types::SnapshotMeta;
use shoal_consensus::types::StoredMembership;
use shoal_consensus::types::Vote;
use shoal_consensus::types::Snapshot;
use shoal_consensus::StateMachineStore;
use shoal_consensus::TypeConfig;
use tokio::sync::mpsc;

use super::world::Shared;
use crate::options::RaftBug;

fn crashed() -> io::Error {
    io::Error::other("simulated disk: this boot of the node has crashed")
}

/// What a log holds, on the durable disk or in the process's view of it.
#[derive(Debug, Default, Clone)]
struct LogData {
    log: BTreeMap<u64, Entry>,
    vote: Option<Vote>,
    committed: Option<LogId>,
    last_purged: Option<LogId>,
}

/// One queued sync: the entries of one `append` and the committed id written before it.
struct Sync {
    entries: Vec<LogId>,
    committed: Option<LogId>,
    callback: IOFlushed<TypeConfig>,
}

struct DiskInner {
    /// What survives a power cut.
    durable: LogData,
    /// What the running process reads: durable plus writes not yet synced.
    view: LogData,
    /// Boot number; handles of older boots are dead.
    epoch: u64,
    /// Sync latencies.
    rng: StdRng,
    /// Slow disk (SD card) episode: extra sync latency until this simulated time.
    slow_until_ms: u64,
    /// With the planted `unsynced-flush` bug: the batch whose callback already fired but
    /// which reaches the disk only with the next sync.
    lagging: Option<(Vec<LogId>, Option<LogId>)>,
    bug: Option<RaftBug>,
    flusher: Option<tokio::task::JoinHandle<()>>,
    /// Appends not yet synced (for the trace on a crash).
    unsynced_batches: u64,
}

/// One machine's disk. Survives crashes; [`Disk::open`] gives the handles of one boot.
#[derive(Clone)]
pub(crate) struct Disk {
    inner: Arc<Mutex<DiskInner>>,
    snapshots: MemSnapshots,
}

/// What a crash did to the disk, for the trace.
pub(crate) struct CrashLoss {
    pub entries_lost: u64,
    pub committed_lost: bool,
}

impl Disk {
    pub(crate) fn new(rng: StdRng, bug: Option<RaftBug>) -> Self {
        Self {
            inner: Arc::new(Mutex::new(DiskInner {
                durable: LogData::default(),
                view: LogData::default(),
                epoch: 0,
                rng,
                slow_until_ms: 0,
                lagging: None,
                bug,
                flusher: None,
                unsynced_batches: 0,
            })),
            snapshots: MemSnapshots::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, DiskInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Handles for a new boot: the view is what the disk holds, and a flusher task runs.
    /// Must be called inside the simulation's tokio runtime.
    pub(crate) fn open(&self, world: Shared, slot: usize) -> (SimLog, SimStateMachine) {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut d = self.lock();
        d.epoch += 1;
        d.view = d.durable.clone();
        d.unsynced_batches = 0;
        let epoch = d.epoch;
        d.flusher = Some(tokio::spawn(flusher(self.clone(), epoch, rx, world.clone())));
        drop(d);
        let log = SimLog { disk: self.clone(), epoch, queue: tx, world: world.clone(), slot };
        let sm = SimStateMachine { inner: StateMachineStore::new(self.snapshots.clone()), world, slot, epoch, disk: self.clone() };
        (log, sm)
    }

    /// The machine stops. `lose_unsynced`: power cut (what was not synced is gone); else the
    /// process died and the OS wrote everything out.
    pub(crate) fn crash(&self, lose_unsynced: bool) -> CrashLoss {
        let mut d = self.lock();
        d.epoch += 1;
        if let Some(f) = d.flusher.take() {
            f.abort();
        }
        d.lagging = None;
        let loss = CrashLoss {
            entries_lost: d.view.log.iter().filter(|(i, e)| d.durable.log.get(i).map(|x| x.log_id) != Some(e.log_id)).count() as u64,
            committed_lost: d.view.committed != d.durable.committed,
        };
        if lose_unsynced {
            d.view = d.durable.clone();
            loss
        } else {
            d.durable = d.view.clone();
            CrashLoss { entries_lost: 0, committed_lost: false }
        }
    }

    /// The epoch of the running boot (what [`Disk::open`] gave its handles).
    pub(crate) fn epoch(&self) -> u64 {
        self.lock().epoch
    }

    /// Syncs take 20–200 ms more until `until_ms` (simulated): a slow SD card.
    pub(crate) fn slow_down(&self, until_ms: u64) {
        self.lock().slow_until_ms = until_ms;
    }

    fn check(&self, epoch: u64) -> io::Result<MutexGuard<'_, DiskInner>> {
        let d = self.lock();
        if d.epoch != epoch {
            return Err(crashed());
        }
        Ok(d)
    }
}

/// Syncs queued appends in order, one disk latency each, then tells openraft.
async fn flusher(disk: Disk, epoch: u64, mut rx: mpsc::UnboundedReceiver<Sync>, world: Shared) {
    while let Some(sync) = rx.recv().await {
        let now = world.now_ms();
        let latency_ms = {
            let mut d = disk.lock();
            let base = d.rng.random_range(1..=6u64);
            let slow = if now < d.slow_until_ms { d.rng.random_range(20..=200u64) } else { 0 };
            base + slow
        };
        tokio::time::sleep(Duration::from_millis(latency_ms)).await;
        let mut d = disk.lock();
        if d.epoch != epoch {
            return;
        }
        let to_write = match d.bug {
            // Planted bug: the disk gets the previous batch; this one waits for the next sync.
            Some(RaftBug::UnsyncedFlush) => d.lagging.replace((sync.entries, sync.committed)),
            _ => Some((sync.entries, sync.committed)),
        };
        if let Some((entries, committed)) = to_write {
            for id in entries {
                // Only what the process still holds: a later truncate or overwrite wins.
                if let Some(e) = d.view.log.get(&id.index).filter(|e| e.log_id == id).cloned() {
                    d.durable.log.insert(id.index, e);
                }
            }
            if committed > d.durable.committed {
                d.durable.committed = committed;
            }
        }
        d.unsynced_batches = d.unsynced_batches.saturating_sub(1);
        drop(d);
        sync.callback.io_completed(Ok(()));
    }
}

/// The log store of one boot.
#[derive(Clone)]
pub(crate) struct SimLog {
    disk: Disk,
    epoch: u64,
    queue: mpsc::UnboundedSender<Sync>,
    world: Shared,
    slot: usize,
}

impl RaftLogReader<TypeConfig> for SimLog {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(&mut self, range: RB) -> Result<Vec<Entry>, io::Error> {
        Ok(self.disk.check(self.epoch)?.view.log.range(range).map(|(_, e)| e.clone()).collect())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(self.disk.check(self.epoch)?.view.vote)
    }
}

impl RaftLogStorage<TypeConfig> for SimLog {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let d = self.disk.check(self.epoch)?;
        let last_purged_log_id = d.view.last_purged;
        let last_log_id = d.view.log.values().next_back().map(|e| e.log_id).or(last_purged_log_id);
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        let mut d = self.disk.check(self.epoch)?;
        d.view.vote = Some(*vote);
        d.durable.vote = Some(*vote);
        drop(d);
        self.world.vote_saved(self.slot, self.epoch, vote);
        Ok(())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        self.disk.check(self.epoch)?.view.committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self.disk.check(self.epoch)?.view.committed)
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut d = self.disk.check(self.epoch)?;
        let mut ids = Vec::new();
        for entry in entries {
            ids.push(entry.log_id);
            d.view.log.insert(entry.log_id.index, entry);
        }
        let committed = d.view.committed;
        d.unsynced_batches += 1;
        drop(d);
        self.queue.send(Sync { entries: ids, committed, callback }).map_err(|_| crashed())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let first_removed = last_log_id.map_or(0, |id| id.index.saturating_add(1));
        let mut d = self.disk.check(self.epoch)?;
        let _ = d.view.log.split_off(&first_removed);
        let _ = d.durable.log.split_off(&first_removed);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        let mut d = self.disk.check(self.epoch)?;
        let d = &mut *d;
        for data in [&mut d.view, &mut d.durable] {
            if data.last_purged.is_none_or(|p| p.index < log_id.index) {
                data.last_purged = Some(log_id);
            }
            data.log = data.log.split_off(&log_id.index.saturating_add(1));
        }
        Ok(())
    }
}

/// shoal's real state machine ([`StateMachineStore`]), with every applied entry and every
/// installed snapshot reported to the checkers.
pub(crate) struct SimStateMachine {
    inner: StateMachineStore<MemSnapshots>,
    world: Shared,
    slot: usize,
    epoch: u64,
    disk: Disk,
}

impl RaftStateMachine<TypeConfig> for SimStateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = <StateMachineStore<MemSnapshots> as RaftStateMachine<TypeConfig>>::SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        self.inner.applied_state().await
    }

    async fn apply<Strm>(&mut self, entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        drop(self.disk.check(self.epoch)?);
        let world = self.world.clone();
        let slot = self.slot;
        let epoch = self.epoch;
        let observed = entries.map(move |item| {
            if let Ok((entry, _)) = &item {
                world.applied(slot, epoch, entry);
            }
            item
        });
        self.inner.apply(observed).await
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.inner.get_snapshot_builder().await
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: SnapshotData) -> Result<(), io::Error> {
        drop(self.disk.check(self.epoch)?);
        self.inner.install_snapshot(meta, snapshot).await?;
        self.world.installed_snapshot(self.slot, self.epoch, meta.last_log_id);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        self.inner.get_current_snapshot().await
    }
}

impl SimStateMachine {
    /// The replicated state this node has applied.
    pub(crate) fn shared(&self) -> std::sync::Arc<shoal_consensus::ClusterState> {
        self.inner.shared()
    }

    pub(crate) fn state(&self) -> &shoal_consensus::ClusterState {
        self.inner.state()
    }
}
