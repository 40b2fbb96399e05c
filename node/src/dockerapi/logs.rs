//! `GET /containers/{id}/logs` for a container that runs on the node serving the request:
//! the node's own engine streams the output, framed as Docker frames it without a TTY
//! (`[stream, 0, 0, 0, size as big-endian u32]` then the bytes; 1 stdout, 2 stderr),
//! chunked and flushed as it comes, and stopped when the client goes. A request about a
//! container on another node is forwarded to that node (see [`super::proxy`]).

use super::http::{ApiError, Body};
use super::query::Query;
use super::view::Origin;
use super::proxy::{self, Target};
use super::DockerApi;
use futures_util::StreamExt;
use hyper::Response;
use shoal_engine::docker::{LogChunk, LogsRequest};
use shoal_engine::{ContainerId, DockerConfig, DockerEngine};
use std::sync::Arc;

/// One chunk in Docker's multiplexed-stream framing.
pub fn frame(chunk: &LogChunk) -> Option<Vec<u8>> {
    let (stream, payload) = match chunk {
        LogChunk::Stdout(p) => (1u8, p),
        LogChunk::Stderr(p) => (2u8, p),
    };
    let len = u32::try_from(payload.len()).ok()?;
    let mut out = Vec::with_capacity(8 + payload.len());
    out.extend_from_slice(&[stream, 0, 0, 0]);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(payload);
    Some(out)
}

/// The logs request in the query: `stdout`, `stderr` (at least one), `follow`,
/// `timestamps`, `tail` (`all` or a number; negative is all, as in Docker), `since` (Unix
/// seconds, maybe with a fraction).
pub fn logs_request(query: &Query) -> Result<LogsRequest, ApiError> {
    let (stdout, stderr) = (query.bool("stdout"), query.bool("stderr"));
    if !stdout && !stderr {
        return Err(ApiError::bad_request("Bad parameters: you must choose at least one stream"));
    }
    let tail = match query.get("tail").map(str::trim) {
        None | Some("" | "all") => None,
        Some(n) => match n.parse::<i64>() {
            Ok(n) if n < 0 => None,
            Ok(n) => Some(n as u64),
            Err(_) => return Err(ApiError::bad_request(format!("invalid tail {n:?}: give a number of lines or all"))),
        },
    };
    let since_s = match query.get("since").map(str::trim) {
        None | Some("") => 0,
        Some(t) => match t.parse::<f64>() {
            Ok(s) if s.is_finite() && (0.0..=f64::from(i32::MAX)).contains(&s) => s as i32,
            _ => return Err(ApiError::bad_request(format!("invalid since {t:?}: give a Unix time in seconds"))),
        },
    };
    if query.get("until").is_some_and(|u| !u.trim().is_empty()) {
        return Err(ApiError::bad_request("the until parameter of logs is not supported by shoal's Docker API yet"));
    }
    Ok(LogsRequest { follow: query.bool("follow"), stdout, stderr, timestamps: query.bool("timestamps"), tail, since_s })
}

impl DockerApi {
    /// This node's engine, as the agent's runner reaches it.
    pub(super) async fn engine(&self) -> Result<DockerEngine, ApiError> {
        let cfg = DockerConfig::default();
        let connected = match &self.ctl.config().docker_socket {
            Some(path) => DockerEngine::connect_unix(&path.to_string_lossy(), cfg).await,
            None => DockerEngine::connect_local(cfg).await,
        };
        connected.map_err(|e| ApiError::internal(format!("cannot reach this node's Docker Engine: {e}")))
    }

    pub(super) async fn logs(self: Arc<Self>, key: &str, query: &Query, http_req: hyper::Request<hyper::body::Incoming>) -> Result<Response<Body>, ApiError> {
        let req = logs_request(query)?;
        let snap = self.snapshot().await?;
        let entry = snap.view().find(key)?;
        let task = match &entry.origin {
            Origin::Container { task, .. } => task.and_then(|t| snap.state.tasks.get(&t)),
            Origin::Task { task, .. } => snap.state.tasks.get(task),
        };
        let gone = || {
            ApiError::conflict(format!(
                "the logs of {} are gone: shoal removes the engine's container when a container is stopped (it starts a new one on start)",
                entry.name
            ))
        };
        let Some(task) = task else {
            let started = snap.state.containers.get(&entry.id).is_some_and(|c| c.started_ms.is_some());
            if started {
                return Err(gone());
            }
            // Never started: nothing was written yet.
            return Ok(Response::new(Body::empty()));
        };
        let down = crate::services::down_nodes(&snap.state, self.ctl.id(), &snap.members, snap.now_ms);
        let what = format!("container {}", entry.name);
        if let Target::Peer(peer) = proxy::target(&snap.state, &down, self.ctl.id(), self.forward, &what, task.node)? {
            return self.forward(&peer, &what, http_req).await;
        }
        let Some(engine_id) = task.container.clone().filter(|_| task.observed != Some(shoal_engine::TaskState::Shutdown)) else {
            if task.observed.is_none() {
                // Placed, not created yet: nothing was written yet.
                return Ok(Response::new(Body::empty()));
            }
            return Err(gone());
        };
        let engine = self.engine().await?;
        let mut stream = engine.logs(&ContainerId(engine_id.0), &req);
        let (tx, body) = Body::stream();
        tokio::spawn(async move {
            loop {
                let item = tokio::select! {
                    () = tx.closed() => return,
                    item = stream.next() => item,
                };
                match item {
                    None => return,
                    Some(Ok(chunk)) => {
                        let Some(bytes) = frame(&chunk) else { continue };
                        if !tx.send(bytes).await {
                            return;
                        }
                    }
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "docker api: the engine's log stream ended with an error");
                        return;
                    }
                }
            }
        });
        Ok(Response::new(body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::StatusCode;

    #[test]
    fn chunks_are_framed_as_docker_frames_them() {
        assert_eq!(frame(&LogChunk::Stdout(b"out\n".to_vec())), Some(b"\x01\x00\x00\x00\x00\x00\x00\x04out\n".to_vec()));
        assert_eq!(frame(&LogChunk::Stderr(b"err\n".to_vec())), Some(b"\x02\x00\x00\x00\x00\x00\x00\x04err\n".to_vec()));
        assert_eq!(frame(&LogChunk::Stdout(Vec::new())), Some(vec![1, 0, 0, 0, 0, 0, 0, 0]));
    }

    #[test]
    fn the_query_is_read_like_dockers() {
        let q = |text: &str| Query::parse(Some(text)).expect("query");
        let r = logs_request(&q("stdout=1&stderr=1&follow=1&tail=10&since=1700000000.5&timestamps=true")).expect("ok");
        assert_eq!(r, LogsRequest { follow: true, stdout: true, stderr: true, timestamps: true, tail: Some(10), since_s: 1_700_000_000 });
        assert_eq!(logs_request(&q("stdout=1&tail=all")).expect("all").tail, None);
        assert_eq!(logs_request(&q("stdout=1&tail=-1")).expect("negative").tail, None);
        for (bad, says) in [("", "at least one stream"), ("stdout=1&tail=x", "invalid tail"), ("stdout=1&since=soon", "invalid since"), ("stderr=1&until=5", "until")] {
            let e = logs_request(&q(bad)).expect_err(bad);
            assert!(e.status == StatusCode::BAD_REQUEST && e.message.contains(says), "{bad}: {}", e.message);
        }
    }
}
