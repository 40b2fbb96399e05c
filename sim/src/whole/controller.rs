//! Whole mode's driver of the shared controller (`shoal_control`): the same cores the node's
//! `control` runs, fed from the simulated machines, their effects carried out on the
//! simulated Raft, network and engines. Only I/O differs from the node's driver.

use super::*;

/// One pass of the leader's duties on `slot`: the shared `LeaderCore` (as the node's
/// `control::leader`), its effects carried out on the simulated Raft.
pub(super) async fn duties_pass(world: &Shared, slot: usize) {
    let Some(raft) = world.raft(slot) else { return };
    let metrics = raft.metrics().borrow_watched().clone();
    let me = whole_id(slot);
    if metrics.current_leader != Some(RaftNodeId(me)) {
        return;
    }
    let Some(state) = read_state(&raft).await else { return };
    let now = abs_ms(world);
    let raft_view = RaftView::from_metrics(&metrics);
    let own_record = record(slot);
    let effects = with_whole(world, |wh| {
        // Only n0 created a CA (the initializer's `ca.pending`).
        let pending = if slot == 0 { wh.pending_ca.clone() } else { None };
        let m = &mut wh.machines[slot];
        let members = m.core.as_ref().map(|c| c.members()).unwrap_or_default();
        let cert = m.cert.clone();
        let input = LeaderInput {
            state: &state,
            raft: &raft_view,
            members: &members,
            advertise: gossip_addr(slot),
            own: OwnTrust { me, record: &own_record, cert: cert.as_ref(), pending_ca: pending.as_ref() },
            now_ms: now,
        };
        m.leader.pass(&input)
    });
    for effect in effects.unwrap_or_default() {
        carry_out(world, slot, &raft, effect).await;
    }
}

fn names(set: &BTreeSet<RaftNodeId>) -> String {
    set.iter().map(|id| whole_slot(&id.0).map_or_else(|| id.0.short(), |s| format!("n{s}"))).collect::<Vec<_>>().join(",")
}

/// What a membership change does, for the trace.
fn change_text(change: &ChangeMembers<RaftNodeId, shoal_consensus::ShoalNode>, kind: &ChangeKind) -> String {
    match (change, kind) {
        (ChangeMembers::ReplaceAllVoters(v), ChangeKind::FinishJoint) => format!("finish joint change to {}", names(v)),
        (ChangeMembers::ReplaceAllVoters(v), _) => format!("autopilot: voters {}", names(v)),
        (ChangeMembers::RemoveVoters(v), _) => format!("remove revoked voters {}", names(v)),
        (ChangeMembers::RemoveNodes(v), _) => format!("remove revoked learners {}", names(v)),
        (ChangeMembers::SetNodes(n), _) => format!("move {}", n.values().map(|n| n.name.clone()).collect::<Vec<_>>().join(",")),
        (other, _) => format!("{other:?}"),
    }
}

/// Carries out one effect of the leader's pass on `slot` (the node's `leader::carry_out`,
/// on the simulated Raft, with the run's counters and trace).
async fn carry_out(world: &Shared, slot: usize, raft: &Raft, effect: LeaderEffect) {
    let who = format!("n{slot}");
    match effect {
        LeaderEffect::Write { command, why } => {
            let written = write_local(raft, command).await;
            match (why, written) {
                (WriteWhy::CommitCa, Ok(Ok(_)) | Ok(Err(Rejected::CaAlreadySet))) => {
                    with_whole(world, |wh| wh.pending_ca = None);
                    world.trace(&who, || "committed the cluster CA".into());
                }
                (WriteWhy::Schedule { acting }, Ok(Ok(_))) => {
                    let placed = acting.iter().filter(|d| matches!(d, Decision::Place { .. })).count() as u64;
                    let shut = acting.iter().filter(|d| matches!(d, Decision::Shutdown { .. })).count() as u64;
                    with_whole(world, |wh| {
                        wh.counts.scheduler_commits += 1;
                        wh.counts.placements += placed;
                        wh.counts.shutdowns += shut;
                    });
                    if placed + shut > 0 {
                        world.trace(&who, || format!("scheduler: {placed} placed, {shut} shut down"));
                    }
                }
                _ => {}
            }
        }
        LeaderEffect::ClearPendingCa => {
            with_whole(world, |wh| wh.pending_ca = None);
        }
        LeaderEffect::AddLearner { id, node } => {
            world.trace(&who, || format!("add learner {}", node.name));
            let added = tokio::time::timeout(OP_TIMEOUT, raft.add_learner(RaftNodeId(id), node, false)).await;
            if matches!(added, Ok(Ok(_))) {
                with_whole(world, |wh| wh.counts.learners_added += 1);
            }
        }
        LeaderEffect::ChangeMembership { change, retain, kind, then } => {
            let text = change_text(&change, &kind);
            let done = tokio::time::timeout(OP_TIMEOUT, raft.change_membership(change, retain)).await;
            let ok = matches!(done, Ok(Ok(_)));
            world.trace(&who, || format!("{text}: {}", if ok { "committed" } else { "failed" }));
            if ok {
                with_whole(world, |wh| if kind.is_removal() { wh.counts.removals_from_raft += 1 } else { wh.counts.voter_changes += 1 });
                if let Some(command) = then {
                    let _ = write_local(raft, command).await;
                }
            }
        }
        LeaderEffect::QuorumLost { healthy, voters } => {
            world.trace(&who, || format!("autopilot: {healthy} of {voters} voters healthy; not changing voters"));
        }
        LeaderEffect::TrustBroken(why) => {
            let now = world.now_ms();
            world.lock().checks.violation(format!("trust n{slot}"), now, why);
        }
    }
}

