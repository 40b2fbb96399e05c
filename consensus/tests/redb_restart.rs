//! The redb store across a simulated restart (drop everything, reopen the directory): the
//! vote, the log, the committed id, the snapshot and, after openraft's startup recovery, the
//! state machine come back exactly. Also: corrupt bytes on disk are errors, never panics.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::io;

use shoal_consensus::openraft::entry::RaftEntry;
use shoal_consensus::openraft::storage::IOFlushed;
use shoal_consensus::openraft::storage::RaftLogStorage;
use shoal_consensus::openraft::storage::RaftStateMachine;
use shoal_consensus::openraft::vote::RaftLeaderIdExt;
use shoal_consensus::openraft::RaftLogReader;
use shoal_consensus::openraft::RaftSnapshotBuilder;
use shoal_consensus::openraft::StorageHelper;
use shoal_consensus::runtime::with_seed;
use shoal_consensus::store::disk::OpenError;
use shoal_consensus::store::disk::DB_FILE;
use shoal_consensus::types::Entry;
use shoal_consensus::types::LogId;
use shoal_consensus::types::Membership;
use shoal_consensus::types::Vote;
use shoal_consensus::CaRecord;
use shoal_consensus::Command;
use shoal_consensus::NodeRecord;
use shoal_consensus::RaftNodeId;
use shoal_consensus::RedbStore;
use shoal_consensus::ShoalNode;
use shoal_consensus::StateMachineStore;
use shoal_wire::NodeId;

fn id(n: u8) -> RaftNodeId {
    RaftNodeId(NodeId([n; 16]))
}

fn log_id(index: u64) -> LogId {
    let leader =
        shoal_consensus::openraft::impls::leader_id_std::LeaderId::<u64, RaftNodeId>::new_committed(
            2,
            id(1),
        );
    LogId::new(leader, index)
}

fn register(n: u8) -> Command {
    Command::RegisterNode {
        id: NodeId([n; 16]),
        record: NodeRecord {
            name: format!("pi-{n}"),
            addr: ([10, 0, 0, n], 7481).into(),
            labels: BTreeMap::new(),
        },
    }
}

fn entries() -> Vec<Entry> {
    let voters: BTreeSet<RaftNodeId> = [id(1)].into();
    let nodes: BTreeMap<RaftNodeId, ShoalNode> =
        [(id(1), ShoalNode::new("pi-1", ([10, 0, 0, 1], 7481).into()))].into();
    let membership = Membership::new(vec![voters], nodes).expect("membership");
    let ca = CaRecord {
        cert_pem: "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n".into(),
        sealed_key: vec![5; 40],
    };
    vec![
        Entry::new_membership(log_id(1), membership),
        Entry::new_blank(log_id(2)),
        Entry::new_normal(log_id(3), register(1)),
        Entry::new_normal(log_id(4), Command::SetCa(ca)),
        Entry::new_normal(log_id(5), register(2)),
        Entry::new_normal(
            log_id(6),
            Command::Revoke {
                node: NodeId([2; 16]),
            },
        ),
        Entry::new_normal(log_id(7), register(3)),
    ]
}

async fn apply<S: shoal_consensus::store::SnapshotStore>(
    sm: &mut StateMachineStore<S>,
    entries: &[Entry],
) {
    let items: Vec<Result<_, io::Error>> = entries.iter().cloned().map(|e| Ok((e, None))).collect();
    sm.apply(futures_util::stream::iter(items))
        .await
        .expect("apply");
}

