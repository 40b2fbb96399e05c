//! Tests of services and tasks in the replicated state: every command's happy path, every
//! rejection leaving the state unchanged, the one-live-task-per-slot rule under replayed and
//! random batches, and the size of maximal commands against the codec's limit.

use std::collections::BTreeMap;

use shoal_cluster::constraint::Field;
use shoal_cluster::constraint::Op;
use shoal_cluster::scheduler::schedule;
use shoal_cluster::scheduler::Health;
use shoal_cluster::scheduler::NodeView;
use shoal_cluster::scheduler::SchedulerConfig;

use super::services::slot_fits;
use super::*;
use crate::codec;

const T0: u64 = 1_700_000_000_000;

fn id(n: u8) -> NodeId {
    NodeId([n; 16])
}

fn node_record(name: &str) -> NodeRecord {
    NodeRecord {
        name: name.into(),
        addr: "10.0.0.1:7481".parse().expect("addr"),
        labels: BTreeMap::new(),
    }
}

/// A state with nodes 1..=n registered (names `pi-1`...).
fn with_nodes(n: u8) -> ClusterState {
    let mut s = ClusterState::default();
    for i in 1..=n {
        s.apply(Command::RegisterNode {
            id: id(i),
            record: node_record(&format!("pi-{i}")),
        })
        .expect("register");
    }
    s
}

fn def(name: &str, replicas: u32) -> ServiceDef {
    ServiceDef {
        name: name.into(),
        spec: ContainerSpec {
            image: "nginx:1.27".into(),
            command: vec!["nginx".into(), "-g".into(), "daemon off;".into()],
            env: BTreeMap::from([("MODE".into(), "prod".into())]),
            ports: vec![PortMapping {
                host_port: 8080,
                container_port: 80,
                protocol: Protocol::Tcp,
            }],
            cpu_millis: 0,
            memory_bytes: 0,
            stop_grace_ms: Some(10_000),
        },
        mode: Mode::Replicated(replicas),
        constraints: vec![Constraint::parse("node.labels.zone!=attic").expect("constraint")],
        reserve_cpu_millis: 100,
        reserve_memory_bytes: 64 << 20,
        restart: RestartPolicy::OnFailure { max_attempts: 3 },
    }
}

fn create(s: &mut ClusterState, d: ServiceDef) {
    s.apply(Command::CreateService {
        service: d,
        now_ms: T0,
    })
    .expect("create service");
}

fn place(service: &str, slot: Slot, node: u8) -> Decision {
    Decision::Place {
        service: service.into(),
        slot,
        node: id(node),
    }
}

fn batch(decisions: Vec<Decision>, now_ms: u64) -> Command {
    Command::ApplyDecisions { decisions, now_ms }
}

fn created(r: Response) -> Vec<TaskId> {
    match r {
        Ok(Applied::DecisionsApplied { created, .. }) => created,
        other => panic!("expected DecisionsApplied, got {other:?}"),
    }
}

fn report(task: TaskId, state: TaskState) -> TaskReport {
    TaskReport {
        task,
        state,
        restarts: 0,
        last_exit_code: None,
        container: Some(ContainerId(format!("c{task}"))),
    }
}

/// Applies `cmd` expecting a rejection, and checks that nothing changed.
fn rejected(state: &mut ClusterState, cmd: Command) -> Rejected {
    let before = state.clone();
    let err = state.apply(cmd).expect_err("command should be rejected");
    assert_eq!(*state, before, "a rejected command changed the state");
    err
}

/// Live (desired running) tasks per (service, slot).
fn live_per_slot(s: &ClusterState) -> BTreeMap<(String, Slot), usize> {
    let mut out = BTreeMap::new();
    for t in s.tasks.values().filter(|t| t.is_live()) {
        *out.entry((t.service.clone(), t.slot)).or_insert(0) += 1;
    }
    out
}

fn assert_invariants(s: &ClusterState) {
    assert!(
        live_per_slot(s).values().all(|n| *n == 1),
        "a slot has two live tasks"
    );
    for t in s.tasks.values().filter(|t| t.is_live()) {
        let svc = s
            .services
            .get(&t.service)
            .expect("a live task has its service");
        assert!(
            slot_fits(&svc.def.mode, &t.slot),
            "{t} outside its service's slots"
        );
        assert!(s.nodes.contains_key(&t.node), "{t} on an unregistered node");
    }
    assert!(
        s.tasks.keys().all(|id| *id < s.next_task_id.max(1)),
        "ids below next"
    );
    assert!(s.availability.keys().all(|n| s.nodes.contains_key(n)));
    assert!(s.availability.values().all(|a| *a == Availability::Drain));
    assert!(s.services.len() <= MAX_SERVICES && s.tasks.len() <= MAX_TASKS);
}

// ---------------------------------------------------------------- CreateService

#[test]
fn create_service_records_version_and_times() {
    let mut s = with_nodes(1);
    let d = def("web", 2);
    assert_eq!(
        s.apply(Command::CreateService {
            service: d.clone(),
            now_ms: T0
        }),
        Ok(Applied::ServiceCreated)
    );
    let rec = s.services.get("web").expect("service");
    assert_eq!(rec.def, d);
    assert_eq!((rec.version, rec.created_ms, rec.updated_ms), (1, T0, T0));
    assert!(
        rec.pending.is_empty() && s.tasks.is_empty(),
        "the scheduler places tasks"
    );
    // Docker-like names, at the bounds.
    for name in [
        "a",
        "0db",
        "my_app.v2-beta",
        &"z".repeat(MAX_SERVICE_NAME_LEN),
    ] {
        create(&mut s, def(name, 0));
    }
    // Global, 0 replicas, tcp and udp on the same host port, no constraints: all fine.
    let mut g = def("dns", 0);
    g.mode = Mode::Global;
    g.constraints.clear();
    g.spec.ports = vec![
        PortMapping {
            host_port: 53,
            container_port: 53,
            protocol: Protocol::Tcp,
        },
        PortMapping {
            host_port: 53,
            container_port: 53,
            protocol: Protocol::Udp,
        },
    ];
    create(&mut s, g);
}

