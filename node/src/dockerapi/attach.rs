//! `POST /containers/{id}/attach?stream=1&stdout=1&stderr=1[&stdin=1]` (`docker run`
//! without `-d`, `docker attach`): answered `101 UPGRADED` at once, then the container's
//! output on the hijacked connection in Docker's 8-byte frames, until the container exits.
//!
//! The CLI attaches *before* it starts the container, and a container only gets an engine
//! container once its start is replicated and its node's runner has run it; a fast command
//! may be over by then. So an attach is not the engine's attach: the node that runs the
//! container follows the engine's logs from the container's very beginning until it exits,
//! and no output is lost. An attach that comes once the container runs (`docker attach`)
//! gets only what it writes from then on, as with Docker. Whichever node the client asked
//! first decides which of the two it is, waits for the container to be placed, then serves
//! it itself or relays to the node that runs it (over the forwarded Docker API, told with
//! [`FROM_PARAM`]). Stdin is not passed on: shoal
//! refuses an open stdin (`-i`) at create, so no container reads one; input from the
//! client is read and dropped (its end is the client's half-close).

use super::http::{ApiError, Body};
use super::logs::frame;
use super::proxy::{self, Target};
use super::query::Query;
use super::DockerApi;
use futures_util::StreamExt;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use shoal_engine::docker::{LogChunk, LogsRequest};
use shoal_engine::{ContainerState, Engine, LabelFilter, TaskState};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// How often an attach looks again for the container's placement, and for its engine
/// container on its node.
const PLACEMENT_POLL: Duration = Duration::from_millis(200);
const ENGINE_POLL: Duration = Duration::from_millis(100);
/// How long an attach waits for its container to start (and reach its engine) before it
/// gives up: the client may be gone without a word (a half-closed connection cannot tell).
pub const START_WAIT: Duration = Duration::from_secs(600);

/// Query parameter a front node adds to a forwarded attach: `start` (all output since the
/// container began) or `now` (only new output). Read only on forwarded requests.
pub const FROM_PARAM: &str = "shoal-from";

/// What an attach streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttachOptions {
    pub stdout: bool,
    pub stderr: bool,
    /// All output since the container began (an attach before the start, as `docker run`
    /// does), else only what comes from now on.
    pub from_start: bool,
    /// The client sends input (read and dropped: shoal's containers have no open stdin).
    pub stdin: bool,
}

/// The query of an attach: `stream=1` (only live streaming is served; `logs=1` alone is
/// `docker logs`' job), `stdout`, `stderr`, `stdin`.
pub fn attach_options(query: &Query) -> Result<AttachOptions, ApiError> {
    if !query.bool("stream") {
        return Err(ApiError::bad_request("shoal's attach streams only (stream=1); use docker logs for past output"));
    }
    if query.get("detachKeys").is_some_and(|k| !k.is_empty()) {
        return Err(ApiError::bad_request("detachKeys are not supported by shoal's Docker API (there is no TTY to detach from)"));
    }
    Ok(AttachOptions { stdout: query.bool("stdout"), stderr: query.bool("stderr"), from_start: true, stdin: query.bool("stdin") })
}

/// The path and query of the attach a front node forwards: the client's, with its own
/// [`FROM_PARAM`] (a client's is dropped).
fn forwarded_path(path: &str, query: Option<&str>, from: &str) -> String {
    let mut pairs: Vec<&str> = query.unwrap_or("").split('&').filter(|p| !p.is_empty() && !p.starts_with(FROM_PARAM)).collect();
    let ours = format!("{FROM_PARAM}={from}");
    pairs.push(&ours);
    format!("{path}?{}", pairs.join("&"))
}

/// A line on the stderr stream, for what goes wrong after the `101` (no HTTP error can be
/// sent any more).
fn stderr_line(text: &str) -> Vec<u8> {
    frame(&LogChunk::Stderr(format!("shoal: {text}\n").into_bytes())).unwrap_or_default()
}

