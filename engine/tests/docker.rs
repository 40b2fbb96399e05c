//! Against the real Docker Engine: version negotiation, the conformance suite, and the
//! reconciler loop. Each test builds its own `FROM scratch` + static busybox image (no
//! registry is needed or used), uses node labels unique to the run, and removes every
//! container and image it made, even when it fails (`Cleanup` runs on drop).
//!
//! Needs: a Docker Engine on the local socket, and `/bin/busybox` statically linked
//! (Debian/Ubuntu package `busybox-static`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use bollard::query_parameters::ListContainersOptionsBuilder;
use shoal_engine::conformance::{self, Harness};
use shoal_engine::docker::{ExecRequest, LogChunk};
use shoal_engine::testimage::{busybox_context, labelled_context, BUSYBOX_PATH, TEST_IMAGE_LABEL};
use shoal_engine::*;
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// Upper bound on any one test (image build included).
const TEST_TIMEOUT: Duration = Duration::from_secs(120);

fn cfg() -> DockerConfig {
    DockerConfig { stop_grace_s: 5, request_timeout_s: 30 }
}

/// Removes, on drop, every container whose `shoal.node` label starts with `prefix`, every
/// image labelled `shoal.test.image=<prefix>…` (tagged or not), and the image `tag`.
struct Cleanup {
    prefix: String,
    tag: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let prefix = self.prefix.clone();
        let tag = self.tag.clone();
        // Drop cannot await: do it on a fresh runtime in its own thread.
        let done = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async move {
                let Ok(engine) = DockerEngine::connect_local(DockerConfig { stop_grace_s: 0, request_timeout_s: 30 }).await else { return };
                let filters: HashMap<&str, Vec<String>> = HashMap::from([("label", vec![types_label_node()])]);
                let options = ListContainersOptionsBuilder::default().all(true).filters(&filters).build();
                let mut removed = 0;
                if let Ok(list) = engine.client().list_containers(Some(options)).await {
                    for c in list {
                        let node = c.labels.as_ref().and_then(|l| l.get(shoal_engine::types::LABEL_NODE)).cloned().unwrap_or_default();
                        if let (true, Some(id)) = (node.starts_with(&prefix), c.id) {
                            let _ = engine.stop_and_remove(&ContainerId(id)).await;
                            removed += 1;
                        }
                    }
                }
                let filters: HashMap<&str, Vec<String>> = HashMap::from([("label", vec![TEST_IMAGE_LABEL.to_string()])]);
                let options = bollard::query_parameters::ListImagesOptionsBuilder::default().filters(&filters).build();
                let mut images = 0;
                if let Ok(list) = engine.client().list_images(Some(options)).await {
                    for i in list {
                        if i.labels.get(TEST_IMAGE_LABEL).is_some_and(|v| v.starts_with(&prefix)) {
                            let _ = engine.remove_image(&i.id).await;
                            images += 1;
                        }
                    }
                }
                let _ = engine.remove_image(&tag).await;
                eprintln!("cleanup: removed {removed} containers of {prefix}*, {images} derived images and image {tag}");
            });
        });
        let _ = done.join();
    }
}

fn types_label_node() -> String {
    shoal_engine::types::LABEL_NODE.to_string()
}

/// Connects, builds the test image, and returns the engine, the image tag and the guard.
async fn setup(test: &str) -> (DockerEngine, String, Cleanup) {
    assert!(
        Path::new(BUSYBOX_PATH).exists(),
        "{BUSYBOX_PATH} is missing: install the static busybox (apt-get install busybox-static)"
    );
    let engine = DockerEngine::connect_local(cfg()).await.expect("Docker Engine on the local socket");
    let run = format!("t{}-{test}", std::process::id());
    let tag = format!("shoal-test-busybox:{run}");
    let guard = Cleanup { prefix: run, tag: tag.clone() };
    let t0 = Instant::now();
    let context = busybox_context(Path::new(BUSYBOX_PATH)).expect("build context");
    engine.build_image(&tag, context).await.expect("build the scratch+busybox image");
    eprintln!("{test}: built {tag} in {:?}", t0.elapsed());
    (engine, tag, guard)
}

struct DockerHarness {
    engine: DockerEngine,
    tag: String,
    prefix: String,
}