#[test]
fn create_service_rejections_change_nothing() {
    let mut s = with_nodes(1);
    create(&mut s, def("web", 1));
    let reject = |s: &mut ClusterState, d: ServiceDef| {
        rejected(
            s,
            Command::CreateService {
                service: d,
                now_ms: T0 + 1,
            },
        )
    };

    assert_eq!(
        reject(&mut s, def("web", 3)),
        Rejected::ServiceExists("web".into())
    );
    for name in [
        "",
        "Web",
        "-web",
        "_web",
        ".web",
        "we b",
        "wéb",
        "web/1",
        &"z".repeat(MAX_SERVICE_NAME_LEN + 1),
    ] {
        assert!(
            matches!(reject(&mut s, def(name, 1)), Rejected::BadServiceName(_)),
            "{name:?}"
        );
    }
    assert_eq!(
        reject(&mut s, def("api", MAX_REPLICAS + 1)),
        Rejected::BadReplicas(MAX_REPLICAS + 1)
    );

    let with = |f: &dyn Fn(&mut ServiceDef)| {
        let mut d = def("api", 1);
        f(&mut d);
        d
    };
    for image in [
        String::new(),
        "nginx latest".into(),
        "nginx\n".into(),
        "a".repeat(shoal_engine::types::IMAGE_LEN_MAX + 1),
    ] {
        assert_eq!(
            reject(&mut s, with(&|d| d.spec.image = image.clone())),
            Rejected::BadImage
        );
    }
    let bad_spec = [
        with(&|d| d.spec.command = vec!["x".into(); MAX_COMMAND_ARGS + 1]),
        with(&|d| d.spec.command = vec!["a\0b".into()]),
        with(&|d| {
            d.spec.env = (0..=MAX_ENV)
                .map(|i| (format!("K{i}"), String::new()))
                .collect()
        }),
        with(&|d| d.spec.env = BTreeMap::from([(String::new(), "v".into())])),
        with(&|d| d.spec.env = BTreeMap::from([("A=B".into(), "v".into())])),
        with(&|d| d.spec.env = BTreeMap::from([("A B".into(), "v".into())])),
        with(&|d| d.spec.env = BTreeMap::from([("K".repeat(MAX_ENV_KEY_LEN + 1), "v".into())])),
        with(&|d| d.spec.env = BTreeMap::from([("A".into(), "nul\0".into())])),
        with(&|d| {
            d.spec.ports = (1..=MAX_PORTS as u16 + 1)
                .map(|p| PortMapping {
                    host_port: p,
                    container_port: p,
                    protocol: Protocol::Tcp,
                })
                .collect()
        }),
    ];
    for d in bad_spec {
        assert!(
            matches!(reject(&mut s, d.clone()), Rejected::BadSpec(_)),
            "{:?}",
            d.spec
        );
    }
    let port = |host_port, container_port| PortMapping {
        host_port,
        container_port,
        protocol: Protocol::Tcp,
    };
    assert_eq!(
        reject(&mut s, with(&|d| d.spec.ports = vec![port(0, 80)])),
        Rejected::BadPort {
            host: 0,
            container: 80
        }
    );
    assert_eq!(
        reject(&mut s, with(&|d| d.spec.ports = vec![port(8080, 0)])),
        Rejected::BadPort {
            host: 8080,
            container: 0
        }
    );
    assert_eq!(
        reject(
            &mut s,
            with(&|d| d.spec.ports = vec![port(8080, 80), port(8080, 81)])
        ),
        Rejected::DuplicatePort {
            port: 8080,
            protocol: "tcp".into()
        }
    );
    for d in [
        with(&|d| d.reserve_cpu_millis = MAX_CPU_MILLIS + 1),
        with(&|d| d.reserve_memory_bytes = MAX_MEMORY_BYTES + 1),
        with(&|d| d.spec.cpu_millis = MAX_CPU_MILLIS + 1),
        with(&|d| d.spec.memory_bytes = MAX_MEMORY_BYTES + 1),
    ] {
        assert_eq!(reject(&mut s, d), Rejected::BadResources);
    }
    let max = shoal_engine::types::STOP_GRACE_MS_MAX;
    assert_eq!(
        reject(&mut s, with(&|d| d.spec.stop_grace_ms = Some(max + 1))),
        Rejected::BadStopGrace(max + 1)
    );
    let c = Constraint::parse("node.arch==aarch64").expect("constraint");
    assert_eq!(
        reject(
            &mut s,
            with(&|d| d.constraints = vec![c.clone(); MAX_CONSTRAINTS + 1])
        ),
        Rejected::TooManyConstraints(MAX_CONSTRAINTS + 1)
    );
    // Constraints that `Constraint::parse` would never produce (a deserialised value).
    for bad in [
        Constraint {
            field: Field::Label(String::new()),
            op: Op::Eq,
            value: "x".into(),
        },
        Constraint {
            field: Field::Hostname,
            op: Op::Ne,
            value: String::new(),
        },
        Constraint {
            field: Field::Label("a!=b".into()),
            op: Op::Eq,
            value: "c".into(),
        },
        Constraint {
            field: Field::Arch,
            op: Op::Eq,
            value: "x".repeat(MAX_CONSTRAINT_LEN),
        },
        Constraint {
            field: Field::Arch,
            op: Op::Eq,
            value: " padded ".into(),
        },
    ] {
        assert!(
            matches!(
                reject(&mut s, with(&|d| d.constraints = vec![bad.clone()])),
                Rejected::BadConstraint(_)
            ),
            "{bad:?}"
        );
    }
    assert_eq!(
        reject(
            &mut s,
            with(
                &|d| d.spec.env = BTreeMap::from([("BIG".into(), "x".repeat(MAX_SPEC_TEXT_BYTES))])
            )
        ),
        Rejected::SpecTooLarge {
            bytes: "nginx:1.27".len()
                + "nginx-gdaemon off;".len()
                + "BIG".len()
                + MAX_SPEC_TEXT_BYTES
                + "node.labels.zone!=attic".len()
        }
    );
    // The messages say what to do.
    assert!(Rejected::ServiceExists("web".into())
        .to_string()
        .contains("remove it first"));
    assert!(Rejected::BadServiceName("Web".into())
        .to_string()
        .contains("lowercase letters"));
}

#[test]
fn create_service_stops_at_the_service_limit() {
    let mut s = ClusterState::default();
    for i in 0..MAX_SERVICES {
        create(&mut s, def(&format!("s{i}"), 1));
    }
    assert_eq!(
        rejected(
            &mut s,
            Command::CreateService {
                service: def("one-more", 1),
                now_ms: T0
            }
        ),
        Rejected::TooManyServices
    );
    s.apply(Command::RemoveService {
        name: "s0".into(),
        now_ms: T0,
    })
    .expect("remove");
    create(&mut s, def("one-more", 1));
}

// ---------------------------------------------------------------- UpdateService

#[test]
fn scaling_bumps_the_version_and_shuts_removed_slots_down() {
    let mut s = with_nodes(2);
    create(&mut s, def("web", 3));
    let ids = created(s.apply(batch(
        vec![
            place("web", Slot::Index(1), 1),
            place("web", Slot::Index(2), 2),
            place("web", Slot::Index(3), 1),
        ],
        T0 + 1,
    )));
    assert_eq!(ids, vec![1, 2, 3]);
    s.apply(batch(
        vec![Decision::Pending {
            service: "web".into(),
            slot: Slot::Index(3),
            reason: "r".into(),
        }],
        T0 + 2,
    ))
    .expect("batch");
    let scale = |n: Option<u32>, now_ms| Command::UpdateService {
        name: "web".into(),
        replicas: n,
        now_ms,
    };

    let before = s.clone();
    assert_eq!(
        s.apply(scale(Some(3), T0 + 3)),
        Ok(Applied::ServiceUpdated {
            version: 1,
            changed: false
        })
    );
    assert_eq!(
        s.apply(scale(None, T0 + 3)),
        Ok(Applied::ServiceUpdated {
            version: 1,
            changed: false
        })
    );
    assert_eq!(s, before, "an update that changes nothing changes nothing");

    assert_eq!(
        s.apply(scale(Some(1), T0 + 4)),
        Ok(Applied::ServiceUpdated {
            version: 2,
            changed: true
        })
    );
    let rec = s.services.get("web").expect("service");
    assert_eq!(
        (rec.def.mode, rec.updated_ms, rec.created_ms),
        (Mode::Replicated(1), T0 + 4, T0)
    );
    assert!(
        rec.pending.is_empty(),
        "pending slots beyond the count are dropped"
    );
    let desired: Vec<(TaskId, Desired, Option<ShutdownReason>)> = s
        .tasks
        .values()
        .map(|t| (t.id, t.desired, t.shutdown_reason))
        .collect();
    assert_eq!(
        desired,
        vec![
            (1, Desired::Running, None),
            (2, Desired::Shutdown, Some(ShutdownReason::ScaledDown)),
            (3, Desired::Shutdown, Some(ShutdownReason::ScaledDown)),
        ]
    );
    assert_eq!(
        s.apply(scale(Some(0), T0 + 5)),
        Ok(Applied::ServiceUpdated {
            version: 3,
            changed: true
        })
    );
    assert!(s.tasks.values().all(|t| !t.is_live()));
    assert_eq!(
        s.apply(scale(Some(MAX_REPLICAS), T0 + 6)),
        Ok(Applied::ServiceUpdated {
            version: 4,
            changed: true
        })
    );
    assert_invariants(&s);
}

