//! Container logs on the real engine (`docker logs`): the container's stdout and stderr
//! chunks as the engine frames them, from the start or the last lines, followed or not.
//! The node's Docker API streams them for containers that run on its node.

use super::{map_err, DockerEngine};
use crate::types::ContainerId;
use crate::EngineError;
use bollard::container::LogOutput;
use bollard::query_parameters::LogsOptionsBuilder;
use futures_util::{Stream, StreamExt};
use std::pin::Pin;

/// Which logs to read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogsRequest {
    /// Keep streaming new output until the container ends (or the stream is dropped).
    pub follow: bool,
    pub stdout: bool,
    pub stderr: bool,
    /// Prefix each line with its RFC 3339 time, as Docker does.
    pub timestamps: bool,
    /// Only the last lines; `None`: all.
    pub tail: Option<u64>,
    /// Only output since this time (seconds since the Unix epoch); 0: all.
    pub since_s: i32,
}

/// One chunk of a container's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogChunk {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
}

/// A stream of log chunks; dropping it closes the engine's connection.
pub type LogStream = Pin<Box<dyn Stream<Item = Result<LogChunk, EngineError>> + Send>>;

impl DockerEngine {
    /// The logs of container `id` (the engine's id). The request's timeout bounds only the
    /// wait for the engine's answer, not a followed stream.
    pub fn logs(&self, id: &ContainerId, req: &LogsRequest) -> LogStream {
        let tail = req.tail.map_or_else(|| "all".to_string(), |n| n.to_string());
        let options = LogsOptionsBuilder::default()
            .follow(req.follow)
            .stdout(req.stdout)
            .stderr(req.stderr)
            .timestamps(req.timestamps)
            .since(req.since_s)
            .tail(&tail)
            .build();
        let stream = self.docker.logs(&id.0, Some(options)).filter_map(|item| async move {
            match item {
                Ok(LogOutput::StdOut { message } | LogOutput::Console { message }) => Some(Ok(LogChunk::Stdout(message.to_vec()))),
                Ok(LogOutput::StdErr { message }) => Some(Ok(LogChunk::Stderr(message.to_vec()))),
                Ok(LogOutput::StdIn { .. }) => None,
                Err(e) => Some(Err(map_err(e))),
            }
        });
        Box::pin(stream)
    }
}