impl Harness for DockerHarness {
    type E = DockerEngine;
    fn engine(&self) -> &DockerEngine {
        &self.engine
    }
    fn image(&self) -> String {
        self.tag.clone()
    }
    fn run_forever(&self) -> Vec<String> {
        // sh as PID 1 ignores SIGTERM unless it traps it: this makes stop graceful.
        sh("trap 'exit 0' TERM; sleep 100000 & wait")
    }
    fn exit_with(&self, code: i64) -> Vec<String> {
        sh(&format!("exit {code}"))
    }
    fn missing_executable(&self) -> Vec<String> {
        vec!["/no/such/binary".to_string()]
    }
    fn node(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }
    async fn pass_time(&self) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    async fn fresh_image(&self, name: &str) -> String {
        let label = format!("{}-{name}", self.prefix);
        let repo = format!("shoal-test-img-{label}");
        let context = labelled_context(&self.tag, &label).expect("build context");
        self.engine.build_image(&format!("{repo}:latest"), context).await.expect("build a labelled test image");
        repo
    }
    async fn remove_image(&self, reference: &str) {
        self.engine.remove_image(reference).await.expect("remove image");
    }
    async fn add_tag(&self, reference: &str, tag: &str) {
        let (repo, t) = tag.rsplit_once(':').expect("repo:tag");
        let options = bollard::query_parameters::TagImageOptionsBuilder::default().repo(repo).tag(t).build();
        self.engine.client().tag_image(reference, Some(options)).await.expect("tag image");
    }
    fn unpullable_reference(&self) -> String {
        // A registry on loopback where nothing listens (port 9, discard): Docker treats
        // 127.0.0.0/8 as an insecure registry, gets "connection refused" at once, and no
        // name is looked up, so nothing leaves this machine.
        "127.0.0.1:9/shoal-none:1".to_string()
    }
}

fn sh(script: &str) -> Vec<String> {
    vec!["/bin/sh".to_string(), "-c".to_string(), script.to_string()]
}

#[tokio::test]
async fn negotiates_down_to_the_server_api_version() {
    let engine = DockerEngine::connect_local(cfg()).await.expect("connect");
    let server = engine.client().version().await.expect("version");
    let server_api = server.api_version.expect("server api version");
    let ours = engine.api_version();
    eprintln!("server API {server_api} (engine {:?}), client negotiated {ours}", server.version);
    let parse = |v: &str| -> (u32, u32) {
        let (a, b) = v.split_once('.').unwrap();
        (a.parse().unwrap(), b.parse().unwrap())
    };
    assert!(parse(&ours) <= parse(&server_api), "client {ours} newer than server {server_api}");
    engine.ping().await.expect("ping");
    // Finding (bollard 0.21.1): request URIs are built with `Url::join` of an absolute
    // path, which drops the `/v1.NN` prefix, so requests go unversioned and the server
    // answers at its own version; an un-negotiated client still works here. We negotiate
    // anyway so `api_version()` is truthful and a bollard that fixes the path keeps working.
    let raw = bollard::Docker::connect_with_local_defaults().unwrap();
    eprintln!("un-negotiated client claims {:?}", raw.client_version());
    raw.list_containers(None).await.expect("unversioned requests are accepted");
    engine.list(&LabelFilter::node(format!("t{}-negotiation", std::process::id()))).await.expect("list");
}

