//! Exec on the real engine (`docker exec`): create a process in a running container, start
//! it attached (its output as log chunks, its stdin as a writer), read its exit code, resize
//! its TTY. The node's Docker API serves `POST /containers/{id}/exec` and `/exec/{id}/…`
//! with these for containers that run on its node (like logs, not on the `Engine` trait:
//! only the real engine runs processes).

use super::{map_err, DockerEngine};
use crate::docker::logs::{LogChunk, LogStream};
use crate::types::ContainerId;
use crate::EngineError;
use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use bollard::query_parameters::ResizeExecOptions;
use futures_util::StreamExt;
use std::pin::Pin;
use tokio::io::AsyncWrite;

/// Most words of an exec command, and most bytes of its text (command, env, dir, user).
pub const EXEC_MAX_WORDS: usize = 256;
pub const EXEC_MAX_TEXT_BYTES: usize = 64 * 1024;

/// The process to run in a container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecRequest {
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    pub tty: bool,
    pub attach_stdin: bool,
    pub attach_stdout: bool,
    pub attach_stderr: bool,
}

impl ExecRequest {
    /// Bounds and sanity: a command, within [`EXEC_MAX_WORDS`] and [`EXEC_MAX_TEXT_BYTES`],
    /// no NUL bytes.
    pub fn check(&self) -> Result<(), String> {
        if self.cmd.is_empty() || self.cmd[0].is_empty() {
            return Err("no command given".into());
        }
        if self.cmd.len() > EXEC_MAX_WORDS || self.env.len() > EXEC_MAX_WORDS {
            return Err(format!("at most {EXEC_MAX_WORDS} command words and environment entries"));
        }
        let texts = self.cmd.iter().chain(&self.env).chain(&self.working_dir).chain(&self.user);
        let (mut bytes, mut nul) = (0usize, false);
        for t in texts {
            bytes += t.len();
            nul |= t.contains('\0');
        }
        if nul {
            return Err("the command, environment, directory and user cannot hold NUL bytes".into());
        }
        if bytes > EXEC_MAX_TEXT_BYTES {
            return Err(format!("the command and environment are longer than {} KiB", EXEC_MAX_TEXT_BYTES / 1024));
        }
        Ok(())
    }
}

/// What the engine says of an exec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecStatus {
    pub running: bool,
    pub exit_code: Option<i64>,
    pub pid: Option<i64>,
}

/// A started exec: its output (stdout and stderr chunks; with a TTY everything is stdout)
/// and its stdin (a writer, closed to end the input).
pub struct ExecSession {
    pub output: LogStream,
    pub input: Pin<Box<dyn AsyncWrite + Send>>,
}

impl DockerEngine {
    /// Creates an exec in container `id` (the engine's id); gives the engine's exec id.
    pub async fn exec_create(&self, id: &ContainerId, req: &ExecRequest) -> Result<String, EngineError> {
        req.check().map_err(|reason| EngineError::Api { status: 400, message: reason })?;
        let options = CreateExecOptions::<String> {
            attach_stdin: Some(req.attach_stdin),
            attach_stdout: Some(req.attach_stdout),
            attach_stderr: Some(req.attach_stderr),
            tty: Some(req.tty),
            env: (!req.env.is_empty()).then(|| req.env.clone()),
            cmd: Some(req.cmd.clone()),
            user: req.user.clone(),
            working_dir: req.working_dir.clone(),
            ..Default::default()
        };
        let created = self.docker.create_exec(&id.0, options).await.map_err(map_err)?;
        Ok(created.id)
    }

    /// Starts exec `exec_id` attached.
    pub async fn exec_start(&self, exec_id: &str, tty: bool) -> Result<ExecSession, EngineError> {
        let options = StartExecOptions { detach: false, tty, output_capacity: None };
        match self.docker.start_exec(exec_id, Some(options)).await.map_err(map_err)? {
            StartExecResults::Attached { output, input } => {
                let output = output.filter_map(|item| async move {
                    match item {
                        Ok(LogOutput::StdOut { message } | LogOutput::Console { message }) => Some(Ok(LogChunk::Stdout(message.to_vec()))),
                        Ok(LogOutput::StdErr { message }) => Some(Ok(LogChunk::Stderr(message.to_vec()))),
                        Ok(LogOutput::StdIn { .. }) => None,
                        Err(e) => Some(Err(map_err(e))),
                    }
                });
                Ok(ExecSession { output: Box::pin(output), input })
            }
            StartExecResults::Detached => Err(EngineError::Api { status: 500, message: "the engine started the exec detached".into() }),
        }
    }

    /// Whether exec `exec_id` runs, and its exit code once it ended.
    pub async fn exec_inspect(&self, exec_id: &str) -> Result<ExecStatus, EngineError> {
        let r = self.docker.inspect_exec(exec_id).await.map_err(map_err)?;
        Ok(ExecStatus { running: r.running.unwrap_or(false), exit_code: r.exit_code, pid: r.pid })
    }

    /// Resizes the TTY of exec `exec_id`.
    pub async fn exec_resize(&self, exec_id: &str, height: u16, width: u16) -> Result<(), EngineError> {
        self.docker.resize_exec(exec_id, ResizeExecOptions { h: i32::from(height), w: i32::from(width) }).await.map_err(map_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_requests_are_bounded() {
        let ok = ExecRequest { cmd: vec!["sh".into(), "-c".into(), "echo hi".into()], attach_stdout: true, ..Default::default() };
        assert_eq!(ok.check(), Ok(()));
        assert!(ExecRequest::default().check().is_err(), "no command");
        let nul = ExecRequest { cmd: vec!["a\0b".into()], ..Default::default() };
        assert!(nul.check().is_err());
        let long = ExecRequest { cmd: vec!["x".repeat(EXEC_MAX_TEXT_BYTES + 1)], ..Default::default() };
        assert!(long.check().is_err());
        let many = ExecRequest { cmd: vec!["x".into(); EXEC_MAX_WORDS + 1], ..Default::default() };
        assert!(many.check().is_err());
    }
}
