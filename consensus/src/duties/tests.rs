//! The duties' order and their gossip-health mapping, on small hand-built states.

use super::*;
use crate::ServiceDef;
use shoal_cluster::scheduler::Mode;
use shoal_discovery::NodeResources;
use shoal_engine::{ContainerSpec, RestartPolicy, TaskState};

const T0: u64 = 1_700_000_000_000;

fn id(n: u8) -> NodeId {
    NodeId([n; 16])
}

fn addr(n: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, n], 7947))
}

fn record(n: u8) -> NodeRecord {
    NodeRecord { name: format!("n{n}"), addr: addr(n), labels: BTreeMap::new() }
}

fn state(n: u8) -> ClusterState {
    let mut s = ClusterState::default();
    for i in 1..=n {
        s.apply(Command::RegisterNode { id: id(i), record: record(i) }).expect("register");
    }
    s
}

fn member(n: u8, state: MemberState, since_ms: u64) -> MemberView {
    MemberView {
        id: id(n),
        name: Some(format!("n{n}")),
        addr: addr(n),
        state,
        labels: BTreeMap::new(),
        incarnation: 1,
        version: None,
        since_ms,
        is_self: n == 1,
        in_cluster: true,
        resources: NodeResources { arch: "x86_64".into(), cpu_millis: 2_000, memory_bytes: 1 << 30, engine_ok: true },
        signed_addr: Some(addr(n)),
    }
}

fn web(replicas: u32) -> ServiceDef {
    ServiceDef {
        name: "web".into(),
        spec: ContainerSpec { image: "sim/app:1".into(), ..Default::default() },
        mode: Mode::Replicated(replicas),
        constraints: Vec::new(),
        reserve_cpu_millis: 0,
        reserve_memory_bytes: 0,
        restart: RestartPolicy::Always,
    }
}

fn cfg() -> DutyConfig {
    DutyConfig { me: id(1), target_voters: 3, dead_voter_after_ms: 30_000, scheduler: SchedulerConfig::default() }
}

fn raft(voters: &[u8], learners: &[u8]) -> RaftView {
    let nodes = voters.iter().chain(learners).map(|n| (id(*n), ShoalNode::new(format!("n{n}"), addr(*n)))).collect();
    RaftView {
        target_voters: voters.iter().map(|n| id(*n)).collect(),
        voters: voters.iter().map(|n| id(*n)).collect(),
        learners: learners.iter().map(|n| id(*n)).collect(),
        nodes,
        joint: false,
        last_log: 10,
        matched: voters.iter().chain(learners).map(|n| (id(*n), 10)).collect(),
    }
}

#[test]
fn a_missing_node_is_down_from_the_first_miss_and_recovers_when_seen() {
    let mut h = GossipHealth::new();
    let members = vec![member(1, MemberState::Alive, T0)];
    assert_eq!(h.health(id(1), &members, &id(2), T0), Health::Down { since_ms: T0 });
    // Still missing later: the first miss is kept, so the grace period runs from it.
    assert_eq!(h.health(id(1), &members, &id(2), T0 + 5_000), Health::Down { since_ms: T0 });
    let seen = vec![member(1, MemberState::Alive, T0), member(2, MemberState::Suspect, T0)];
    assert_eq!(h.health(id(1), &seen, &id(2), T0 + 6_000), Health::Suspect);
    assert_eq!(h.peer_health(id(1), &seen, &id(2), T0 + 6_000), PeerHealth::Healthy);
    // Missing again: a new first miss.
    assert_eq!(h.health(id(1), &members, &id(2), T0 + 9_000), Health::Down { since_ms: T0 + 9_000 });
    let left = vec![member(2, MemberState::Left, T0 + 1)];
    assert_eq!(h.peer_health(id(1), &left, &id(2), T0 + 10_000), PeerHealth::Down { since_ms: T0 + 1 });
}

