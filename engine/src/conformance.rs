//! The one conformance suite of the [`Engine`] port: each behaviour is a generic async
//! function, run against the Docker engine (`tests/docker.rs`) and the fake
//! (`tests/fake_conformance.rs`). Test support: failures panic with a message.

use crate::engine::Engine;
use crate::image::{ImageId, ImageStream, IMAGE_IMPORT_BYTES_MAX};
use crate::types::{ContainerId, ContainerInfo, ContainerSpec, ContainerState, CreateRequest, EngineNetwork, LabelFilter, NetworkJoin, Owner};
use crate::EngineError;
use bytes::Bytes;
use futures_util::StreamExt;
use std::future::Future;

/// What the suite needs from each implementation's test setup.
pub trait Harness: Sync {
    type E: Engine;
    fn engine(&self) -> &Self::E;
    /// An image present on the engine.
    fn image(&self) -> String;
    /// A command that runs until stopped.
    fn run_forever(&self) -> Vec<String>;
    /// A command that exits by itself, soon, with `code`.
    fn exit_with(&self, code: i64) -> Vec<String>;
    /// A command that cannot start (its executable is not in the image).
    fn missing_executable(&self) -> Vec<String>;
    /// A node label unique to this run (several runs may share one engine).
    fn node(&self, name: &str) -> String;
    /// Lets a little time pass (the fake: advance its clock; Docker: sleep).
    fn pass_time(&self) -> impl Future<Output = ()> + Send;
    /// Makes a new image, distinct from every other (its own id), tagged `R:latest`, and
    /// returns `R`. `name` is unique within a run.
    fn fresh_image(&self, name: &str) -> impl Future<Output = String> + Send;
    /// Removes an image tag (the image goes with its last tag) or an image by id; a
    /// missing one is fine.
    fn remove_image(&self, reference: &str) -> impl Future<Output = ()> + Send;
    /// Tags the image `reference` names as `tag` too (the tag moves off any other image).
    fn add_tag(&self, reference: &str, tag: &str) -> impl Future<Output = ()> + Send;
    /// A reference whose pull must fail at once without leaving this machine (Docker: a
    /// registry on 127.0.0.1 at a port nothing listens on).
    fn unpullable_reference(&self) -> String;
}

/// How many `pass_time` steps a state may take to appear.
const WAIT_STEPS_MAX: u32 = 300;

fn request<H: Harness>(h: &H, node: &str, task: u64, command: Vec<String>) -> CreateRequest {
    CreateRequest {
        owner: Owner { node: h.node(node), service: "conf".to_string(), task },
        spec: ContainerSpec { image: h.image(), command, ..Default::default() },
        network: None,
    }
}

/// Waits until `id` is in a state accepted by `ok`; panics with the last state otherwise.
pub async fn wait_for<H: Harness>(h: &H, id: &ContainerId, what: &str, ok: impl Fn(&ContainerState) -> bool) -> ContainerState {
    let mut last = ContainerState::Missing;
    for _ in 0..WAIT_STEPS_MAX {
        last = h.engine().inspect(id).await.expect("inspect");
        if ok(&last) {
            return last;
        }
        h.pass_time().await;
    }
    panic!("container {id} never became {what}; last state: {last}");
}

/// The engine answers a ping.
pub async fn ping<H: Harness>(h: &H) {
    h.engine().ping().await.expect("ping");
}

