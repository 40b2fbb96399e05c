//! The image protocol over real TLS on loopback between in-memory image stores, and the
//! acquisition plan. (Docker engines on both ends: `tests/tests/images_lab.rs`.)

use super::acquire::{acquire, Acquisitions, Holder, Plan, RETRY_AFTER_MS};
use super::proto::{self, Peer};
use super::service::ImageService;
use super::{BoxFuture, ChunkReceiver, ImageInfo, ImageStore, IMAGE_ALPN};
use crate::pki::testing::Cluster as Ca;
use crate::pki::{MutualTls, NodeCredentials, Revocations};
use crate::port::{PortConfig, PortServer};
use shoal_engine::ImageId;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn id(n: u8) -> ImageId {
    ImageId(format!("sha256:{}", format!("{n:02x}").repeat(32)))
}

fn info(n: u8, tag: &str, size: u64) -> ImageInfo {
    ImageInfo { id: id(n), tags: vec![tag.to_string()], size_bytes: size }
}

/// An archive whose first line is the image id, then `size` bytes of a pattern.
fn archive(image: &ImageInfo) -> Vec<u8> {
    let mut out = format!("{}\n", image.id.0).into_bytes();
    out.extend((0..image.size_bytes).map(|i| (i % 251) as u8));
    out
}

/// An engine stand-in: images with their archives, and a "registry" to pull from.
#[derive(Default)]
struct MemStore {
    images: Mutex<BTreeMap<String, (ImageInfo, Vec<u8>)>>,
    registry: BTreeMap<String, ImageInfo>,
}

impl MemStore {
    fn with(images: &[ImageInfo]) -> Arc<Self> {
        let s = Self::default();
        for i in images {
            s.images.lock().expect("lock").insert(i.id.0.clone(), (i.clone(), archive(i)));
        }
        Arc::new(s)
    }
    fn has(&self, image: &ImageInfo) -> bool {
        self.images.lock().expect("lock").get(&image.id.0).is_some_and(|(i, a)| i == image && *a == archive(image))
    }
}

impl ImageStore for MemStore {
    fn list(&self) -> BoxFuture<'_, Result<Vec<ImageInfo>, String>> {
        Box::pin(async move { Ok(self.images.lock().expect("lock").values().map(|(i, _)| i.clone()).collect()) })
    }
    fn resolve<'a>(&'a self, reference: &'a str) -> BoxFuture<'a, Result<Option<ImageInfo>, String>> {
        Box::pin(async move { Ok(self.images.lock().expect("lock").values().map(|(i, _)| i).find(|i| super::matches(i, reference)).cloned()) })
    }
    fn export<'a>(&'a self, image: &'a ImageInfo) -> BoxFuture<'a, Result<ChunkReceiver, String>> {
        Box::pin(async move {
            let bytes = self.images.lock().expect("lock").get(&image.id.0).map(|(_, a)| a.clone()).ok_or("no such image")?;
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            tokio::spawn(async move {
                for c in bytes.chunks(100_000) {
                    if tx.send(Ok(c.to_vec())).await.is_err() {
                        return;
                    }
                }
            });
            Ok(rx)
        })
    }
    fn import<'a>(&'a self, expected: &'a ImageInfo, mut chunks: ChunkReceiver) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let mut all = Vec::new();
            while let Some(c) = chunks.recv().await {
                all.extend(c?);
            }
            if all != archive(expected) {
                return Err(format!("the archive is not {}", expected.id));
            }
            self.images.lock().expect("lock").insert(expected.id.0.clone(), (expected.clone(), all));
            Ok(())
        })
    }
    fn pull<'a>(&'a self, reference: &'a str, progress: &'a (dyn Fn(String) + Send + Sync)) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let Some(image) = self.registry.get(reference).cloned() else {
                return Err(format!("the registry of {reference} cannot be reached"));
            };
            progress("Pull complete".into());
            let bytes = archive(&image);
            self.images.lock().expect("lock").insert(image.id.0.clone(), (image, bytes));
            Ok(())
        })
    }
}

/// A node: its TLS endpoint for images and, if `store` is given, its port serving them.
struct Node {
    tls: MutualTls,
    peer: Peer,
    _port: Option<PortServer>,
}

