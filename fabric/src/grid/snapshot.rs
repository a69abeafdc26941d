//! Older snapshot formats, and how they load. A snapshot is the bincode of [`Grid`], so its
//! fields, in order, are the format: a change to them needs a new format tag (in `codec`,
//! chosen by `raft::state_machine` when it reads a snapshot file) and a struct here that
//! reads the old layout.
//!
//! - [`GridV1`]: before executions (no `work`), format 1.
//! - [`GridV2`]: before streams (no `streams`), format 2.
//! - [`GridV3`]: before leases (no `leases`, sessions without `only_claimed` and `claims`),
//!   format 3. Formats 2 and 3 share the old session layout (`WorkV3`).
//! - [`GridV4`]: before tokens (no `tokens`), format 4.
//! - [`GridV5`]: before blocks for eager calls (no `eager`), format 5.
//! - [`GridV6`]: before holders waiting for leases (no `waiting`), format 6.
//! - [`GridV7`]: before schedules (no `schedules`), format 7.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use super::execution::{Execution, ExecutionId, SessionId};
use super::instance::Instance;
use super::kv::Value;
use super::session::{AgentSpec, Host, Session};
use super::{Grid, Leases, Streams, Tokens, Waiting, Work, reserved};

/// The grid as snapshots of Weft before executions stored it.
#[derive(Debug, Deserialize)]
#[cfg_attr(any(test, feature = "fuzzing"), derive(serde::Serialize))]
pub struct GridV1 {
    revision: u64,
    now_ms: u64,
    namespaces: BTreeMap<String, BTreeMap<String, Value>>,
    expiries: BTreeMap<(u64, String, String), ()>,
}

/// The grid as snapshots of Weft before streams stored it.
#[derive(Debug, Deserialize)]
#[cfg_attr(any(test, feature = "fuzzing"), derive(serde::Serialize))]
pub struct GridV2 {
    revision: u64,
    now_ms: u64,
    namespaces: BTreeMap<String, BTreeMap<String, Value>>,
    expiries: BTreeMap<(u64, String, String), ()>,
    work: WorkV3,
}

/// The grid as snapshots of Weft before leases stored it.
#[derive(Debug, Deserialize)]
#[cfg_attr(any(test, feature = "fuzzing"), derive(serde::Serialize))]
pub struct GridV3 {
    revision: u64,
    now_ms: u64,
    namespaces: BTreeMap<String, BTreeMap<String, Value>>,
    expiries: BTreeMap<(u64, String, String), ()>,
    work: WorkV3,
    streams: Streams,
}

/// The grid as snapshots of Weft before tokens stored it.
#[derive(Debug, Deserialize)]
#[cfg_attr(any(test, feature = "fuzzing"), derive(serde::Serialize))]
pub struct GridV4 {
    revision: u64,
    now_ms: u64,
    namespaces: BTreeMap<String, BTreeMap<String, Value>>,
    expiries: BTreeMap<(u64, String, String), ()>,
    work: Work,
    streams: Streams,
    leases: Leases,
}

/// The grid as snapshots of Weft before blocks for eager calls stored it.
#[derive(Debug, Deserialize)]
#[cfg_attr(any(test, feature = "fuzzing"), derive(serde::Serialize))]
pub struct GridV5 {
    revision: u64,
    now_ms: u64,
    namespaces: BTreeMap<String, BTreeMap<String, Value>>,
    expiries: BTreeMap<(u64, String, String), ()>,
    work: Work,
    streams: Streams,
    leases: Leases,
    tokens: Tokens,
}

/// The grid as snapshots of Weft before holders waited for leases stored it.
#[derive(Debug, Deserialize)]
#[cfg_attr(any(test, feature = "fuzzing"), derive(serde::Serialize))]
pub struct GridV6 {
    revision: u64,
    now_ms: u64,
    namespaces: BTreeMap<String, BTreeMap<String, Value>>,
    expiries: BTreeMap<(u64, String, String), ()>,
    work: Work,
    streams: Streams,
    leases: Leases,
    tokens: Tokens,
    eager: reserved::Blocks,
}

