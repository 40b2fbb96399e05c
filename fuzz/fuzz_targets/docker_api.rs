//! The Docker API's request parsing, as a `docker` or `docker-compose` client (or anyone who
//! reaches the socket or the TLS port) drives it: the method and path to an endpoint, the
//! query string and its filters, and the JSON bodies of container, network and exec
//! creation turned into what shoal writes. Every refusal must be an `ApiError`, never a
//! panic. Input: a method byte, then the path and query, a newline, and the body.
#![no_main]

use hyper::Method;
use libfuzzer_sys::fuzz_target;
use shoal_consensus::{ClusterState, Command, NodeRecord};
use shoal_node::dockerapi::create::{check_name, container_def, parse_hint, CreateBody};
use shoal_node::dockerapi::exec::{exec_request, ExecCreateBody};
use shoal_node::dockerapi::http::parse_json;
use shoal_node::dockerapi::networks::{network_def, CreateNetworkBody};
use shoal_node::dockerapi::query::{Filters, Query};
use shoal_node::dockerapi::route::route;
use shoal_node::dockerapi::{attach::attach_options, logs::logs_request};
use shoal_wire::NodeId;

const METHODS: [Method; 5] = [Method::GET, Method::POST, Method::DELETE, Method::PUT, Method::HEAD];

fn state() -> ClusterState {
    let mut state = ClusterState::default();
    let record = NodeRecord { name: "lab1".into(), addr: "10.0.0.1:7480".parse().expect("addr"), labels: [("disk".into(), "ssd".into())].into() };
    let _ = state.apply(Command::RegisterNode { id: NodeId([1; 16]), record });
    state
}

fuzz_target!(|data: &[u8]| {
    let Some((&m, rest)) = data.split_first() else { return };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    let (target, body) = text.split_once('\n').unwrap_or((text, ""));
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let _ = route(&METHODS[usize::from(m) % METHODS.len()], path);
    if let Ok(query) = Query::parse(query) {
        let _ = (query.filters(), query.int("tail"), query.bool("follow"), logs_request(&query), attach_options(&query));
        if let Some(name) = query.get("name") {
            let _ = check_name(name);
        }
    }
    let _ = Filters::parse(body);
    let state = state();
    let _ = parse_hint(body, &state);
    match m >> 4 {
        0 => {
            if let Ok(create) = parse_json::<CreateBody>(body.as_bytes()) {
                let _ = container_def(create, "fuzzed", "0123456789ab", &state);
            }
        }
        1 => {
            if let Ok(create) = parse_json::<CreateNetworkBody>(body.as_bytes()) {
                let _ = network_def(create, "0123456789ab");
            }
        }
        _ => {
            if let Ok(exec) = parse_json::<ExecCreateBody>(body.as_bytes()) {
                let _ = exec_request(exec);
            }
        }
    }
});
