//! What whole mode adds to the Raft mode's event loop ([`Driver`]): the machines' boots
//! and crashes, gossip timers and datagrams, the mDNS stand-in, the ticks that start the
//! controller's passes (`controller.rs`), the operator's faults and the final checks.

use super::*;

impl Driver {
    fn whole_on(&self) -> bool {
        self.opts.whole
    }

    /// Before the first boot: n0's CA (sealed with the secret, pending until committed).
    pub(crate) fn whole_setup(&mut self) {
        let now = abs_ms(&self.world);
        let seed = self.opts.seed;
        let late = self.opts.faults.contains(crate::options::FaultKind::LateJoin) && self.nodes >= 2;
        let fault_end = self.fault_end_ms();
        let late_at = {
            let mut w = self.world.lock();
            let Some(wh) = w.whole.as_mut() else { return };
            let mut rng = stream(seed, Stream::WholeMachine { slot: usize::MAX >> 8 });
            let ca = ClusterCa::create(wh.secret.cluster_id(), key(CA_KEY), system_time(now), &mut rng).expect("the simulator's CA");
            let sealed = ca.seal_key(&wh.secret, &mut rng);
            wh.pending_ca = Some((ca.cert_pem().to_string(), sealed));
            // n0 holds its own certificate from the start (the initializer self-issues).
            let issuer = Issuer::new(ca, &wh.secret, IssuePolicy::default());
            let req = JoinRequest::new(&wh.secret, &key(0), &mut rng).expect("n0's join request");
            let grant = shoal_control::own_grant(NodeRole::Manager, gossip_addr(0), "n0");
            let resp = issuer.answer_join(&req, &grant, &BTreeSet::new(), system_time(now), &mut rng).expect("n0's certificate");
            let info = CertInfo::parse(&resp.cert_der).expect("n0's certificate parses");
            wh.machines[0].cert = Some(IssuedCert { serial: info.serial, not_after: shoal_pki::unix_secs(info.not_after) });
            if late {
                wh.late_joiner = Some(self.nodes - 1);
                Some(wh.rng.random_range(fault_end / 10..=fault_end / 2))
            } else {
                None
            }
        };
        if let Some(t) = late_at {
            self.at(t.max(1), Action::LateBoot(self.nodes - 1));
        }
        self.at(DUTY_TICK_MS, Action::Duties);
        self.at(AGENT_TICK_MS, Action::Agents);
        self.at(LAN_REFRESH_MS, Action::LanRefresh);
        if self.opts.faults.contains(crate::options::FaultKind::Intruder) {
            self.at(3_000, Action::Intruder);
        }
        if self.opts.faults.contains(crate::options::FaultKind::Insider) {
            self.at(5_000, Action::Insider);
        }
    }

    /// Whether `slot` boots with the others at the start.
    pub(crate) fn boots_at_start(&self, slot: usize) -> bool {
        !self.whole_on() || self.world.lock().whole.as_ref().is_none_or(|wh| wh.late_joiner != Some(slot))
    }

    /// Whether `slot` may boot (a revoked machine stays off; a late joiner waits its time).
    pub(crate) fn may_boot(&self, slot: usize) -> bool {
        self.world.lock().whole.as_ref().is_none_or(|wh| !wh.machines[slot].removed)
    }

    /// A new process on machine `slot`: a fresh membership core and agent.
    pub(crate) fn whole_boot(&mut self, slot: usize) {
        let now = abs_ms(&self.world);
        let (seed, nodes) = (self.opts.seed, self.nodes);
        let effects = {
            let mut w = self.world.lock();
            let Some(wh) = w.whole.as_mut() else { return };
            let cluster = wh.secret.cluster_id();
            let gossip_key = wh.secret.gossip_key();
            let planted = wh.bug.and_then(RaftBug::planted);
            let m = &mut wh.machines[slot];
            m.boots += 1;
            m.epoch += 1;
            let bump = ShoalId::first_bump(m.boots);
            let identity = ShoalId { node: m.id, addr: gossip_addr(slot), bump };
            let facts = NodeFacts {
                node: m.id,
                seq: u64::from(bump),
                name: format!("n{slot}"),
                gossip_addr: gossip_addr(slot),
                labels: labels(slot),
                version: "sim".to_string(),
                boot: m.boots,
                left: false,
                in_cluster: m.cert.is_some(),
                resources: NodeResources { arch: "x86_64".into(), cpu_millis: 4_000, memory_bytes: 8 << 30, engine_ok: true },
            };
            let cfg = MembershipConfig::lan(u32::try_from(nodes).unwrap_or(u32::MAX));
            let sigs = std::sync::Arc::new(shoal_discovery::KeyedHashSignatures::new(gossip_key, identity.node));
            let mut core = Membership::new(cfg, identity, facts, cluster, gossip_key, sigs, stream(seed, Stream::Node { slot, boot: m.boots }));
            for other in (0..nodes).filter(|o| *o != slot) {
                core.add_seed(gossip_addr(other));
            }
            let effects = core.start(now);
            m.core = Some(core);
            m.agent = Some(AgentCore::new(m.id).with_planted(planted));
            m.leader.reset();
            effects
        };
        self.gossip_effects(slot, effects);
    }

