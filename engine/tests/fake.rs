//! The conformance suite and the reconciler loop on the in-memory fake engine, whose
//! clock the test drives.

#![allow(clippy::unwrap_used)]

use shoal_engine::conformance::{self, Harness};
use shoal_engine::*;

struct FakeHarness {
    engine: FakeEngine,
}

impl FakeHarness {
    fn new() -> Self {
        let engine = FakeEngine::new(300);
        engine.add_image("busybox:fake");
        Self { engine }
    }
}

impl Harness for FakeHarness {
    type E = FakeEngine;
    fn engine(&self) -> &FakeEngine {
        &self.engine
    }
    fn image(&self) -> String {
        "busybox:fake".to_string()
    }
    fn run_forever(&self) -> Vec<String> {
        vec!["sleep".to_string(), "100000".to_string()]
    }
    fn exit_with(&self, code: i64) -> Vec<String> {
        let command = vec!["sh".to_string(), "-c".to_string(), format!("exit {code}")];
        self.engine.set_behaviour(command.clone(), Behaviour::ExitAfter { after_ms: 50, code });
        command
    }
    fn missing_executable(&self) -> Vec<String> {
        let command = vec!["/no/such/binary".to_string()];
        self.engine.set_behaviour(command.clone(), Behaviour::FailToStart);
        command
    }
    fn node(&self, name: &str) -> String {
        format!("fake-{name}")
    }
    async fn pass_time(&self) {
        self.engine.set_now_ms(self.engine.now_ms() + 100);
    }
    async fn fresh_image(&self, name: &str) -> String {
        let repo = format!("fake-{name}");
        self.engine.add_image_sized(repo.clone(), 10_000);
        repo
    }
    async fn remove_image(&self, reference: &str) {
        self.engine.remove_image(reference);
    }
    async fn add_tag(&self, reference: &str, tag: &str) {
        assert!(self.engine.tag_image(reference, tag), "tag {reference} as {tag}");
    }
    fn unpullable_reference(&self) -> String {
        "127.0.0.1:9/shoal-none:1".to_string()
    }
}

#[tokio::test]
async fn fake_engine_passes_the_conformance_suite() {
    conformance::run_all(&FakeHarness::new()).await;
}

#[tokio::test]
async fn fake_containers_start_after_the_delay_and_crash_on_demand() {
    let h = FakeHarness::new();
    let e = h.engine();
    let req = CreateRequest { network: None,
        owner: Owner { node: "n".to_string(), service: "s".to_string(), task: 1 },
        spec: ContainerSpec { image: h.image(), ..Default::default() },
    };
    let id = e.run(&req).await.unwrap();
    assert_eq!(e.inspect(&id).await.unwrap(), ContainerState::Starting);
    e.set_now_ms(299);
    assert_eq!(e.inspect(&id).await.unwrap(), ContainerState::Starting);
    e.set_now_ms(300);
    assert_eq!(e.inspect(&id).await.unwrap(), ContainerState::Running);
    assert!(e.crash(&id, "killed: out of memory"));
    assert_eq!(e.inspect(&id).await.unwrap(), ContainerState::Failed { reason: "killed: out of memory".to_string() });
    e.set_healthy(false);
    assert!(matches!(e.ping().await, Err(EngineError::Unavailable(_))));
}

fn web_task(id: TaskId, command: Vec<String>, restart: RestartPolicy) -> AssignedTask {
    AssignedTask { network: None,
        id,
        service: "web".to_string(),
        spec: ContainerSpec { image: "busybox:fake".to_string(), command, ..Default::default() },
        desired: Desired::Running,
        restart,
    }
}