#[test]
fn update_service_rejections_change_nothing() {
    let mut s = with_nodes(1);
    create(&mut s, def("web", 1));
    let mut g = def("agent", 0);
    g.mode = Mode::Global;
    create(&mut s, g);
    let scale = |name: &str, n| Command::UpdateService {
        name: name.into(),
        replicas: Some(n),
        now_ms: T0 + 1,
    };
    assert_eq!(
        rejected(&mut s, scale("nope", 2)),
        Rejected::UnknownService("nope".into())
    );
    assert_eq!(
        rejected(&mut s, scale("agent", 2)),
        Rejected::ScaleGlobal("agent".into())
    );
    assert_eq!(
        rejected(&mut s, scale("web", MAX_REPLICAS + 1)),
        Rejected::BadReplicas(MAX_REPLICAS + 1)
    );
}

// ---------------------------------------------------------------- RemoveService

#[test]
fn removing_a_service_shuts_its_tasks_down_and_keeps_them() {
    let mut s = with_nodes(2);
    create(&mut s, def("web", 2));
    create(&mut s, def("db", 1));
    s.apply(batch(
        vec![
            place("web", Slot::Index(1), 1),
            place("web", Slot::Index(2), 2),
            place("db", Slot::Index(1), 1),
        ],
        T0,
    ))
    .expect("batch");
    assert_eq!(
        s.apply(Command::RemoveService {
            name: "web".into(),
            now_ms: T0 + 9
        }),
        Ok(Applied::ServiceRemoved { shut_down: 2 })
    );
    assert!(!s.services.contains_key("web"));
    assert_eq!(s.tasks.len(), 3, "kept so the agents remove the containers");
    for t in s.tasks_of_service("web") {
        assert_eq!(
            (t.desired, t.shutdown_reason, t.updated_ms),
            (
                Desired::Shutdown,
                Some(ShutdownReason::ServiceRemoved),
                T0 + 9
            )
        );
    }
    assert!(
        s.tasks.get(&3).is_some_and(TaskRecord::is_live),
        "other services untouched"
    );
    // The agent still gets the task, to remove its container.
    let mine = s.tasks_for_node(&id(1));
    assert_eq!(mine.len(), 2);
    assert_eq!((mine[0].id, mine[0].desired), (1, Desired::Shutdown));
    assert_eq!(
        rejected(
            &mut s,
            Command::RemoveService {
                name: "web".into(),
                now_ms: T0
            }
        ),
        Rejected::UnknownService("web".into())
    );
    // The name is free again; the old tasks do not count for the new service's slots.
    create(&mut s, def("web", 2));
    assert_eq!(
        created(s.apply(batch(vec![place("web", Slot::Index(1), 2)], T0 + 10))),
        vec![4]
    );
    assert_invariants(&s);
}

// ---------------------------------------------------------------- ApplyDecisions

#[test]
fn placements_allocate_ids_and_replays_create_nothing() {
    let mut s = with_nodes(2);
    create(&mut s, def("web", 2));
    let decisions = vec![
        place("web", Slot::Index(1), 1),
        place("web", Slot::Index(2), 2),
    ];
    assert_eq!(
        s.apply(batch(decisions.clone(), T0 + 5)),
        Ok(Applied::DecisionsApplied {
            created: vec![1, 2],
            shut_down: 0,
            skipped: 0
        })
    );
    assert_eq!(s.next_task_id, 3);
    let t = s.tasks.get(&2).expect("task 2");
    assert_eq!(
        (
            t.service.as_str(),
            t.slot,
            t.node,
            t.desired,
            t.service_version
        ),
        ("web", Slot::Index(2), id(2), Desired::Running, 1)
    );
    assert_eq!(
        (t.observed.clone(), t.created_ms, t.updated_ms),
        (None, T0 + 5, T0 + 5)
    );

    // The same batch again (a leader retrying), or a second leader's placement of the same
    // slot on another node: nothing new.
    let before = s.clone();
    assert_eq!(
        s.apply(batch(decisions, T0 + 6)),
        Ok(Applied::DecisionsApplied {
            created: vec![],
            shut_down: 0,
            skipped: 2
        })
    );
    assert_eq!(
        created(s.apply(batch(vec![place("web", Slot::Index(1), 2)], T0 + 7))),
        Vec::<TaskId>::new()
    );
    assert_eq!(s, before);

    // Two placements of one slot in one batch: the first wins.
    create(&mut s, def("db", 1));
    assert_eq!(
        created(s.apply(batch(
            vec![
                place("db", Slot::Index(1), 1),
                place("db", Slot::Index(1), 2)
            ],
            T0 + 8
        ))),
        vec![3]
    );
    assert_invariants(&s);
}

#[test]
fn shutdown_then_place_moves_a_slot_in_one_batch() {
    let mut s = with_nodes(2);
    create(&mut s, def("web", 1));
    s.apply(batch(vec![place("web", Slot::Index(1), 1)], T0))
        .expect("place");
    let moved = vec![
        Decision::Shutdown {
            task: 1,
            reason: ShutdownReason::NodeDown,
        },
        place("web", Slot::Index(1), 2),
    ];
    assert_eq!(
        s.apply(batch(moved.clone(), T0 + 1)),
        Ok(Applied::DecisionsApplied {
            created: vec![2],
            shut_down: 1,
            skipped: 0
        })
    );
    let old = s.tasks.get(&1).expect("old task");
    assert_eq!(
        (old.desired, old.shutdown_reason, old.updated_ms),
        (Desired::Shutdown, Some(ShutdownReason::NodeDown), T0 + 1)
    );
    // Replayed: the shutdown is a no-op and the slot is taken.
    let before = s.clone();
    assert_eq!(
        s.apply(batch(moved, T0 + 2)),
        Ok(Applied::DecisionsApplied {
            created: vec![],
            shut_down: 0,
            skipped: 2
        })
    );
    assert_eq!(s, before);
    // A place before the shutdown of the slot's live task is skipped.
    assert_eq!(
        s.apply(batch(
            vec![
                place("web", Slot::Index(1), 1),
                Decision::Shutdown {
                    task: 2,
                    reason: ShutdownReason::Duplicate
                }
            ],
            T0 + 3
        )),
        Ok(Applied::DecisionsApplied {
            created: vec![],
            shut_down: 1,
            skipped: 1
        })
    );
    assert_invariants(&s);
}