/// Create, start, list by label, inspect, stop and remove; idempotent removal.
pub async fn lifecycle<H: Harness>(h: &H) {
    let e = h.engine();
    let req = request(h, "a", 1, h.run_forever());
    let node = req.owner.node.clone();
    let id = e.create(&req).await.expect("create");
    assert_eq!(e.inspect(&id).await.expect("inspect"), ContainerState::Created);
    e.start(&id).await.expect("start");
    wait_for(h, &id, "running", |s| *s == ContainerState::Running).await;
    e.start(&id).await.expect("starting a running container is fine");

    let listed = e.list(&LabelFilter::node(&node)).await.expect("list");
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].id, id);
    assert_eq!(listed[0].owner, req.owner);
    assert_eq!(listed[0].name, req.owner.container_name());
    assert_eq!(listed[0].state, ContainerState::Running);
    let by_task = LabelFilter { node: node.clone(), service: Some("conf".to_string()), task: Some(1) };
    assert_eq!(e.list(&by_task).await.expect("list").len(), 1);
    let other_task = LabelFilter { task: Some(2), ..by_task.clone() };
    assert!(e.list(&other_task).await.expect("list").is_empty());
    let other_service = LabelFilter { service: Some("other".to_string()), task: None, ..by_task };
    assert!(e.list(&other_service).await.expect("list").is_empty());

    e.stop_and_remove(&id).await.expect("stop and remove");
    assert_eq!(e.inspect(&id).await.expect("inspect"), ContainerState::Missing);
    assert!(e.list(&LabelFilter::node(&node)).await.expect("list").is_empty());
    e.stop_and_remove(&id).await.expect("removing a removed container is fine");
    match e.start(&id).await {
        Err(EngineError::NoSuchContainer(_)) => {}
        other => panic!("start of a removed container: {other:?}"),
    }
}

/// A container that exits non-zero reports its exit code (in inspect and in list), and can
/// be started again in place.
pub async fn exit_code<H: Harness>(h: &H) {
    let e = h.engine();
    let req = request(h, "a", 7, h.exit_with(3));
    let id = e.run(&req).await.expect("run");
    wait_for(h, &id, "exited (3)", |s| *s == ContainerState::Exited { code: 3 }).await;
    let listed = e.list(&LabelFilter::node(&req.owner.node)).await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].state, ContainerState::Exited { code: 3 });
    e.start(&id).await.expect("restart in place");
    wait_for(h, &id, "exited (3) again", |s| *s == ContainerState::Exited { code: 3 }).await;
    e.stop_and_remove(&id).await.expect("remove");
}

/// A missing image is a clear error, and nothing is created.
pub async fn missing_image<H: Harness>(h: &H) {
    let e = h.engine();
    let mut req = request(h, "a", 9, h.run_forever());
    req.spec.image = format!("shoal-no-such-image:{}", h.node("missing"));
    match e.create(&req).await {
        Err(err @ EngineError::ImageNotFound { .. }) => {
            let text = err.to_string();
            assert!(text.contains(&req.spec.image) && text.contains("is not on this node's engine"), "{text}");
        }
        other => panic!("create with a missing image: {other:?}"),
    }
    assert!(e.list(&LabelFilter::node(&req.owner.node)).await.expect("list").is_empty());
}

/// A command that cannot be executed: the start fails with `StartFailed`, and the
/// container then shows as failed with a reason (not as created or exited).
pub async fn start_failure<H: Harness>(h: &H) {
    let e = h.engine();
    let req = request(h, "a", 13, h.missing_executable());
    let id = e.create(&req).await.expect("create");
    match e.start(&id).await {
        Err(EngineError::StartFailed { reason, .. }) => assert!(!reason.is_empty()),
        other => panic!("start of a missing executable: {other:?}"),
    }
    match e.inspect(&id).await.expect("inspect") {
        ContainerState::Failed { reason } => assert!(!reason.is_empty()),
        other => panic!("state after a failed start: {other:?}"),
    }
    let listed = e.list(&LabelFilter::node(&req.owner.node)).await.expect("list");
    assert!(matches!(listed[..], [ContainerInfo { state: ContainerState::Failed { .. }, .. }]), "{listed:?}");
    e.stop_and_remove(&id).await.expect("remove");
}

/// A second container for the same owner is refused by name.
pub async fn one_container_per_task<H: Harness>(h: &H) {
    let e = h.engine();
    let req = request(h, "a", 11, h.run_forever());
    let id = e.create(&req).await.expect("create");
    match e.create(&req).await {
        Err(EngineError::NameInUse(_)) => {}
        other => panic!("second create for one task: {other:?}"),
    }
    e.stop_and_remove(&id).await.expect("remove");
}