#[test]
fn alive_registered_nodes_become_learners_one_per_step_and_dead_ones_wait() {
    let s = state(3);
    let members = vec![member(1, MemberState::Alive, T0), member(2, MemberState::Down, T0), member(3, MemberState::Alive, T0)];
    let step = membership_step(&cfg(), &s, &raft(&[1], &[]), &members, &BTreeMap::new(), &mut GossipHealth::new(), T0);
    assert_eq!(step, MembershipStep::AddLearner { id: id(3), node: ShoalNode::new("n3", addr(3)) });
    // A joint configuration left by an interrupted change is finished before anything else.
    let mut joint = raft(&[1, 2, 3], &[]);
    joint.joint = true;
    joint.target_voters = BTreeSet::from([id(1), id(3)]);
    assert_eq!(
        membership_step(&cfg(), &s, &joint, &members, &BTreeMap::new(), &mut GossipHealth::new(), T0),
        MembershipStep::FinishJoint { voters: BTreeSet::from([id(1), id(3)]) }
    );
}

#[test]
fn a_moved_node_is_followed_before_autopilot_runs() {
    let s = state(3);
    let members: Vec<MemberView> = (1..=3).map(|n| member(n, MemberState::Alive, T0)).collect();
    let new_addr = SocketAddr::from(([10, 0, 9, 9], 7947));
    let advertised = BTreeMap::from([(id(2), new_addr), (id(3), addr(3))]);
    let step = membership_step(&cfg(), &s, &raft(&[1], &[2, 3]), &members, &advertised, &mut GossipHealth::new(), T0);
    let MembershipStep::Moved { id: moved, node, record } = step else { panic!("expected a move, got {step:?}") };
    assert_eq!((moved, node.addr), (id(2), new_addr));
    assert_eq!(record.map(|r| r.addr), Some(new_addr));
}

#[test]
fn revoked_voters_leave_while_a_quorum_stays_then_learners_and_then_autopilot_grows() {
    let mut s = state(4);
    s.apply(Command::Revoke { node: id(3) }).expect("revoke");
    s.apply(Command::Revoke { node: id(4) }).expect("revoke");
    let members: Vec<MemberView> = (1..=4).map(|n| member(n, MemberState::Alive, T0)).collect();
    let none = BTreeMap::new();
    let step = membership_step(&cfg(), &s, &raft(&[1, 2, 3], &[4]), &members, &none, &mut GossipHealth::new(), T0);
    assert_eq!(step, MembershipStep::RemoveVoters(BTreeSet::from([id(3)])));
    let step = membership_step(&cfg(), &s, &raft(&[1, 2], &[4]), &members, &none, &mut GossipHealth::new(), T0);
    assert_eq!(step, MembershipStep::RemoveNodes(BTreeSet::from([id(4)])));
    // Every voter revoked: no removal that would leave no voter.
    let mut all = state(1);
    all.apply(Command::Revoke { node: id(1) }).expect("revoke");
    let step = membership_step(&cfg(), &all, &raft(&[1], &[]), &members, &none, &mut GossipHealth::new(), T0);
    assert!(!matches!(step, MembershipStep::RemoveVoters(_)), "{step:?}");
    // One voter and two alive, caught-up learners: autopilot grows to three.
    let s = state(3);
    let step = membership_step(&cfg(), &s, &raft(&[1], &[2, 3]), &members, &none, &mut GossipHealth::new(), T0);
    assert!(matches!(&step, MembershipStep::ChangeVoters { voters, .. } if voters.len() == 3), "{step:?}");
}

#[test]
fn scheduler_step_commits_placements_then_idles_and_forgets_finished_tasks() {
    let mut s = state(2);
    let members = vec![member(1, MemberState::Alive, T0), member(2, MemberState::Alive, T0)];
    s.apply(Command::CreateService { service: web(2), now_ms: T0 }).expect("create");
    let mut h = GossipHealth::new();
    let SchedulerStep::Commit { command, acting } = scheduler_step(&cfg(), &s, &members, &mut h, T0) else { panic!("expected placements") };
    assert_eq!(acting.len(), 2);
    s.apply(command).expect("apply decisions");
    assert_eq!(scheduler_step(&cfg(), &s, &members, &mut h, T0 + 1_000), SchedulerStep::Idle);
    // Scale to zero: shutdowns are committed, and once the agents report the tasks gone
    // they are forgotten.
    s.apply(Command::UpdateService { name: "web".into(), replicas: Some(0), now_ms: T0 + 2_000 }).expect("scale");
    let step = scheduler_step(&cfg(), &s, &members, &mut h, T0 + 2_000);
    if let SchedulerStep::Commit { command, .. } = step {
        s.apply(command).expect("apply");
    }
    let assigned: Vec<_> = s.tasks.values().map(|t| (t.node, t.id)).collect();
    for (node, task) in assigned {
        let report = TaskReport { task, state: TaskState::Shutdown, container: None, last_exit_code: None, restarts: 0 };
        for cmd in unrecorded_reports(&s, node, vec![report], T0 + 3_000) {
            s.apply(cmd).expect("report");
        }
    }
    assert!(matches!(scheduler_step(&cfg(), &s, &members, &mut h, T0 + 4_000), SchedulerStep::Forget(_)));
}

