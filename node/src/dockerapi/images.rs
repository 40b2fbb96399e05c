//! `docker images`, image inspect and pull: the images of every node, merged (as
//! `shoal image ls` gathers them, `crate::images::ops::list`), each with the nodes that
//! hold it (`Nodes`, and a `shoal.nodes` label so `docker images --format` can show it).
//! A pull (`POST /images/create`) is done by this node's engine and streamed as Docker's
//! progress JSON; when it fails (no registry reachable) the last line carries `error`
//! and `errorDetail`, which the clients print. Nodes that need an image for a container
//! fetch it from a node that has it, so one node holding it is enough.

use super::http::{self, ApiError, Body};
use super::query::{Filters, Query};
use super::DockerApi;
use crate::images::ops::ImageRow;
use crate::images::ImageStore;
use hyper::{Response, StatusCode};
use shoal_engine::ImageInfo;

/// The label listing the nodes that hold an image (comma-separated).
pub const NODES_LABEL: &str = "shoal.nodes";
/// Longest image reference accepted, in bytes.
pub const MAX_REFERENCE_LEN: usize = 512;

fn info(row: &ImageRow) -> ImageInfo {
    ImageInfo { id: shoal_engine::ImageId(row.id.clone()), tags: row.tags.clone(), size_bytes: row.size_bytes }
}

/// `reference` without the registry prefix Docker's CLI may add for the default one.
fn familiar(reference: &str) -> &str {
    reference.strip_prefix("docker.io/library/").or_else(|| reference.strip_prefix("docker.io/")).unwrap_or(reference)
}

/// The image `reference` names (a tag, `name` meaning `name:latest`, the id or an id
/// prefix of 12+ digits), if a node holds it.
pub fn find<'a>(rows: &'a [ImageRow], reference: &str) -> Option<&'a ImageRow> {
    let r = familiar(reference);
    rows.iter().find(|row| crate::images::matches(&info(row), r))
}

/// One row of `GET /images/json`.
pub fn list_json(row: &ImageRow) -> serde_json::Value {
    serde_json::json!({
        "Id": row.id,
        "ParentId": "",
        "RepoTags": if row.tags.is_empty() { serde_json::json!(["<none>:<none>"]) } else { serde_json::json!(row.tags) },
        "RepoDigests": [],
        "Created": 0,
        "Size": row.size_bytes,
        "VirtualSize": row.size_bytes,
        "SharedSize": -1,
        "Labels": {NODES_LABEL: row.nodes.join(",")},
        "Containers": -1,
        "Nodes": row.nodes,
    })
}

/// `GET /images/{name}/json`.
pub fn inspect_json(row: &ImageRow) -> serde_json::Value {
    let config = serde_json::json!({"Env": [], "Cmd": null, "Entrypoint": null, "Volumes": null, "Labels": {NODES_LABEL: row.nodes.join(",")}});
    serde_json::json!({
        "Id": row.id,
        "RepoTags": row.tags,
        "RepoDigests": [],
        "Parent": "",
        "Comment": "",
        "Created": super::view::rfc3339(None),
        "Container": "",
        "ContainerConfig": config,
        "DockerVersion": "",
        "Author": "",
        "Config": config,
        "Architecture": super::view::go_arch(),
        "Os": "linux",
        "Size": row.size_bytes,
        "VirtualSize": row.size_bytes,
        "RootFS": {"Type": "layers", "Layers": []},
        "Metadata": {"LastTagTime": super::view::rfc3339(None)},
        "Nodes": row.nodes,
    })
}

