//! openraft's storage conformance suite (`openraft::testing::log::Suite`) run against the
//! redb store and the in-memory store.

use openraft::testing::log::StoreBuilder;
use openraft::testing::log::Suite;
use openraft::StorageError;

use crate::runtime::with_seed;
use crate::store::disk::RedbLogStore;
use crate::store::disk::RedbSnapshots;
use crate::store::disk::RedbStore;
use crate::store::mem::MemLogStore;
use crate::store::mem::MemSnapshots;
use crate::store::mem::MemStore;
use crate::store::StateMachineStore;
use crate::types::TypeConfig;

struct RedbBuilder;

impl StoreBuilder<TypeConfig, RedbLogStore, StateMachineStore<RedbSnapshots>, tempfile::TempDir>
    for RedbBuilder
{
    async fn build(
        &self,
    ) -> Result<
        (
            tempfile::TempDir,
            RedbLogStore,
            StateMachineStore<RedbSnapshots>,
        ),
        StorageError<TypeConfig>,
    > {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RedbStore::open(dir.path()).expect("open redb store");
        let (log, sm) = store.open_raft_storage();
        Ok((dir, log, sm))
    }
}

struct MemBuilder;

impl StoreBuilder<TypeConfig, MemLogStore, StateMachineStore<MemSnapshots>> for MemBuilder {
    async fn build(
        &self,
    ) -> Result<((), MemLogStore, StateMachineStore<MemSnapshots>), StorageError<TypeConfig>> {
        let (log, sm) = MemStore::new().open();
        Ok(((), log, sm))
    }
}

#[tokio::test(flavor = "current_thread")]
async fn redb_store_passes_openraft_suite() {
    with_seed(1, Suite::test_all(RedbBuilder))
        .await
        .expect("openraft storage suite on redb");
}

#[tokio::test(flavor = "current_thread")]
async fn mem_store_passes_openraft_suite() {
    with_seed(1, Suite::test_all(MemBuilder))
        .await
        .expect("openraft storage suite in memory");
}
