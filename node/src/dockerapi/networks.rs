//! `docker network create|ls|inspect|rm` and compose's `P_default`: networks as cluster
//! objects (`shoal_consensus::state::networks`). The pure parts (the create body, the
//! JSON of a network, the list filters) are unit-tested; the endpoints write one
//! replicated command each. A network reaches an engine only when a container that joins
//! it is created there (the node creates the bridge lazily), and leaves it once the
//! cluster no longer has it.

use super::http::{self, ApiError, Body};
use super::query::{Filters, Query};
use super::{DockerApi, Snapshot};
use crate::control::now_ms;
use hyper::{Response, StatusCode};
use serde::Deserialize;
use shoal_consensus::state::{NetworkDef, NetworkRecord, BRIDGE_DRIVER};
use shoal_consensus::{ClusterState, Command};
use std::collections::BTreeMap;

/// The body of `POST /networks/create`. What shoal cannot honour is refused by name.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateNetworkBody {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub check_duplicate: Option<bool>,
    #[serde(default)]
    pub driver: Option<String>,
    #[serde(default)]
    pub internal: bool,
    #[serde(default)]
    pub attachable: bool,
    #[serde(default)]
    pub ingress: bool,
    #[serde(default, rename = "EnableIPv6")]
    pub enable_ipv6: bool,
    #[serde(default, rename = "IPAM")]
    pub ipam: Option<serde_json::Value>,
    #[serde(default)]
    pub options: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
}

fn unsupported(what: &str) -> ApiError {
    ApiError::bad_request(format!("{what} is not supported by shoal's networks yet (they are bridges on the node that runs their containers)"))
}

/// The create body → the replicated definition (id given), or why not.
pub fn network_def(body: CreateNetworkBody, id: &str) -> Result<NetworkDef, ApiError> {
    let name = body.name.trim().to_string();
    if name.is_empty() {
        return Err(ApiError::bad_request("no network name given: the body needs a Name"));
    }
    let driver = body.driver.filter(|d| !d.is_empty()).unwrap_or_else(|| BRIDGE_DRIVER.to_string());
    if driver != BRIDGE_DRIVER {
        return Err(unsupported(&format!("driver {driver:?}")));
    }
    if body.internal {
        return Err(unsupported("an internal network (--internal)"));
    }
    if body.ingress {
        return Err(unsupported("an ingress network"));
    }
    if body.enable_ipv6 {
        return Err(unsupported("IPv6 (--ipv6)"));
    }
    let ipam_set = body.ipam.as_ref().is_some_and(|v| {
        let config = v.get("Config").and_then(|c| c.as_array()).is_some_and(|c| !c.is_empty());
        let driver = v.get("Driver").and_then(|d| d.as_str()).is_some_and(|d| !d.is_empty() && d != "default");
        let options = v.get("Options").and_then(|o| o.as_object()).is_some_and(|o| !o.is_empty());
        config || driver || options
    });
    if ipam_set {
        return Err(unsupported("IPAM settings (--subnet, --gateway, --ip-range, --ipam-driver)"));
    }
    if body.options.as_ref().is_some_and(|o| !o.is_empty()) {
        return Err(unsupported("driver options (-o)"));
    }
    Ok(NetworkDef { id: id.to_string(), name, driver, labels: body.labels.unwrap_or_default(), attachable: body.attachable })
}

/// A network as Docker shows it (`GET /networks/{id}`, and each row of `GET /networks`),
/// with the containers attached to it.
pub fn network_json(state: &ClusterState, n: &NetworkRecord) -> serde_json::Value {
    let containers: serde_json::Map<String, serde_json::Value> = state
        .containers
        .values()
        .filter(|c| c.networks.iter().any(|a| a.network == n.id))
        .map(|c| {
            (c.id.clone(), serde_json::json!({"Name": c.name, "EndpointID": "", "MacAddress": "", "IPv4Address": "", "IPv6Address": ""}))
        })
        .collect();
    serde_json::json!({
        "Name": n.name,
        "Id": n.id,
        "Created": super::view::rfc3339(Some(n.created_ms)),
        "Scope": "local",
        "Driver": n.driver,
        "EnableIPv6": false,
        "IPAM": {"Driver": "default", "Options": null, "Config": []},
        "Internal": false,
        "Attachable": n.attachable,
        "Ingress": false,
        "ConfigFrom": {"Network": ""},
        "ConfigOnly": false,
        "Containers": containers,
        "Options": {},
        "Labels": n.labels,
    })
}

