//! `docker exec`: `POST /containers/{id}/exec` → 201 `{Id}`, `POST /exec/{id}/start`
//! (hijacked: `101 UPGRADED`, the output framed, or raw with a TTY; stdin passed on with
//! `-i`, its end as the client's half-close), `GET /exec/{id}/json` (`ExitCode`,
//! `Running`), `POST /exec/{id}/resize`. They run on the node of the container, through
//! its engine; another node forwards them there. The front node keeps no state: the exec
//! id it returns is the node's id followed by the engine's exec id ([`ExecId`]).

use super::http::{self, ApiError, Body};
use super::logs::frame;
use super::proxy::{self, Target};
use super::query::Query;
use super::DockerApi;
use futures_util::StreamExt;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use shoal_engine::docker::{ExecRequest, LogChunk};
use shoal_engine::{ContainerState, Engine, LabelFilter};
use shoal_wire::NodeId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An exec as the Docker API names it: the node that runs it and the engine's exec id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecId {
    pub node: NodeId,
    pub engine: String,
}

impl ExecId {
    /// 32 hex digits of the node id, then the engine's id (64 hex digits).
    pub fn encode(&self) -> String {
        format!("{}{}", self.node, self.engine)
    }

    pub fn parse(text: &str) -> Result<Self, ApiError> {
        let no_such = || ApiError::not_found(format!("No such exec instance: {text}"));
        if text.len() != 32 + 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(no_such());
        }
        let node = NodeId::parse(&text[..32]).ok_or_else(no_such)?;
        Ok(Self { node, engine: text[32..].to_ascii_lowercase() })
    }
}

/// The body of `POST /containers/{id}/exec`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ExecCreateBody {
    #[serde(default)]
    pub attach_stdin: bool,
    #[serde(default)]
    pub attach_stdout: bool,
    #[serde(default)]
    pub attach_stderr: bool,
    #[serde(default)]
    pub tty: bool,
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    #[serde(default)]
    pub env: Option<Vec<String>>,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub privileged: bool,
    #[serde(default)]
    pub detach_keys: Option<String>,
}

/// The engine's exec request for a create body; refuses what shoal does not do.
pub fn exec_request(body: ExecCreateBody) -> Result<ExecRequest, ApiError> {
    if body.privileged {
        return Err(ApiError::bad_request("a privileged exec (--privileged) is not supported by shoal's Docker API"));
    }
    if body.detach_keys.as_ref().is_some_and(|k| !k.is_empty()) {
        return Err(ApiError::bad_request("detachKeys are not supported by shoal's Docker API"));
    }
    let req = ExecRequest {
        cmd: body.cmd.unwrap_or_default(),
        env: body.env.unwrap_or_default(),
        working_dir: body.working_dir.filter(|d| !d.is_empty()),
        user: body.user.filter(|u| !u.is_empty()),
        tty: body.tty,
        attach_stdin: body.attach_stdin,
        attach_stdout: body.attach_stdout,
        attach_stderr: body.attach_stderr,
    };
    req.check().map_err(|why| ApiError::bad_request(format!("bad exec: {why}")))?;
    Ok(req)
}

/// The body of `POST /exec/{id}/start`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ExecStartBody {
    #[serde(default)]
    detach: bool,
    #[serde(default)]
    tty: bool,
}

/// A chunk of exec output as the client reads it: framed, or raw with a TTY.
pub fn exec_output(chunk: &LogChunk, tty: bool) -> Option<Vec<u8>> {
    if tty {
        let (LogChunk::Stdout(p) | LogChunk::Stderr(p)) = chunk;
        return Some(p.clone());
    }
    frame(chunk)
}

fn engine_error(e: shoal_engine::EngineError) -> ApiError {
    match e {
        shoal_engine::EngineError::Api { status: 404, message } => ApiError::not_found(message),
        shoal_engine::EngineError::Api { status: 409, message } => ApiError::conflict(message),
        shoal_engine::EngineError::Api { status: 400, message } => ApiError::bad_request(message),
        other => ApiError::internal(format!("this node's Docker Engine: {other}")),
    }
}