/// The grid as snapshots of Weft before schedules stored it.
#[derive(Debug, Deserialize)]
#[cfg_attr(any(test, feature = "fuzzing"), derive(serde::Serialize))]
pub struct GridV7 {
    revision: u64,
    now_ms: u64,
    namespaces: BTreeMap<String, BTreeMap<String, Value>>,
    expiries: BTreeMap<(u64, String, String), ()>,
    work: Work,
    streams: Streams,
    leases: Leases,
    tokens: Tokens,
    eager: reserved::Blocks,
    waiting: Waiting,
}

/// Executions, sessions and instances as formats 2 and 3 stored them: sessions without the
/// only-claimed flag.
#[derive(Debug, Deserialize)]
#[cfg_attr(any(test, feature = "fuzzing"), derive(serde::Serialize))]
struct WorkV3 {
    last_execution_id: ExecutionId,
    last_session_id: SessionId,
    last_token: u64,
    executions: BTreeMap<ExecutionId, Execution>,
    ready: BTreeMap<(String, String), BTreeSet<(i64, ExecutionId)>>,
    delayed: BTreeSet<(u64, ExecutionId)>,
    deadlines: BTreeSet<(u64, ExecutionId)>,
    leases: BTreeSet<(u64, ExecutionId)>,
    retained: BTreeSet<(u64, ExecutionId)>,
    idempotency: BTreeMap<(ExecutionId, String), ExecutionId>,
    children: BTreeSet<(ExecutionId, ExecutionId)>,
    sessions: BTreeMap<SessionId, SessionV3>,
    serving: BTreeMap<String, BTreeSet<SessionId>>,
    instances: BTreeMap<(String, String), Instance>,
}

/// A session as formats 2 and 3 stored it.
#[derive(Debug, Deserialize)]
#[cfg_attr(any(test, feature = "fuzzing"), derive(serde::Serialize))]
struct SessionV3 {
    id: SessionId,
    host: Host,
    agents: Vec<AgentSpec>,
    capacity: u32,
    lease_ms: u64,
    name: String,
    opened_ms: u64,
    assigned: BTreeSet<ExecutionId>,
    activated: BTreeSet<(String, String)>,
    draining: bool,
    last_token: u64,
}

impl From<WorkV3> for Work {
    fn from(old: WorkV3) -> Self {
        Work {
            last_execution_id: old.last_execution_id,
            last_session_id: old.last_session_id,
            last_token: old.last_token,
            executions: old.executions,
            ready: old.ready,
            delayed: old.delayed,
            deadlines: old.deadlines,
            leases: old.leases,
            retained: old.retained,
            idempotency: old.idempotency,
            children: old.children,
            sessions: old.sessions.into_iter().map(|(id, s)| (id, s.into())).collect(),
            serving: old.serving,
            instances: old.instances,
        }
    }
}