#[tokio::test]
async fn an_unreachable_engine_is_reported_unavailable() {
    let dir = std::env::temp_dir().join(format!("shoal-engine-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // No socket at all.
    let missing = dir.join("missing.sock");
    match DockerEngine::connect_unix(missing.to_str().unwrap(), cfg()).await {
        Err(EngineError::Unavailable(msg)) => assert!(msg.contains("missing.sock"), "{msg}"),
        other => panic!("{other:?}"),
    }
    // A socket nobody answers on (listener dropped: connection refused).
    let dead = dir.join("dead.sock");
    drop(std::os::unix::net::UnixListener::bind(&dead).unwrap());
    match DockerEngine::connect_unix(dead.to_str().unwrap(), cfg()).await {
        Err(err @ EngineError::Unavailable(_)) => eprintln!("dead socket: {err}"),
        other => panic!("{other:?}"),
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn docker_engine_passes_the_conformance_suite() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let (engine, tag, _guard) = setup("conf").await;
        let h = DockerHarness { engine, tag, prefix: format!("t{}-conf", std::process::id()) };
        conformance::run_all(&h).await;
    })
    .await
    .expect("test timed out");
}

fn task(id: TaskId, image: &str, command: Vec<String>, restart: RestartPolicy) -> AssignedTask {
    AssignedTask { network: None,
        id,
        service: "web".to_string(),
        spec: ContainerSpec { image: image.to_string(), command, memory_bytes: 64 << 20, cpu_millis: 250, ..Default::default() },
        desired: Desired::Running,
        restart,
    }
}

/// Runs the agent's loop (list, decide, act) every 200 ms until `done` holds for the
/// node's containers and all reports so far, or `limit` passes.
async fn drive_until(
    engine: &DockerEngine,
    r: &mut Reconciler,
    assigned: &[AssignedTask],
    reports: &mut Vec<TaskReport>,
    limit: Duration,
    what: &str,
    done: impl Fn(&[ContainerInfo], &[TaskReport]) -> bool,
) {
    let t0 = Instant::now();
    loop {
        let now_ms = u64::try_from(t0.elapsed().as_millis()).unwrap();
        reports.extend(reconcile_once(engine, r, now_ms, assigned).await.expect("reconcile"));
        let containers = engine.list(&LabelFilter::node(r.node())).await.expect("list");
        if done(&containers, reports) {
            eprintln!("{what}: reached in {:?}", t0.elapsed());
            return;
        }
        assert!(t0.elapsed() < limit, "{what}: not reached in {limit:?}; containers {containers:#?}; reports {reports:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn running_tasks(containers: &[ContainerInfo]) -> Vec<TaskId> {
    containers.iter().filter(|c| c.state == ContainerState::Running).map(|c| c.owner.task).collect()
}

#[tokio::test]
async fn reconciler_runs_assigned_tasks_and_removes_unassigned_ones() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let (engine, tag, _guard) = setup("rec3").await;
        let node = format!("t{}-rec3-n1", std::process::id());
        let neighbour = format!("t{}-rec3-n2", std::process::id());
        let forever = sh("trap 'exit 0' TERM; sleep 100000 & wait");
        let mut r = Reconciler::new(node, ReconcilerConfig::default());
        let mut assigned: Vec<AssignedTask> = (1..=3).map(|i| task(i, &tag, forever.clone(), RestartPolicy::Always)).collect();
        // Another agent on the same engine runs task 2 as well (a stale copy): untouched.
        let mut n2 = Reconciler::new(neighbour.clone(), ReconcilerConfig::default());
        reconcile_once(&engine, &mut n2, 0, &[task(2, &tag, forever.clone(), RestartPolicy::Always)]).await.expect("n2");

        let mut reports = Vec::new();
        drive_until(&engine, &mut r, &assigned, &mut reports, Duration::from_secs(30), "3 tasks → 3 running containers", |c, reps| {
            running_tasks(c) == vec![1, 2, 3] && c.len() == 3 && (1..=3).all(|t| reps.iter().any(|rep| rep.task == t && rep.state == TaskState::Running))
        })
        .await;
        for t in 1..=3 {
            assert!(reports.iter().any(|rep| rep.task == t && rep.state == TaskState::Running), "task {t} reported running: {reports:?}");
        }

        assigned.retain(|t| t.id != 2);
        drive_until(&engine, &mut r, &assigned, &mut reports, Duration::from_secs(30), "task 2 removed → its container removed", |c, _| {
            c.iter().map(|c| c.owner.task).collect::<Vec<_>>() == vec![1, 3]
        })
        .await;
        assert_eq!(running_tasks(&engine.list(&LabelFilter::node(r.node())).await.unwrap()), vec![1, 3]);
        let theirs = engine.list(&LabelFilter::node(&neighbour)).await.unwrap();
        assert_eq!(theirs.len(), 1, "the other agent's container is untouched: {theirs:?}");

        // Everything unassigned: the node ends with no container.
        drive_until(&engine, &mut r, &[], &mut reports, Duration::from_secs(30), "no tasks → no containers", |c, _| c.is_empty()).await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn reconciler_restarts_a_container_that_exits_3_and_reports_the_code() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let (engine, tag, _guard) = setup("exit3").await;
        let node = format!("t{}-exit3-n1", std::process::id());
        let cfg = ReconcilerConfig { backoff_base_ms: 200, backoff_max_ms: 1_000, backoff_reset_after_ms: 10_000 };
        let mut r = Reconciler::new(node, cfg);
        // Runs a little, then exits 3.
        let assigned = [task(1, &tag, sh("sleep 0.3; exit 3"), RestartPolicy::OnFailure { max_attempts: 2 })];
        let mut reports = Vec::new();
        drive_until(&engine, &mut r, &assigned, &mut reports, Duration::from_secs(45), "exit 3 → restarted twice, then left exited", |c, reps| {
            let last = reps.iter().rev().find(|rep| rep.task == 1);
            c.len() == 1
                && c[0].state == ContainerState::Exited { code: 3 }
                && last.is_some_and(|l| l.restarts == 2 && l.state == TaskState::Exited { code: 3 })
        })
        .await;
        let exits = reports.iter().filter(|rep| rep.state == TaskState::Exited { code: 3 }).count();
        assert!(exits >= 1, "exit code 3 reported: {reports:?}");
        assert!(reports.iter().all(|rep| rep.task == 1));
        eprintln!("reports: {}", reports.iter().map(|r| format!("{:?}/restarts={}/last_exit={:?}", r.state, r.restarts, r.last_exit_code)).collect::<Vec<_>>().join(", "));
        // No restarts left: the container stays exited (kept for inspection) and is not started again.
        let before = engine.list(&LabelFilter::node(r.node())).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        reconcile_once(&engine, &mut r, 60_000, &assigned).await.unwrap();
        let after = engine.list(&LabelFilter::node(r.node())).await.unwrap();
        assert_eq!(before, after);
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn reconciler_reports_a_missing_image_clearly() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let engine = DockerEngine::connect_local(cfg()).await.expect("connect");
        let node = format!("t{}-noimg-n1", std::process::id());
        let _guard = Cleanup { prefix: node.clone(), tag: format!("shoal-no-such-image:t{}", std::process::id()) };
        let mut r = Reconciler::new(node, ReconcilerConfig::default());
        let image = format!("shoal-no-such-image:t{}", std::process::id());
        let assigned = [task(1, &image, vec![], RestartPolicy::Never)];
        let reports = reconcile_once(&engine, &mut r, 0, &assigned).await.unwrap();
        assert_eq!(reports.len(), 1, "{reports:?}");
        match &reports[0].state {
            TaskState::Failed { reason } => {
                assert!(reason.contains(&image) && reason.contains("is not on this node's engine"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        assert!(engine.list(&LabelFilter::node(r.node())).await.unwrap().is_empty());
    })
    .await
    .expect("test timed out");
}

/// Env, published ports and CPU/memory limits reach the container; without ports the
/// container has no network.
#[tokio::test]
async fn spec_env_ports_and_limits_are_applied() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let (engine, tag, _guard) = setup("spec").await;
        let node = format!("t{}-spec-n1", std::process::id());
        let host_port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        // httpd as a child of a shell that traps TERM, so the stop is graceful and quick.
        let script = "/bin/busybox mkdir -p /www && echo \"$GREETING\" > /www/index.html && trap 'exit 0' TERM; /bin/busybox httpd -f -p 8080 -h /www & wait";
        let spec = ContainerSpec {
            image: tag.clone(),
            command: sh(script),
            env: [("GREETING".to_string(), "hello from shoal".to_string())].into(),
            ports: vec![PortMapping { host_port, container_port: 8080, protocol: Protocol::Tcp }],
            cpu_millis: 250,
            memory_bytes: 64 << 20,
            stop_grace_ms: None,
        };
        let web = CreateRequest { network: None, owner: Owner { node: node.clone(), service: "web".to_string(), task: 1 }, spec };
        let id = engine.run(&web).await.expect("run web");
        let quiet = CreateRequest { network: None,
            owner: Owner { node: node.clone(), service: "quiet".to_string(), task: 2 },
            spec: ContainerSpec { image: tag.clone(), command: sh("sleep 1000"), ..Default::default() },
        };
        let quiet_id = engine.create(&quiet).await.expect("create quiet");

        let inspect = engine.client().inspect_container(&id.0, None::<bollard::query_parameters::InspectContainerOptions>).await.unwrap();
        let host = inspect.host_config.unwrap();
        assert_eq!(host.nano_cpus, Some(250_000_000));
        assert_eq!(host.memory, Some(64 << 20));
        let quiet_host = engine.client().inspect_container(&quiet_id.0, None::<bollard::query_parameters::InspectContainerOptions>).await.unwrap().host_config.unwrap();
        assert_eq!(quiet_host.network_mode.as_deref(), Some("none"));

        // The published port answers with the page written from the environment.
        let t0 = Instant::now();
        let body = loop {
            let got = tokio::task::spawn_blocking(move || -> std::io::Result<String> {
                use std::io::{Read, Write};
                let mut s = std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], host_port).into(), Duration::from_secs(2))?;
                s.set_read_timeout(Some(Duration::from_secs(2)))?;
                s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n")?;
                let mut out = String::new();
                s.read_to_string(&mut out)?;
                Ok(out)
            })
            .await
            .unwrap();
            match got {
                Ok(text) if text.contains("hello from shoal") => break text,
                other => {
                    assert!(t0.elapsed() < Duration::from_secs(20), "port {host_port} never served the page: {other:?}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        eprintln!("published port {host_port} answered in {:?}: {:?}", t0.elapsed(), body.lines().next());
        engine.stop_and_remove(&id).await.unwrap();
        engine.stop_and_remove(&quiet_id).await.unwrap();
    })
    .await
    .expect("test timed out");
}

/// A container's own stop grace period governs its stop: created with 1 s (Docker keeps it
/// as the container's `StopTimeout`) and with PID 1 ignoring SIGTERM, it is killed after
/// about that second, although this engine's default grace is 30 s; sub-second values are
/// rounded up to whole seconds.
#[tokio::test]
async fn a_container_that_ignores_sigterm_is_killed_after_its_own_grace_period() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let (_, tag, _guard) = setup("grace").await;
        let engine = DockerEngine::connect_local(DockerConfig { stop_grace_s: 30, request_timeout_s: 30 }).await.expect("engine");
        let node = format!("t{}-grace-n1", std::process::id());
        let stubborn = sh("trap '' TERM; while true; do sleep 1; done");
        let req = |task: u64, stop_grace_ms: Option<u64>| CreateRequest { network: None,
            owner: Owner { node: node.clone(), service: "stubborn".to_string(), task },
            spec: ContainerSpec { image: tag.clone(), command: stubborn.clone(), stop_grace_ms, ..Default::default() },
        };
        let inspect = |id: ContainerId| {
            let client = engine.client().clone();
            async move { client.inspect_container(&id.0, None::<bollard::query_parameters::InspectContainerOptions>).await.unwrap() }
        };

        let id = engine.run(&req(1, Some(1000))).await.expect("run");
        assert_eq!(inspect(id.clone()).await.config.and_then(|c| c.stop_timeout), Some(1), "the container's StopTimeout");
        let t0 = Instant::now();
        while engine.inspect(&id).await.unwrap() != ContainerState::Running {
            assert!(t0.elapsed() < Duration::from_secs(20), "never running");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Its shell ignores SIGTERM: only the kill after the grace period ends it.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let t0 = Instant::now();
        engine.stop_and_remove(&id).await.expect("stop and remove");
        let took = t0.elapsed();
        eprintln!("a 1 s grace period, SIGTERM ignored: stopped and removed in {took:?} (engine default 30 s)");
        assert!(took < Duration::from_secs(8), "took {took:?}: the container's 1 s grace was not used");
        assert!(took >= Duration::from_millis(800), "took {took:?}: killed before its grace period");
        assert_eq!(engine.inspect(&id).await.unwrap(), ContainerState::Missing, "removed");

        // 1.5 s is asked of Docker as 2 s; no grace period leaves no StopTimeout (the
        // engine's default applies).
        let rounded = engine.create(&req(2, Some(1500))).await.expect("create");
        assert_eq!(inspect(rounded.clone()).await.config.and_then(|c| c.stop_timeout), Some(2));
        let default = engine.create(&req(3, None)).await.expect("create");
        assert_eq!(inspect(default.clone()).await.config.and_then(|c| c.stop_timeout), None);
        let too_long = engine.create(&req(4, Some(types::STOP_GRACE_MS_MAX + 1))).await;
        assert!(matches!(too_long, Err(EngineError::InvalidSpec(_))), "{too_long:?}");
        for id in [rounded, default] {
            engine.stop_and_remove(&id).await.unwrap();
        }
    })
    .await
    .expect("test timed out");
}