impl DockerApi {
    /// Where exec `id` runs: here, or the node in its id.
    async fn exec_target(&self, id: &ExecId) -> Result<Target, ApiError> {
        let snap = self.snapshot().await?;
        let down = crate::services::down_nodes(&snap.state, self.ctl.id(), &snap.members, snap.now_ms);
        proxy::target(&snap.state, &down, self.ctl.id(), self.forward, &format!("exec {}", &id.engine[..12.min(id.engine.len())]), id.node)
    }

    /// `POST /containers/{id}/exec`: on the container's node, 201 `{Id}`.
    pub(super) async fn exec_create(&self, key: &str, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
        let snap = self.snapshot().await?;
        let c = self.docker_container(&snap, key)?;
        let not_running = || ApiError::conflict(format!("Container {} is not running", c.id));
        let task = snap.state.container_live_task(&c).ok_or_else(not_running)?;
        let down = crate::services::down_nodes(&snap.state, self.ctl.id(), &snap.members, snap.now_ms);
        let what = format!("container {}", c.name);
        match proxy::target(&snap.state, &down, self.ctl.id(), self.forward, &what, task.node)? {
            Target::Peer(peer) => return self.forward(&peer, &what, req).await,
            Target::Here => {}
        }
        let body: ExecCreateBody = http::parse_json(&http::read_body(req.into_body()).await?)?;
        let exec = exec_request(body)?;
        let engine = self.engine().await?;
        let filter = LabelFilter { node: self.ctl.id().to_string(), service: None, task: Some(task.id) };
        let listed = engine.list(&filter).await.map_err(engine_error)?;
        let running = listed.into_iter().find(|i| i.state == ContainerState::Running).ok_or_else(not_running)?;
        let engine_exec = engine.exec_create(&running.id, &exec).await.map_err(engine_error)?;
        if engine_exec.len() != 64 || !engine_exec.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ApiError::internal(format!("the engine gave an exec id shoal cannot carry: {engine_exec:?}")));
        }
        let id = ExecId { node: self.ctl.id(), engine: engine_exec };
        Ok(http::json_response(StatusCode::CREATED, &serde_json::json!({"Id": id.encode()})))
    }

    /// `POST /exec/{id}/start`: starts the exec in the engine, then `101` and the session.
    pub(super) async fn exec_start(&self, key: &str, mut req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
        let id = ExecId::parse(key)?;
        if let Target::Peer(peer) = self.exec_target(&id).await? {
            return self.forward(&peer, &format!("exec {}", &id.engine[..12]), req).await;
        }
        if !proxy::wants_upgrade(req.headers()) {
            return Err(ApiError::bad_request("exec start needs a hijacked connection: send Connection: Upgrade and Upgrade: tcp"));
        }
        let on_upgrade = hyper::upgrade::on(&mut req);
        let raw = http::read_body(req.into_body()).await?;
        let start: ExecStartBody = if raw.iter().all(u8::is_ascii_whitespace) { ExecStartBody::default() } else { http::parse_json(&raw)? };
        if start.detach {
            return Err(ApiError::bad_request("a detached exec (docker exec -d) is not supported by shoal's Docker API yet"));
        }
        let engine = self.engine().await?;
        let session = engine.exec_start(&id.engine, start.tty).await.map_err(engine_error)?;
        let tty = start.tty;
        tokio::spawn(async move {
            let upgraded = match on_upgrade.await {
                Ok(u) => u,
                Err(e) => {
                    tracing::debug!(error = %e, "docker api: exec upgrade failed");
                    return;
                }
            };
            let (mut client_in, mut client_out) = tokio::io::split(TokioIo::new(upgraded));
            let mut output = session.output;
            let mut input = session.input;
            let mut input_open = true;
            let mut buf = vec![0u8; 8192];
            loop {
                tokio::select! {
                    item = output.next() => match item {
                        Some(Ok(chunk)) => {
                            let Some(bytes) = exec_output(&chunk, tty) else { continue };
                            if client_out.write_all(&bytes).await.is_err() || client_out.flush().await.is_err() {
                                return;
                            }
                        }
                        Some(Err(e)) => {
                            tracing::debug!(error = %e, "docker api: an exec's output ended with an error");
                            break;
                        }
                        None => break,
                    },
                    n = client_in.read(&mut buf), if input_open => match n {
                        Ok(0) | Err(_) => {
                            input_open = false;
                            let _ = input.shutdown().await;
                        }
                        Ok(n) => {
                            if input.write_all(&buf[..n]).await.is_err() {
                                input_open = false;
                            }
                        }
                    },
                }
            }
            let _ = client_out.shutdown().await;
        });
        Ok(proxy::upgraded_response())
    }

    /// `GET /exec/{id}/json`.
    pub(super) async fn exec_inspect(&self, key: &str, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
        let id = ExecId::parse(key)?;
        if let Target::Peer(peer) = self.exec_target(&id).await? {
            return self.forward(&peer, &format!("exec {}", &id.engine[..12]), req).await;
        }
        let engine = self.engine().await?;
        let status = engine.exec_inspect(&id.engine).await.map_err(engine_error)?;
        Ok(http::ok_json(&serde_json::json!({
            "ID": id.encode(),
            "Running": status.running,
            "ExitCode": status.exit_code,
            "Pid": status.pid.unwrap_or(0),
            "CanRemove": false,
            "OpenStdin": false, "OpenStdout": true, "OpenStderr": true,
        })))
    }

    /// `POST /exec/{id}/resize?h=&w=`.
    pub(super) async fn exec_resize(&self, key: &str, query: &Query, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
        let id = ExecId::parse(key)?;
        if let Target::Peer(peer) = self.exec_target(&id).await? {
            return self.forward(&peer, &format!("exec {}", &id.engine[..12]), req).await;
        }
        let size = |name: &str| -> Result<u16, ApiError> {
            let n = query.int(name)?.unwrap_or(0);
            u16::try_from(n).map_err(|_| ApiError::bad_request(format!("{name} must be 0 to 65535")))
        };
        let (h, w) = (size("h")?, size("w")?);
        let engine = self.engine().await?;
        engine.exec_resize(&id.engine, h, w).await.map_err(engine_error)?;
        Ok(http::status_only(StatusCode::OK))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_ids_carry_their_node() {
        let id = ExecId { node: NodeId([0xab; 16]), engine: "0123456789abcdef".repeat(4) };
        let text = id.encode();
        assert_eq!(text.len(), 96);
        assert!(text.starts_with(&"ab".repeat(16)));
        assert_eq!(ExecId::parse(&text), Ok(id.clone()));
        assert_eq!(ExecId::parse(&text.to_ascii_uppercase()).map(|i| i.node), Ok(id.node));
        for bad in ["", "abc", &text[..95], &format!("{text}0"), &format!("{}z", &text[..95])] {
            assert_eq!(ExecId::parse(bad).expect_err(bad).status, StatusCode::NOT_FOUND, "{bad}");
        }
    }

    #[test]
    fn create_bodies_become_engine_requests() {
        let body: ExecCreateBody = serde_json::from_value(serde_json::json!({
            "AttachStdout": true, "AttachStderr": true, "Cmd": ["sh", "-c", "echo hi; exit 4"], "Tty": false, "Env": ["A=1"], "WorkingDir": ""
        }))
        .expect("body");
        let r = exec_request(body).expect("ok");
        assert_eq!(r.cmd, ["sh", "-c", "echo hi; exit 4"]);
        assert_eq!((r.attach_stdout, r.attach_stderr, r.attach_stdin, r.tty, r.working_dir), (true, true, false, false, None));
        let refuse = |v: serde_json::Value, says: &str| {
            let e = exec_request(serde_json::from_value(v).expect("body")).expect_err(says);
            assert!(e.status == StatusCode::BAD_REQUEST && e.message.contains(says), "{says}: {}", e.message);
        };
        refuse(serde_json::json!({"Cmd": []}), "no command");
        refuse(serde_json::json!({"Cmd": ["sh"], "Privileged": true}), "privileged");
        refuse(serde_json::json!({"Cmd": ["sh"], "DetachKeys": "ctrl-x"}), "detachKeys");
    }

    #[test]
    fn output_is_framed_without_a_tty_and_raw_with_one() {
        let c = LogChunk::Stderr(b"oops\n".to_vec());
        assert_eq!(exec_output(&c, false), Some(b"\x02\x00\x00\x00\x00\x00\x00\x05oops\n".to_vec()));
        assert_eq!(exec_output(&c, true), Some(b"oops\n".to_vec()));
    }
}