    /// Machine `slot`'s process stops; a power cut also stops its containers (exit 137).
    pub(crate) fn whole_crash(&mut self, slot: usize, power_cut: bool) {
        let now = abs_ms(&self.world);
        let mut w = self.world.lock();
        let Some(wh) = w.whole.as_mut() else { return };
        let m = &mut wh.machines[slot];
        m.core = None;
        m.agent = None;
        m.epoch += 1;
        if power_cut {
            m.engine.set_now_ms(now);
            let listed = poll_ready(m.engine.list(&LabelFilter::node(m.id.to_string()))).unwrap_or_default();
            for c in listed {
                if matches!(c.state, ContainerState::Running | ContainerState::Starting) && m.engine.exit(&c.id, 137) {
                    wh.counts.power_cut_exits += 1;
                }
            }
        }
    }

    /// Carries out what a membership core asked for.
    fn gossip_effects(&mut self, slot: usize, effects: Vec<Effect>) {
        let now = self.world.now_ms();
        for effect in effects {
            match effect {
                Effect::Send { to, packet } => {
                    let fate = {
                        let mut w = self.world.lock();
                        let lost: f64 = w.net_rng.random();
                        let jitter = w.net_rng.random_range(0..=2u64);
                        let storm_draw = w.net_rng.random_range(0..=1000u64);
                        let target = slot_of_gossip(&to).filter(|t| *t < self.nodes);
                        let cut = target.is_some_and(|t| w.cuts.values().any(|c| c.contains(&(slot, t))));
                        let storm = w.delay_storm_ms * storm_draw / 1000;
                        let loss = w.loss_rate;
                        let Some(wh) = w.whole.as_mut() else { return };
                        wh.counts.gossip_sent += 1;
                        wh.counts.gossip_bytes += packet.len() as u64;
                        match target {
                            Some(t) if wh.machines[t].core.is_some() && !cut && lost >= loss => {
                                Some((t, wh.machines[t].epoch, 1 + jitter + storm))
                            }
                            _ => {
                                wh.counts.gossip_dropped += 1;
                                None
                            }
                        }
                    };
                    if let Some((to, epoch, delay)) = fate {
                        self.at(now + delay, Action::Datagram { from: slot, to, epoch, packet });
                    }
                }
                Effect::Schedule { after, timer } => {
                    let epoch = self.world.lock().whole.as_ref().map_or(0, |wh| wh.machines[slot].epoch);
                    self.at(now + ceil_ms(after), Action::Gossip { slot, epoch, timer });
                }
                Effect::Event(ev) => {
                    let about = whole_slot(&ev.node).map_or_else(|| ev.node.short(), |s| format!("n{s}"));
                    self.world.trace(&format!("n{slot}"), || format!("sees {about} {}", ev.state.as_str()));
                }
            }
        }
    }

    pub(crate) fn gossip_timer(&mut self, slot: usize, epoch: u32, timer: MemberTimer) {
        let now = abs_ms(&self.world);
        let effects = {
            let mut w = self.world.lock();
            let Some(wh) = w.whole.as_mut() else { return };
            let m = &mut wh.machines[slot];
            match m.core.as_mut() {
                Some(core) if m.epoch == epoch => core.handle_timer(now, timer),
                _ => return,
            }
        };
        self.gossip_effects(slot, effects);
    }