#[test]
fn stale_or_invalid_placements_are_skipped() {
    let mut s = with_nodes(3);
    create(&mut s, def("web", 2));
    let mut g = def("agent", 0);
    g.mode = Mode::Global;
    create(&mut s, g);
    s.apply(Command::SetAvailability {
        node: id(2),
        availability: Availability::Drain,
    })
    .expect("drain");
    s.apply(Command::Revoke { node: id(3) }).expect("revoke");
    let before = s.clone();
    let stale = vec![
        place("gone", Slot::Index(1), 1),     // unknown service
        place("web", Slot::Index(1), 9),      // unknown node
        place("web", Slot::Index(1), 3),      // revoked node
        place("web", Slot::Index(1), 2),      // drained node
        place("web", Slot::Index(0), 1),      // slots start at 1
        place("web", Slot::Index(3), 1),      // beyond the replica count
        place("web", Slot::Node(id(1)), 1),   // a node slot of a replicated service
        place("agent", Slot::Index(1), 1),    // an index slot of a global service
        place("agent", Slot::Node(id(1)), 2), // a global slot on another node
        Decision::Shutdown {
            task: 42,
            reason: ShutdownReason::NodeGone,
        },
        Decision::Pending {
            service: "gone".into(),
            slot: Slot::Index(1),
            reason: "r".into(),
        },
        Decision::Pending {
            service: "web".into(),
            slot: Slot::Index(7),
            reason: "r".into(),
        },
    ];
    let n = u32::try_from(stale.len()).expect("small");
    assert_eq!(
        s.apply(batch(stale, T0 + 1)),
        Ok(Applied::DecisionsApplied {
            created: vec![],
            shut_down: 0,
            skipped: n
        })
    );
    assert_eq!(s, before);
    assert_eq!(
        created(s.apply(batch(vec![place("agent", Slot::Node(id(1)), 1)], T0 + 2))),
        vec![1]
    );
    assert_invariants(&s);
}

#[test]
fn pending_reasons_are_those_of_the_last_batch() {
    let mut s = with_nodes(1);
    create(&mut s, def("web", 3));
    let pending = |slot, reason: &str| Decision::Pending {
        service: "web".into(),
        slot: Slot::Index(slot),
        reason: reason.into(),
    };
    s.apply(batch(
        vec![
            place("web", Slot::Index(1), 1),
            pending(2, "no suitable node (0/1): 1 insufficient memory"),
            pending(3, "no suitable node (0/1): 1 insufficient memory"),
        ],
        T0,
    ))
    .expect("batch");
    let shown = |s: &ClusterState| -> Vec<(Slot, String, u64)> {
        s.services["web"]
            .pending
            .iter()
            .map(|(slot, p)| (*slot, p.reason.clone(), p.since_ms))
            .collect()
    };
    let mem = "no suitable node (0/1): 1 insufficient memory".to_string();
    assert_eq!(
        shown(&s),
        vec![
            (Slot::Index(2), mem.clone(), T0),
            (Slot::Index(3), mem.clone(), T0)
        ]
    );
    // The same pass later: nothing changes (the reasons keep their since).
    let before = s.clone();
    s.apply(batch(vec![pending(2, &mem), pending(3, &mem)], T0 + 1000))
        .expect("batch");
    assert_eq!(s, before);
    // Slot 3 placed, slot 2 pending for another reason.
    s.apply(batch(
        vec![
            pending(2, "no nodes in the cluster"),
            place("web", Slot::Index(3), 1),
        ],
        T0 + 2000,
    ))
    .expect("batch");
    assert_eq!(
        shown(&s),
        vec![(Slot::Index(2), "no nodes in the cluster".into(), T0 + 2000)]
    );
    // A pending decision for a slot that has a live task is stale.
    s.apply(batch(vec![pending(1, "stale")], T0 + 3000))
        .expect("batch");
    assert!(shown(&s).is_empty(), "an empty pass clears the reasons");
}

#[test]
fn decision_batches_are_bounded() {
    let mut s = with_nodes(1);
    create(&mut s, def("web", 1));
    let too_many = vec![place("web", Slot::Index(1), 1); MAX_DECISIONS + 1];
    assert_eq!(
        rejected(&mut s, batch(too_many, T0)),
        Rejected::TooManyDecisions(MAX_DECISIONS + 1)
    );
    for reason in ["x".repeat(MAX_PENDING_REASON_LEN + 1), "two\nlines".into()] {
        assert_eq!(
            rejected(
                &mut s,
                batch(
                    vec![
                        place("web", Slot::Index(1), 1),
                        Decision::Pending {
                            service: "web".into(),
                            slot: Slot::Index(1),
                            reason
                        }
                    ],
                    T0
                )
            ),
            Rejected::BadPendingReason
        );
    }
}

#[test]
fn places_past_the_task_limit_are_pending() {
    let mut s = with_nodes(1);
    create(&mut s, def("web", 2));
    // Fill the table with forgotten-to-be tasks of a removed service.
    for i in 0..MAX_TASKS as u64 {
        s.tasks.insert(
            1000 + i,
            TaskRecord {
                id: 1000 + i,
                service: "old".into(),
                service_version: 1,
                slot: Slot::Index(1),
                node: id(1),
                desired: Desired::Shutdown,
                shutdown_reason: Some(ShutdownReason::ServiceRemoved),
                observed: None,
                container: None,
                last_exit_code: None,
                error: None,
                restarts: 0,
                created_ms: T0,
                updated_ms: T0,
            },
        );
    }
    s.next_task_id = 1000 + MAX_TASKS as u64;
    assert_eq!(
        s.apply(batch(vec![place("web", Slot::Index(1), 1)], T0 + 1)),
        Ok(Applied::DecisionsApplied {
            created: vec![],
            shut_down: 0,
            skipped: 1
        })
    );
    let p = &s.services["web"].pending[&Slot::Index(1)];
    assert!(p.reason.contains("limit"), "{}", p.reason);
    assert_eq!(s.tasks.len(), MAX_TASKS);
}

#[test]
fn no_two_live_tasks_per_slot_under_random_replayed_batches() {
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            self.0 >> 33
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }
    let names = ["web", "db", "agent"];
    for seed in 0..40 {
        let mut g = Lcg(seed);
        let mut a = with_nodes(4);
        create(&mut a, def("web", 3));
        create(&mut a, def("db", 1));
        let mut agent = def("agent", 0);
        agent.mode = Mode::Global;
        create(&mut a, agent);
        let mut b = a.clone();
        let mut history: Vec<Command> = Vec::new();
        for step in 0..200u64 {
            let now_ms = T0 + step;
            let cmd = match g.below(10) {
                // Replay an earlier command (a retried or duplicated proposal).
                0 | 1 if !history.is_empty() => {
                    history[g.below(history.len() as u64) as usize].clone()
                }
                2 => Command::UpdateService {
                    name: names[g.below(3) as usize].into(),
                    replicas: Some(g.below(5) as u32),
                    now_ms,
                },
                3 => Command::SetAvailability {
                    node: id(1 + g.below(4) as u8),
                    availability: if g.below(2) == 0 {
                        Availability::Active
                    } else {
                        Availability::Drain
                    },
                },
                4 => Command::ReportTasks {
                    node: id(1 + g.below(4) as u8),
                    reports: vec![report(g.below(40), TaskState::Shutdown)],
                    now_ms,
                },
                5 => Command::ForgetTasks {
                    ids: (0..g.below(5)).map(|_| g.below(40)).collect(),
                },
                _ => {
                    let decisions = (0..1 + g.below(6))
                        .map(|_| {
                            let service = names[g.below(3) as usize].to_string();
                            let node = id(1 + g.below(5) as u8);
                            let slot = if g.below(3) == 0 {
                                Slot::Node(node)
                            } else {
                                Slot::Index(g.below(5) as u32)
                            };
                            match g.below(4) {
                                0 => Decision::Shutdown {
                                    task: g.below(40),
                                    reason: ShutdownReason::NodeDown,
                                },
                                1 => Decision::Pending {
                                    service,
                                    slot,
                                    reason: "no room".into(),
                                },
                                _ => Decision::Place {
                                    service,
                                    slot,
                                    node,
                                },
                            }
                        })
                        .collect();
                    batch(decisions, now_ms)
                }
            };
            history.push(cmd.clone());
            let before = a.clone();
            let ra = a.apply(cmd.clone());
            let rb = b.apply(cmd);
            assert_eq!(ra, rb, "deterministic");
            assert_eq!(a, b, "deterministic");
            if ra.is_err() {
                assert_eq!(a, before, "rejected without change");
            }
            assert_invariants(&a);
        }
    }
}

