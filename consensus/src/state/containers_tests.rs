//! Tests of the Docker API's containers in the replicated state: create, start, stop,
//! restart and remove on their backing service, every rejection leaving the state
//! unchanged, and the size of a maximal `CreateContainer` against the codec's limit.

use std::collections::BTreeMap;

use super::*;
use crate::codec;

const T0: u64 = 1_700_000_000_000;

fn node() -> NodeId {
    NodeId([1; 16])
}

fn cid(n: u8) -> String {
    format!("{n:02x}").repeat(32)
}

fn with_node() -> ClusterState {
    let mut s = ClusterState::default();
    s.apply(Command::RegisterNode {
        id: node(),
        record: NodeRecord {
            name: "n1".into(),
            addr: "10.0.0.1:7480".parse().expect("addr"),
            labels: BTreeMap::new(),
        },
    })
    .expect("register");
    s
}

fn container(n: u8, name: &str) -> ContainerDef {
    let id = cid(n);
    ContainerDef {
        service: ServiceDef {
            name: backing_service_name(name, &id),
            spec: ContainerSpec {
                image: "busybox:1".into(),
                command: vec!["sleep".into(), "300".into()],
                ..Default::default()
            },
            mode: Mode::Replicated(0),
            constraints: vec![],
            reserve_cpu_millis: 0,
            reserve_memory_bytes: 0,
            restart: RestartPolicy::Never,
        },
        id,
        name: name.into(),
        labels: BTreeMap::from([("app".into(), "hello".into())]),
    }
}

fn create(s: &mut ClusterState, n: u8, name: &str) -> String {
    s.apply(Command::CreateContainer {
        container: container(n, name),
        now_ms: T0,
    })
    .expect("create container");
    cid(n)
}

fn run(id: &str, run: bool, restart: bool) -> Command {
    Command::SetContainerRun {
        id: id.into(),
        run,
        restart,
        now_ms: T0 + 10,
    }
}

/// Places the container's slot on the node, as the scheduler would; returns the task id.
fn place(s: &mut ClusterState, service: &str) -> TaskId {
    let d = Decision::Place {
        service: service.into(),
        slot: Slot::Index(1),
        node: node(),
    };
    match s.apply(Command::apply_decisions(vec![d], T0 + 20)) {
        Ok(Applied::DecisionsApplied { created, .. }) if created.len() == 1 => created[0],
        other => panic!("place: {other:?}"),
    }
}

fn report(s: &mut ClusterState, task: TaskId, state: TaskState) {
    let r = TaskReport {
        task,
        state,
        restarts: 0,
        last_exit_code: None,
        container: None,
    };
    for cmd in Command::report_tasks(node(), vec![r], T0 + 30) {
        s.apply(cmd).expect("report");
    }
}

fn rejected(s: &mut ClusterState, cmd: Command) -> Rejected {
    let before = s.clone();
    let e = s.apply(cmd).expect_err("should be rejected");
    assert_eq!(*s, before, "a rejected command changed the state");
    e
}

fn live_tasks(s: &ClusterState, service: &str) -> Vec<TaskId> {
    s.tasks_of_service(service)
        .filter(|t| t.is_live())
        .map(|t| t.id)
        .collect()
}

#[test]
fn a_container_is_created_stopped_with_its_service() {
    let mut s = with_node();
    let id = create(&mut s, 1, "hello");
    let c = s.containers.get(&id).expect("record");
    assert_eq!((c.name.as_str(), c.service.as_str()), ("hello", "hello"));
    assert_eq!(c.created_ms, T0);
    assert_eq!((c.started_ms, c.stopped_ms, c.last_node), (None, None, None));
    assert_eq!(s.services["hello"].def.mode, Mode::Replicated(0));
    assert!(!s.container_wants_to_run(c) && !s.container_is_running(c));
    assert_eq!(s.container_by_name("hello").map(|c| &c.id), Some(&id));
    assert_eq!(s.container_of_service("hello").map(|c| &c.id), Some(&id));
    // A name that is not a service name gets a service named after the id.
    let upper = create(&mut s, 2, "Hello_World");
    assert_eq!(s.containers[&upper].service, format!("ctr-{}", &upper[..12]));
}