/// `GET /images/json?filters=`: `reference` (a name or `name:tag`, `*` at the end of
/// either part as a wildcard) and `dangling`.
pub fn filter<'a>(rows: &'a [ImageRow], filters: &Filters) -> Result<Vec<&'a ImageRow>, ApiError> {
    filters.only(&["reference", "dangling"])?;
    let glob = |pattern: &str, text: &str| match pattern.strip_suffix('*') {
        Some(prefix) => text.starts_with(prefix),
        None => pattern == text,
    };
    let refs = filters.get("reference");
    let dangling = filters.get("dangling").first().map(|d| d == "true" || d == "1");
    Ok(rows
        .iter()
        .filter(|row| {
            refs.is_empty()
                || refs.iter().any(|r| {
                    let (rn, rt) = r.rsplit_once(':').filter(|(_, t)| !t.contains('/')).unwrap_or((r.as_str(), "*"));
                    row.tags.iter().any(|t| {
                        let (n, tag) = t.rsplit_once(':').unwrap_or((t.as_str(), "latest"));
                        glob(rn, n) && glob(rt, tag)
                    })
                })
        })
        .filter(|row| dangling.is_none_or(|d| d == row.tags.is_empty()))
        .collect())
}

/// One line of Docker's progress stream.
pub fn progress_line(status: &str) -> String {
    format!("{}\r\n", serde_json::json!({"status": status}))
}

/// The last line of a failed progress stream: `error` and `errorDetail`, as the clients
/// expect.
pub fn error_line(message: &str) -> String {
    format!("{}\r\n", serde_json::json!({"errorDetail": {"message": message}, "error": message}))
}

impl DockerApi {
    async fn image_rows(&self) -> Result<Vec<ImageRow>, ApiError> {
        let listing = crate::images::ops::list(&self.ctl).await.map_err(|e| ApiError::unavailable(format!("{e:#}")))?;
        if !listing.unreachable.is_empty() {
            tracing::debug!(unreachable = ?listing.unreachable, "docker api: images of some nodes could not be listed");
        }
        Ok(listing.images)
    }

    /// Refuses a container whose image no node holds: 404 `No such image` (the clients
    /// then try a pull), naming the nodes that were asked.
    pub(super) async fn check_image_somewhere(&self, reference: &str) -> Result<(), ApiError> {
        let listing = crate::images::ops::list(&self.ctl).await.map_err(|e| ApiError::unavailable(format!("{e:#}")))?;
        if find(&listing.images, reference).is_some() {
            return Ok(());
        }
        let snap = self.snapshot().await?;
        let mut asked: Vec<String> = snap.state.nodes.values().map(|n| n.name.clone()).collect();
        asked.sort();
        let mut msg = format!("No such image: {reference} (no node has it; lacking it: {})", asked.join(", "));
        if !listing.unreachable.is_empty() {
            msg.push_str(&format!("; not asked: {}", listing.unreachable.join(", ")));
        }
        Err(ApiError::not_found(msg))
    }

    pub(super) async fn image_list(&self, query: &Query) -> Result<Response<Body>, ApiError> {
        let filters = query.filters()?;
        let rows = self.image_rows().await?;
        let rows = filter(&rows, &filters)?;
        Ok(http::ok_json(&serde_json::Value::Array(rows.into_iter().map(list_json).collect())))
    }

    pub(super) async fn image_inspect(&self, reference: &str) -> Result<Response<Body>, ApiError> {
        let rows = self.image_rows().await?;
        match find(&rows, reference) {
            Some(row) => Ok(http::ok_json(&inspect_json(row))),
            None => Err(ApiError::not_found(format!("No such image: {reference}"))),
        }
    }