// ---------------------------------------------------------------- ReportTasks

#[test]
fn reports_update_only_the_reporting_nodes_tasks() {
    let mut s = with_nodes(2);
    create(&mut s, def("web", 2));
    s.apply(batch(
        vec![
            place("web", Slot::Index(1), 1),
            place("web", Slot::Index(2), 2),
        ],
        T0,
    ))
    .expect("place");
    let failed = TaskReport {
        task: 1,
        state: TaskState::Failed {
            reason: "image nginx:1.27 not found".into(),
        },
        restarts: 2,
        last_exit_code: Some(137),
        container: None,
    };
    assert_eq!(
        s.apply(Command::ReportTasks {
            node: id(1),
            reports: vec![
                failed.clone(),
                report(2, TaskState::Running),  // task 2 is node 2's
                report(99, TaskState::Running), // unknown
            ],
            now_ms: T0 + 10
        }),
        Ok(Applied::TasksReported {
            applied: 1,
            ignored: 2
        })
    );
    let t1 = s.tasks[&1].clone();
    assert_eq!(t1.observed, Some(failed.state.clone()));
    assert_eq!(
        (
            t1.restarts,
            t1.last_exit_code,
            t1.error.as_deref(),
            t1.updated_ms
        ),
        (2, Some(137), Some("image nginx:1.27 not found"), T0 + 10)
    );
    assert_eq!(
        s.tasks[&2].observed, None,
        "another node's word does not count"
    );
    // The same report again changes nothing (not even updated_ms).
    let before = s.clone();
    s.apply(Command::ReportTasks {
        node: id(1),
        reports: vec![failed],
        now_ms: T0 + 20,
    })
    .expect("report");
    assert_eq!(s, before);
    // Running again: the error and exit code stay for `service ps`.
    let mut running = report(1, TaskState::Running);
    running.restarts = 3;
    running.last_exit_code = Some(137);
    s.apply(Command::ReportTasks {
        node: id(1),
        reports: vec![running],
        now_ms: T0 + 30,
    })
    .expect("report");
    let t1 = &s.tasks[&1];
    assert_eq!(t1.observed, Some(TaskState::Running));
    assert_eq!(t1.container, Some(ContainerId("c1".into())));
    assert_eq!(t1.error.as_deref(), Some("image nginx:1.27 not found"));
    assert_eq!((t1.restarts, t1.updated_ms), (3, T0 + 30));
}

#[test]
fn report_rejections_change_nothing() {
    let mut s = with_nodes(2);
    create(&mut s, def("web", 1));
    s.apply(batch(vec![place("web", Slot::Index(1), 1)], T0))
        .expect("place");
    s.apply(Command::Revoke { node: id(2) }).expect("revoke");
    let reports = |node, reports| Command::ReportTasks {
        node: id(node),
        reports,
        now_ms: T0,
    };
    assert_eq!(
        rejected(&mut s, reports(9, vec![])),
        Rejected::UnknownNode(id(9))
    );
    assert_eq!(
        rejected(&mut s, reports(2, vec![])),
        Rejected::NodeRevoked(id(2))
    );
    assert_eq!(
        rejected(
            &mut s,
            reports(1, vec![report(1, TaskState::Running); MAX_REPORTS + 1])
        ),
        Rejected::TooManyReports(MAX_REPORTS + 1)
    );
    let long_reason = report(
        1,
        TaskState::Failed {
            reason: "e".repeat(MAX_ERROR_LEN + 1),
        },
    );
    let mut long_id = report(1, TaskState::Running);
    long_id.container = Some(ContainerId("c".repeat(MAX_CONTAINER_ID_LEN + 1)));
    let mut empty_id = report(1, TaskState::Running);
    empty_id.container = Some(ContainerId(String::new()));
    for bad in [long_reason, long_id, empty_id] {
        // One bad report rejects the batch, good ones included.
        assert!(matches!(
            rejected(&mut s, reports(1, vec![report(1, TaskState::Running), bad])),
            Rejected::BadReport { task: 1, .. }
        ));
    }
}

#[test]
fn report_batches_are_clipped_and_chunked_to_be_accepted() {
    let mut s = with_nodes(1);
    create(&mut s, def("web", 1));
    s.apply(batch(vec![place("web", Slot::Index(1), 1)], T0))
        .expect("place");
    let mut bad = report(
        1,
        TaskState::Failed {
            reason: format!("{}\n{}", "é".repeat(MAX_ERROR_LEN), "tail"),
        },
    );
    bad.container = Some(ContainerId("c".repeat(MAX_CONTAINER_ID_LEN + 1)));
    let mut all = vec![report(1, TaskState::Running); 2 * MAX_REPORTS];
    all.push(bad);
    let cmds = Command::report_tasks(id(1), all, T0 + 1);
    assert_eq!(cmds.len(), 3);
    for cmd in cmds {
        let bytes = codec::encode_command(&cmd).expect("fits");
        assert!(bytes.len() <= codec::MAX_COMMAND_BYTES);
        s.apply(cmd).expect("accepted");
    }
    let t = &s.tasks[&1];
    let Some(TaskState::Failed { reason }) = &t.observed else {
        panic!("{:?}", t.observed)
    };
    assert!(reason.len() <= MAX_ERROR_LEN && reason.chars().all(|c| c == 'é'));
    assert_eq!(t.container, None, "an impossible container id is dropped");
    assert!(Command::report_tasks(id(1), vec![], T0).is_empty());
}

// ---------------------------------------------------------------- ForgetTasks