/// Two agents (node labels) on one engine never see each other's containers, even for
/// the same task id.
pub async fn agents_isolated<H: Harness>(h: &H) {
    let e = h.engine();
    let a = request(h, "a", 5, h.run_forever());
    let b = request(h, "b", 5, h.run_forever());
    let id_a = e.run(&a).await.expect("run a");
    let id_b = e.run(&b).await.expect("run b");
    let seen_a = e.list(&LabelFilter::node(&a.owner.node)).await.expect("list a");
    let seen_b = e.list(&LabelFilter::node(&b.owner.node)).await.expect("list b");
    assert_eq!(seen_a.iter().map(|c| c.id.clone()).collect::<Vec<_>>(), vec![id_a.clone()]);
    assert_eq!(seen_b.iter().map(|c| c.id.clone()).collect::<Vec<_>>(), vec![id_b.clone()]);
    assert!(seen_a.iter().all(|c| c.owner.node == a.owner.node));
    e.stop_and_remove(&id_a).await.expect("remove a");
    assert_eq!(e.list(&LabelFilter::node(&b.owner.node)).await.expect("list b").len(), 1, "removing a's container left b's alone");
    e.stop_and_remove(&id_b).await.expect("remove b");
}

/// Reads a whole export into memory (test images are small).
async fn export_bytes<H: Harness>(h: &H, id: &ImageId, tags: &[String]) -> Vec<u8> {
    let export = h.engine().export_image(id, tags).await.expect("export");
    assert_eq!(&export.image.id, id);
    let mut chunks = export.chunks;
    let mut out = Vec::new();
    while let Some(chunk) = chunks.next().await {
        out.extend_from_slice(&chunk.expect("export chunk"));
    }
    if let Some(total) = export.total_bytes {
        assert_eq!(total, out.len() as u64, "the announced archive length is the real one");
    }
    assert!(!out.is_empty());
    out
}

/// `bytes` as a stream of chunks of `chunk` bytes.
fn stream_of(bytes: &[u8], chunk: usize) -> ImageStream {
    let chunks: Vec<Result<Bytes, std::io::Error>> = bytes.chunks(chunk).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
    Box::pin(futures_util::stream::iter(chunks))
}

/// Is image `id` on the engine (listed, under any tags)?
async fn holds<H: Harness>(h: &H, id: &ImageId) -> bool {
    h.engine().images().await.expect("images").iter().any(|i| i.id == *id)
}

/// Images are listed with id, tags and size, and references resolve: `name:tag`, `name`
/// as `name:latest`, full id, id prefix; unknown → None; malformed → typed error.
pub async fn images_listed_and_resolved<H: Harness>(h: &H) {
    let e = h.engine();
    let repo = h.fresh_image("ls").await;
    let tag = format!("{repo}:latest");
    let listed = e.images().await.expect("images");
    let mine: Vec<_> = listed.iter().filter(|i| i.tags.contains(&tag)).collect();
    assert_eq!(mine.len(), 1, "{listed:?}");
    let id = mine[0].id.clone();
    assert!(ImageId::parse(&id.0).is_some(), "ids are sha256:<64 hex>: {id:?}");
    assert!(mine[0].size_bytes > 0);
    let mut sorted = listed.clone();
    sorted.sort();
    assert_eq!(listed, sorted, "images are sorted by id");
    assert_eq!(e.resolve_image(&tag).await.expect("resolve tag"), Some(id.clone()));
    assert_eq!(e.resolve_image(&repo).await.expect("resolve name"), Some(id.clone()), "name means name:latest");
    assert_eq!(e.resolve_image(&id.0).await.expect("resolve id"), Some(id.clone()));
    let prefix: String = id.0.trim_start_matches("sha256:").chars().take(16).collect();
    assert_eq!(e.resolve_image(&prefix).await.expect("resolve prefix"), Some(id.clone()));
    assert_eq!(e.resolve_image(&format!("{repo}:no-such-tag")).await.expect("resolve unknown"), None);
    assert_eq!(e.resolve_image(&format!("{repo}-absent")).await.expect("resolve unknown"), None);
    for bad in ["has space", "a?b=c", ""] {
        match e.resolve_image(bad).await {
            Err(EngineError::InvalidImageReference { .. }) => {}
            other => panic!("resolve {bad:?}: {other:?}"),
        }
    }
    h.remove_image(&tag).await;
    assert_eq!(e.resolve_image(&tag).await.expect("resolve removed"), None);
    assert!(!holds(h, &id).await);
}

