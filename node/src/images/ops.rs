//! `shoal image ls` and `shoal image push`, as the local API runs them: ask every member
//! over the image protocol (at once, each bounded), merge, report who could not be asked.

use super::proto::{self, Peer};
use super::{ImageInfo, ImageStore};
use crate::control::Control;
use anyhow::{anyhow, bail, Result};
use serde::{Deserialize, Serialize};
use shoal_cluster::constraint::{Constraint, NodeFields};
use shoal_discovery::{MemberState, MemberView};
use std::collections::BTreeMap;
use std::time::Duration;

/// Bound on asking one node for its list.
const LIST_TIMEOUT: Duration = Duration::from_secs(5);

/// One image and the nodes that hold it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRow {
    pub id: String,
    pub tags: Vec<String>,
    pub size_bytes: u64,
    /// Names of the nodes holding it, sorted.
    pub nodes: Vec<String>,
}

/// What `image ls` found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageListing {
    pub images: Vec<ImageRow>,
    /// Nodes that could not be asked, with why.
    pub unreachable: Vec<String>,
}

/// The outcome of `image push` for one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushRow {
    pub node: String,
    /// `sent`, `already there`, or `failed: …`.
    pub result: String,
}

struct MemberFields<'a>(&'a MemberView, &'a BTreeMap<String, String>);

impl NodeFields for MemberFields<'_> {
    fn label(&self, key: &str) -> Option<&str> {
        self.1.get(key).map(String::as_str)
    }
    fn hostname(&self) -> &str {
        self.0.name.as_deref().unwrap_or("")
    }
    fn arch(&self) -> &str {
        &self.0.resources.arch
    }
    fn id_text(&self) -> String {
        self.0.id.to_string()
    }
}

fn name_of(m: &MemberView) -> String {
    m.name.clone().unwrap_or_else(|| m.id.short())
}

/// The other members in the cluster that are alive.
async fn others(ctl: &Control) -> Result<Vec<MemberView>> {
    let members = ctl.membership().members().await.map_err(|_| anyhow!("the agent is shutting down"))?;
    // In the cluster: what the member gossips, or what the replicated state says (a node
    // registered and not revoked), whichever is known first: right after a node joins, its
    // gossiped fact can be a moment behind the state this node already holds.
    let state = match ctl.running() {
        Some(running) => running.state().await.ok(),
        None => None,
    };
    let registered = |m: &MemberView| state.as_ref().is_some_and(|s| s.nodes.contains_key(&m.id) && !s.revoked.contains(&m.id));
    Ok(members.into_iter().filter(|m| !m.is_self && (m.in_cluster || registered(m))).collect())
}

/// Every image of every reachable node.
pub async fn list(ctl: &Control) -> Result<ImageListing> {
    let running = ctl.running().ok_or_else(|| anyhow!("this node is not part of the cluster yet; see `shoal status`"))?;
    let mut held: BTreeMap<String, ImageRow> = BTreeMap::new();
    let mut unreachable = Vec::new();
    let mut add = |node: String, images: Vec<ImageInfo>| {
        for i in images {
            let row = held.entry(i.id.0.clone()).or_insert_with(|| ImageRow { id: i.id.0.clone(), tags: vec![], size_bytes: i.size_bytes, nodes: vec![] });
            for t in i.tags {
                if !row.tags.contains(&t) {
                    row.tags.push(t);
                }
            }
            row.nodes.push(node.clone());
        }
    };
    match ctl.images().list().await {
        Ok(images) => add(ctl.config().name.clone(), images),
        Err(e) => unreachable.push(format!("{} (this node's engine: {e})", ctl.config().name)),
    }
    let members = others(ctl).await?;
    let tls = &running.image_tls;
    let asked = futures_util::future::join_all(members.iter().map(|m| async move {
        if m.state != MemberState::Alive {
            return (m, Err(m.state.as_str().to_string()));
        }
        let peer = Peer { id: m.id, addr: m.addr };
        match tokio::time::timeout(LIST_TIMEOUT, proto::list(tls, peer)).await {
            Ok(Ok((images, _))) => (m, Ok(images)),
            Ok(Err(e)) => (m, Err(e.to_string())),
            Err(_) => (m, Err(format!("no answer within {LIST_TIMEOUT:?}"))),
        }
    }))
    .await;
    for (m, result) in asked {
        match result {
            Ok(images) => add(name_of(m), images),
            Err(why) => unreachable.push(format!("{} ({why})", name_of(m))),
        }
    }
    let mut images: Vec<ImageRow> = held.into_values().collect();
    for row in &mut images {
        row.tags.sort();
        row.nodes.sort();
    }
    images.sort_by(|a, b| a.tags.cmp(&b.tags).then(a.id.cmp(&b.id)));
    Ok(ImageListing { images, unreachable })
}

/// Sends `reference` from this node's engine to every other alive node matching
/// `constraints`.
pub async fn push(ctl: &Control, reference: &str, constraints: &[String]) -> Result<Vec<PushRow>> {
    let running = ctl.running().ok_or_else(|| anyhow!("this node is not part of the cluster yet; see `shoal status`"))?;
    let constraints: Vec<Constraint> = constraints.iter().map(|c| Constraint::parse(c)).collect::<Result<_, _>>()?;
    let store = ctl.images();
    let image = store
        .resolve(reference)
        .await
        .map_err(|e| anyhow!("this node's engine: {e}"))?
        .ok_or_else(|| anyhow!("this node has no image {reference}; push it from a node that has it (`shoal image ls` shows which)"))?;
    let state = running.state().await?;
    let members = others(ctl).await?;
    let targets: Vec<&MemberView> = members
        .iter()
        .filter(|m| {
            let labels = state.nodes.get(&m.id).map_or(&m.labels, |r| &r.labels);
            constraints.iter().all(|c| c.matches(&MemberFields(m, labels)))
        })
        .collect();
    if targets.is_empty() {
        bail!("no other node of the cluster matches; nothing to push to");
    }
    let tls = &running.image_tls;
    let (image, store) = (&image, store.as_ref());
    let rows = futures_util::future::join_all(targets.iter().map(|m| async move {
        let result = if m.state != MemberState::Alive {
            format!("failed: the node is {}", m.state.as_str())
        } else {
            match proto::push(tls, Peer { id: m.id, addr: m.addr }, image, store).await {
                Ok(true) => "sent".to_string(),
                Ok(false) => "already there".to_string(),
                Err(e) => format!("failed: {e}"),
            }
        };
        PushRow { node: name_of(m), result }
    }))
    .await;
    Ok(rows)
}
