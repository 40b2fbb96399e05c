//! The one conformance suite of the [`Engine`] port: each behaviour is a generic async
//! function, run against the Docker engine (`tests/docker.rs`) and the fake
//! (`tests/fake_conformance.rs`). Test support: failures panic with a message.

use crate::engine::Engine;
use crate::types::{ContainerId, ContainerInfo, ContainerSpec, ContainerState, CreateRequest, LabelFilter, Owner};
use crate::EngineError;
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
}

/// How many `pass_time` steps a state may take to appear.
const WAIT_STEPS_MAX: u32 = 300;

fn request<H: Harness>(h: &H, node: &str, task: u64, command: Vec<String>) -> CreateRequest {
    CreateRequest {
        owner: Owner { node: h.node(node), service: "conf".to_string(), task },
        spec: ContainerSpec { image: h.image(), command, ..Default::default() },
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
            assert!(text.contains(&req.spec.image) && text.contains("not found locally; shoal does not pull"), "{text}");
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
}
