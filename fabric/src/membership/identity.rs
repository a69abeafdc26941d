//! A node's identity in gossip: its node id, its address, and a generation that tells a
//! restarted (or rejoining) node apart from its previous life.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::NodeId;

/// One node as gossip knows it. foca keys members by [`Peer::addr`]: of two identities with the
/// same address, the one with the higher generation wins.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Peer {
    /// The node's Raft id; 0 only for a seed address whose node is not known yet.
    pub id: NodeId,
    /// Where the node listens: UDP for gossip, TCP (same port number) for gRPC.
    pub addr: SocketAddr,
    /// Starts at the node's start time (ms since the Unix epoch) and grows by one on each
    /// rejoin, so a restarted node always wins over its previous identity.
    pub generation: u64,
    /// Set when the node announces a graceful leave: its `Down` then means "left", and the
    /// reconciler removes it without waiting for the grace period.
    pub leaving: bool,
}

impl Peer {
    /// A seed address to announce to: the node there answers with its real identity.
    pub fn seed(addr: SocketAddr) -> Self {
        Self { id: 0, addr, generation: 0, leaving: false }
    }

    /// The identity this node takes when it leaves for good.
    pub fn leaving(&self) -> Self {
        Self { generation: self.generation.saturating_add(1), leaving: true, ..self.clone() }
    }
}

impl foca::Identity for Peer {
    type Addr = SocketAddr;

    /// Declared down by mistake (a pause, a partition): come back with a newer generation,
    /// unless we were leaving anyway.
    fn renew(&self) -> Option<Self> {
        (!self.leaving).then(|| Self { generation: self.generation.saturating_add(1), ..self.clone() })
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        (self.generation, self.leaving) > (adversary.generation, adversary.leaving)
    }
}

#[cfg(test)]
mod tests {
    use foca::Identity;

    use super::*;

    #[test]
    fn newer_generations_and_leaves_win() {
        let a = Peer { id: 1, addr: "127.0.0.1:1".parse().unwrap(), generation: 10, leaving: false };
        let renewed = a.renew().unwrap();
        assert!(renewed.win_addr_conflict(&a) && !a.win_addr_conflict(&renewed));
        let left = a.leaving();
        assert!(left.win_addr_conflict(&a));
        assert_eq!(left.renew(), None, "a leaving node does not rejoin by itself");
        assert!(a.win_addr_conflict(&Peer::seed(a.addr)), "a real node wins over its seed entry");
    }
}