/// The driver loop on the fake: the same code the agent runs on Docker.
#[tokio::test]
async fn reconciler_loop_on_the_fake_engine() {
    let h = FakeHarness::new();
    let e = h.engine().clone();
    let mut r = Reconciler::new("n1", ReconcilerConfig::default());
    let mut other = Reconciler::new("n2", ReconcilerConfig::default());
    let crash = h.exit_with(3);
    let mut assigned: Vec<AssignedTask> = (1..=3).map(|i| web_task(i, h.run_forever(), RestartPolicy::Always)).collect();
    assigned.push(web_task(4, crash, RestartPolicy::OnFailure { max_attempts: 2 }));
    // n2 runs task 1 too (a stale copy from before a partition, say): n1 must not touch it.
    let theirs = [web_task(1, h.run_forever(), RestartPolicy::Always)];
    let mut reports = Vec::new();
    for step in 0..100u64 {
        let now = step * 100;
        e.set_now_ms(now);
        reports.extend(reconcile_once(&e, &mut r, now, &assigned).await.unwrap());
        reconcile_once(&e, &mut other, now, &theirs).await.unwrap();
    }
    let mine = e.list(&LabelFilter::node("n1")).await.unwrap();
    let running: Vec<TaskId> = mine.iter().filter(|c| c.state == ContainerState::Running).map(|c| c.owner.task).collect();
    assert_eq!(running, vec![1, 2, 3]);
    let t4: Vec<&TaskReport> = reports.iter().filter(|r| r.task == 4).collect();
    assert!(t4.iter().any(|r| r.state == TaskState::Exited { code: 3 }));
    let last = t4.last().unwrap();
    assert_eq!((last.state.clone(), last.restarts), (TaskState::Exited { code: 3 }, 2), "{t4:?}");
    assert_eq!(e.list(&LabelFilter::node("n2")).await.unwrap().len(), 1);

    // Task 2 goes away: its container is removed, the others stay.
    assigned.retain(|t| t.id != 2);
    reconcile_once(&e, &mut r, 10_000, &assigned).await.unwrap();
    let tasks: Vec<TaskId> = e.list(&LabelFilter::node("n1")).await.unwrap().iter().map(|c| c.owner.task).collect();
    assert_eq!(tasks, vec![1, 3, 4]);
    assert_eq!(e.list(&LabelFilter::node("n2")).await.unwrap().len(), 1);
}

/// The partition story on one shared fake engine: task 1 runs on n1; n1 is cut off, the
/// cluster gives task 1 to n2, which starts it; n1 comes back, learns it no longer owns
/// task 1 and removes its copy. At no point does either agent touch the other's container.
#[tokio::test]
async fn a_node_back_from_a_partition_removes_what_was_given_to_another() {
    let h = FakeHarness::new();
    let e = h.engine().clone();
    let mut n1 = Reconciler::new("n1", ReconcilerConfig::default());
    let mut n2 = Reconciler::new("n2", ReconcilerConfig::default());
    let t1 = [web_task(1, h.run_forever(), RestartPolicy::Always)];
    let mut now = 0;
    let mut tick = |n: u64| {
        now += n;
        e.set_now_ms(now);
        now
    };
    let t = tick(0);
    reconcile_once(&e, &mut n1, t, &t1).await.unwrap();
    let t = tick(1_000);
    reconcile_once(&e, &mut n1, t, &t1).await.unwrap();
    // Partition: n1 is not reconciled (it cannot hear the leader); n2 gets task 1.
    for _ in 0..3 {
        let t = tick(500);
        reconcile_once(&e, &mut n2, t, &t1).await.unwrap();
    }
    let running = |node: &str| {
        let e = e.clone();
        let node = node.to_string();
        async move { e.list(&LabelFilter::node(node)).await.unwrap().into_iter().filter(|c| c.state == ContainerState::Running).count() }
    };
    assert_eq!((running("n1").await, running("n2").await), (1, 1), "both run it during the partition (n1 cannot know)");
    // Heal: n1 hears its assignment list no longer has task 1.
    let t = tick(500);
    reconcile_once(&e, &mut n1, t, &[]).await.unwrap();
    assert_eq!((running("n1").await, running("n2").await), (0, 1));
    assert_eq!(e.container_count(), 1);
}

/// An engine that goes away makes the pass fail (the node reports its engine unhealthy),
/// counts no task failure, and the node converges once the engine is back.
#[tokio::test]
async fn an_engine_outage_is_survived() {
    let h = FakeHarness::new();
    let e = h.engine().clone();
    let mut r = Reconciler::new("n1", ReconcilerConfig::default());
    let tasks = [web_task(1, h.run_forever(), RestartPolicy::Never)];
    e.set_healthy(false);
    assert!(matches!(reconcile_once(&e, &mut r, 0, &tasks).await, Err(EngineError::Unavailable(_))));
    e.set_healthy(true);
    let mut reports = Vec::new();
    for step in 1..10 {
        e.set_now_ms(step * 200);
        reports.extend(reconcile_once(&e, &mut r, step * 200, &tasks).await.unwrap());
    }
    assert_eq!(reports.last().map(|r| (r.state.clone(), r.restarts)), Some((TaskState::Running, 0)), "{reports:?}");
}