#[tokio::test]
async fn reopened_store_returns_same_vote_log_and_state() {
    with_seed(3, async {
        let dir = tempfile::tempdir().expect("tempdir");
        let all = entries();
        let vote = Vote::new_committed(2, id(1));

        let before = {
            let store = RedbStore::open(dir.path()).expect("open");
            let (mut log, mut sm) = store.open_raft_storage();
            log.save_vote(&vote).await.expect("vote");
            log.append(all.clone(), IOFlushed::noop())
                .await
                .expect("append");
            // Entry 7 was never committed: a new leader truncates it.
            log.truncate_after(Some(log_id(6))).await.expect("truncate");
            apply(&mut sm, &all[..4]).await;
            let snapshot = sm
                .get_snapshot_builder()
                .await
                .build_snapshot()
                .await
                .expect("snapshot");
            assert_eq!(snapshot.meta.last_log_id, Some(log_id(4)));
            log.purge(log_id(3)).await.expect("purge");
            apply(&mut sm, &all[4..6]).await;
            log.save_committed(Some(log_id(6)))
                .await
                .expect("committed");
            let mut reader = log.get_log_reader().await;
            (
                reader.read_vote().await.expect("read vote"),
                reader.try_get_log_entries(..).await.expect("read log"),
                log.get_log_state().await.expect("log state"),
                sm.state().clone(),
            )
        };
        let (vote_before, log_before, log_state_before, state_before) = before;
        assert_eq!(vote_before, Some(vote));
        assert_eq!(
            log_before,
            all[3..6].to_vec(),
            "purged up to 3, truncated after 6"
        );
        assert_eq!(log_state_before.last_purged_log_id, Some(log_id(3)));
        assert_eq!(log_state_before.last_log_id, Some(log_id(6)));
        assert_eq!(state_before.last_applied, Some(log_id(6)));
        assert!(state_before.revoked.contains(&NodeId([2; 16])));

        // Everything above was dropped: the database is closed. Reopen it.
        let store = RedbStore::open(dir.path()).expect("reopen");
        let (mut log, mut sm) = store.open_raft_storage();
        let mut reader = log.get_log_reader().await;
        assert_eq!(reader.read_vote().await.expect("vote"), vote_before);
        assert_eq!(
            reader.try_get_log_entries(..).await.expect("log"),
            log_before
        );
        assert_eq!(
            log.get_log_state().await.expect("log state"),
            log_state_before
        );
        assert_eq!(
            log.read_committed().await.expect("committed"),
            Some(log_id(6))
        );
        let snapshot = sm
            .get_current_snapshot()
            .await
            .expect("snapshot")
            .expect("a snapshot");
        assert_eq!(snapshot.meta.last_log_id, Some(log_id(4)));

        // The state machine is transient: openraft's startup restores it from the snapshot
        // and re-applies the committed entries after it.
        assert_eq!(sm.state().last_applied, None);
        let initial = StorageHelper::new(&mut log, &mut sm)
            .with_id(id(1))
            .get_initial_state()
            .await
            .expect("initial state");
        assert_eq!(initial.vote_ref(), &vote);
        assert_eq!(*sm.state(), state_before);
    })
    .await;
}

#[tokio::test]
async fn corrupt_or_foreign_data_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = RedbStore::open(dir.path()).expect("open");
        let (mut log, _) = store.open_raft_storage();
        log.append(entries()[..2].to_vec(), IOFlushed::noop())
            .await
            .expect("append");
    }
    // Garbage at index 3, written behind the store's back.
    {
        let db = redb::Database::open(dir.path().join(DB_FILE)).expect("raw open");
        let txn = db.begin_write().expect("txn");
        {
            let mut table = txn
                .open_table(redb::TableDefinition::<u64, &[u8]>::new("log"))
                .expect("table");
            table.insert(3, [0xffu8; 9].as_slice()).expect("insert");
        }
        txn.commit().expect("commit");
    }
    let store = RedbStore::open(dir.path()).expect("reopen");
    let (mut log, _) = store.open_raft_storage();
    let err = log
        .get_log_reader()
        .await
        .try_get_log_entries(..)
        .await
        .expect_err("garbage must not decode");
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    let err = log
        .get_log_state()
        .await
        .expect_err("the last entry is garbage");
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    drop((log, store));

    // A database written by a future layout is refused at open.
    {
        let db = redb::Database::open(dir.path().join(DB_FILE)).expect("raw open");
        let txn = db.begin_write().expect("txn");
        {
            let mut table = txn
                .open_table(redb::TableDefinition::<&str, &[u8]>::new("meta"))
                .expect("table");
            let future = shoal_consensus::codec::encode::<u32, 16>(&99).expect("encode");
            table.insert("format", future.as_slice()).expect("insert");
        }
        txn.commit().expect("commit");
    }
    assert!(matches!(
        RedbStore::open(dir.path()),
        Err(OpenError::Format { found: 99, .. })
    ));
}

