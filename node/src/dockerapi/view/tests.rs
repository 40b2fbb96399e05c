//! The views over a replicated state built by applying real commands.

use super::*;
use crate::dockerapi::query::Filters;
use shoal_consensus::state::{Decision, ServiceDef};
use shoal_consensus::{Command, NodeRecord};
use shoal_discovery::NodeResources;
use shoal_engine::{ContainerId, ContainerSpec, TaskReport};

pub(crate) const NOW: u64 = 1_800_000_000_000;

pub(crate) fn id(n: u8) -> NodeId {
    NodeId([n; 16])
}

/// Three registered nodes n1..n3; n3 has `zone=attic`.
pub(crate) fn three_nodes() -> ClusterState {
    let mut st = ClusterState::default();
    for n in 1..=3u8 {
        let mut labels = BTreeMap::new();
        if n == 3 {
            labels.insert("zone".to_string(), "attic".to_string());
        }
        let record = NodeRecord { name: format!("n{n}"), addr: format!("10.0.0.{n}:7480").parse().expect("addr"), labels };
        st.apply(Command::RegisterNode { id: id(n), record }).expect("register");
    }
    st
}

pub(crate) fn members(down: &[u8]) -> Vec<MemberView> {
    (1..=3u8)
        .map(|n| MemberView {
            id: id(n),
            name: Some(format!("n{n}")),
            addr: format!("10.0.0.{n}:7480").parse().expect("addr"),
            state: if down.contains(&n) { MemberState::Down } else { MemberState::Alive },
            labels: BTreeMap::new(),
            incarnation: 1,
            version: None,
            since_ms: 0,
            is_self: n == 1,
            in_cluster: true,
            resources: NodeResources { arch: "x86_64".into(), cpu_millis: 2000, memory_bytes: 1 << 30, engine_ok: true },
            signed_addr: None,
        })
        .collect()
}

pub(crate) fn service(st: &mut ClusterState, name: &str, replicas: u32, restart: RestartPolicy) {
    let def = ServiceDef {
        name: name.into(),
        spec: ContainerSpec { image: "busybox:1".into(), command: vec!["sleep".into(), "300".into()], ..Default::default() },
        mode: shoal_consensus::state::Mode::Replicated(replicas),
        constraints: vec![],
        reserve_cpu_millis: 0,
        reserve_memory_bytes: 0,
        restart,
    };
    st.apply(Command::CreateService { service: def, now_ms: NOW - 60_000 }).expect("create");
}

/// Places slot `slot` of `service` on node `n` and returns the task id.
pub(crate) fn place(st: &mut ClusterState, service: &str, slot: u32, n: u8, at_ms: u64) -> u64 {
    let d = Decision::Place { service: service.into(), slot: Slot::Index(slot), node: id(n) };
    match st.apply(Command::apply_decisions(vec![d], at_ms)) {
        Ok(shoal_consensus::Applied::DecisionsApplied { created, .. }) => created[0],
        other => panic!("place: {other:?}"),
    }
}

pub(crate) fn report(st: &mut ClusterState, n: u8, task: u64, state: TaskState, exit: Option<i64>, at_ms: u64) {
    let r = TaskReport { task, state, restarts: 0, last_exit_code: exit, container: Some(ContainerId(format!("engine-{task}"))) };
    for cmd in Command::report_tasks(id(n), vec![r], at_ms) {
        st.apply(cmd).expect("report");
    }
}

/// web.1 running on n1, web.2 running on n2, job.1 exited (3) on n3.
fn cluster() -> ClusterState {
    let mut st = three_nodes();
    service(&mut st, "web", 2, RestartPolicy::Always);
    service(&mut st, "job", 1, RestartPolicy::Never);
    let w1 = place(&mut st, "web", 1, 1, NOW - 50_000);
    let w2 = place(&mut st, "web", 2, 2, NOW - 40_000);
    let j1 = place(&mut st, "job", 1, 3, NOW - 30_000);
    report(&mut st, 1, w1, TaskState::Running, None, NOW - 45_000);
    report(&mut st, 2, w2, TaskState::Running, None, NOW - 5_000);
    report(&mut st, 3, j1, TaskState::Exited { code: 3 }, Some(3), NOW - 120_000);
    st
}

fn names(entries: &[Entry]) -> Vec<String> {
    entries.iter().map(Entry::list_name).collect()
}