/// The network `key` names: an id, a name, or an unambiguous id prefix.
pub fn find<'a>(state: &'a ClusterState, key: &str) -> Result<&'a NetworkRecord, ApiError> {
    if let Some(n) = state.network(key) {
        return Ok(n);
    }
    let not_found = || ApiError::not_found(format!("network {key} not found"));
    if key.is_empty() || !key.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(not_found());
    }
    let mut hits = state.networks.values().filter(|n| n.id.starts_with(key));
    match (hits.next(), hits.next()) {
        (Some(n), None) => Ok(n),
        (Some(_), Some(_)) => Err(ApiError::bad_request(format!("network {key} is ambiguous: give more of its id"))),
        _ => Err(not_found()),
    }
}

/// `GET /networks?filters=`: `name` (substring, as Docker), `id` (prefix), `label`
/// (`k` or `k=v`), `driver`.
pub fn list<'a>(state: &'a ClusterState, filters: &Filters) -> Result<Vec<&'a NetworkRecord>, ApiError> {
    filters.only(&["name", "id", "label", "driver"])?;
    let rows = state
        .networks
        .values()
        .filter(|n| {
            let names = filters.get("name");
            names.is_empty() || names.iter().any(|f| n.name.contains(f.as_str()))
        })
        .filter(|n| {
            let ids = filters.get("id");
            ids.is_empty() || ids.iter().any(|f| n.id.starts_with(f.as_str()))
        })
        .filter(|n| {
            let drivers = filters.get("driver");
            drivers.is_empty() || drivers.iter().any(|d| *d == n.driver)
        })
        .filter(|n| {
            filters.get("label").iter().all(|l| match l.split_once('=') {
                Some((k, v)) => n.labels.get(k).is_some_and(|x| x == v),
                None => n.labels.contains_key(l),
            })
        })
        .collect();
    Ok(rows)
}

/// The body of `POST /networks/{id}/connect|disconnect`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ConnectBody {
    #[serde(default)]
    pub container: String,
    #[serde(default)]
    pub force: bool,
}

impl DockerApi {
    /// `POST /networks/create`: 201 `{Id, Warning}`; 409 for a name in use.
    pub(super) async fn network_create(&self, body: &[u8]) -> Result<Response<Body>, ApiError> {
        let body: CreateNetworkBody = http::parse_json(body)?;
        let snap = self.snapshot().await?;
        let def = network_def(body, &super::create::new_id())?;
        if snap.state.network(&def.name).is_some() {
            return Err(ApiError::conflict(format!("network with name {} already exists", def.name)));
        }
        let (id, name) = (def.id.clone(), def.name.clone());
        self.commit(Command::CreateNetwork { network: def, now_ms: now_ms() }).await?;
        tracing::info!(network = %name, id = %&id[..12], "docker api: network created");
        Ok(http::json_response(StatusCode::CREATED, &serde_json::json!({"Id": id, "Warning": ""})))
    }

    pub(super) async fn network_list(&self, query: &Query) -> Result<Response<Body>, ApiError> {
        let snap = self.snapshot().await?;
        let rows = list(&snap.state, &query.filters()?)?;
        Ok(http::ok_json(&serde_json::Value::Array(rows.into_iter().map(|n| network_json(&snap.state, n)).collect())))
    }

    pub(super) async fn network_inspect(&self, key: &str) -> Result<Response<Body>, ApiError> {
        let snap = self.snapshot().await?;
        Ok(http::ok_json(&network_json(&snap.state, find(&snap.state, key)?)))
    }

    /// `DELETE /networks/{id}`: 204; 409 while containers are attached; 404 if unknown.
    pub(super) async fn network_remove(&self, key: &str) -> Result<Response<Body>, ApiError> {
        let snap = self.snapshot().await?;
        let n = find(&snap.state, key)?;
        let users = snap.state.containers_on_network(&n.id);
        if !users.is_empty() {
            return Err(ApiError::conflict(format!(
                "error while removing network: network {} id {} has active endpoints ({}); remove those containers first",
                n.name,
                n.id,
                users.join(", ")
            )));
        }
        let name = n.name.clone();
        self.commit(Command::RemoveNetwork { id: n.id.clone() }).await?;
        tracing::info!(network = %name, "docker api: network removed");
        Ok(http::status_only(StatusCode::NO_CONTENT))
    }