async fn node(ca: &Ca, store: Option<Arc<dyn ImageStore>>) -> Node {
    let (key, cert) = ca.issue();
    let node_id = crate::pki::node_id_of_key(&key);
    let creds = NodeCredentials::new(cert, &key).expect("credentials");
    let tls = MutualTls::new(ca.ca_der(), creds, Revocations::new()).expect("tls").with_alpn(IMAGE_ALPN);
    let port = PortServer::bind("127.0.0.1:0".parse().expect("addr"), PortConfig::default()).await.expect("port");
    let addr = port.local_addr();
    let port = store.map(|s| {
        port.route(IMAGE_ALPN, ImageService::new(tls.clone(), s));
        port
    });
    Node { tls, peer: Peer { id: node_id, addr }, _port: port }
}

async fn bounded<F: std::future::Future<Output = ()>>(f: F) {
    tokio::time::timeout(Duration::from_secs(30), f).await.expect("test timed out");
}

#[tokio::test]
async fn list_fetch_and_push_move_whole_images_between_nodes() {
    bounded(async {
        let ca = Ca::live(40);
        let web = info(1, "web:1", 3_000_000);
        let db = info(2, "db:2", 10);
        let a_store = MemStore::with(&[web.clone(), db.clone()]);
        let b_store = MemStore::with(&[]);
        let a = node(&ca, Some(a_store.clone())).await;
        let b = node(&ca, Some(b_store.clone())).await;

        let (listed, truncated) = proto::list(&b.tls, a.peer).await.expect("list");
        assert_eq!(listed, vec![web.clone(), db.clone()]);
        assert!(!truncated);

        let seen = Mutex::new(0u64);
        let got = proto::fetch(&b.tls, a.peer, "web:1", b_store.as_ref(), &|n, total| {
            assert_eq!(total, web.size_bytes);
            *seen.lock().expect("lock") = n;
        })
        .await
        .expect("fetch");
        assert_eq!(got, web);
        assert!(b_store.has(&web), "the fetched archive is byte for byte the image");
        assert!(*seen.lock().expect("lock") >= web.size_bytes, "progress reached the end");

        // By id prefix too; and a missing image is refused with the reason.
        let by_id = &db.id.0["sha256:".len()..][..12];
        proto::fetch(&b.tls, a.peer, by_id, b_store.as_ref(), &|_, _| {}).await.expect("fetch by id prefix");
        assert!(b_store.has(&db));
        let err = proto::fetch(&b.tls, a.peer, "nope:1", b_store.as_ref(), &|_, _| {}).await.expect_err("missing");
        assert!(err.to_string().contains("has no image nope:1"), "{err}");

        // Push: a new image goes over; one the peer has is not sent again.
        let c_store = MemStore::with(&[]);
        let c = node(&ca, Some(c_store.clone())).await;
        assert!(proto::push(&a.tls, c.peer, &web, a_store.as_ref()).await.expect("push"));
        assert!(c_store.has(&web));
        assert!(!proto::push(&a.tls, c.peer, &web, a_store.as_ref()).await.expect("push again"), "already there");
    })
    .await;
}

#[tokio::test]
async fn a_peer_that_lies_about_the_image_gets_nothing_loaded() {
    bounded(async {
        let ca = Ca::live(41);
        // The server claims `web:1` is image 1 but its archive is image 9's.
        let web = info(1, "web:1", 1000);
        let liar = MemStore::with(&[]);
        liar.images.lock().expect("lock").insert(web.id.0.clone(), (web.clone(), archive(&info(9, "web:1", 1000))));
        let a = node(&ca, Some(liar)).await;
        let b_store = MemStore::with(&[]);
        let b = node(&ca, Some(b_store.clone())).await;
        let err = proto::fetch(&b.tls, a.peer, "web:1", b_store.as_ref(), &|_, _| {}).await.expect_err("refused");
        assert!(err.to_string().contains("is not"), "{err}");
        assert!(b_store.images.lock().expect("lock").is_empty(), "nothing half-loaded");
    })
    .await;
}