/// The partition story on the real engine, two agents sharing it: n1 runs task 1, is cut
/// off, the cluster gives task 1 to n2 which starts it; n1 comes back with an assignment
/// list without task 1 and removes its own copy, leaving n2's alone.
#[tokio::test]
async fn a_node_back_from_a_partition_removes_its_stale_container() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let (engine, tag, _guard) = setup("part").await;
        let n1_id = format!("t{}-part-n1", std::process::id());
        let n2_id = format!("t{}-part-n2", std::process::id());
        let forever = sh("trap 'exit 0' TERM; sleep 100000 & wait");
        let t1 = [task(1, &tag, forever, RestartPolicy::Always)];
        let mut n1 = Reconciler::new(n1_id.clone(), ReconcilerConfig::default());
        let mut n2 = Reconciler::new(n2_id.clone(), ReconcilerConfig::default());
        let mut reports = Vec::new();
        drive_until(&engine, &mut n1, &t1, &mut reports, Duration::from_secs(30), "n1 runs task 1", |c, _| running_tasks(c) == vec![1]).await;
        // Partition: n1 is not reconciled; the cluster reschedules task 1 on n2.
        drive_until(&engine, &mut n2, &t1, &mut reports, Duration::from_secs(30), "n2 runs task 1", |c, _| running_tasks(c) == vec![1]).await;
        // Heal: n1 learns task 1 is no longer its own.
        drive_until(&engine, &mut n1, &[], &mut reports, Duration::from_secs(30), "n1 removed its stale copy", |c, _| c.is_empty()).await;
        let n2_list = engine.list(&LabelFilter::node(&n2_id)).await.unwrap();
        assert_eq!(running_tasks(&n2_list), vec![1], "task 1 still runs once, on n2");
    })
    .await
    .expect("test timed out");
}