    pub(crate) fn datagram(&mut self, from: usize, to: usize, epoch: u32, packet: &[u8]) {
        let now = abs_ms(&self.world);
        let effects = {
            let mut w = self.world.lock();
            let Some(wh) = w.whole.as_mut() else { return };
            let m = &mut wh.machines[to];
            match m.core.as_mut() {
                Some(core) if m.epoch == epoch => {
                    wh.counts.gossip_delivered += 1;
                    core.handle_datagram(now, gossip_addr(from), packet)
                }
                _ => {
                    wh.counts.gossip_dropped += 1;
                    return;
                }
            }
        };
        self.gossip_effects(to, effects);
    }

    /// The mDNS stand-in: every running machine hears every other one it can reach.
    pub(crate) fn lan_refresh(&mut self) {
        let now = abs_ms(&self.world);
        let mut all = Vec::new();
        {
            let mut w = self.world.lock();
            let cuts: BTreeSet<(usize, usize)> = w.cuts.values().flatten().copied().collect();
            let Some(wh) = w.whole.as_mut() else { return };
            let cluster = wh.secret.cluster_id();
            let up: Vec<usize> = (0..self.nodes).filter(|s| wh.machines[*s].core.is_some()).collect();
            for to in &up {
                for from in up.iter().filter(|f| *f != to && !cuts.contains(&(**f, *to))) {
                    let hint = PeerHint { cluster, node: wh.machines[*from].id, addr: gossip_addr(*from) };
                    if let Some(core) = wh.machines[*to].core.as_mut() {
                        all.push((*to, core.handle_discovered(now, hint)));
                    }
                }
            }
        }
        for (slot, effects) in all {
            self.gossip_effects(slot, effects);
        }
    }

    /// Every 500 ms: the leader's duties on every node that believes it leads.
    pub(crate) fn duties_tick(&mut self) {
        for slot in 0..self.nodes {
            let Some(raft) = self.world.raft(slot) else { continue };
            let leads = raft.metrics().borrow_watched().current_leader == Some(RaftNodeId(whole_id(slot)));
            let start = {
                let mut w = self.world.lock();
                let Some(wh) = w.whole.as_mut() else { return };
                let m = &mut wh.machines[slot];
                if !leads {
                    m.leader.reset();
                    false
                } else if m.duty_busy == Some(m.epoch) {
                    false
                } else {
                    m.duty_busy = Some(m.epoch);
                    true
                }
            };
            if start {
                let world = self.world.clone();
                tokio::spawn(async move {
                    let epoch = with_whole(&world, |wh| wh.machines[slot].epoch);
                    duties_pass(&world, slot).await;
                    with_whole(&world, |wh| {
                        if wh.machines[slot].duty_busy == epoch {
                            wh.machines[slot].duty_busy = None;
                        }
                    });
                });
            }
        }
    }

    /// Every second: agents, joins, the operator.
    pub(crate) fn agents_tick(&mut self) {
        for slot in 0..self.nodes {
            if self.world.raft(slot).is_none() {
                continue;
            }
            let job = {
                let mut w = self.world.lock();
                let Some(wh) = w.whole.as_mut() else { return };
                let m = &mut wh.machines[slot];
                if m.cert.is_some() {
                    (m.agent_busy != Some(m.epoch)).then(|| {
                        m.agent_busy = Some(m.epoch);
                        false
                    })
                } else {
                    (m.join_busy != Some(m.epoch)).then(|| {
                        m.join_busy = Some(m.epoch);
                        true
                    })
                }
            };
            let Some(joining) = job else { continue };
            let world = self.world.clone();
            tokio::spawn(async move {
                let epoch = with_whole(&world, |wh| wh.machines[slot].epoch);
                if joining {
                    join(&world, slot).await;
                } else {
                    agent_pass(&world, slot).await;
                }
                with_whole(&world, |wh| {
                    let m = &mut wh.machines[slot];
                    if joining && m.join_busy == epoch {
                        m.join_busy = None;
                    } else if !joining && m.agent_busy == epoch {
                        m.agent_busy = None;
                    }
                });
            });
        }
        let operate = with_whole(&self.world, |wh| {
            let todo = wh.services_created.len() < wh.plan.services.len() && !wh.operator_busy;
            if todo {
                wh.operator_busy = true;
            }
            todo
        });
        if operate == Some(true) {
            let world = self.world.clone();
            tokio::spawn(async move {
                create_services(&world).await;
                with_whole(&world, |wh| wh.operator_busy = false);
            });
        }
    }