#[test]
fn reports_already_recorded_or_about_other_nodes_tasks_are_not_sent() {
    let mut s = state(2);
    let members = vec![member(1, MemberState::Alive, T0), member(2, MemberState::Alive, T0)];
    s.apply(Command::CreateService { service: web(2), now_ms: T0 }).expect("create");
    if let SchedulerStep::Commit { command, .. } = scheduler_step(&cfg(), &s, &members, &mut GossipHealth::new(), T0) {
        s.apply(command).expect("apply");
    }
    let mine = s.tasks.values().find(|t| t.node == id(1)).map(|t| t.id).expect("a task on n1");
    let theirs = s.tasks.values().find(|t| t.node == id(2)).map(|t| t.id).expect("a task on n2");
    let running = |task| TaskReport { task, state: TaskState::Running, container: Some(shoal_engine::ContainerId("c1".into())), last_exit_code: None, restarts: 0 };
    let cmds = unrecorded_reports(&s, id(1), vec![running(mine), running(theirs)], T0 + 1_000);
    assert_eq!(cmds.len(), 1);
    for cmd in cmds {
        s.apply(cmd).expect("report");
    }
    assert!(unrecorded_reports(&s, id(1), vec![running(mine)], T0 + 2_000).is_empty(), "an already recorded state is sent again");
}

#[test]
fn the_only_voter_cannot_be_removed_but_one_of_three_can() {
    let none = BTreeSet::new();
    assert!(removal_refusal(&raft(&[1], &[2, 3]), &none, &id(1)).is_some_and(|r| r.contains("only manager")));
    assert_eq!(removal_refusal(&raft(&[1], &[2, 3]), &none, &id(2)), None);
    assert_eq!(removal_refusal(&raft(&[1, 2, 3], &[]), &none, &id(1)), None);
}

#[test]
fn a_second_voter_is_not_revoked_before_the_first_is_out_of_raft() {
    // 3 voters, one revoked and still in Raft: revoking another would leave 1 of 3.
    let revoked = BTreeSet::from([id(1)]);
    let why = removal_refusal(&raft(&[1, 2, 3], &[4]), &revoked, &id(2)).expect("refused");
    assert!(why.contains("1 of the 3"), "{why}");
    // A learner may go; once the first is out of Raft, the second voter may go too.
    assert_eq!(removal_refusal(&raft(&[1, 2, 3], &[4]), &revoked, &id(4)), None);
    assert_eq!(removal_refusal(&raft(&[2, 3, 4], &[]), &revoked, &id(2)), None);
    // 5 voters: two may be revoked before they leave Raft (3 of 5 remain), not three.
    let two = BTreeSet::from([id(1), id(2)]);
    assert_eq!(removal_refusal(&raft(&[1, 2, 3, 4, 5], &[]), &BTreeSet::from([id(1)]), &id(2)), None);
    assert!(removal_refusal(&raft(&[1, 2, 3, 4, 5], &[]), &two, &id(3)).is_some());
}

#[test]
fn a_stopping_leader_hands_over_to_the_most_caught_up_other_voter() {
    let mut view = RaftView { voters: [id(1), id(2), id(3)].into(), ..Default::default() };
    assert_eq!(handover_target(&view, id(1)), Some(id(2)), "nothing matched yet: the lowest id");
    view.matched = [(id(2), 7), (id(3), 9), (id(4), 12)].into();
    assert_eq!(handover_target(&view, id(1)), Some(id(3)), "the learner 4 is not a candidate");
    view.matched.insert(id(2), 9);
    assert_eq!(handover_target(&view, id(1)), Some(id(2)), "a tie goes to the lowest id");
    view.joint = true;
    assert_eq!(handover_target(&view, id(1)), None, "not while the voters are changing");
    let alone = RaftView { voters: [id(1)].into(), ..Default::default() };
    assert_eq!(handover_target(&alone, id(1)), None);
}