    /// `POST /networks/{id}/connect|disconnect`: only what already holds (a container
    /// joins its network at create, with `--network`), so compose's check passes; any
    /// other change is refused by name.
    pub(super) async fn network_connect(&self, key: &str, body: &[u8], connect: bool) -> Result<Response<Body>, ApiError> {
        let body: ConnectBody = http::parse_json(body)?;
        let snap: Snapshot = self.snapshot().await?;
        let n = find(&snap.state, key)?;
        let c = snap.view().find(&body.container)?;
        let attached = c.networks.iter().any(|x| x.id == n.id);
        match (connect, attached) {
            (true, true) => Ok(http::status_only(StatusCode::OK)),
            (false, false) if body.force => Ok(http::status_only(StatusCode::OK)),
            (false, false) => Err(ApiError::bad_request(format!("container {} is not connected to network {}", c.name, n.name))),
            (true, false) => Err(unsupported(&format!(
                "connecting the existing container {} to network {} (give the network at create: docker run --network {})",
                c.name, n.name, n.name
            ))),
            (false, true) => Err(unsupported(&format!("disconnecting container {} from network {}", c.name, n.name))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(json: serde_json::Value) -> CreateNetworkBody {
        serde_json::from_value(json).expect("body")
    }

    #[test]
    fn compose_and_cli_bodies_become_bridges_and_report_what_was_asked() {
        let id = "ab".repeat(32);
        let compose = body(serde_json::json!({"Name": "p_default", "CheckDuplicate": true, "Attachable": true,
            "Labels": {"com.docker.compose.network": "default", "com.docker.compose.project": "p"}}));
        let def = network_def(compose, &id).expect("compose");
        assert_eq!((def.name.as_str(), def.driver.as_str(), def.attachable), ("p_default", "bridge", true));
        assert_eq!(def.labels["com.docker.compose.project"], "p");
        let cli = body(serde_json::json!({"Name": "mynet", "CheckDuplicate": true, "Driver": "bridge", "Scope": "", "EnableIPv6": false,
            "IPAM": {"Driver": "default", "Options": {}, "Config": []}, "Internal": false, "Attachable": false, "Ingress": false,
            "ConfigOnly": false, "ConfigFrom": null, "Options": {}, "Labels": {}}));
        let def = network_def(cli, &id).expect("cli");
        let mut state = ClusterState::default();
        state.networks.insert(id.clone(), NetworkRecord { id: id.clone(), name: def.name, driver: def.driver, labels: def.labels, attachable: false, created_ms: 0 });
        let json = network_json(&state, &state.networks[&id]);
        assert_eq!(json["Driver"], "bridge");
        assert_eq!(json["Options"], serde_json::json!({}));
        assert_eq!(json["IPAM"]["Config"], serde_json::json!([]));
        assert_eq!(find(&state, "mynet").expect("by name").id, id);
        assert_eq!(find(&state, "abab").expect("by prefix").id, id);
        assert_eq!(find(&state, "nope").expect_err("unknown").message, "network nope not found");
    }

    #[test]
    fn what_cannot_be_honoured_is_refused_by_name() {
        for (json, word) in [
            (serde_json::json!({"Name": "n", "Driver": "overlay"}), "overlay"),
            (serde_json::json!({"Name": "n", "Internal": true}), "internal"),
            (serde_json::json!({"Name": "n", "EnableIPv6": true}), "IPv6"),
            (serde_json::json!({"Name": "n", "IPAM": {"Config": [{"Subnet": "10.9.0.0/24"}]}}), "IPAM"),
            (serde_json::json!({"Name": "n", "Options": {"com.docker.network.bridge.name": "x"}}), "options"),
            (serde_json::json!({"Name": ""}), "Name"),
        ] {
            let e = network_def(body(json.clone()), &"ab".repeat(32)).expect_err("refused");
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
            assert!(e.message.contains(word), "{json}: {}", e.message);
        }
    }

    #[test]
    fn list_filters() {
        let mut state = ClusterState::default();
        for (i, name) in ["p_default", "q_default"].iter().enumerate() {
            let id = format!("{i:02x}").repeat(32);
            let labels = BTreeMap::from([("com.docker.compose.project".to_string(), name[..1].to_string())]);
            state.networks.insert(id.clone(), NetworkRecord { id, name: name.to_string(), driver: "bridge".into(), labels, attachable: true, created_ms: 0 });
        }
        let names = |f: &str| -> Vec<String> {
            list(&state, &Filters::parse(f).expect("filters")).expect("list").iter().map(|n| n.name.clone()).collect()
        };
        assert_eq!(names("{}"), ["p_default", "q_default"]);
        assert_eq!(names(r#"{"name":["p_"]}"#), ["p_default"]);
        assert_eq!(names(r#"{"label":["com.docker.compose.project=q"]}"#), ["q_default"]);
        assert!(list(&state, &Filters::parse(r#"{"scope":["x"]}"#).expect("f")).is_err());
    }
}