impl From<SessionV3> for Session {
    /// A session from before the flag serves every instance, and its claims are not known
    /// (they were activated on it; only an only-claimed session needs them).
    fn from(old: SessionV3) -> Self {
        Session {
            id: old.id,
            host: old.host,
            agents: old.agents,
            capacity: old.capacity,
            lease_ms: old.lease_ms,
            name: old.name,
            opened_ms: old.opened_ms,
            assigned: old.assigned,
            activated: old.activated,
            draining: old.draining,
            last_token: old.last_token,
            only_claimed: false,
            claims: BTreeSet::new(),
        }
    }
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
            leases: Leases::default(),
            tokens: Tokens::default(),
            eager: reserved::Blocks::default(),
            waiting: Waiting::default(),
            schedules: Default::default(),
        }
    }

    /// A grid from a snapshot written before streams existed.
    pub fn from_v2(old: GridV2) -> Self {
        Self {
            revision: old.revision,
            now_ms: old.now_ms,
            namespaces: old.namespaces,
            expiries: old.expiries,
            work: old.work.into(),
            streams: Streams::default(),
            leases: Leases::default(),
            tokens: Tokens::default(),
            eager: reserved::Blocks::default(),
            waiting: Waiting::default(),
            schedules: Default::default(),
        }
    }

    /// A grid from a snapshot written before leases existed: none held, no session
    /// only-claimed.
    pub fn from_v3(old: GridV3) -> Self {
        Self {
            revision: old.revision,
            now_ms: old.now_ms,
            namespaces: old.namespaces,
            expiries: old.expiries,
            work: old.work.into(),
            streams: old.streams,
            leases: Leases::default(),
            tokens: Tokens::default(),
            eager: reserved::Blocks::default(),
            waiting: Waiting::default(),
            schedules: Default::default(),
        }
    }

    /// A grid from a snapshot written before tokens existed: none held, none revoked.
    pub fn from_v4(old: GridV4) -> Self {
        Self {
            revision: old.revision,
            now_ms: old.now_ms,
            namespaces: old.namespaces,
            expiries: old.expiries,
            work: old.work,
            streams: old.streams,
            leases: old.leases,
            tokens: Tokens::default(),
            eager: reserved::Blocks::default(),
            waiting: Waiting::default(),
            schedules: Default::default(),
        }
    }

    /// A grid from a snapshot written before blocks for eager calls existed.
    pub fn from_v5(old: GridV5) -> Self {
        Self {
            revision: old.revision,
            now_ms: old.now_ms,
            namespaces: old.namespaces,
            expiries: old.expiries,
            work: old.work,
            streams: old.streams,
            leases: old.leases,
            tokens: old.tokens,
            eager: reserved::Blocks::default(),
            waiting: Waiting::default(),
            schedules: Default::default(),
        }
    }

    /// A grid from a snapshot written before holders could wait for leases.
    pub fn from_v6(old: GridV6) -> Self {
        Self {
            revision: old.revision,
            now_ms: old.now_ms,
            namespaces: old.namespaces,
            expiries: old.expiries,
            work: old.work,
            streams: old.streams,
            leases: old.leases,
            tokens: old.tokens,
            eager: old.eager,
            waiting: Waiting::default(),
            schedules: Default::default(),
        }
    }
    /// A grid from a snapshot written before schedules.
    pub fn from_v7(old: GridV7) -> Self {
        Self {
            revision: old.revision,
            now_ms: old.now_ms,
            namespaces: old.namespaces,
            expiries: old.expiries,
            work: old.work,
            streams: old.streams,
            leases: old.leases,
            tokens: old.tokens,
            eager: old.eager,
            waiting: old.waiting,
            schedules: Default::default(),
        }
    }
}

/// Older layouts of a grid, for tests and the fuzz targets' seed snapshots.
#[cfg(any(test, feature = "fuzzing"))]
impl Grid {
    /// This grid in format 7's layout (as Weft before schedules wrote it): only for a grid
    /// with no schedule, which format 7 cannot express.
    pub(crate) fn to_v7(&self) -> GridV7 {
        assert!(self.schedules == Default::default(), "format 7 has no schedules");
        GridV7 {
            revision: self.revision,
            now_ms: self.now_ms,
            namespaces: self.namespaces.clone(),
            expiries: self.expiries.clone(),
            work: self.work.clone(),
            streams: self.streams.clone(),
            leases: self.leases.clone(),
            tokens: self.tokens.clone(),
            eager: self.eager.clone(),
            waiting: self.waiting.clone(),
        }
    }

    /// This grid in format 6's layout (as Weft before lease queues wrote it): only for a grid
    /// with no holder waiting, which format 6 cannot express.
    pub(crate) fn to_v6(&self) -> GridV6 {
        assert!(self.waiting == Waiting::default(), "format 6 has no holders waiting for leases");
        GridV6 {
            revision: self.revision,
            now_ms: self.now_ms,
            namespaces: self.namespaces.clone(),
            expiries: self.expiries.clone(),
            work: self.work.clone(),
            streams: self.streams.clone(),
            leases: self.leases.clone(),
            tokens: self.tokens.clone(),
            eager: self.eager.clone(),
        }
    }

    /// This grid in format 5's layout (as Weft before eager calls wrote it): only for a grid
    /// with no reserved block, which format 5 cannot express.
    pub(crate) fn to_v5(&self) -> GridV5 {
        assert!(self.eager == reserved::Blocks::default(), "format 5 has no reserved blocks");
        GridV5 {
            revision: self.revision,
            now_ms: self.now_ms,
            namespaces: self.namespaces.clone(),
            expiries: self.expiries.clone(),
            work: self.work.clone(),
            streams: self.streams.clone(),
            leases: self.leases.clone(),
            tokens: self.tokens.clone(),
        }
    }