#[test]
fn start_stop_restart_drive_the_one_replica() {
    let mut s = with_node();
    let id = create(&mut s, 1, "hello");
    assert_eq!(s.apply(run(&id, true, false)), Ok(Applied::ContainerRun { changed: true }));
    assert_eq!(s.services["hello"].def.mode, Mode::Replicated(1));
    assert_eq!(s.containers[&id].started_ms, Some(T0 + 10));
    assert!(s.container_is_running(&s.containers[&id]), "asked to run, not placed yet");
    // Already started: nothing changes.
    let before = s.clone();
    assert_eq!(s.apply(run(&id, true, false)), Ok(Applied::ContainerRun { changed: false }));
    assert_eq!(s, before);

    let first = place(&mut s, "hello");
    report(&mut s, first, TaskState::Running);
    assert_eq!(s.container_task(&s.containers[&id]).map(|t| t.id), Some(first));

    // Restart: the running task is shut down, the slot is free for a new one.
    assert_eq!(s.apply(run(&id, true, true)), Ok(Applied::ContainerRun { changed: true }));
    assert!(live_tasks(&s, "hello").is_empty());
    assert_eq!(s.services["hello"].def.mode, Mode::Replicated(1));
    let second = place(&mut s, "hello");
    assert_ne!(first, second);

    // A run that ended is started anew by a plain start.
    report(&mut s, second, TaskState::Exited { code: 3 });
    assert!(!s.container_is_running(&s.containers[&id]));
    assert_eq!(s.apply(run(&id, true, false)), Ok(Applied::ContainerRun { changed: true }));
    assert!(live_tasks(&s, "hello").is_empty());
    let third = place(&mut s, "hello");

    // Stop: 0 replicas, the task is told to shut down.
    assert_eq!(s.apply(run(&id, false, false)), Ok(Applied::ContainerRun { changed: true }));
    assert_eq!(s.services["hello"].def.mode, Mode::Replicated(0));
    assert_eq!(s.tasks[&third].desired, Desired::Shutdown);
    assert_eq!(s.containers[&id].stopped_ms, Some(T0 + 10));
    assert_eq!(s.containers[&id].last_node, Some(node()), "the node it ran on is kept");
    let before = s.clone();
    assert_eq!(s.apply(run(&id, false, false)), Ok(Applied::ContainerRun { changed: false }));
    assert_eq!(s, before);
    // The newest task shows the state of a stopped container.
    assert_eq!(s.container_task(&s.containers[&id]).map(|t| t.id), Some(third));
}

#[test]
fn remove_needs_force_while_running_and_takes_the_service() {
    let mut s = with_node();
    let id = create(&mut s, 1, "hello");
    s.apply(run(&id, true, false)).expect("start");
    let task = place(&mut s, "hello");
    report(&mut s, task, TaskState::Running);
    let remove = |force| Command::RemoveContainer {
        id: id.clone(),
        force,
        now_ms: T0 + 40,
    };
    assert_eq!(
        rejected(&mut s, remove(false)),
        Rejected::ContainerRunning("hello".into())
    );
    assert_eq!(
        s.apply(remove(true)),
        Ok(Applied::ContainerRemoved { shut_down: 1 })
    );
    assert!(s.containers.is_empty() && !s.services.contains_key("hello"));
    assert_eq!(s.tasks[&task].desired, Desired::Shutdown);
    // The name is free again, and the old container's shut-down task is not the new one's.
    let again = create(&mut s, 2, "hello");
    assert_eq!(s.containers[&again].service, "hello");
    assert!(s.tasks.contains_key(&task), "the old task is kept until forgotten");
    assert_eq!(s.container_task(&s.containers[&again]), None);
    assert_eq!(s.container_tasks(&s.containers[&again]).count(), 0);
    // A stopped container goes without force.
    let id2 = cid(2);
    assert_eq!(
        s.apply(Command::RemoveContainer {
            id: id2,
            force: false,
            now_ms: T0
        }),
        Ok(Applied::ContainerRemoved { shut_down: 0 })
    );
}