#[test]
fn forget_removes_only_finished_tasks() {
    let mut s = with_nodes(3);
    create(&mut s, def("web", 4));
    s.apply(batch(
        (1..=4)
            .map(|i| place("web", Slot::Index(i), (i % 3 + 1) as u8))
            .collect(),
        T0,
    ))
    .expect("place");
    // Tasks: 1 on node 2, 2 on node 3, 3 on node 1, 4 on node 2.
    s.apply(Command::UpdateService {
        name: "web".into(),
        replicas: Some(1),
        now_ms: T0 + 1,
    })
    .expect("scale"); // 2, 3 and 4 shut down
    s.apply(Command::ReportTasks {
        node: id(3),
        reports: vec![report(2, TaskState::Shutdown)],
        now_ms: T0 + 2,
    })
    .expect("report"); // 2 is done
    s.apply(Command::Revoke { node: id(1) }).expect("revoke"); // 3's node is gone
    assert_eq!(s.forgettable_tasks(), vec![2, 3]);
    assert_eq!(
        s.apply(Command::ForgetTasks {
            ids: vec![1, 2, 3, 4, 77]
        }),
        Ok(Applied::TasksForgotten {
            removed: 2,
            kept: 3
        })
    );
    assert_eq!(s.tasks.keys().copied().collect::<Vec<_>>(), vec![1, 4]);
    assert!(s.forgettable_tasks().is_empty());
    assert_eq!(
        rejected(
            &mut s,
            Command::ForgetTasks {
                ids: vec![4; MAX_FORGET + 1]
            }
        ),
        Rejected::TooManyTaskIds(MAX_FORGET + 1)
    );
    // Ids are never reused.
    create(&mut s, def("db", 1));
    assert_eq!(
        created(s.apply(batch(vec![place("db", Slot::Index(1), 2)], T0 + 3))),
        vec![5]
    );
}

// ---------------------------------------------------------------- Availability and Revoke

#[test]
fn availability_is_set_on_registered_nodes_only() {
    let mut s = with_nodes(2);
    let set = |n, a| Command::SetAvailability {
        node: id(n),
        availability: a,
    };
    assert_eq!(s.availability_of(&id(1)), Availability::Active);
    assert_eq!(
        s.apply(set(1, Availability::Drain)),
        Ok(Applied::AvailabilitySet { changed: true })
    );
    assert_eq!(
        s.apply(set(1, Availability::Drain)),
        Ok(Applied::AvailabilitySet { changed: false })
    );
    assert_eq!(s.availability_of(&id(1)), Availability::Drain);
    // Re-registering (new address or labels) keeps the drain.
    s.apply(Command::RegisterNode {
        id: id(1),
        record: node_record("pi-1"),
    })
    .expect("register");
    assert_eq!(s.availability_of(&id(1)), Availability::Drain);
    assert_eq!(
        s.apply(set(1, Availability::Active)),
        Ok(Applied::AvailabilitySet { changed: true })
    );
    assert!(s.availability.is_empty(), "active is not stored");
    assert_eq!(
        s.apply(set(1, Availability::Active)),
        Ok(Applied::AvailabilitySet { changed: false })
    );
    assert_eq!(
        rejected(&mut s, set(9, Availability::Drain)),
        Rejected::UnknownNode(id(9))
    );
    s.apply(set(2, Availability::Drain)).expect("drain");
    s.apply(Command::Revoke { node: id(2) }).expect("revoke");
    assert!(
        s.availability.is_empty(),
        "a revoked node's mark goes with it"
    );
    assert_eq!(
        rejected(&mut s, set(2, Availability::Active)),
        Rejected::NodeRevoked(id(2))
    );
}

#[test]
fn revoking_a_node_shuts_its_tasks_down() {
    let mut s = with_nodes(2);
    create(&mut s, def("web", 2));
    s.apply(batch(
        vec![
            place("web", Slot::Index(1), 1),
            place("web", Slot::Index(2), 2),
        ],
        T0,
    ))
    .expect("place");
    s.apply(Command::Revoke { node: id(2) }).expect("revoke");
    let t = &s.tasks[&2];
    assert_eq!(
        (t.desired, t.shutdown_reason),
        (Desired::Shutdown, Some(ShutdownReason::NodeGone))
    );
    assert!(s.tasks[&1].is_live());
    // The slot is free for the scheduler again.
    let (_, live) = s.scheduler_inputs();
    assert_eq!(live.iter().map(|t| t.id).collect::<Vec<_>>(), vec![1]);
    assert_eq!(
        created(s.apply(batch(vec![place("web", Slot::Index(2), 1)], T0 + 1))),
        vec![3]
    );
    assert_invariants(&s);
}

// ---------------------------------------------------------------- views

#[test]
fn views_for_the_scheduler_and_the_agents() {
    let mut s = with_nodes(2);
    create(&mut s, def("web", 2));
    s.apply(batch(
        vec![
            place("web", Slot::Index(1), 1),
            place("web", Slot::Index(2), 2),
        ],
        T0,
    ))
    .expect("place");
    s.apply(batch(
        vec![Decision::Shutdown {
            task: 2,
            reason: ShutdownReason::NodeDrained,
        }],
        T0 + 1,
    ))
    .expect("shutdown");
    let (services, tasks) = s.scheduler_inputs();
    let d = def("web", 2);
    assert_eq!(
        services,
        vec![ServiceView {
            name: "web".into(),
            mode: Mode::Replicated(2),
            constraints: d.constraints.clone(),
            reserve_cpu_millis: d.reserve_cpu_millis,
            reserve_memory_bytes: d.reserve_memory_bytes,
            host_ports: vec![HostPort::tcp(8080)],
            stays_with_node: false,
            group: None,
        }]
    );
    assert_eq!(
        tasks,
        vec![TaskView {
            id: 1,
            service: "web".into(),
            slot: Slot::Index(1),
            node: id(1)
        }],
        "only live tasks"
    );
    assert_eq!(
        s.tasks_for_node(&id(1)),
        vec![AssignedTask { network: None,
            id: 1,
            service: "web".into(),
            spec: d.spec.clone(),
            desired: Desired::Running,
            restart: d.restart,
        }]
    );
    assert_eq!(
        s.tasks_for_node(&id(2)),
        vec![AssignedTask { network: None,
            id: 2,
            service: "web".into(),
            spec: d.spec.clone(),
            desired: Desired::Shutdown,
            restart: d.restart,
        }],
        "shut-down tasks are kept for the agent to remove"
    );
    assert!(s.tasks_for_node(&id(9)).is_empty());
}

/// The real scheduler on the replicated state: a pass is committed, the next pass places
/// nothing more, and replaying the first one changes nothing.
#[test]
fn the_scheduler_converges_on_the_replicated_state() {
    let mut s = with_nodes(3);
    let mut web = def("web", 4);
    web.constraints.clear();
    web.spec.ports.clear();
    create(&mut s, web);
    let mut agent = def("agent", 0);
    agent.mode = Mode::Global;
    agent.constraints = vec![Constraint::parse("node.hostname!=pi-3").expect("constraint")];
    agent.spec.ports[0].host_port = 9100;
    create(&mut s, agent);
    let views = |s: &ClusterState| -> Vec<NodeView> {
        s.nodes
            .iter()
            .map(|(id, n)| NodeView {
                id: *id,
                hostname: n.name.clone(),
                arch: "aarch64".into(),
                labels: n.labels.clone(),
                health: Health::Alive,
                availability: s.availability_of(id),
                engine_ok: true,
                cpu_millis: 4000,
                memory_bytes: 1 << 32,
            })
            .collect()
    };
    let cfg = SchedulerConfig::default();
    let pass = |s: &ClusterState, now_ms| {
        let (services, tasks) = s.scheduler_inputs();
        Command::apply_decisions(schedule(&cfg, now_ms, &views(s), &services, &tasks), now_ms)
    };
    let first = pass(&s, T0);
    let applied = s.apply(first.clone()).expect("pass");
    assert_eq!(created(Ok(applied)).len(), 4 + 2);
    assert_invariants(&s);
    let before = s.clone();
    s.apply(first).expect("replay");
    assert_eq!(s, before, "a replayed pass changes nothing");
    let second = pass(&s, T0 + 1000);
    assert_eq!(
        second,
        Command::ApplyDecisions {
            decisions: vec![],
            now_ms: T0 + 1000
        }
    );
    // Drain node 1: its tasks move in one pass, without two live tasks for any slot.
    s.apply(Command::SetAvailability {
        node: id(1),
        availability: Availability::Drain,
    })
    .expect("drain");
    let moved = pass(&s, T0 + 2000);
    s.apply(moved).expect("pass");
    assert_invariants(&s);
    assert!(s
        .tasks
        .values()
        .filter(|t| t.is_live())
        .all(|t| t.node != id(1)));
    assert_eq!(
        s.scheduler_inputs().1.len(),
        4 + 1,
        "web x4 and agent on pi-2"
    );
    assert_eq!(
        pass(&s, T0 + 3000),
        Command::apply_decisions(vec![], T0 + 3000)
    );
}