/// Stops on one node run together on the real engine: 4 containers that ignore SIGTERM
/// (a shell as PID 1 without a trap) and a 2 s stop grace are removed in about one grace
/// (each is killed after it), not four: serially this is at least 8 s.
#[tokio::test]
async fn removals_on_one_node_run_concurrently_on_docker() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let (_, tag, _guard) = setup("par").await;
        let grace_s = 2;
        let engine = DockerEngine::connect_local(DockerConfig { stop_grace_s: grace_s, request_timeout_s: 30 }).await.unwrap();
        let node = format!("t{}-par-n1", std::process::id());
        let mut r = Reconciler::new(node, ReconcilerConfig::default());
        let stubborn = sh("sleep 100000; true");
        let assigned: Vec<AssignedTask> = (1..=4).map(|i| task(i, &tag, stubborn.clone(), RestartPolicy::Always)).collect();
        let mut reports = Vec::new();
        drive_until(&engine, &mut r, &assigned, &mut reports, Duration::from_secs(30), "4 running", |c, _| running_tasks(c) == vec![1, 2, 3, 4]).await;

        let t0 = Instant::now();
        reconcile_once(&engine, &mut r, 60_000, &[]).await.unwrap();
        let took = t0.elapsed();
        assert!(engine.list(&LabelFilter::node(r.node())).await.unwrap().is_empty(), "all 4 removed");
        let grace = Duration::from_secs(u64::from(grace_s));
        eprintln!("4 removals with a {grace:?} grace, SIGTERM ignored: {took:?} (serial would be ≥ {:?})", grace * 4);
        assert!(took >= grace, "the containers ignored SIGTERM, so each stop waited out the grace: {took:?}");
        assert!(took < grace * 3, "4 stops took {took:?}: not concurrent (serial ≥ {:?})", grace * 4);
    })
    .await
    .expect("test timed out");
}