/// One agent pass on `slot`: the shared `AgentCore` (as the node's `run_tasks`), on the
/// machine's fake engine.
pub(super) async fn agent_pass(world: &Shared, slot: usize) {
    let Some(raft) = world.raft(slot) else { return };
    let leader_known = raft.metrics().borrow_watched().current_leader.is_some();
    let Some(state) = read_state(&raft).await else { return };
    let ready = with_whole(world, |wh| wh.machines[slot].agent.as_ref().is_some_and(|a| a.ready(&state, leader_known)));
    if ready != Some(true) {
        return;
    }
    let now = abs_ms(world);
    let cmds = with_whole(world, |wh| {
        let Machine { agent, engine, .. } = &mut wh.machines[slot];
        let agent = agent.as_mut()?;
        engine.set_now_ms(now);
        let assigned = agent.assigned(&state);
        poll_ready(agent.pass(engine, &state, assigned, now, &BTreeSet::new(), Vec::new())).ok().map(|o| o.commands)
    })
    .flatten()
    .unwrap_or_default();
    for cmd in cmds {
        let what = match &cmd {
            Command::ReportTasks { reports, .. } => reports.iter().map(|r| format!("{} {:?}", r.task, r.state)).collect::<Vec<_>>().join(", "),
            _ => String::new(),
        };
        match forward_write(world, slot, cmd).await {
            Ok(Ok(_)) => {
                with_whole(world, |wh| wh.counts.reports += 1);
                world.trace(&format!("n{slot}"), || format!("report {what}"));
            }
            Ok(Err(e)) => world.trace(&format!("n{slot}"), || format!("report refused: {e}")),
            Err(e) => world.trace(&format!("n{slot}"), || format!("report not sent: {e}")),
        }
    }
}

/// Machine `slot` asks a member for a certificate (the node's `join_via`).
pub(super) async fn join(world: &Shared, slot: usize) {
    let nodes = with_whole(world, |wh| wh.machines.len()).unwrap_or(0);
    let ask = with_whole(world, |wh| {
        let members: Vec<usize> = (0..nodes).filter(|s| *s != slot && wh.machines[*s].cert.is_some() && wh.machines[*s].core.is_some()).collect();
        if members.is_empty() {
            return None;
        }
        let m = &mut wh.machines[slot];
        let member = members[(m.join_attempts % members.len() as u64) as usize];
        m.join_attempts += 1;
        let req = JoinRequest::new(&wh.secret, &key(slot), &mut m.rng).ok()?;
        Some((member, req, wh.secret.clone()))
    })
    .flatten();
    let Some((member, req, secret)) = ask else { return };
    let answer = exchange(world, slot, member, req.clone(), OP_TIMEOUT * 3, |raft, req| {
        let world = world.clone();
        async move { answer_join(&world, member, &raft, &req).await }
    })
    .await;
    let who = format!("n{slot}");
    match answer {
        Ok(resp) => match resp.verify(&secret, &req, &key(slot)) {
            Ok(cert) => {
                // A certificate's role is the holder's Raft role when it was issued: a
                // joiner is not a voter, so it gets a worker certificate (it renews as a
                // manager once autopilot promotes it).
                let voters = world.raft(member).map(|r| RaftView::from_metrics(&r.metrics().borrow_watched()).voters).unwrap_or_default();
                if cert.info.role == Some(NodeRole::Manager) && !voters.contains(&whole_id(slot)) {
                    let now = world.now_ms();
                    world.lock().checks.violation(
                        format!("role-grant n{slot}"),
                        now,
                        format!("n{member} granted the manager role to n{slot}, which is not a Raft voter"),
                    );
                }
                let issued = IssuedCert { serial: cert.info.serial.clone(), not_after: shoal_pki::unix_secs(cert.info.not_after) };
                with_whole(world, |wh| {
                    let m = &mut wh.machines[slot];
                    m.cert = Some(issued);
                    if let Some(core) = m.core.as_mut() {
                        core.set_in_cluster(true);
                    }
                    wh.counts.joins += 1;
                });
                world.trace(&who, || format!("joined through n{member}"));
            }
            Err(e) => {
                let now = world.now_ms();
                world.lock().checks.violation(format!("join-verify n{slot}"), now, format!("n{slot} got an answer from n{member} that does not verify: {e}"));
            }
        },
        Err(e) => {
            with_whole(world, |wh| wh.counts.joins_refused += 1);
            world.trace(&who, || format!("join through n{member} failed: {e}"));
        }
    }
}