#[test]
fn every_task_is_a_container_named_node_slash_name() {
    let st = cluster();
    let m = members(&[]);
    let v = ClusterView { state: &st, members: &m, now_ms: NOW };
    let all = v.list(true, None, &Filters::default()).expect("list");
    // Newest first.
    assert_eq!(names(&all), ["/n3/job.1", "/n2/web.2", "/n1/web.1"]);
    let up = v.list(false, None, &Filters::default()).expect("list");
    assert_eq!(names(&up), ["/n2/web.2", "/n1/web.1"], "ps without -a hides the exited job");
    let web2 = &up[0];
    assert_eq!(web2.status.state, State::Running);
    assert_eq!(web2.status.text, "Up 5 seconds");
    assert_eq!(web2.id.len(), 64);
    assert_eq!(all[0].status.text, "Exited (3) 2 minutes ago");
    assert_eq!(all[0].status.exit_code, 3);
    let row = list_json(web2);
    assert_eq!(row["Names"], serde_json::json!(["/n2/web.2"]));
    assert_eq!(row["State"], "running");
    assert_eq!(row["Command"], "sleep 300");
    assert_eq!(row["Labels"]["shoal.service"], "web");
    assert_eq!(row["Created"], (NOW - 40_000) / 1000);
    // Ids are derived from task ids, the same on every node.
    assert_eq!(web2.id, task_container_id(2));
    assert_ne!(task_container_id(1), task_container_id(2));
}

