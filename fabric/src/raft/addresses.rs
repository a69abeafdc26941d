//! Where peers are now, when that is not where the Raft membership says.
//!
//! The membership (replicated in the log) records each node's address as it was when the node
//! was added. A node restarted at another address (`weft dev --port` changed, a new IP) is
//! unreachable there, and if every node moved at once no election could ever succeed with the
//! stored addresses alone. So the network and the routing to the leader resolve a peer's
//! address here first: membership fills this book with addresses it has verified (a node that
//! gossip sees at a new address and that answers there as that node, of this cluster, with a
//! Raft log), and the leader's reconciler rewrites the stored entries, after which the
//! override is dropped again.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use crate::NodeId;

/// Most overrides kept: one per member, and clusters are far smaller.
pub const MAX_OVERRIDES: usize = 1024;

/// Verified current addresses of peers whose membership entry is stale; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Addresses(Arc<RwLock<BTreeMap<NodeId, String>>>);

impl Addresses {
    /// The address to reach node `id` at: the verified override if there is one, else
    /// `stored` (the membership's).
    pub fn resolve(&self, id: NodeId, stored: &str) -> String {
        let book = self.0.read().unwrap_or_else(|p| p.into_inner());
        book.get(&id).cloned().unwrap_or_else(|| stored.to_owned())
    }

    /// The override of node `id`, if any.
    pub fn get(&self, id: NodeId) -> Option<String> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).get(&id).cloned()
    }

    /// Reaches node `id` at `addr` from now on; false (nothing changed) when the book is full.
    pub fn set(&self, id: NodeId, addr: String) -> bool {
        let mut book = self.0.write().unwrap_or_else(|p| p.into_inner());
        if book.len() >= MAX_OVERRIDES && !book.contains_key(&id) {
            return false;
        }
        book.insert(id, addr);
        true
    }

    /// Drops the override of node `id`: the membership is right again (or it left).
    pub fn remove(&self, id: NodeId) {
        self.0.write().unwrap_or_else(|p| p.into_inner()).remove(&id);
    }

    /// Every override, by node id.
    pub fn all(&self) -> BTreeMap<NodeId, String> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_override_wins_until_removed() {
        let book = Addresses::default();
        assert_eq!(book.resolve(2, "127.0.0.1:1"), "127.0.0.1:1");
        assert!(book.set(2, "127.0.0.1:2".into()));
        assert_eq!(book.resolve(2, "127.0.0.1:1"), "127.0.0.1:2");
        assert_eq!(book.resolve(3, "127.0.0.1:3"), "127.0.0.1:3", "other nodes are untouched");
        book.remove(2);
        assert_eq!(book.resolve(2, "127.0.0.1:1"), "127.0.0.1:1");
    }

    #[test]
    fn the_book_is_bounded() {
        let book = Addresses::default();
        for id in 0..MAX_OVERRIDES as NodeId {
            assert!(book.set(id, "a".into()));
        }
        assert!(!book.set(MAX_OVERRIDES as NodeId, "a".into()));
        assert!(book.set(0, "b".into()), "an existing entry may change");
        assert_eq!(book.all().len(), MAX_OVERRIDES);
    }
}