/// Save, remove, load back: same id and tags; an archive made by id loads untagged.
pub async fn images_export_import_round_trip<H: Harness>(h: &H) {
    let e = h.engine();
    let repo = h.fresh_image("rt").await;
    let tag = format!("{repo}:latest");
    let id = e.resolve_image(&tag).await.expect("resolve").expect("fresh image resolves");
    let tagged = export_bytes(h, &id, std::slice::from_ref(&repo)).await; // `repo` = `repo:latest`
    let untagged = export_bytes(h, &id, &[]).await;
    match e.export_image(&id, &[format!("{repo}:not-its-tag")]).await {
        Err(EngineError::ImageNotFound { .. }) => {}
        other => panic!("export under a tag it does not have: {other:?}"),
    }
    h.remove_image(&tag).await;
    assert!(!holds(h, &id).await, "removed");
    match e.export_image(&id, &[]).await {
        Err(EngineError::ImageNotFound { .. }) => {}
        other => panic!("export of a missing image: {other:?}"),
    }

    let info = e.import_image(&id, &[], IMAGE_IMPORT_BYTES_MAX, stream_of(&untagged, 7_000)).await.expect("import untagged");
    assert_eq!((&info.id, info.tags.is_empty()), (&id, true), "{info:?}");
    assert_eq!(e.resolve_image(&tag).await.expect("resolve"), None, "an archive made by id carries no tag");
    let info = e.import_image(&id, std::slice::from_ref(&tag), IMAGE_IMPORT_BYTES_MAX, stream_of(&tagged, 64 << 10)).await.expect("import tagged");
    assert_eq!((&info.id, &info.tags), (&id, &vec![tag.clone()]));
    assert_eq!(e.resolve_image(&tag).await.expect("resolve"), Some(id.clone()), "same id under the same tag");
    // Loading what is already there changes nothing.
    let again = e.import_image(&id, std::slice::from_ref(&tag), IMAGE_IMPORT_BYTES_MAX, stream_of(&tagged, 64 << 10)).await.expect("import again");
    assert_eq!(again, info);
    h.remove_image(&tag).await;
    assert!(!holds(h, &id).await);
}