impl DockerApi {
    /// Answers `101` and starts the session; refuses at once what cannot be attached.
    pub(super) async fn attach(self: Arc<Self>, key: &str, query: &Query, mut req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
        let opts = attach_options(query)?;
        if !proxy::wants_upgrade(req.headers()) {
            return Err(ApiError::bad_request("attach needs a hijacked connection: send Connection: Upgrade and Upgrade: tcp"));
        }
        let mut opts = opts;
        let snap = self.snapshot().await?;
        let c = self.docker_container(&snap, key)?;
        opts.from_start = match query.get(FROM_PARAM).filter(|_| !self.forward) {
            Some(from) => from != "now",
            // Running already: this is not the attach of a `docker run`.
            None => !snap.state.container_live_task(&c).is_some_and(|t| t.observed == Some(TaskState::Running)),
        };
        let from = if opts.from_start { "start" } else { "now" };
        let path = forwarded_path(req.uri().path(), req.uri().query(), from);
        let on_upgrade = hyper::upgrade::on(&mut req);
        let api = self.clone();
        tokio::spawn(async move {
            match on_upgrade.await {
                Ok(upgraded) => api.attach_session(c.id, c.name, opts, path, TokioIo::new(upgraded)).await,
                Err(e) => tracing::debug!(error = %e, "docker api: attach upgrade failed"),
            }
        });
        Ok(proxy::upgraded_response())
    }

    /// Waits for the container to be placed, then streams it here or relays to its node.
    async fn attach_session<S>(self: Arc<Self>, id: String, name: String, opts: AttachOptions, path: String, io: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (mut input, mut output) = tokio::io::split(io);
        let mut input_open = true;
        let mut buf = vec![0u8; 8192];
        let deadline = tokio::time::Instant::now() + START_WAIT;
        let (task, node) = loop {
            if tokio::time::Instant::now() >= deadline {
                let _ = output.write_all(&stderr_line(&format!("container {name} did not start within {START_WAIT:?}; attach again once it runs"))).await;
                return;
            }
            let Ok(snap) = self.snapshot().await else { return };
            let Some(c) = snap.state.containers.get(&id) else { return };
            if let Some(t) = snap.state.container_live_task(c) {
                if let Some(TaskState::Failed { reason }) = &t.observed {
                    let _ = output.write_all(&stderr_line(&format!("container {name} could not run: {reason}"))).await;
                    return;
                }
                let down = crate::services::down_nodes(&snap.state, self.ctl.id(), &snap.members, snap.now_ms);
                match proxy::target(&snap.state, &down, self.ctl.id(), self.forward, &format!("container {name}"), t.node) {
                    Ok(target) => break (t.id, target),
                    Err(e) => {
                        let _ = output.write_all(&stderr_line(&e.message)).await;
                        return;
                    }
                }
            }
            // Not started or not placed yet: wait, and notice a client that goes away.
            tokio::select! {
                () = tokio::time::sleep(PLACEMENT_POLL) => {}
                n = input.read(&mut buf), if input_open => match n {
                    // The CLI half-closes even without stdin: the end of input is not the
                    // end of the client, a failed read is.
                    Ok(0) => input_open = false,
                    Err(_) => return,
                    Ok(_) => {}
                },
            }
        };
        match node {
            Target::Here => {
                self.attach_here(task, &name, opts, input, input_open, output).await;
            }
            Target::Peer(peer) => match self.open_upgraded(&peer, &format!("container {name}"), &path).await {
                Ok(remote) => {
                    let io = input.unsplit(output);
                    proxy::splice(io, TokioIo::new(remote)).await;
                }
                Err(e) => {
                    let _ = output.write_all(&stderr_line(&e.message)).await;
                }
            },
        }
    }