#[test]
fn filters_limit_and_their_errors() {
    let st = cluster();
    let m = members(&[]);
    let v = ClusterView { state: &st, members: &m, now_ms: NOW };
    let f = |text: &str| Filters::parse(text).expect("filters");
    let list = |all, limit, text: &str| v.list(all, limit, &f(text)).map(|l| names(&l));
    assert_eq!(list(false, None, r#"{"status":["exited"]}"#).expect("status"), ["/n3/job.1"], "a status filter implies all");
    assert_eq!(list(true, None, r#"{"name":{"web":true}}"#).expect("name"), ["/n2/web.2", "/n1/web.1"]);
    assert_eq!(list(true, None, r#"{"name":["^/web.1$"]}"#).expect("name regex"), ["/n1/web.1"]);
    assert_eq!(list(true, None, r#"{"name":["^/n3/"]}"#).expect("listed name"), ["/n3/job.1"]);
    assert_eq!(list(true, None, r#"{"label":["shoal.service=job"]}"#).expect("label"), ["/n3/job.1"]);
    assert_eq!(list(true, None, r#"{"label":{"shoal.service":true}}"#).expect("label key").len(), 3);
    assert!(list(true, None, r#"{"label":["nope"]}"#).expect("no label").is_empty());
    assert_eq!(list(true, None, r#"{"node":["n2"]}"#).expect("node"), ["/n2/web.2"]);
    assert_eq!(list(true, Some(1), "").expect("limit"), ["/n3/job.1"]);
    assert_eq!(list(true, Some(-1), "").expect("limit -1").len(), 3);
    let id = task_container_id(1);
    assert_eq!(list(true, None, &format!(r#"{{"id":["{}"]}}"#, &id[..10])).expect("id"), ["/n1/web.1"]);
    for (bad, says) in [
        (r#"{"status":["sleepy"]}"#, "status=sleepy"),
        (r#"{"ancestor":["x"]}"#, "'ancestor'"),
        (r#"{"name":["("]}"#, "name=("),
    ] {
        let e = list(true, None, bad).expect_err(bad);
        assert!(e.status == hyper::StatusCode::BAD_REQUEST && e.message.contains(says), "{bad}: {e}");
    }
}

#[test]
fn containers_are_found_by_id_name_node_name_and_prefix() {
    let st = cluster();
    let m = members(&[]);
    let v = ClusterView { state: &st, members: &m, now_ms: NOW };
    let id = task_container_id(2);
    for key in [id.as_str(), "web.2", "/web.2", "n2/web.2", &id[..8]] {
        assert_eq!(v.find(key).expect(key).name, "web.2", "{key}");
    }
    for key in ["nope", "n1/web.2", "", &"a".repeat(MAX_LOOKUP_LEN + 1)] {
        let e = v.find(key).expect_err(key);
        assert_eq!(e.status, hyper::StatusCode::NOT_FOUND, "{key}");
    }
    assert!(v.find("nope").expect_err("404").message.contains("No such container: nope"));
}

#[test]
fn inspect_keeps_the_name_and_shows_the_node() {
    let st = cluster();
    let m = members(&[]);
    let v = ClusterView { state: &st, members: &m, now_ms: NOW };
    let j = inspect_json(&v.find("job.1").expect("job"));
    assert_eq!(j["Name"], "/job.1");
    assert_eq!(j["Node"]["Name"], "n3");
    assert_eq!(j["Node"]["ID"], id(3).to_string());
    assert_eq!(j["Node"]["IP"], "10.0.0.3");
    assert_eq!(j["Node"]["Labels"]["zone"], "attic");
    assert_eq!(j["State"]["Status"], "exited");
    assert_eq!(j["State"]["ExitCode"], 3);
    assert_eq!(j["State"]["Running"], false);
    assert_eq!(j["Config"]["Cmd"], serde_json::json!(["sleep", "300"]));
    assert_eq!(j["HostConfig"]["RestartPolicy"]["Name"], "no");
    assert_eq!(j["Path"], "sleep");
    let finished = j["State"]["FinishedAt"].as_str().expect("time");
    assert!(finished.starts_with("2027-01-15T") && finished.ends_with('Z'), "{finished}");
    assert_eq!(j["State"]["StartedAt"], "0001-01-01T00:00:00Z");
}

#[test]
fn a_container_on_a_down_node_says_so() {
    let st = cluster();
    let m = members(&[2]);
    let v = ClusterView { state: &st, members: &m, now_ms: NOW };
    let e = v.find("web.2").expect("web.2");
    assert_eq!(e.status.text, "Up 5 seconds (node n2 is down)");
}

#[test]
fn info_sums_the_cluster_and_lists_every_node() {
    let st = cluster();
    let m = members(&[3]);
    let v = ClusterView { state: &st, members: &m, now_ms: NOW };
    let info = info_json(&v, "cafe", "n1");
    assert_eq!((info["Containers"].as_u64(), info["ContainersRunning"].as_u64(), info["ContainersStopped"].as_u64()), (Some(3), Some(2), Some(1)));
    assert_eq!(info["Swarm"]["LocalNodeState"], "inactive");
    assert_eq!(info["NCPU"], 6);
    assert_eq!(info["MemTotal"], 3u64 << 30);
    let status: Vec<(String, String)> = info["SystemStatus"]
        .as_array()
        .expect("array")
        .iter()
        .map(|p| (p[0].as_str().expect("key").to_string(), p[1].as_str().expect("value").to_string()))
        .collect();
    assert!(status.contains(&("Nodes".into(), "3".into())), "{status:?}");
    let n3 = status.iter().position(|(k, _)| k == " n3").expect("n3 block");
    assert_eq!(status[n3].1, "10.0.0.3:7480");
    assert_eq!(status[n3 + 2], ("  └ Status".into(), "Unhealthy (down)".into()));
    assert_eq!(status[n3 + 3], ("  └ Containers".into(), "1 (0 Running, 0 Paused, 1 Stopped)".into()));
    assert!(status.contains(&("  └ Labels".into(), "zone=attic".into())));
    assert_eq!(status[n3 + 4], ("  └ Reserved CPUs".into(), "0.0 / 2.0".into()));
    assert_eq!(status[n3 + 5], ("  └ Reserved Memory".into(), "0 MiB / 1024 MiB".into()));
    assert!(info["SecurityOptions"].as_array().is_some_and(Vec::is_empty));
}

#[test]
fn durations_and_times_read_like_dockers() {
    for (ms, text) in [
        (500, "Less than a second"),
        (1_000, "1 second"),
        (59_000, "59 seconds"),
        (60_000, "About a minute"),
        (150_000, "2 minutes"),
        (3_600_000, "About an hour"),
        (5 * 3_600_000, "5 hours"),
        (72 * 3_600_000, "3 days"),
    ] {
        assert_eq!(human_duration(ms), text, "{ms}");
    }
    assert_eq!(rfc3339(Some(0)), "1970-01-01T00:00:00Z");
    assert_eq!(rfc3339(Some(1_500)), "1970-01-01T00:00:01.5Z");
    assert_eq!(rfc3339(None), "0001-01-01T00:00:00Z");
}