#[test]
fn bad_containers_are_refused_without_change() {
    let mut s = with_node();
    create(&mut s, 1, "hello");
    let make = |c: ContainerDef| Command::CreateContainer {
        container: c,
        now_ms: T0,
    };
    let cases: Vec<(ContainerDef, Rejected)> = vec![
        (
            ContainerDef {
                id: "ABC".into(),
                ..container(2, "other")
            },
            Rejected::BadContainerId,
        ),
        (
            ContainerDef {
                id: "g".repeat(64),
                ..container(2, "other")
            },
            Rejected::BadContainerId,
        ),
        (container(1, "other"), Rejected::ContainerIdInUse),
        (
            container(2, "hello"),
            Rejected::ContainerNameInUse("hello".into()),
        ),
        (
            container(2, "-x"),
            Rejected::BadContainerName("-x".into()),
        ),
        (container(2, "a"), Rejected::BadContainerName("a".into())),
        (
            container(2, "has space"),
            Rejected::BadContainerName("has space".into()),
        ),
        (
            ContainerDef {
                labels: BTreeMap::from([("".into(), "v".into())]),
                ..container(2, "other")
            },
            Rejected::BadContainerLabels,
        ),
        (
            ContainerDef {
                labels: (0..=MAX_CONTAINER_LABELS)
                    .map(|i| (format!("k{i}"), "v".into()))
                    .collect(),
                ..container(2, "other")
            },
            Rejected::BadContainerLabels,
        ),
    ];
    for (c, want) in cases {
        assert_eq!(rejected(&mut s, make(c.clone())), want, "{c:?}");
    }
    let mut wrong_service = container(2, "other");
    wrong_service.service.name = "elsewhere".into();
    assert!(matches!(
        rejected(&mut s, make(wrong_service)),
        Rejected::BadContainerService(_)
    ));
    let mut started = container(2, "other");
    started.service.mode = Mode::Replicated(1);
    assert!(matches!(
        rejected(&mut s, make(started)),
        Rejected::BadContainerService(_)
    ));
    let mut bad_image = container(2, "other");
    bad_image.service.spec.image = "has space".into();
    assert_eq!(rejected(&mut s, make(bad_image)), Rejected::BadImage);
    // A shoal service holds the name.
    s.apply(Command::CreateService {
        service: ServiceDef {
            name: "web".into(),
            ..container(3, "web").service
        },
        now_ms: T0,
    })
    .expect("service");
    assert_eq!(
        rejected(&mut s, make(container(3, "web"))),
        Rejected::NameInUseByService("web".into())
    );
    // Unknown containers.
    assert_eq!(
        rejected(&mut s, run(&cid(9), true, false)),
        Rejected::UnknownContainer(cid(9))
    );
    assert_eq!(
        rejected(
            &mut s,
            Command::RemoveContainer {
                id: cid(9),
                force: true,
                now_ms: T0
            }
        ),
        Rejected::UnknownContainer(cid(9))
    );
}

#[test]
fn the_service_of_a_container_is_changed_only_through_it() {
    let mut s = with_node();
    create(&mut s, 1, "hello");
    let want = Rejected::ServiceOfContainer {
        service: "hello".into(),
        container: "hello".into(),
    };
    assert_eq!(
        rejected(
            &mut s,
            Command::UpdateService {
                name: "hello".into(),
                replicas: Some(3),
                now_ms: T0
            }
        ),
        want
    );
    assert_eq!(
        rejected(
            &mut s,
            Command::RemoveService {
                name: "hello".into(),
                now_ms: T0
            }
        ),
        want
    );
}

#[test]
fn the_container_limit_holds() {
    let mut s = with_node();
    for i in 0..MAX_CONTAINERS {
        let id = format!("{i:064x}");
        let mut c = container(0, &format!("c{i}"));
        c.service.name = backing_service_name(&c.name, &id);
        c.id = id;
        s.apply(Command::CreateContainer {
            container: c,
            now_ms: T0,
        })
        .expect("create");
    }
    let id = format!("{:064x}", MAX_CONTAINERS + 1);
    let mut c = container(0, "onemore");
    c.id = id;
    assert_eq!(
        rejected(
            &mut s,
            Command::CreateContainer {
                container: c,
                now_ms: T0
            }
        ),
        Rejected::TooManyContainers
    );
}

#[test]
fn a_maximal_create_container_fits_a_command() {
    let mut c = container(1, &"n".repeat(MAX_CONTAINER_NAME_LEN));
    c.service.name = backing_service_name(&c.name, &c.id);
    // Labels at their byte limit, the spec's text at its own.
    let per = MAX_CONTAINER_LABEL_BYTES / MAX_CONTAINER_LABELS;
    c.labels = (0..MAX_CONTAINER_LABELS)
        .map(|i| {
            let k = format!("k{i:03}");
            let v = "v".repeat(per - k.len());
            (k, v)
        })
        .collect();
    c.service.spec.command = vec!["x".repeat(MAX_SPEC_TEXT_BYTES - c.service.spec.image.len())];
    let mut s = with_node();
    let cmd = Command::CreateContainer {
        container: c,
        now_ms: T0,
    };
    assert_eq!(s.apply(cmd.clone()), Ok(Applied::ContainerCreated));
    let bytes = codec::encode_command(&cmd).expect("a maximal container encodes");
    assert!(bytes.len() <= codec::MAX_COMMAND_BYTES);
}