    /// Machines the operator revoked are switched off for good (their containers removed).
    pub(crate) async fn switch_off_revoked(&mut self) {
        let off = with_whole(&self.world, |wh| std::mem::take(&mut wh.to_switch_off)).unwrap_or_default();
        for slot in off {
            self.crash(slot, false, "revoked: switched off").await;
            let now = abs_ms(&self.world);
            with_whole(&self.world, |wh| {
                let m = &mut wh.machines[slot];
                m.removed = true;
                m.engine.set_now_ms(now);
                for c in poll_ready(m.engine.list(&LabelFilter::node(m.id.to_string()))).unwrap_or_default() {
                    let _ = poll_ready(m.engine.stop_and_remove(&c.id));
                }
            });
        }
    }

    /// The `leave` fault in whole mode: the operator revokes one machine (`shoal node rm`),
    /// at most once a run and only while at least four machines hold certificates.
    pub(crate) fn revoke_one(&mut self, victim: usize) {
        let pick = with_whole(&self.world, |wh| {
            let joined: Vec<usize> = (0..wh.machines.len()).filter(|s| wh.machines[*s].cert.is_some() && !wh.machines[*s].removed).collect();
            if wh.revoke_started || joined.len() < 4 {
                return None;
            }
            wh.revoke_started = true;
            Some(joined[victim % joined.len()])
        })
        .flatten();
        let Some(slot) = pick else { return };
        self.world.count_fault("node-removed");
        self.world.trace("operator", || format!("node rm n{slot}"));
        let world = self.world.clone();
        let nodes = self.nodes;
        tokio::spawn(async move {
            // Retried through any running node until it commits (an operator retries).
            for attempt in 0..60u64 {
                let via = (attempt as usize + slot + 1) % nodes;
                // `shoal node rm`'s own check, on the node the operator asks.
                let refused = match world.raft(via) {
                    Some(r) => {
                        let revoked = read_state(&r).await.map(|s| s.revoked.clone()).unwrap_or_default();
                        duties::removal_refusal(&RaftView::from_metrics(&r.metrics().borrow_watched()), &revoked, &whole_id(slot))
                    }
                    None => None,
                };
                if let Some(why) = refused {
                    world.trace("operator", || format!("node rm n{slot} refused by n{via}: {why}"));
                } else if via != slot {
                    if let Ok(Ok(_)) = forward_write(&world, via, Command::Revoke { node: whole_id(slot) }).await {
                        with_whole(&world, |wh| {
                            wh.counts.nodes_revoked += 1;
                            wh.to_switch_off.push(slot);
                        });
                        world.trace("operator", || format!("n{slot} revoked"));
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }

    /// A container on machine `victim` crashes (exit code or engine failure).
    pub(crate) fn container_crash(&mut self, victim: usize, mask: u64) {
        let now = abs_ms(&self.world);
        let line = with_whole(&self.world, |wh| {
            let m = &wh.machines[victim];
            m.engine.set_now_ms(now);
            let listed = poll_ready(m.engine.list(&LabelFilter::node(m.id.to_string()))).ok()?;
            let up: Vec<_> = listed.into_iter().filter(|c| c.state == ContainerState::Running).collect();
            if up.is_empty() {
                return None;
            }
            let c = &up[(mask % up.len() as u64) as usize];
            wh.counts.container_crashes += 1;
            if mask >> 32 & 3 == 0 {
                m.engine.crash(&c.id, "oom-killed");
                Some(format!("CONTAINER CRASH task {}: oom-killed", c.owner.task))
            } else {
                let code = i64::try_from(mask >> 40 & 0xff).unwrap_or(1).max(1);
                m.engine.exit(&c.id, code);
                Some(format!("CONTAINER CRASH task {}: exit {code}", c.owner.task))
            }
        })
        .flatten();
        if let Some(line) = line {
            self.world.count_fault("container-crash");
            self.world.trace(&format!("n{victim}"), || line);
        }
    }

    /// The intruder asks a running member for a certificate with a wrong secret: under its
    /// own id, or claiming a visible member's id.
    pub(crate) fn intruder_attempt(&mut self) {
        let pick = with_whole(&self.world, |wh| {
            let up: Vec<usize> = (0..wh.machines.len()).filter(|s| wh.machines[*s].core.is_some() && wh.machines[*s].cert.is_some()).collect();
            let target = *up.get(wh.rng.random_range(0..up.len().max(1)))?;
            let claim = wh.rng.random_bool(0.5).then(|| up[wh.rng.random_range(0..up.len())]);
            let base = JoinRequest::new(&wh.intruder_secret, &key(INTRUDER_KEY), &mut wh.rng).ok()?;
            let req = match claim {
                Some(s) => JoinRequest::signed(&wh.intruder_secret, whole_id(s), base.csr_der, base.nonce),
                None => base,
            };
            wh.counts.intruder_attempts += 1;
            Some((target, claim, req))
        })
        .flatten();
        let Some((target, claim, req)) = pick else { return };
        let world = self.world.clone();
        tokio::spawn(async move {
            let who = claim.map_or_else(|| "as itself".to_string(), |s| format!("claiming n{s}'s id"));
            // The intruder is on the LAN next to its target: the exchange starts at the target.
            let answer = exchange(&world, target, target, req, OP_TIMEOUT, |raft, req| {
                let world = world.clone();
                async move { answer_join(&world, target, &raft, &req).await }
            })
            .await;
            match answer {
                Ok(_) => world.trace("intruder", || format!("got an answer from n{target} {who}")),
                Err(e) => {
                    with_whole(&world, |wh| wh.counts.intruder_refused += 1);
                    world.trace("intruder", || format!("refused by n{target} {who}: {e}"));
                }
            }
        });
    }

    /// The insider: a machine with a certificate that the leader does not count as a voter
    /// (a worker) forwards a manager's write, chosen from its own stream: `node rm` of a
    /// voter, `service create insider`, or a report that another node's task failed. The
    /// leader applies the controller's rule (`shoal_control::check_forward`, as the node's
    /// Raft server does); any of these committed is a violation. Returns when to come back.
    pub(crate) fn insider_attempt(&mut self) -> Option<u64> {
        let pick = with_whole(&self.world, |wh| {
            let up: Vec<usize> = (0..wh.machines.len()).filter(|s| wh.machines[*s].core.is_some() && wh.machines[*s].cert.is_some()).collect();
            let from = up.get(wh.insider_rng.random_range(0..up.len().max(1))).copied();
            let what = wh.insider_rng.random_range(0..3u32);
            let victim = wh.insider_rng.random_range(0..wh.machines.len());
            let next = wh.insider_rng.random_range(2_000..=8_000u64);
            (from, what, victim, next)
        })?;
        let (from, what, victim, next) = pick;
        let Some(from) = from else { return Some(next) };
        let world = self.world.clone();
        tokio::spawn(async move {
            let Some(raft) = world.raft(from) else { return };
            let leader = raft.metrics().borrow_watched().current_leader.map(|l| slot_of(&l.0));
            let Some(leader) = leader.filter(|l| *l != from) else { return };
            let sender = whole_id(from);
            let now = abs_ms(&world);
            let cmd = match what {
                0 => Command::Revoke { node: whole_id(victim) },
                1 => Command::CreateService {
                    service: ServiceDef {
                        name: "insider".into(),
                        spec: ContainerSpec { image: IMAGE.to_string(), ..Default::default() },
                        mode: Mode::Replicated(1),
                        constraints: vec![],
                        reserve_cpu_millis: 0,
                        reserve_memory_bytes: 0,
                        restart: RestartPolicy::Always,
                    },
                    now_ms: now,
                },
                _ => Command::ReportTasks {
                    node: whole_id(victim),
                    reports: vec![shoal_engine::TaskReport {
                        task: 1,
                        state: shoal_engine::TaskState::Failed { reason: "insider".into() },
                        restarts: 0,
                        last_exit_code: None,
                        container: None,
                    }],
                    now_ms: now,
                },
            };
            let text = cmd.to_string();
            let at_leader = world.clone();
            let answer = exchange(&world, from, leader, cmd, OP_TIMEOUT, move |peer, cmd| async move {
                let view = membership_view(&peer);
                if view.voters.contains(&sender) || matches!(&cmd, Command::ReportTasks { node, .. } if *node == sender) {
                    // A manager may write this, and a node may report its own tasks: the
                    // insider only sends what a worker may not.
                    return Err("skipped".to_string());
                }
                with_whole(&at_leader, |wh| wh.counts.insider_attempts += 1);
                shoal_control::check_forward(sender, &cmd, &view).map_err(|e| format!("refused: {e}"))?;
                write_local(&peer, cmd).await
            })
            .await;
            match answer {
                Err(e) if e.starts_with("refused: ") => {
                    with_whole(&world, |wh| wh.counts.insider_refused += 1);
                    world.trace("insider", || format!("n{from} (a worker) forwarded `{text}`: refused"));
                }
                Ok(_) => {
                    let now = world.now_ms();
                    world.lock().checks.violation(format!("insider n{from}"), now, format!("a worker's forwarded `{text}` was committed"));
                }
                Err(_) => {}
            }
        });
        Some(next)
    }

    /// The final checks of whole mode: membership converged, services at their replica
    /// counts with one running container per slot and no stale one.
    pub(crate) fn whole_finish(&mut self, leader_state: Option<&ClusterState>) {
        let now = self.world.now_ms();
        let abs = abs_ms(&self.world);
        let mut w = self.world.lock();
        let crate::raft::world::World { checks, whole, .. } = &mut *w;
        let Some(wh) = whole.as_mut() else { return };
        let up: Vec<usize> = (0..wh.machines.len()).filter(|s| wh.machines[*s].core.is_some()).collect();
        // Membership: every running machine sees every other running one alive.
        for a in &up {
            let members = wh.machines[*a].core.as_ref().map(|c| c.members()).unwrap_or_default();
            for b in up.iter().filter(|b| *b != a) {
                let alive = members.iter().any(|m| m.id == wh.machines[*b].id && m.state == MemberState::Alive);
                if !checks.check(alive) {
                    checks.violation(format!("members n{a} n{b}"), now, format!("after heal n{a} does not see n{b} alive"));
                }
            }
        }
        // Every running machine joined.
        for s in &up {
            if !checks.check(wh.machines[*s].cert.is_some()) {
                checks.violation(format!("joined n{s}"), now, format!("after heal n{s} still has no certificate"));
            }
        }
        let Some(state) = leader_state else { return };
        // Services: each slot of each created service has exactly one live task, running on
        // its node, unless the scheduler records why it is pending.
        let mut running: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
        for (slot, m) in wh.machines.iter().enumerate() {
            m.engine.set_now_ms(abs);
            for c in poll_ready(m.engine.list(&LabelFilter::node(m.id.to_string()))).unwrap_or_default() {
                if c.state == ContainerState::Running {
                    running.entry(c.owner.task).or_default().push(slot);
                }
            }
        }
        for name in &wh.services_created {
            let Some(svc) = state.services.get(name) else {
                checks.violation(format!("svc {name}"), now, format!("service {name} was created but is not in the leader's state"));
                continue;
            };
            let Mode::Replicated(replicas) = svc.def.mode else { continue };
            for i in 1..=replicas {
                let slot = shoal_cluster::scheduler::Slot::Index(i);
                let live: Vec<_> = state.tasks.values().filter(|t| t.service == *name && t.slot == slot && t.is_live()).collect();
                if svc.pending.contains_key(&slot) && live.is_empty() {
                    continue;
                }
                if !checks.check(live.len() == 1) {
                    checks.violation(format!("slot {name}.{i}"), now, format!("after heal {name}.{i} has {} live tasks, not 1", live.len()));
                    continue;
                }
                let t = live[0];
                let on = whole_slot(&t.node);
                let ok = running.get(&t.id).is_some_and(|s| s.len() == 1 && Some(s[0]) == on);
                if !checks.check(ok) {
                    checks.violation(
                        format!("running {name}.{i}"),
                        now,
                        format!("after heal task {} ({name}.{i}) on {:?} is not running exactly there (running on {:?})", t.id, on.map(|s| format!("n{s}")), running.get(&t.id)),
                    );
                }
            }
        }
        // No container runs for a task that is not live (a stale copy of a moved slot).
        for (task, slots) in &running {
            let live = state.tasks.get(task).is_some_and(|t| t.is_live());
            if !checks.check(live) {
                checks.violation(format!("stale {task}"), now, format!("after heal task {task} still runs on {slots:?} but is not live in the state"));
            }
        }
    }
}