/// A member's answer to a join request: the shared `shoal_control::answer_join` (as the
/// node's `Running::answer_join`), its writes forwarded to the leader before answering.
pub(super) async fn answer_join(world: &Shared, member: usize, raft: &Raft, req: &JoinRequest) -> Result<JoinResponse, String> {
    let state = read_state(raft).await.ok_or("no state")?;
    let voters = RaftView::from_metrics(&raft.metrics().borrow_watched()).voters;
    let now = abs_ms(world);
    let answered = with_whole(world, |wh| -> Result<(JoinAnswer, bool), String> {
        let issuer = issuer_from_state(&state, None, &wh.secret, IssuePolicy::default()).map_err(|e| e.to_string())?;
        let honest = wh.honest(&req.node_id);
        let planted = wh.bug.and_then(RaftBug::planted);
        let m = &mut wh.machines[member];
        let members = m.core.as_ref().map(|c| c.members()).unwrap_or_default();
        let ctx = JoinContext { issuer: &issuer, state: &state, members: &members, voters: &voters, planted };
        let answer = shoal_control::answer_join(&ctx, req, system_time(now), &mut m.rng).map_err(|e| e.to_string())?;
        Ok((answer, honest))
    })
    .ok_or("not in whole mode")??;
    let (answer, honest) = answered;
    if !honest {
        let at = world.now_ms();
        world.lock().checks.violation(
            format!("cert-without-secret {}", req.node_id.short()),
            at,
            format!("n{member} issued a certificate to {}, which does not hold the join secret", req.node_id.short()),
        );
    }
    for command in answer.writes {
        let what = shoal_control::join::purpose(&command);
        match forward_write(world, member, command).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(format!("cannot {what}: {e}")),
            Err(e) => return Err(format!("cannot {what}: {e}")),
        }
    }
    Ok(answer.response)
}

/// The operator creates the seed's services, one per pass, through any node that knows a
/// leader.
pub(super) async fn create_services(world: &Shared) {
    let next = with_whole(world, |wh| {
        let todo = wh.plan.services.iter().find(|s| !wh.services_created.contains(&s.name))?.clone();
        let via = (0..wh.machines.len()).find(|s| wh.machines[*s].cert.is_some() && wh.machines[*s].core.is_some())?;
        Some((todo, via))
    })
    .flatten();
    let Some((svc, via)) = next else { return };
    let def = ServiceDef {
        name: svc.name.clone(),
        spec: ContainerSpec { image: IMAGE.to_string(), command: vec![svc.name.clone()], ..Default::default() },
        mode: Mode::Replicated(svc.replicas),
        constraints: svc.constraint.iter().filter_map(|c| Constraint::parse(c).ok()).collect(),
        reserve_cpu_millis: 0,
        reserve_memory_bytes: 0,
        restart: RestartPolicy::Always,
    };
    let now = abs_ms(world);
    match forward_write(world, via, Command::CreateService { service: def, now_ms: now }).await {
        Ok(Ok(Applied::ServiceCreated)) | Ok(Err(Rejected::ServiceExists(_))) => {
            with_whole(world, |wh| {
                wh.services_created.insert(svc.name.clone());
                wh.counts.services_created += 1;
            });
            world.trace("operator", || format!("service create {} x{}", svc.name, svc.replicas));
        }
        Ok(Err(e)) => world.trace("operator", || format!("service create {} refused: {e}", svc.name)),
        Ok(Ok(_)) | Err(_) => {}
    }
}


/// The leader's view of the state at the end (for the services checks).
pub(crate) async fn leader_state(world: &Shared, nodes: usize) -> Option<ClusterState> {
    for slot in 0..nodes {
        let Some(raft) = world.raft(slot) else { continue };
        if raft.metrics().borrow_watched().state == ServerState::Leader {
            return read_state(&raft).await.map(std::sync::Arc::unwrap_or_clone);
        }
    }
    None
}