#[test]
fn snapshots_keep_containers() {
    let mut s = with_node();
    let id = create(&mut s, 1, "hello");
    s.apply(run(&id, true, false)).expect("start");
    let bytes = codec::encode_snapshot(&s).expect("encode");
    assert_eq!(codec::decode_snapshot(&bytes).expect("decode"), s);
}

#[test]
fn containers_stay_with_their_node_unless_their_restart_policy_is_always() {
    let mut s = with_node();
    create(&mut s, 1, "plain");
    let mut always = container(2, "always");
    always.service.restart = RestartPolicy::Always;
    s.apply(Command::CreateContainer { container: always, now_ms: T0 }).expect("create always");
    let mut on_failure = container(3, "retry");
    on_failure.service.restart = RestartPolicy::OnFailure { max_attempts: 2 };
    s.apply(Command::CreateContainer { container: on_failure, now_ms: T0 }).expect("create retry");
    let mut svc = container(4, "web").service;
    svc.restart = RestartPolicy::Never;
    svc.mode = Mode::Replicated(2);
    s.apply(Command::CreateService { service: svc, now_ms: T0 }).expect("a plain service");
    let (services, _) = s.scheduler_inputs();
    let stays: BTreeMap<&str, bool> = services.iter().map(|v| (v.name.as_str(), v.stays_with_node)).collect();
    assert_eq!(
        stays,
        BTreeMap::from([("always", false), ("plain", true), ("retry", true), ("web", false)]),
        "services always move; containers only with restart always"
    );
}

fn network(n: u8, name: &str) -> NetworkDef {
    NetworkDef {
        id: format!("{:02x}", 0x80 + n).repeat(32),
        name: name.into(),
        driver: BRIDGE_DRIVER.into(),
        labels: BTreeMap::from([("com.docker.compose.project".into(), "p".into())]),
        attachable: true,
    }
}

#[test]
fn networks_are_created_used_by_containers_and_removed_once_empty() {
    let mut s = with_node();
    let net = network(1, "p_default");
    s.apply(Command::CreateNetwork { network: net.clone(), now_ms: T0 })
        .expect("create network");
    assert_eq!(s.network("p_default").map(|n| n.id.clone()), Some(net.id.clone()));
    assert_eq!(s.network(&net.id).map(|n| n.name.as_str()), Some("p_default"));
    let before = s.clone();
    // A name in use, a reserved name, another driver, a bad name: refused, nothing changed.
    let refusals = [
        (network(2, "p_default"), Rejected::NetworkNameInUse("p_default".into())),
    ];
    for (def, want) in refusals {
        assert_eq!(s.apply(Command::CreateNetwork { network: def, now_ms: T0 }), Err(want));
    }
    for def in [
        network(3, "bridge"),
        NetworkDef { driver: "overlay".into(), ..network(4, "x") },
        network(5, "-bad"),
        NetworkDef { id: "nothex".into(), ..network(6, "y") },
    ] {
        assert!(matches!(
            s.apply(Command::CreateNetwork { network: def, now_ms: T0 }),
            Err(Rejected::BadNetwork(_))
        ));
    }
    assert_eq!(s, before);
    // A container on it, with its aliases; an unknown network is refused.
    let attach = vec![NetworkAttachment { network: net.id.clone(), aliases: vec!["web".into()] }];
    assert_eq!(
        s.apply(Command::CreateNetworkedContainer {
            container: container(1, "p_web_1"),
            networks: vec![NetworkAttachment { network: cid(9), aliases: vec![] }],
            now_ms: T0,
        }),
        Err(Rejected::UnknownNetwork(cid(9)))
    );
    assert_eq!(s, before);
    s.apply(Command::CreateNetworkedContainer { container: container(1, "p_web_1"), networks: attach.clone(), now_ms: T0 })
        .expect("create on the network");
    assert_eq!(s.containers[&cid(1)].networks, attach);
    assert_eq!(s.service_group("p_web_1"), Some(net.id.clone()));
    let join = s.network_join("p_web_1").expect("join");
    assert_eq!((join.name.as_str(), join.aliases.clone()), ("p_default", vec!["web".to_string()]));
    // In use: refused, naming the container; after the container goes, removed.
    let in_use = s.apply(Command::RemoveNetwork { id: net.id.clone() }).expect_err("in use");
    assert!(in_use.to_string().contains("p_web_1"), "{in_use}");
    s.apply(Command::RemoveContainer { id: cid(1), force: true, now_ms: T0 }).expect("rm");
    s.apply(Command::RemoveNetwork { id: net.id.clone() }).expect("remove network");
    assert!(s.networks.is_empty());
    assert_eq!(
        s.apply(Command::RemoveNetwork { id: net.id.clone() }),
        Err(Rejected::UnknownNetwork(net.id))
    );
}