fn collect(mut chunks: ImageStream) -> Vec<u8> {
    use futures_util::StreamExt;
    let mut out = Vec::new();
    while let Some(c) = futures_util::FutureExt::now_or_never(chunks.next()).expect("fake chunks are ready at once") {
        out.extend_from_slice(&c.unwrap());
    }
    out
}

/// The fake as the simulator will use it for image sharing: the same name is the same
/// image (id) on every engine, an export is the same bytes every time, and one engine's
/// export loads into another.
#[tokio::test]
async fn fake_images_move_between_engines_deterministically() {
    let (a, b) = (FakeEngine::new(0), FakeEngine::new(0));
    let id = a.add_image_sized("web:1", 100_000);
    assert_eq!(b.add_image_sized("web:1", 100_000), id, "same name, same image, same id");
    assert!(b.remove_image("web:1"));
    assert_eq!(b.images().await.unwrap(), vec![]);

    let tags = ["web:1".to_string()];
    let first = a.export_image(&id, &tags).await.unwrap();
    assert_eq!(first.image, ImageInfo { id: id.clone(), tags: tags.to_vec(), size_bytes: 100_000 });
    let total = first.total_bytes.unwrap();
    let bytes = collect(first.chunks);
    assert_eq!(bytes.len() as u64, total);
    assert_eq!(collect(a.export_image(&id, &tags).await.unwrap().chunks), bytes, "exports are byte for byte the same");

    let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = bytes.chunks(1000).map(|c| Ok(bytes::Bytes::copy_from_slice(c))).collect();
    let info = b.import_image(&id, &tags, total, Box::pin(futures_util::stream::iter(chunks))).await.unwrap();
    assert_eq!(info, ImageInfo { id: id.clone(), tags: tags.to_vec(), size_bytes: 100_000 });
    assert_eq!(b.images().await.unwrap(), a.images().await.unwrap());

    // A flipped byte in the layer no longer matches the id the archive claims.
    let mut corrupt = bytes.clone();
    corrupt[600] ^= 1;
    assert!(b.remove_image("web:1"));
    let one: Vec<Result<bytes::Bytes, std::io::Error>> = vec![Ok(bytes::Bytes::from(corrupt))];
    match b.import_image(&id, &tags, total, Box::pin(futures_util::stream::iter(one))).await {
        Err(EngineError::ImportFailed { reason }) => assert!(reason.contains("does not match"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(b.images().await.unwrap(), vec![]);
}

/// Pull gets only what the fake registry has, reporting progress; a registry that is
/// down, or one without the image, is `PullFailed`; create never pulls.
#[tokio::test]
async fn fake_pulls_only_from_its_registry_with_progress() {
    let e = FakeEngine::new(0);
    e.add_registry_image("nginx"); // = nginx:latest
    let req = CreateRequest { network: None,
        owner: Owner { node: "n".to_string(), service: "s".to_string(), task: 1 },
        spec: ContainerSpec { image: "nginx".to_string(), ..Default::default() },
    };
    assert!(matches!(e.create(&req).await, Err(EngineError::ImageNotFound { .. })), "create does not pull");

    e.set_registry_reachable(false);
    match e.pull_image("nginx", |_| {}).await {
        Err(EngineError::PullFailed { image, reason }) => assert!(image == "nginx" && reason.contains("cannot be reached"), "{reason}"),
        other => panic!("{other:?}"),
    }
    e.set_registry_reachable(true);
    match e.pull_image("nginx:alpine", |_| {}).await {
        Err(EngineError::PullFailed { reason, .. }) => assert!(reason.contains("does not have"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(e.images().await.unwrap(), vec![]);

    let mut steps = Vec::new();
    let id = e.pull_image("nginx", |p| steps.push(p)).await.unwrap();
    assert_eq!(e.resolve_image("nginx:latest").await.unwrap(), Some(id.clone()));
    assert_eq!(id, FakeEngine::new(0).add_image("nginx"), "the registry's image is the one add_image makes");
    let statuses: Vec<&str> = steps.iter().map(|s| s.status.as_str()).collect();
    assert_eq!(statuses[..4], ["Pulling fs layer", "Downloading", "Downloading", "Pull complete"]);
    assert!(steps.iter().any(|s| s.current_bytes == Some(FAKE_IMAGE_BYTES_DEFAULT) && s.total_bytes == Some(FAKE_IMAGE_BYTES_DEFAULT)));
    e.create(&req).await.expect("create once pulled");
}

/// The fake engine whose stop+remove takes `stop`, on tokio's (paused) clock: to see how
/// many removals run at once without depending on the wall clock.
struct SlowStops {
    inner: FakeEngine,
    stop: std::time::Duration,
}

impl Engine for SlowStops {
    async fn ping(&self) -> Result<(), EngineError> {
        self.inner.ping().await
    }
    async fn list(&self, filter: &LabelFilter) -> Result<Vec<ContainerInfo>, EngineError> {
        self.inner.list(filter).await
    }
    async fn create(&self, req: &CreateRequest) -> Result<ContainerId, EngineError> {
        self.inner.create(req).await
    }
    async fn networks(&self) -> Result<Vec<shoal_engine::EngineNetwork>, EngineError> {
        self.inner.networks().await
    }
    async fn remove_network(&self, name: &str) -> Result<(), EngineError> {
        self.inner.remove_network(name).await
    }
    async fn start(&self, id: &ContainerId) -> Result<(), EngineError> {
        self.inner.start(id).await
    }
    async fn stop_and_remove(&self, id: &ContainerId) -> Result<(), EngineError> {
        tokio::time::sleep(self.stop).await;
        self.inner.stop_and_remove(id).await
    }
    async fn inspect(&self, id: &ContainerId) -> Result<ContainerState, EngineError> {
        self.inner.inspect(id).await
    }
    async fn images(&self) -> Result<Vec<ImageInfo>, EngineError> {
        self.inner.images().await
    }
    async fn resolve_image(&self, reference: &str) -> Result<Option<ImageId>, EngineError> {
        self.inner.resolve_image(reference).await
    }
    async fn export_image(&self, id: &ImageId, tags: &[String]) -> Result<ImageExport, EngineError> {
        self.inner.export_image(id, tags).await
    }
    async fn import_image(&self, id: &ImageId, tags: &[String], max_bytes: u64, chunks: ImageStream) -> Result<ImageInfo, EngineError> {
        self.inner.import_image(id, tags, max_bytes, chunks).await
    }
    async fn pull_image<P: FnMut(PullProgress) + Send>(&self, reference: &str, progress: P) -> Result<ImageId, EngineError> {
        self.inner.pull_image(reference, progress).await
    }
}

/// Stops on one node run together: with each stop taking 10 s (paused tokio time, so
/// exact), removing 5 containers takes 10 s, not 50; 20 take two rounds (at most
/// `REMOVALS_IN_FLIGHT_MAX` = 16 at once), not one and not twenty. New containers are
/// created after the removals.
#[tokio::test(start_paused = true)]
async fn removals_on_one_node_run_concurrently_and_bounded() {
    let stop = std::time::Duration::from_secs(10);
    for (n, rounds) in [(5u64, 1u32), (20, 2)] {
        let e = SlowStops { inner: FakeEngine::new(0), stop };
        e.inner.add_image("busybox:fake");
        let mut r = Reconciler::new("n1", ReconcilerConfig::default());
        let old: Vec<AssignedTask> = (1..=n).map(|i| web_task(i, vec!["sleep".to_string()], RestartPolicy::Always)).collect();
        reconcile_once(&e, &mut r, 0, &old).await.unwrap();
        assert_eq!(e.inner.container_count() as u64, n);

        let new = [web_task(100, vec!["sleep".to_string()], RestartPolicy::Always)];
        let t0 = tokio::time::Instant::now();
        reconcile_once(&e, &mut r, 1_000, &new).await.unwrap();
        let took = t0.elapsed();
        assert_eq!(took, stop * rounds, "{n} removals took {took:?}");
        let left: Vec<TaskId> = e.list(&LabelFilter::node("n1")).await.unwrap().iter().map(|c| c.owner.task).collect();
        assert_eq!(left, vec![100], "all removed, the new task created");
        eprintln!("{n} removals of {stop:?} each: {took:?} (serial: {:?})", stop * n as u32);
    }
    assert_eq!(REMOVALS_IN_FLIGHT_MAX, 16);
}