/// `holds_nothing` tells a store Raft never wrote to (new, or its file deleted) from one
/// with anything in it: the node refuses to start as a voter on the first kind.
#[tokio::test]
async fn a_new_store_holds_nothing_and_a_vote_or_an_entry_is_something() {
    with_seed(5, async {
        let new = tempfile::tempdir().expect("tempdir");
        assert!(RedbStore::open(new.path()).expect("open").holds_nothing().expect("read"));
        assert!(RedbStore::open(new.path()).expect("reopen").holds_nothing().expect("read"), "opening twice writes nothing Raft's");

        let voted = tempfile::tempdir().expect("tempdir");
        {
            let store = RedbStore::open(voted.path()).expect("open");
            let (mut log, _) = store.open_raft_storage();
            log.save_vote(&Vote::new(1, id(1))).await.expect("vote");
        }
        assert!(!RedbStore::open(voted.path()).expect("reopen").holds_nothing().expect("read"));

        let appended = tempfile::tempdir().expect("tempdir");
        {
            let store = RedbStore::open(appended.path()).expect("open");
            let (mut log, _) = store.open_raft_storage();
            log.append(entries()[..1].to_vec(), IOFlushed::noop()).await.expect("append");
        }
        assert!(!RedbStore::open(appended.path()).expect("reopen").holds_nothing().expect("read"));
    })
    .await;
}

/// A log of three voters (1, 2, 3) with two commands after the membership.
fn three_voter_log() -> Vec<Entry> {
    let nodes: BTreeMap<RaftNodeId, ShoalNode> = (1..=3)
        .map(|n| (id(n), ShoalNode::new(format!("pi-{n}"), ([10, 0, 0, n], 7481).into())))
        .collect();
    let membership = Membership::new(vec![nodes.keys().copied().collect()], nodes).expect("membership");
    vec![
        Entry::new_membership(log_id(1), membership),
        Entry::new_normal(log_id(2), register(1)),
        Entry::new_normal(log_id(3), register(2)),
    ]
}

/// `shoal recover`'s store half: the survivor's log gets, right after its last entry, a
/// membership with it as the only voter and a revocation of each lost voter; nothing it had
/// is touched. It works from the log or, when the log was purged, from the snapshot, and
/// refuses a store with nothing in it, a node that is not a voter, and a second recovery.
#[tokio::test]
async fn recovery_makes_the_survivor_the_sole_voter_after_its_last_entry() {
    with_seed(6, async {
        use shoal_consensus::openraft::EntryPayload;
        use shoal_consensus::store::recover::RecoverError;
        for purged in [false, true] {
            let dir = tempfile::tempdir().expect("tempdir");
            let store = RedbStore::open(dir.path()).expect("open");
            let (mut log, mut sm) = store.open_raft_storage();
            log.append(three_voter_log(), IOFlushed::noop()).await.expect("append");
            if purged {
                // Compacted: the membership is only in the snapshot.
                apply(&mut sm, &three_voter_log()).await;
                sm.get_snapshot_builder().await.build_snapshot().await.expect("snapshot");
                log.purge(log_id(3)).await.expect("purge");
                assert!(log.get_log_reader().await.try_get_log_entries(..).await.expect("read").is_empty());
            }
            let before = log.get_log_reader().await.try_get_log_entries(..).await.expect("read");
            let recovery = store.recover_as_sole_voter(id(1)).expect("recover");
            assert_eq!(recovery.index, 4, "right after the last entry (purged: {purged})");
            assert_eq!(recovery.dropped, vec![id(2), id(3)]);
            let after = log.get_log_reader().await.try_get_log_entries(..).await.expect("read");
            assert_eq!(&after[..before.len()], &before[..], "what the survivor had is untouched");
            let added = &after[before.len()..];
            assert_eq!(added.iter().map(|e| e.log_id.index).collect::<Vec<_>>(), vec![4, 5, 6]);
            let EntryPayload::Membership(m) = &added[0].payload else { panic!("a membership first: {:?}", added[0]) };
            assert_eq!(m.voter_ids().collect::<Vec<_>>(), vec![id(1)]);
            assert!(matches!(&added[1].payload, EntryPayload::Normal(Command::Revoke { node }) if *node == id(2).node_id()));
            assert!(matches!(&added[2].payload, EntryPayload::Normal(Command::Revoke { node }) if *node == id(3).node_id()));
            // Once alone, there is nothing more to recover.
            assert!(matches!(store.recover_as_sole_voter(id(1)), Err(RecoverError::AlreadyAlone { .. })));
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RedbStore::open(dir.path()).expect("open");
        assert!(matches!(store.recover_as_sole_voter(id(1)), Err(RecoverError::Empty)));
        let (mut log, _) = store.open_raft_storage();
        log.append(three_voter_log(), IOFlushed::noop()).await.expect("append");
        let refused = store.recover_as_sole_voter(id(9)).expect_err("not a voter");
        assert!(matches!(refused, RecoverError::NotAVoter { .. }), "{refused}");
        println!("recovering a node that is not a voter: {refused}");
    })
    .await;
}