/// Garbage, a truncated archive, one past the bound, a transfer that breaks off, and an
/// archive of another image or tag: each a typed error, and none leaves the image (or
/// its tag) on the engine.
pub async fn images_bad_imports_leave_nothing<H: Harness>(h: &H) {
    let e = h.engine();
    let repo = h.fresh_image("bad").await;
    let tag = format!("{repo}:latest");
    let tags = std::slice::from_ref(&tag);
    let id = e.resolve_image(&tag).await.expect("resolve").expect("fresh image resolves");
    let archive = export_bytes(h, &id, tags).await;
    h.remove_image(&tag).await;
    let nothing_left = || async {
        assert!(!holds(h, &id).await, "the image was left on the engine");
        assert_eq!(e.resolve_image(&tag).await.expect("resolve"), None, "its tag was left on the engine");
    };

    let garbage: Vec<u8> = b"this is not an image archive\n".iter().copied().cycle().take(archive.len()).collect();
    match e.import_image(&id, tags, IMAGE_IMPORT_BYTES_MAX, stream_of(&garbage, 4096)).await {
        Err(err @ EngineError::ImportFailed { .. }) => eprintln!("  garbage: {err}"),
        other => panic!("import of garbage: {other:?}"),
    }
    nothing_left().await;

    let half = &archive[..archive.len() / 2];
    match e.import_image(&id, tags, IMAGE_IMPORT_BYTES_MAX, stream_of(half, 4096)).await {
        Err(err @ EngineError::ImportFailed { .. }) => eprintln!("  truncated: {err}"),
        other => panic!("import of a truncated archive: {other:?}"),
    }
    nothing_left().await;

    let limit = archive.len() as u64 - 1;
    match e.import_image(&id, tags, limit, stream_of(&archive, 4096)).await {
        Err(err @ EngineError::ImportTooLarge { limit_bytes }) => {
            assert_eq!(limit_bytes, limit);
            eprintln!("  too large: {err}");
        }
        other => panic!("import past the bound: {other:?}"),
    }
    nothing_left().await;

    let mut broken: Vec<Result<Bytes, std::io::Error>> = archive[..archive.len() / 2].chunks(4096).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
    broken.push(Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "peer went away")));
    match e.import_image(&id, tags, IMAGE_IMPORT_BYTES_MAX, Box::pin(futures_util::stream::iter(broken))).await {
        Err(err @ EngineError::TransferFailed(_)) => {
            assert!(err.to_string().contains("peer went away"), "{err}");
            eprintln!("  broken transfer: {err}");
        }
        other => panic!("import of a broken transfer: {other:?}"),
    }
    nothing_left().await;

    let other_id = ImageId(format!("sha256:{}", "0".repeat(64)));
    match e.import_image(&other_id, tags, IMAGE_IMPORT_BYTES_MAX, stream_of(&archive, 64 << 10)).await {
        Err(err @ EngineError::ImportMismatch { .. }) => {
            assert!(err.to_string().contains(&other_id.0), "{err}");
            eprintln!("  other id: {err}");
        }
        other => panic!("import of another image than expected: {other:?}"),
    }
    nothing_left().await;
    let other_tag = format!("{repo}:other");
    match e.import_image(&id, std::slice::from_ref(&other_tag), IMAGE_IMPORT_BYTES_MAX, stream_of(&archive, 64 << 10)).await {
        Err(err @ EngineError::ImportMismatch { .. }) => eprintln!("  other tags: {err}"),
        other => panic!("import under other tags than expected: {other:?}"),
    }
    nothing_left().await;
    assert_eq!(e.resolve_image(&other_tag).await.expect("resolve"), None);

    // The same archive, as expected, loads.
    e.import_image(&id, tags, archive.len() as u64, stream_of(&archive, 64 << 10)).await.expect("import at exactly the bound");
    assert_eq!(e.resolve_image(&tag).await.expect("resolve"), Some(id.clone()));
    h.remove_image(&tag).await;
}

/// An archive of another image, carrying a tag this engine has on an image of its own:
/// the load moves the tag, the check fails, and the tag is put back where it was; the
/// image the archive brought, already here under another tag, stays.
pub async fn images_rejected_load_puts_tags_back<H: Harness>(h: &H) {
    let e = h.engine();
    let (ra, rb) = (h.fresh_image("mva").await, h.fresh_image("mvb").await);
    let a = e.resolve_image(&ra).await.expect("resolve").expect("a");
    let b = e.resolve_image(&rb).await.expect("resolve").expect("b");
    assert_ne!(a, b);
    let shared = format!("{ra}-shared:1");
    h.add_tag(&ra, &shared).await;
    let archive = export_bytes(h, &a, std::slice::from_ref(&shared)).await; // a, tagged `shared`
    h.add_tag(&rb, &shared).await; // here, `shared` is b's
    assert_eq!(e.resolve_image(&shared).await.expect("resolve"), Some(b.clone()));
    match e.import_image(&b, std::slice::from_ref(&shared), IMAGE_IMPORT_BYTES_MAX, stream_of(&archive, 64 << 10)).await {
        Err(err @ EngineError::ImportMismatch { .. }) => eprintln!("  moved tag: {err}"),
        other => panic!("import of a's archive expecting b: {other:?}"),
    }
    assert_eq!(e.resolve_image(&shared).await.expect("resolve"), Some(b.clone()), "the tag is b's again");
    assert_eq!(e.resolve_image(&ra).await.expect("resolve"), Some(a.clone()), "a, here before, stays");
    for tag in [shared, format!("{ra}:latest"), format!("{rb}:latest")] {
        h.remove_image(&tag).await;
    }
    assert!(!holds(h, &a).await && !holds(h, &b).await);
}