/// A registry that answers but does not have the image: a minimal registry API on
/// 127.0.0.1 (this test's own listener) that knows no manifest. The pull fails at once
/// with `PullFailed` saying so, and nothing is pulled. Nothing leaves this machine.
#[tokio::test]
async fn pulling_an_image_the_registry_does_not_have_is_pull_failed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tokio::time::timeout(TEST_TIMEOUT, async {
        let engine = DockerEngine::connect_local(cfg()).await.expect("connect");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let seen = requests.clone();
        let registry = tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = listener.accept().await else { return };
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 8192];
                    let Ok(n) = conn.read(&mut buf).await else { return };
                    let head = String::from_utf8_lossy(&buf[..n]).into_owned();
                    // Docker tries TLS first: a ClientHello is no HTTP; close, it falls back.
                    let Some(line) = head.lines().next().filter(|l| l.starts_with("GET ") || l.starts_with("HEAD ")) else { return };
                    seen.lock().unwrap().push(line.to_string());
                    let path = line.split(' ').nth(1).unwrap_or("");
                    let (status, body) = if path == "/v2/" {
                        ("200 OK", "{}".to_string())
                    } else {
                        ("404 Not Found", r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#.to_string())
                    };
                    let reply = format!(
                        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nDocker-Distribution-API-Version: registry/2.0\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = conn.write_all(reply.as_bytes()).await;
                });
            }
        });
        let reference = format!("127.0.0.1:{port}/shoal-absent-t{}:1", std::process::id());
        let t0 = Instant::now();
        match engine.pull_image(&reference, |p| eprintln!("  progress: {p:?}")).await {
            Err(err @ EngineError::PullFailed { .. }) => {
                let text = err.to_string();
                eprintln!("pull of an image the registry lacks, after {:?}: {text}", t0.elapsed());
                assert!(text.contains(&reference) && text.contains("manifest unknown"), "{text}");
            }
            other => panic!("pull of {reference}: {other:?}"),
        }
        assert!(t0.elapsed() < Duration::from_secs(20));
        let requests = requests.lock().unwrap().clone();
        eprintln!("the registry saw: {requests:?}");
        assert!(requests.iter().any(|r| r.contains("/manifests/1")), "Docker asked our registry for the manifest: {requests:?}");
        assert_eq!(engine.resolve_image(&reference).await.unwrap(), None);
        registry.abort();
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn exec_runs_a_process_in_a_container_with_its_output_stdin_and_exit_code() {
    use futures_util::StreamExt;
    use tokio::io::AsyncWriteExt;
    tokio::time::timeout(TEST_TIMEOUT, async {
        let (engine, tag, _guard) = setup("exec").await;
        let node = format!("t{}-exec-n1", std::process::id());
        let spec = ContainerSpec { image: tag.clone(), command: sh("trap 'exit 0' TERM; /bin/busybox sleep 3600 & wait"), ..Default::default() };
        let id = engine.run(&CreateRequest { owner: Owner { node, service: "box".to_string(), task: 1 }, spec, network: None }).await.expect("run");
        // Output on both streams and the exit code.
        let req = ExecRequest { cmd: sh("echo hi; echo oops >&2; exit 4"), attach_stdout: true, attach_stderr: true, ..Default::default() };
        let exec = engine.exec_create(&id, &req).await.expect("exec create");
        assert_eq!(exec.len(), 64, "the engine's exec ids are 64 hex digits: {exec}");
        let session = engine.exec_start(&exec, false).await.expect("exec start");
        let chunks: Vec<LogChunk> = session.output.map(|c| c.expect("chunk")).collect().await;
        let out: Vec<u8> = chunks.iter().filter_map(|c| if let LogChunk::Stdout(p) = c { Some(p.clone()) } else { None }).flatten().collect();
        let err: Vec<u8> = chunks.iter().filter_map(|c| if let LogChunk::Stderr(p) = c { Some(p.clone()) } else { None }).flatten().collect();
        assert_eq!((out.as_slice(), err.as_slice()), (&b"hi\n"[..], &b"oops\n"[..]));
        let status = engine.exec_inspect(&exec).await.expect("inspect");
        assert_eq!((status.running, status.exit_code), (false, Some(4)));
        // Stdin reaches the process; closing it ends the input.
        let req = ExecRequest { cmd: sh("read x; echo got $x"), attach_stdin: true, attach_stdout: true, ..Default::default() };
        let exec = engine.exec_create(&id, &req).await.expect("exec create");
        let mut session = engine.exec_start(&exec, false).await.expect("exec start");
        session.input.write_all(b"there\n").await.expect("stdin");
        session.input.shutdown().await.expect("close stdin");
        let chunks: Vec<LogChunk> = session.output.map(|c| c.expect("chunk")).collect().await;
        assert_eq!(chunks, [LogChunk::Stdout(b"got there\n".to_vec())]);
        // A missing container and a missing exec are the engine's 404s.
        let missing = engine.exec_create(&ContainerId("0".repeat(64)), &req).await.expect_err("no container");
        assert!(matches!(missing, EngineError::Api { status: 404, .. }), "{missing:?}");
        let missing = engine.exec_inspect(&"0".repeat(64)).await.expect_err("no exec");
        assert!(matches!(missing, EngineError::Api { status: 404, .. }), "{missing:?}");
        engine.stop_and_remove(&id).await.expect("remove");
    })
    .await
    .expect("test timed out");
}
