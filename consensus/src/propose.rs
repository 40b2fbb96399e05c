//! The one safe way to put a command into the log: check its encoded size first.
//!
//! A command larger than [`MAX_COMMAND_BYTES`] must never reach `Raft::client_write`: its log
//! entry could exceed [`crate::codec::MAX_ENTRY_BYTES`], which the log store would fail to
//! write, and a failed log write stops the node.

use openraft::error::ClientWriteError;
use openraft::error::RaftError;
use openraft::raft::ClientWriteResponse;
use openraft::storage::RaftStateMachine;

use crate::codec;
use crate::codec::CodecError;
use crate::codec::MAX_COMMAND_BYTES;
use crate::state::Command;
use crate::types::ShoalRaft;
use crate::types::TypeConfig;

/// Why a command was not committed.
#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    /// The command encodes to more than [`MAX_COMMAND_BYTES`]; nothing was proposed.
    #[error("command too large to propose: {0}")]
    TooLarge(#[source] CodecError),
    /// Raft refused or failed the write (not the leader, lease not yet valid, shut down...).
    #[error(transparent)]
    Raft(#[from] RaftError<TypeConfig, ClientWriteError<TypeConfig>>),
}

/// Checks `cmd`'s size, then writes it through `raft` (which must be the leader) and waits
/// until it is committed and applied. The state machine's answer is in the response's `data`.
pub async fn propose<SM>(
    raft: &ShoalRaft<SM>,
    cmd: Command,
) -> Result<ClientWriteResponse<TypeConfig>, ProposeError>
where
    SM: RaftStateMachine<TypeConfig>,
{
    codec::encode::<_, MAX_COMMAND_BYTES>(&cmd).map_err(ProposeError::TooLarge)?;
    Ok(raft.client_write(cmd).await?)
}

/// Like [`propose`], but waits out the moment right after an election when the new leader
/// refuses writes with "forward to leader: none known" (its lease is not yet acknowledged by
/// a quorum): retries such refusals up to `attempts` times, `pause` apart. Any other error
/// is returned at once; after the last attempt the refusal itself is returned.
pub async fn propose_when_ready<SM>(
    raft: &ShoalRaft<SM>,
    cmd: Command,
    attempts: u32,
    pause: std::time::Duration,
) -> Result<ClientWriteResponse<TypeConfig>, ProposeError>
where
    SM: RaftStateMachine<TypeConfig>,
{
    let mut tries = 0;
    loop {
        tries += 1;
        match propose(raft, cmd.clone()).await {
            Err(ProposeError::Raft(RaftError::APIError(ClientWriteError::ForwardToLeader(f))))
                if f.leader_id.is_none() && tries < attempts =>
            {
                tokio::time::sleep(pause).await;
            }
            other => return other,
        }
    }
}