/// A pull from a registry that cannot be reached fails at once with `PullFailed`, naming
/// the image; nothing is pulled, and create still never pulls.
pub async fn images_pull_failure_is_typed<H: Harness>(h: &H) {
    let e = h.engine();
    let reference = h.unpullable_reference();
    let t0 = std::time::Instant::now();
    let mut steps = Vec::new();
    match e.pull_image(&reference, |p| steps.push(p)).await {
        Err(err @ EngineError::PullFailed { .. }) => {
            let text = err.to_string();
            assert!(text.contains(&reference) && text.contains("could not pull"), "{text}");
            eprintln!("  pull: {text} (after {:?}, {} progress steps)", t0.elapsed(), steps.len());
        }
        other => panic!("pull of {reference}: {other:?}"),
    }
    assert!(t0.elapsed() < std::time::Duration::from_secs(20), "the failed pull took {:?}", t0.elapsed());
    assert_eq!(e.resolve_image(&reference).await.expect("resolve"), None);
    match e.pull_image("not a reference", |_| {}).await {
        Err(EngineError::InvalidImageReference { .. }) => {}
        other => panic!("pull of a malformed reference: {other:?}"),
    }
    let mut req = request(h, "a", 21, h.run_forever());
    req.spec.image = reference;
    assert!(matches!(e.create(&req).await, Err(EngineError::ImageNotFound { .. })), "create never pulls");
    assert!(e.list(&LabelFilter::node(&req.owner.node)).await.expect("list").is_empty());
}

/// A container on a network: the network is created on the first create (labelled as
/// shoal's, with the cluster's id), shared by a second container, refused removal while in
/// use, removed once empty; removing a missing network is fine.
pub async fn networks_created_lazily_and_removed<H: Harness>(h: &H) {
    let e = h.engine();
    let name: String = format!("shoalconf-{}", h.node("net")).chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').collect();
    let id = "c0ffee".repeat(10) + "c0ff";
    let join = |alias: &str| Some(NetworkJoin { name: name.clone(), id: id.clone(), aliases: vec![alias.to_string()] });
    let a = CreateRequest { network: join("alpha"), ..request(h, "net", 1, h.run_forever()) };
    let b = CreateRequest { network: join("beta"), ..request(h, "net", 2, h.run_forever()) };
    let ca = e.create(&a).await.expect("create on a new network");
    let cb = e.create(&b).await.expect("create on the same network");
    let ours = |list: Vec<EngineNetwork>| list.into_iter().filter(|n| n.name == name).collect::<Vec<_>>();
    assert_eq!(ours(e.networks().await.expect("networks")), vec![EngineNetwork { name: name.clone(), id: id.clone() }]);
    e.start(&ca).await.expect("start on the network");
    wait_for(h, &ca, "running", |s| *s == ContainerState::Running).await;
    assert!(e.remove_network(&name).await.is_err(), "a network in use is not removed");
    assert_eq!(ours(e.networks().await.expect("networks")).len(), 1);
    e.stop_and_remove(&ca).await.expect("remove a");
    e.stop_and_remove(&cb).await.expect("remove b");
    e.remove_network(&name).await.expect("remove the empty network");
    assert!(ours(e.networks().await.expect("networks")).is_empty());
    e.remove_network(&name).await.expect("removing a missing network is fine");
}

/// Every behaviour, in order, each printed with its duration.
pub async fn run_all<H: Harness>(h: &H) {
    macro_rules! step {
        ($f:ident) => {{
            let t0 = std::time::Instant::now();
            $f(h).await;
            eprintln!("conformance {}: ok in {:?}", stringify!($f), t0.elapsed());
        }};
    }
    step!(ping);
    step!(lifecycle);
    step!(exit_code);
    step!(missing_image);
    step!(start_failure);
    step!(one_container_per_task);
    step!(agents_isolated);
    step!(networks_created_lazily_and_removed);
    step!(images_listed_and_resolved);
    step!(images_export_import_round_trip);
    step!(images_bad_imports_leave_nothing);
    step!(images_rejected_load_puts_tags_back);
    step!(images_pull_failure_is_typed);
}