#[test]
fn apply_decisions_orders_truncates_and_clips() {
    let pending = |i, reason: String| Decision::Pending {
        service: "web".into(),
        slot: Slot::Index(i),
        reason,
    };
    let mut decisions = vec![pending(
        1,
        format!("{}\u{7}", "ü".repeat(MAX_PENDING_REASON_LEN)),
    )];
    decisions.extend((1..=MAX_DECISIONS as u32).map(|i| place("web", Slot::Index(i), 1)));
    decisions.push(Decision::Shutdown {
        task: 7,
        reason: ShutdownReason::ScaledDown,
    });
    let Command::ApplyDecisions { decisions: out, .. } = Command::apply_decisions(decisions, T0)
    else {
        panic!("not a batch")
    };
    assert_eq!(out.len(), MAX_DECISIONS);
    assert!(matches!(out[0], Decision::Shutdown { task: 7, .. }));
    assert!(matches!(
        out[1],
        Decision::Place {
            slot: Slot::Index(1),
            ..
        }
    ));
    assert!(
        out.iter().all(|d| !matches!(d, Decision::Pending { .. })),
        "reasons go first"
    );
    let Command::ApplyDecisions { decisions: out, .. } = Command::apply_decisions(
        vec![pending(
            2,
            format!("a\nb{}", "ü".repeat(MAX_PENDING_REASON_LEN)),
        )],
        T0,
    ) else {
        panic!("not a batch")
    };
    let Decision::Pending { reason, .. } = &out[0] else {
        panic!("{out:?}")
    };
    assert!(reason.starts_with("a b") && reason.len() <= MAX_PENDING_REASON_LEN);
    assert_eq!(clip_text("héllo", 2), "h");
    assert_eq!(clip_text("héllo", 3), "hé");
}

// ---------------------------------------------------------------- sizes and snapshots

fn max_name(tag: usize) -> String {
    let mut name = format!("s{tag}-");
    while name.len() < MAX_SERVICE_NAME_LEN {
        name.push('x');
    }
    name
}

/// A valid service definition with every list full and every byte of text allowed.
fn maximal_def() -> ServiceDef {
    let constraints: Vec<Constraint> = (0..MAX_CONSTRAINTS)
        .map(|i| {
            let mut text = format!("node.labels.k{i:02}==");
            while text.len() < MAX_CONSTRAINT_LEN {
                text.push('v');
            }
            Constraint::parse(&text).expect("constraint")
        })
        .collect();
    let constraint_bytes: usize = constraints.iter().map(|c| c.to_string().len()).sum();
    let image = "r".repeat(shoal_engine::types::IMAGE_LEN_MAX);
    let env_keys: Vec<String> = (0..MAX_ENV)
        .map(|i| format!("K{i:02}{}", "k".repeat(MAX_ENV_KEY_LEN - 3)))
        .collect();
    let used = image.len() + constraint_bytes + env_keys.iter().map(String::len).sum::<usize>();
    // The rest of the text budget, shared by the values and the command words.
    let each = (MAX_SPEC_TEXT_BYTES - used) / (MAX_ENV + MAX_COMMAND_ARGS);
    ServiceDef {
        name: max_name(0),
        spec: ContainerSpec {
            image,
            command: vec!["w".repeat(each); MAX_COMMAND_ARGS],
            env: env_keys
                .into_iter()
                .map(|k| (k, "v".repeat(each)))
                .collect(),
            ports: (0..MAX_PORTS as u16)
                .map(|i| PortMapping {
                    host_port: 65535 - i,
                    container_port: 65535 - i,
                    protocol: Protocol::Udp,
                })
                .collect(),
            cpu_millis: MAX_CPU_MILLIS,
            memory_bytes: MAX_MEMORY_BYTES,
            stop_grace_ms: Some(shoal_engine::types::STOP_GRACE_MS_MAX),
        },
        mode: Mode::Replicated(MAX_REPLICAS),
        constraints,
        reserve_cpu_millis: MAX_CPU_MILLIS,
        reserve_memory_bytes: MAX_MEMORY_BYTES,
        restart: RestartPolicy::OnFailure {
            max_attempts: u32::MAX,
        },
    }
}

/// Encodes `cmd` (it must fit the codec's limit), checks it decodes back, and returns its
/// size.
fn fits(cmd: &Command) -> usize {
    let bytes = codec::encode_command(cmd).unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert_eq!(&codec::decode_command(&bytes).expect("decode"), cmd);
    bytes.len()
}

#[test]
fn maximal_commands_fit_the_command_limit() {
    let mut s = with_nodes(1);
    let def = maximal_def();
    let create = Command::CreateService {
        service: def.clone(),
        now_ms: u64::MAX,
    };
    s.apply(create.clone())
        .expect("the maximal definition is valid");
    let mut sizes = vec![("create", fits(&create))];

    let node = NodeId([0xff; 16]);
    let reason = "r".repeat(MAX_PENDING_REASON_LEN);
    let decisions: Vec<Decision> = (0..MAX_DECISIONS)
        .map(|i| Decision::Pending {
            service: max_name(i),
            slot: Slot::Node(node),
            reason: reason.clone(),
        })
        .collect();
    let pending = batch(decisions, u64::MAX);
    s.apply(pending.clone()).expect("a maximal batch is valid");
    sizes.push(("pending batch", fits(&pending)));
    let places = batch(
        (0..MAX_DECISIONS)
            .map(|i| Decision::Place {
                service: max_name(i),
                slot: Slot::Node(node),
                node,
            })
            .collect(),
        u64::MAX,
    );
    sizes.push(("place batch", fits(&places)));

    let report = TaskReport {
        task: u64::MAX,
        state: TaskState::Failed {
            reason: "e".repeat(MAX_ERROR_LEN),
        },
        restarts: u32::MAX,
        last_exit_code: Some(i64::MIN),
        container: Some(ContainerId("c".repeat(MAX_CONTAINER_ID_LEN))),
    };
    let reports = Command::ReportTasks {
        node: id(1),
        reports: vec![report; MAX_REPORTS],
        now_ms: u64::MAX,
    };
    s.apply(reports.clone())
        .expect("a maximal report batch is valid");
    sizes.push(("reports", fits(&reports)));
    let forget = Command::ForgetTasks {
        ids: vec![u64::MAX; MAX_FORGET],
    };
    s.apply(forget.clone()).expect("valid");
    sizes.push(("forget", fits(&forget)));
    let scale = Command::UpdateService {
        name: max_name(0),
        replicas: Some(u32::MAX),
        now_ms: u64::MAX,
    };
    sizes.push(("update", fits(&scale)));
    // Leave some room: these limits must stay comfortably inside the command limit.
    for (what, size) in sizes {
        assert!(
            size <= codec::MAX_COMMAND_BYTES * 15 / 16,
            "{what}: {size} bytes is too close to {}",
            codec::MAX_COMMAND_BYTES
        );
    }
}