    /// On the container's node: finds its engine container as soon as it has started,
    /// then follows its logs from the start until it exits.
    async fn attach_here<R, W>(&self, task: u64, name: &str, opts: AttachOptions, mut input: R, mut input_open: bool, mut output: W)
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let engine = match self.engine().await {
            Ok(e) => e,
            Err(e) => {
                let _ = output.write_all(&stderr_line(&e.message)).await;
                return;
            }
        };
        let filter = LabelFilter { node: self.ctl.id().to_string(), service: None, task: Some(task) };
        let mut polls = 0u32;
        let deadline = tokio::time::Instant::now() + START_WAIT;
        let engine_id = loop {
            if tokio::time::Instant::now() >= deadline {
                let _ = output.write_all(&stderr_line(&format!("container {name} did not start within {START_WAIT:?}"))).await;
                return;
            }
            if let Ok(found) = engine.list(&filter).await {
                if let Some(info) = found.into_iter().find(|i| !matches!(i.state, ContainerState::Created)) {
                    break info.id;
                }
            }
            polls += 1;
            if polls % 10 == 0 {
                // Every second: is the task still meant to run here?
                let Ok(snap) = self.snapshot().await else { return };
                let live = snap.state.tasks.get(&task).filter(|t| t.is_live());
                match live.map(|t| &t.observed) {
                    None => return,
                    Some(Some(TaskState::Failed { reason })) => {
                        let _ = output.write_all(&stderr_line(&format!("container {name} could not run: {reason}"))).await;
                        return;
                    }
                    Some(_) => {}
                }
            }
            tokio::time::sleep(ENGINE_POLL).await;
        };
        let tail = if opts.from_start { None } else { Some(0) };
        let req = LogsRequest { follow: true, stdout: opts.stdout, stderr: opts.stderr, timestamps: false, tail, since_s: 0 };
        let mut logs = engine.logs(&engine_id, &req);
        let mut buf = vec![0u8; 8192];
        loop {
            tokio::select! {
                item = logs.next() => match item {
                    Some(Ok(chunk)) => {
                        let Some(bytes) = frame(&chunk) else { continue };
                        if output.write_all(&bytes).await.is_err() || output.flush().await.is_err() {
                            return; // the client went away
                        }
                    }
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "docker api: the engine's log stream of an attach ended with an error");
                        break;
                    }
                    None => break, // the container exited
                },
                n = input.read(&mut buf), if input_open => match n {
                    Ok(0) => input_open = false,
                    Err(_) => return,
                    Ok(_) => {} // no container of shoal reads stdin (-i is refused)
                },
            }
        }
        let _ = output.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_is_read_like_the_clis() {
        let q = |text: &str| Query::parse(Some(text)).expect("query");
        assert_eq!(
            attach_options(&q("stream=1&stdout=1&stderr=1")),
            Ok(AttachOptions { stdout: true, stderr: true, from_start: true, stdin: false })
        );
        assert_eq!(attach_options(&q("stream=true&stdin=1&stdout=1")).map(|o| (o.stdin, o.stderr)), Ok((true, false)));
        assert!(attach_options(&q("logs=1&stdout=1")).expect_err("no stream").message.contains("stream=1"));
        assert!(attach_options(&q("stream=1&detachKeys=ctrl-p")).is_err());
    }

    #[test]
    fn a_forwarded_attach_says_where_its_output_starts() {
        assert_eq!(
            forwarded_path("/v1.41/containers/x/attach", Some("stream=1&stdout=1&shoal-from=now"), "start"),
            "/v1.41/containers/x/attach?stream=1&stdout=1&shoal-from=start"
        );
        assert_eq!(forwarded_path("/containers/x/attach", None, "now"), "/containers/x/attach?shoal-from=now");
    }

    #[test]
    fn errors_after_the_upgrade_go_to_stderr_as_a_frame() {
        let f = stderr_line("n3 is down");
        assert_eq!(&f[..8], &[2, 0, 0, 0, 0, 0, 0, 18]);
        assert_eq!(&f[8..], b"shoal: n3 is down\n");
    }
}