    /// `POST /images/create?fromImage=&tag=`: this node's engine pulls; progress is
    /// streamed; a failure is the stream's last line (status 200, as Docker does once
    /// the stream has begun).
    pub(super) async fn image_pull(&self, query: &Query) -> Result<Response<Body>, ApiError> {
        let from = query.get("fromImage").unwrap_or("").trim();
        if from.is_empty() {
            return Err(ApiError::bad_request("no image given: fromImage is required (importing with fromSrc is not supported by shoal)"));
        }
        let tag = query.get("tag").unwrap_or("").trim();
        let from = familiar(from);
        let reference = if tag.is_empty() || from.contains('@') {
            from.to_string()
        } else if tag.starts_with("sha256:") {
            format!("{from}@{tag}")
        } else {
            format!("{from}:{tag}")
        };
        if reference.len() > MAX_REFERENCE_LEN || reference.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(ApiError::bad_request(format!("invalid image reference {:?}", reference.chars().take(64).collect::<String>())));
        }
        // Held by a node already: nodes fetch images from each other, nothing to pull.
        let rows = self.image_rows().await?;
        if let Some(row) = find(&rows, &reference) {
            let line = progress_line(&format!("Status: Image is up to date for {reference} (held by {})", row.nodes.join(", ")));
            let mut resp = Response::new(Body::full(line));
            resp.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
            return Ok(resp);
        }
        let store = self.ctl.images();
        let node = self.ctl.config().name.clone();
        let (tx, body) = Body::stream();
        tokio::spawn(async move {
            let (ptx, mut prx) = tokio::sync::mpsc::channel::<String>(64);
            let progress = move |line: String| {
                let _ = ptx.try_send(line);
            };
            let pull = store.pull(&reference, &progress);
            tokio::pin!(pull);
            let result = loop {
                tokio::select! {
                    r = &mut pull => break r,
                    Some(line) = prx.recv() => {
                        if !tx.send(progress_line(&line)).await {
                            return;
                        }
                    }
                    () = tx.closed() => return,
                }
            };
            let last = match result {
                Ok(()) => progress_line(&format!("Status: Downloaded image {reference} on node {node}")),
                Err(why) => error_line(&format!(
                    "{why} (pulled on node {node}; no node of the cluster holds it). With no registry reachable, load the image on one node (docker load there, or `shoal image push`): nodes fetch it from each other"
                )),
            };
            let _ = tx.send(last).await;
        });
        let mut resp = Response::new(body);
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
        *resp.status_mut() = StatusCode::OK;
        Ok(resp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, tags: &[&str], nodes: &[&str]) -> ImageRow {
        ImageRow { id: id.into(), tags: tags.iter().map(|t| t.to_string()).collect(), size_bytes: 10, nodes: nodes.iter().map(|n| n.to_string()).collect() }
    }

    #[test]
    fn images_are_found_by_tag_name_id_and_prefix() {
        let id = format!("sha256:{}", "ab".repeat(32));
        let rows = vec![row(&id, &["shoaltest:latest", "web:1"], &["n1", "n2"])];
        assert!(find(&rows, "shoaltest").is_some());
        assert!(find(&rows, "shoaltest:latest").is_some());
        assert!(find(&rows, "docker.io/library/web:1").is_some());
        assert!(find(&rows, &id).is_some());
        assert!(find(&rows, "abababababab").is_some());
        assert!(find(&rows, "web").is_none(), "web means web:latest");
        assert!(find(&rows, "abab").is_none(), "short prefixes are not ids");
        let json = list_json(&rows[0]);
        assert_eq!(json["Nodes"], serde_json::json!(["n1", "n2"]));
        assert_eq!(json["Labels"][NODES_LABEL], "n1,n2");
        assert_eq!(inspect_json(&rows[0])["Id"], id);
    }

    #[test]
    fn reference_filters() {
        let rows = vec![row("sha256:1", &["shoaltest:latest"], &["n1"]), row("sha256:2", &["web:1"], &["n2"]), row("sha256:3", &[], &["n2"])];
        let ids = |f: &str| -> Vec<String> { filter(&rows, &Filters::parse(f).expect("f")).expect("filter").iter().map(|r| r.id.clone()).collect() };
        assert_eq!(ids("{}").len(), 3);
        assert_eq!(ids(r#"{"reference":["web"]}"#), ["sha256:2"]);
        assert_eq!(ids(r#"{"reference":["shoal*"]}"#), ["sha256:1"]);
        assert_eq!(ids(r#"{"reference":["web:2"]}"#), Vec::<String>::new());
        assert_eq!(ids(r#"{"dangling":["true"]}"#), ["sha256:3"]);
    }

    #[test]
    fn progress_lines_are_what_the_clients_read() {
        let e: serde_json::Value = serde_json::from_str(error_line("no registry").trim()).expect("json");
        assert_eq!(e["error"], "no registry");
        assert_eq!(e["errorDetail"]["message"], "no registry");
        let p: serde_json::Value = serde_json::from_str(progress_line("Pulling").trim()).expect("json");
        assert_eq!(p["status"], "Pulling");
    }
}