#[tokio::test]
async fn strangers_get_no_image_session() {
    bounded(async {
        let ca = Ca::live(42);
        let other = Ca::live(43);
        let a = node(&ca, Some(MemStore::with(&[info(1, "web:1", 10)]))).await;
        let stranger = node(&other, None).await;
        let err = proto::list(&stranger.tls, a.peer).await.expect_err("another CA is refused");
        assert!(matches!(err, proto::ImageError::Tls(..) | proto::ImageError::Protocol(_)), "{err:?}");
    })
    .await;
}

#[tokio::test]
async fn acquire_fetches_from_a_holder_then_pulls_then_names_who_was_asked() {
    bounded(async {
        let ca = Ca::live(44);
        let web = info(1, "web:1", 2000);
        let holder = node(&ca, Some(MemStore::with(std::slice::from_ref(&web)))).await;
        let empty = node(&ca, Some(MemStore::with(&[]))).await;
        let me_store = MemStore::with(&[]);
        let me = node(&ca, None).await;
        let peers = vec![
            Holder { peer: empty.peer, name: "n2".into() },
            Holder { peer: holder.peer, name: "n3".into() },
        ];
        let how = acquire("web:1", me_store.as_ref(), &me.tls, &peers).await.expect("fetched");
        assert!(how.contains("fetched from n3"), "{how}");
        assert!(me_store.has(&web));

        // Nobody has it and there is no registry: the reason names who was asked.
        let err = acquire("ghost:1", me_store.as_ref(), &me.tls, &peers).await.expect_err("nowhere");
        assert!(err.contains("no other node holds it (asked n2, n3)") && err.contains("pulling it failed"), "{err}");

        // A registry has it: pulled.
        let mut pulling = MemStore::default();
        pulling.registry.insert("reg:1".into(), info(5, "reg:1", 5));
        let pulling = Arc::new(pulling);
        let how = acquire("reg:1", pulling.as_ref(), &me.tls, &peers).await.expect("pulled");
        assert!(how.contains("pulled"), "{how}");
    })
    .await;
}

#[test]
fn the_plan_holds_tasks_back_while_their_image_comes_and_reports_why_it_did_not() {
    let mut a = Acquisitions::new();
    let needs = vec![(1, "web:1".to_string()), (2, "web:1".to_string()), (3, "db:1".to_string()), (4, "here:1".to_string())];
    let present: BTreeSet<String> = ["here:1".to_string()].into();
    let plan = a.plan(0, &needs, &present);
    assert_eq!(plan.start, vec!["web:1".to_string(), "db:1".to_string()], "one job per image");
    assert_eq!(plan.waiting, [1, 2, 3].into(), "tasks with a present image go to the reconciler");
    assert!(plan.failed.is_empty());
    // While the jobs run, nothing new starts.
    assert_eq!(a.plan(1_000, &needs, &present), Plan { start: vec![], waiting: [1, 2, 3].into(), failed: vec![] });
    a.finished("web:1", 2_000, Ok(()));
    a.finished("db:1", 2_000, Err("nowhere".into()));
    let present: BTreeSet<String> = ["here:1".to_string(), "web:1".to_string()].into();
    let plan = a.plan(3_000, &needs, &present);
    assert_eq!(plan.waiting, [3].into());
    assert_eq!(plan.failed, vec![(3, "nowhere".to_string())]);
    assert!(plan.start.is_empty(), "no retry before the pause");
    let plan = a.plan(2_000 + RETRY_AFTER_MS, &needs, &present);
    assert_eq!(plan.start, vec!["db:1".to_string()], "retried after the pause");
    assert_eq!(plan.failed, vec![(3, "nowhere".to_string())], "the last reason stands meanwhile");
    // A task that no longer needs the image: the job is forgotten once it ends.
    a.finished("db:1", 40_000, Err("again".into()));
    assert_eq!(a.plan(41_000, &[], &BTreeSet::new()), Plan::default());
}

#[test]
fn at_most_two_images_come_at_once() {
    let mut a = Acquisitions::new();
    let needs: Vec<(u64, String)> = (0..5).map(|i| (i, format!("img{i}:1"))).collect();
    let plan = a.plan(0, &needs, &BTreeSet::new());
    assert_eq!(plan.start.len(), super::acquire::MAX_JOBS);
    assert_eq!(plan.waiting.len(), 5);
}