#[test]
fn format_3_snapshots_decode_without_networks_and_reencode_as_format_4() {
    let mut s = with_node();
    create(&mut s, 1, "hello");
    // The format-3 layout: the same state, containers without networks.
    #[derive(serde::Serialize)]
    struct Envelope3<'a> {
        format: u32,
        nodes: &'a BTreeMap<NodeId, NodeRecord>,
        ca: &'a Option<CaRecord>,
        issued: &'a BTreeMap<NodeId, IssuedCert>,
        revoked: &'a std::collections::BTreeSet<NodeId>,
        last_applied: &'a Option<crate::types::LogId>,
        membership: &'a crate::types::StoredMembership,
        services: &'a BTreeMap<String, ServiceRecord>,
        tasks: &'a BTreeMap<TaskId, TaskRecord>,
        next_task_id: u64,
        availability: &'a BTreeMap<NodeId, Availability>,
        containers: BTreeMap<String, legacy::ContainerRecordV1>,
    }
    let containers = s
        .containers
        .iter()
        .map(|(id, c)| {
            (id.clone(), legacy::ContainerRecordV1 {
                id: c.id.clone(),
                name: c.name.clone(),
                service: c.service.clone(),
                labels: c.labels.clone(),
                created_ms: c.created_ms,
                started_ms: c.started_ms,
                stopped_ms: c.stopped_ms,
                last_node: c.last_node,
                first_task: c.first_task,
            })
        })
        .collect();
    let v3 = Envelope3 {
        format: 3,
        nodes: &s.nodes,
        ca: &s.ca,
        issued: &s.issued,
        revoked: &s.revoked,
        last_applied: &s.last_applied,
        membership: &s.membership,
        services: &s.services,
        tasks: &s.tasks,
        next_task_id: s.next_task_id,
        availability: &s.availability,
        containers,
    };
    let bytes = codec::encode::<_, { codec::MAX_SNAPSHOT_BYTES }>(&v3).expect("encode v3");
    let decoded = codec::decode_snapshot(&bytes).expect("format 3 decodes");
    assert_eq!(decoded, s);
    let again = codec::encode_snapshot(&decoded).expect("encode");
    assert_eq!(again[0], 4);
    assert_eq!(codec::decode_snapshot(&again).expect("decode"), s);
}

#[test]
fn auto_remove_containers_are_due_once_their_run_is_over() {
    let mut s = with_node();
    let mut def = container(1, "once");
    def.labels.insert(AUTO_REMOVE_LABEL.into(), "true".into());
    s.apply(Command::CreateContainer { container: def, now_ms: T0 }).expect("create");
    let kept = create(&mut s, 2, "kept");
    let id = cid(1);
    assert!(s.auto_remove_due().is_empty(), "created, never started");
    s.apply(run(&id, true, false)).expect("start");
    s.apply(run(&kept, true, false)).expect("start");
    assert!(s.auto_remove_due().is_empty(), "started, not placed");
    let t = place(&mut s, "once");
    let k = place(&mut s, "kept");
    report(&mut s, t, TaskState::Running);
    assert!(s.auto_remove_due().is_empty(), "running");
    report(&mut s, t, TaskState::Exited { code: 3 });
    report(&mut s, k, TaskState::Exited { code: 3 });
    assert_eq!(s.auto_remove_due(), [id.clone()], "ended; the container without AutoRemove stays");
    s.apply(Command::RemoveContainer { id: id.clone(), force: true, now_ms: T0 + 40 }).expect("remove");
    assert!(s.auto_remove_due().is_empty());

    // Stopped through the API: due once its task is down.
    let mut def = container(3, "stopped");
    def.labels.insert(AUTO_REMOVE_LABEL.into(), "true".into());
    s.apply(Command::CreateContainer { container: def, now_ms: T0 }).expect("create");
    s.apply(run(&cid(3), true, false)).expect("start");
    let t = place(&mut s, "stopped");
    report(&mut s, t, TaskState::Running);
    s.apply(run(&cid(3), false, false)).expect("stop");
    assert!(s.auto_remove_due().is_empty(), "still up on its node");
    report(&mut s, t, TaskState::Shutdown);
    assert_eq!(s.auto_remove_due(), [cid(3)]);
}
