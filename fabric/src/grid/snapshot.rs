//! Older snapshot formats, and how they load. A snapshot is the bincode of [`Grid`], so its
//! fields, in order, are the format: a change to them needs a new format tag (in `codec`,
//! chosen by `raft::state_machine` when it reads a snapshot file) and a struct here that
//! reads the old layout.
//!
//! - [`GridV1`]: before executions (no `work`), format 1.
//! - [`GridV2`]: before streams (no `streams`), format 2.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::kv::Value;
use super::{Grid, Streams, Work};

/// The grid as snapshots of Weft before executions stored it.
#[derive(Debug, Deserialize)]
pub struct GridV1 {
    revision: u64,
    now_ms: u64,
    namespaces: BTreeMap<String, BTreeMap<String, Value>>,
    expiries: BTreeMap<(u64, String, String), ()>,
}

/// The grid as snapshots of Weft before streams stored it.
#[derive(Debug, Deserialize)]
pub struct GridV2 {
    revision: u64,
    now_ms: u64,
    namespaces: BTreeMap<String, BTreeMap<String, Value>>,
    expiries: BTreeMap<(u64, String, String), ()>,
    work: Work,
}

impl Grid {
    /// A grid from a snapshot written before executions existed.
    pub fn from_v1(old: GridV1) -> Self {
        Self {
            revision: old.revision,
            now_ms: old.now_ms,
            namespaces: old.namespaces,
            expiries: old.expiries,
            work: Work::default(),
            streams: Streams::default(),
        }
    }

    /// A grid from a snapshot written before streams existed.
    pub fn from_v2(old: GridV2) -> Self {
        Self {
            revision: old.revision,
            now_ms: old.now_ms,
            namespaces: old.namespaces,
            expiries: old.expiries,
            work: old.work,
            streams: Streams::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;
    use crate::grid::Command;

    #[test]
    fn a_v1_snapshot_grid_decodes_into_an_empty_work_state() {
        #[derive(serde::Serialize)]
        struct V1 {
            revision: u64,
            now_ms: u64,
            namespaces: std::collections::BTreeMap<String, std::collections::BTreeMap<String, Value>>,
            expiries: std::collections::BTreeMap<(u64, String, String), ()>,
        }
        let mut g = Grid::default();
        g.apply_batch(
            10,
            &[Command::Put {
                namespace: "shared/a".into(),
                key: "k".into(),
                value: b"v".to_vec(),
                ttl_ms: None,
                if_absent: false,
            }],
        );
        let old = V1 {
            revision: g.revision,
            now_ms: g.now_ms,
            namespaces: g.namespaces.clone(),
            expiries: g.expiries.clone(),
        };
        let bytes = codec::encode(&old);
        assert!(codec::decode::<Grid>(&bytes).is_err(), "the new layout does not read the old one");
        let restored = Grid::from_v1(codec::decode::<GridV1>(&bytes).unwrap());
        assert_eq!(restored, g);
    }
}