/// The limits keep the largest possible state inside the snapshot limit.
#[test]
fn a_state_at_every_limit_fits_a_snapshot() {
    let mut s = with_nodes(1);
    for i in 0..MAX_SERVICES {
        let mut d = maximal_def();
        d.name = max_name(i);
        s.apply(Command::CreateService {
            service: d,
            now_ms: u64::MAX,
        })
        .expect("create");
    }
    let reason = "r".repeat(MAX_PENDING_REASON_LEN);
    s.apply(batch(
        (0..MAX_DECISIONS)
            .map(|i| Decision::Pending {
                service: max_name(i),
                slot: Slot::Index(u32::try_from(i).expect("small") + 1),
                reason: reason.clone(),
            })
            .collect(),
        u64::MAX,
    ))
    .expect("pending");
    for i in 0..MAX_TASKS as u64 {
        let id = u64::MAX - i;
        s.tasks.insert(
            id,
            TaskRecord {
                id,
                service: max_name(0),
                service_version: u64::MAX,
                slot: Slot::Node(NodeId([0xff; 16])),
                node: NodeId([0xff; 16]),
                desired: Desired::Shutdown,
                shutdown_reason: Some(ShutdownReason::NotEligible),
                observed: Some(TaskState::Failed {
                    reason: "e".repeat(MAX_ERROR_LEN),
                }),
                container: Some(ContainerId("c".repeat(MAX_CONTAINER_ID_LEN))),
                last_exit_code: Some(i64::MIN),
                error: Some("e".repeat(MAX_ERROR_LEN)),
                restarts: u32::MAX,
                created_ms: u64::MAX,
                updated_ms: u64::MAX,
            },
        );
    }
    let bytes = codec::encode_snapshot(&s).expect("fits");
    assert!(
        bytes.len() <= codec::MAX_SNAPSHOT_BYTES / 2,
        "{} bytes: the limits leave too little room for nodes and growth",
        bytes.len()
    );
}

#[test]
fn snapshot_round_trip_with_services_and_tasks() {
    let mut s = with_nodes(2);
    create(&mut s, def("web", 2));
    let mut g = maximal_def();
    g.mode = Mode::Global;
    create(&mut s, g.clone());
    s.apply(batch(
        vec![
            place("web", Slot::Index(1), 1),
            place(&g.name, Slot::Node(id(2)), 2),
            Decision::Pending {
                service: "web".into(),
                slot: Slot::Index(2),
                reason: "no suitable node (0/2): 2 insufficient CPU".into(),
            },
        ],
        T0,
    ))
    .expect("batch");
    s.apply(Command::ReportTasks {
        node: id(1),
        reports: vec![TaskReport {
            task: 1,
            state: TaskState::Exited { code: 3 },
            restarts: 1,
            last_exit_code: Some(3),
            container: Some(ContainerId("abc".into())),
        }],
        now_ms: T0 + 1,
    })
    .expect("report");
    s.apply(Command::SetAvailability {
        node: id(2),
        availability: Availability::Drain,
    })
    .expect("drain");
    s.apply(Command::RemoveService {
        name: g.name.clone(),
        now_ms: T0 + 2,
    })
    .expect("remove");
    let bytes = codec::encode_snapshot(&s).expect("encode");
    let back = codec::decode_snapshot(&bytes).expect("decode");
    assert_eq!(back, s);
    assert_eq!(back.next_task_id, 3);
    assert_eq!(back.tasks.len(), 2);
    assert_eq!(back.services["web"].pending.len(), 1);
}

#[test]
fn command_display_names_the_change() {
    let d = def("web", 3);
    let shown = [
        (
            Command::CreateService {
                service: d,
                now_ms: T0,
            },
            "create service web (replicated 3, image nginx:1.27)",
        ),
        (
            Command::UpdateService {
                name: "web".into(),
                replicas: Some(5),
                now_ms: T0,
            },
            "scale service web to 5",
        ),
        (
            Command::UpdateService {
                name: "web".into(),
                replicas: None,
                now_ms: T0,
            },
            "update service web (no change)",
        ),
        (
            Command::RemoveService {
                name: "web".into(),
                now_ms: T0,
            },
            "remove service web",
        ),
        (
            batch(
                vec![
                    place("web", Slot::Index(1), 1),
                    Decision::Shutdown {
                        task: 1,
                        reason: ShutdownReason::NodeDown,
                    },
                ],
                T0,
            ),
            "schedule: 1 place, 1 shutdown, 0 pending",
        ),
        (
            Command::ReportTasks {
                node: id(1),
                reports: vec![report(1, TaskState::Running)],
                now_ms: T0,
            },
            "1 task reports from 010101010101",
        ),
        (Command::ForgetTasks { ids: vec![1, 2] }, "forget 2 tasks"),
        (
            Command::SetAvailability {
                node: id(1),
                availability: Availability::Drain,
            },
            "set 010101010101 availability drain",
        ),
    ];
    for (cmd, text) in shown {
        assert_eq!(cmd.to_string(), text);
    }
}

/// Host ports reach the scheduler from the spec, and a slot that finds its port taken on
/// every node is recorded pending with the port in its reason.
#[test]
fn a_slot_whose_host_port_is_taken_everywhere_pends_naming_the_port() {
    let mut spec = def("x", 1).spec;
    spec.ports = vec![
        PortMapping { host_port: 8080, container_port: 80, protocol: Protocol::Tcp },
        PortMapping { host_port: 53, container_port: 53, protocol: Protocol::Udp },
    ];
    assert_eq!(host_ports(&spec), vec![HostPort::udp(53), HostPort::tcp(8080)]);

    let mut s = with_nodes(2);
    let mut web = def("web", 3);
    web.constraints.clear();
    create(&mut s, web);
    let views: Vec<NodeView> = s
        .nodes
        .iter()
        .map(|(id, n)| NodeView {
            id: *id,
            hostname: n.name.clone(),
            arch: "aarch64".into(),
            labels: n.labels.clone(),
            health: Health::Alive,
            availability: Availability::Active,
            engine_ok: true,
            cpu_millis: 4000,
            memory_bytes: 1 << 32,
        })
        .collect();
    let (services, tasks) = s.scheduler_inputs();
    assert_eq!(services[0].host_ports, vec![HostPort::tcp(8080)]);
    let decisions = schedule(&SchedulerConfig::default(), T0, &views, &services, &tasks);
    let applied = s.apply(Command::apply_decisions(decisions, T0)).expect("pass");
    assert_eq!(created(Ok(applied)).len(), 2, "one per node");
    let pending = &s.services["web"].pending;
    assert_eq!(pending.len(), 1);
    assert_eq!(
        pending[&Slot::Index(3)].reason,
        "host port 8080/tcp is taken on every eligible node (2/2)"
    );
}
