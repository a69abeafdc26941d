//! The data directory: who owns it, and where each store lives inside it.
//!
//! ```text
//!   <data-dir>/weft-node.json   identity: format, cluster name, node id
//!   <data-dir>/raft/            sled database: Raft log, vote, committed index
//!   <data-dir>/snapshots/       snapshot files
//! ```
//!
//! A node refuses a directory that belongs to another cluster or node, or that holds files
//! but no identity (it is somebody else's). It never deletes anything in it on its own.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::NodeId;

const IDENTITY_FILE: &str = "weft-node.json";
const IDENTITY_FORMAT: u32 = 1;

/// The identity recorded in a data directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// Format of this file.
    pub format: u32,
    /// The cluster this directory belongs to.
    pub cluster: String,
    /// The node this directory belongs to.
    pub node_id: NodeId,
}

/// Why a data directory was refused. Nothing in it was changed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The directory cannot be created, read or written.
    #[error("data dir {path}: {action}: {source}")]
    Io { path: PathBuf, action: &'static str, source: std::io::Error },
    /// The directory belongs to another cluster or node, or is not a Weft data directory.
    #[error(
        "data dir {path} {reason}; refusing to start (Weft never wipes data: pick another --data-dir, or move this one away yourself)"
    )]
    Foreign { path: PathBuf, reason: String },
}

/// An opened, owned data directory.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
    node_id: NodeId,
}

/// Generated node ids are below this, so they stay short in listings (and exact in JSON).
const MAX_GENERATED_ID: NodeId = 1 << 32;

impl DataDir {
    /// Opens `root` for node `node_id` of `cluster`, creating and claiming it when it is new
    /// or empty. `node_id` 0 takes the id the directory records, or a new random one.
    pub fn open(root: &Path, cluster: &str, node_id: NodeId) -> Result<Self, Error> {
        let io = |action: &'static str| {
            let path = root.to_owned();
            move |source| Error::Io { path, action, source }
        };
        std::fs::create_dir_all(root).map_err(io("cannot create"))?;
        let identity_path = root.join(IDENTITY_FILE);
        if identity_path.exists() {
            let bytes = std::fs::read(&identity_path).map_err(io("cannot read identity"))?;
            let found: Identity = serde_json::from_slice(&bytes).map_err(|e| Error::Foreign {
                path: root.to_owned(),
                reason: format!("has an unreadable {IDENTITY_FILE} ({e})"),
            })?;
            if found.format != IDENTITY_FORMAT {
                return Err(Error::Foreign {
                    path: root.to_owned(),
                    reason: format!(
                        "has identity format {}, this build knows {IDENTITY_FORMAT}",
                        found.format
                    ),
                });
            }
            let node_id = if node_id == 0 { found.node_id } else { node_id };
            if found.cluster != cluster || found.node_id != node_id {
                return Err(Error::Foreign {
                    path: root.to_owned(),
                    reason: format!(
                        "belongs to cluster '{}' node {}, but this node is cluster '{cluster}' node {node_id}",
                        found.cluster, found.node_id
                    ),
                });
            }
            Ok(Self { root: root.to_owned(), node_id })
        } else {
            let mut entries = std::fs::read_dir(root).map_err(io("cannot list"))?;
            if let Some(entry) = entries.next() {
                let name = entry.map_err(io("cannot list"))?.file_name();
                return Err(Error::Foreign {
                    path: root.to_owned(),
                    reason: format!(
                        "is not empty (it holds {name:?}) and has no {IDENTITY_FILE}, so it is not a Weft data dir"
                    ),
                });
            }
            let node_id = if node_id == 0 { rand::random_range(1..MAX_GENERATED_ID) } else { node_id };
            let identity = Identity { format: IDENTITY_FORMAT, cluster: cluster.to_owned(), node_id };
            let tmp = root.join(format!("{IDENTITY_FILE}.tmp"));
            let json = serde_json::to_vec_pretty(&identity).expect("identity serializes");
            std::fs::write(&tmp, json).map_err(io("cannot write identity"))?;
            std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(io("cannot sync identity"))?;
            std::fs::rename(&tmp, &identity_path).map_err(io("cannot write identity"))?;
            std::fs::File::open(root).and_then(|d| d.sync_all()).map_err(io("cannot sync"))?;
            Ok(Self { root: root.to_owned(), node_id })
        }
    }

    /// The node id this directory belongs to.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// Where the sled database of the Raft log lives.
    pub fn raft_dir(&self) -> PathBuf {
        self.root.join("raft")
    }

    /// Where snapshot files live.
    pub fn snapshot_dir(&self) -> PathBuf {
        self.root.join("snapshots")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_new_dirs_and_refuses_foreign_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("n1");
        DataDir::open(&dir, "a", 1).unwrap();
        DataDir::open(&dir, "a", 1).expect("reopening our own dir works");
        assert_eq!(DataDir::open(&dir, "a", 0).unwrap().node_id(), 1, "0 takes the recorded id");

        let auto = tmp.path().join("auto");
        let id = DataDir::open(&auto, "a", 0).unwrap().node_id();
        assert!(id >= 1);
        assert_eq!(DataDir::open(&auto, "a", 0).unwrap().node_id(), id, "a generated id is kept");
        let err = DataDir::open(&dir, "b", 1).unwrap_err().to_string();
        assert!(err.contains("belongs to cluster 'a' node 1"), "{err}");
        let err = DataDir::open(&dir, "a", 2).unwrap_err().to_string();
        assert!(err.contains("this node is cluster 'a' node 2"), "{err}");

        let other = tmp.path().join("other");
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(other.join("precious.txt"), b"keep me").unwrap();
        let err = DataDir::open(&other, "a", 1).unwrap_err().to_string();
        assert!(err.contains("not a Weft data dir"), "{err}");
        assert_eq!(std::fs::read(other.join("precious.txt")).unwrap(), b"keep me");
        assert_eq!(std::fs::read_dir(&other).unwrap().count(), 1, "nothing written");
    }
}