    /// This grid in format 4's layout (as Weft before tokens wrote it): only for a grid that
    /// holds no token and remembers no revoked one, which format 4 cannot express.
    pub(crate) fn to_v4(&self) -> GridV4 {
        assert!(self.tokens == Tokens::default(), "format 4 has no tokens");
        GridV4 {
            revision: self.revision,
            now_ms: self.now_ms,
            namespaces: self.namespaces.clone(),
            expiries: self.expiries.clone(),
            work: self.work.clone(),
            streams: self.streams.clone(),
            leases: self.leases.clone(),
        }
    }

    /// This grid in format 1's layout (key/value state only).
    #[cfg(feature = "fuzzing")]
    pub(crate) fn to_v1(&self) -> GridV1 {
        GridV1 {
            revision: self.revision,
            now_ms: self.now_ms,
            namespaces: self.namespaces.clone(),
            expiries: self.expiries.clone(),
        }
    }

    /// This grid in format 2's layout (no streams): as [`Grid::to_v3`] without them.
    #[cfg(feature = "fuzzing")]
    pub(crate) fn to_v2(&self) -> GridV2 {
        let v3 = self.to_v3();
        GridV2 {
            revision: v3.revision,
            now_ms: v3.now_ms,
            namespaces: v3.namespaces,
            expiries: v3.expiries,
            work: v3.work,
        }
    }

    /// This grid in format 3's layout (as Weft before leases wrote it): only for a grid that
    /// holds no lease and no only-claimed session, which format 3 cannot express.
    pub(crate) fn to_v3(&self) -> GridV3 {
        assert!(self.leases == Leases::default(), "format 3 has no leases");
        let w = self.work.clone();
        let sessions = w
            .sessions
            .into_iter()
            .map(|(id, s)| {
                assert!(!s.only_claimed, "format 3 has no only-claimed sessions");
                let old = SessionV3 {
                    id: s.id,
                    host: s.host,
                    agents: s.agents,
                    capacity: s.capacity,
                    lease_ms: s.lease_ms,
                    name: s.name,
                    opened_ms: s.opened_ms,
                    assigned: s.assigned,
                    activated: s.activated,
                    draining: s.draining,
                    last_token: s.last_token,
                };
                (id, old)
            })
            .collect();
        GridV3 {
            revision: self.revision,
            now_ms: self.now_ms,
            namespaces: self.namespaces.clone(),
            expiries: self.expiries.clone(),
            work: WorkV3 {
                last_execution_id: w.last_execution_id,
                last_session_id: w.last_session_id,
                last_token: w.last_token,
                executions: w.executions,
                ready: w.ready,
                delayed: w.delayed,
                deadlines: w.deadlines,
                leases: w.leases,
                retained: w.retained,
                idempotency: w.idempotency,
                children: w.children,
                sessions,
                serving: w.serving,
                instances: w.instances,
            },
            streams: self.streams.clone(),
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

    /// A format 3 grid (before leases) loads with no leases and sessions that serve every
    /// instance, and goes on from there like the grid it was taken from.
    #[test]
    fn a_v3_snapshot_grid_loads_without_leases_and_flags() {
        use crate::grid::test_harness::*;
        let mut h = Harness::new();
        h.ok(Command::Put {
            namespace: "shared/a".into(),
            key: "k".into(),
            value: b"v".to_vec(),
            ttl_ms: Some(500),
            if_absent: false,
        });
        let s = h.open(&["w"], 4);
        let start = h.start("w", "x");
        assert_eq!(h.holder(start), Some(s), "x is activated on s");
        let job = h.create(new_exec("w", "job"));
        assert_eq!(h.holder(job), Some(s));

        let bytes = codec::encode(&h.grid.to_v3());
        assert!(codec::decode::<Grid>(&bytes).is_err(), "the new layout does not read the old one");
        let mut restored = Grid::from_v3(codec::decode::<GridV3>(&bytes).unwrap());
        assert_eq!(restored, h.grid);
        assert_eq!(restored.lease("any"), None);
        assert!(restored.sessions().all(|s| !s.only_claimed));
        let more = Command::AcquireLease { name: "l".into(), holder: "me".into(), ttl_ms: 100 };
        assert_eq!(
            restored.apply_batch(2_000, std::slice::from_ref(&more)),
            h.grid.apply_batch(2_000, &[more])
        );
        assert_eq!(restored, h.grid);
    }
}
