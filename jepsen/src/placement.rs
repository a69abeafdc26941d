//! Which node a client talks to: every client of a run (register, set and executions
//! workers; stream producers and consumers) starts on its home node from the [`Roster`],
//! fails over to the next node as the SDK will, goes back home after [`RETURN_HOME_AFTER`]
//! operations elsewhere (otherwise, over many faults, clients pile up on a few nodes and one
//! fault on such a node stalls most of them), and never talks to a node stopped for good.

use crate::db::Roster;

/// Operations a client runs away from its home node before it goes back.
pub const RETURN_HOME_AFTER: u32 = 50;

/// One client's node.
#[derive(Debug, Clone)]
pub struct Placement {
    /// The client's id in the roster (which gives it its home).
    id: u64,
    /// The node it talks to now.
    node: u64,
    home: u64,
    away_ops: u32,
    roster: Roster,
}

impl Placement {
    /// Client `id`, at home (the `id % n`-th of the roster's `n` nodes at first).
    pub fn new(id: u64, roster: Roster) -> Self {
        let home = roster.home(id).unwrap_or(0);
        Self { id, node: home, home, away_ops: 0, roster }
    }

    /// The node (id) the client talks to now.
    pub fn node(&self) -> u64 {
        self.node
    }

    /// `IP:PORT` of [`Self::node`], unless it is gone.
    pub fn addr(&self) -> Option<String> {
        self.roster.live().into_iter().find(|(id, _)| *id == self.node).map(|(_, a)| a)
    }

    /// Follows the roster: to a new home when the roster moved this client (its home was
    /// stopped for good, or a new node took it over), and off any node stopped for good.
    /// Whether the client moved.
    pub fn follow_roster(&mut self) -> bool {
        let mut moved = false;
        if let Some(home) = self.roster.home(self.id)
            && home != self.home
        {
            tracing::debug!(client = self.id, old = self.home, new = home, "new home");
            self.home = home;
            self.node = home;
            self.away_ops = 0;
            moved = true;
        }
        if !self.roster.contains(self.node) {
            self.node = self.home;
            self.away_ops = 0;
            moved = true;
        }
        moved
    }

    /// Counts one operation done away from home; after [`RETURN_HOME_AFTER`] the client goes
    /// back. Whether it went back now.
    pub fn count_op(&mut self) -> bool {
        if self.node == self.home {
            return false;
        }
        self.away_ops += 1;
        if self.away_ops < RETURN_HOME_AFTER {
            return false;
        }
        self.node = self.home;
        self.away_ops = 0;
        true
    }

    /// Whether the client talks to its home node.
    pub fn is_home(&self) -> bool {
        self.node == self.home
    }

    /// Goes back to the home node now.
    pub fn go_home(&mut self) {
        self.node = self.home;
        self.away_ops = 0;
    }

    /// Moves to the node after the current one (by id, wrapping) among those still there.
    pub fn fail_over(&mut self) {
        let live = self.roster.live();
        self.node = live
            .iter()
            .map(|(id, _)| *id)
            .find(|id| *id > self.node)
            .or_else(|| live.first().map(|(id, _)| *id))
            .unwrap_or(self.node);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fails_over_in_turn_and_goes_home_after_a_while() {
        let roster = Roster::default();
        for id in 1..=3 {
            roster.add(id, format!("10.0.0.{id}:1"));
        }
        let mut p = Placement::new(1, roster.clone());
        assert_eq!(p.node(), 2);
        p.fail_over();
        assert_eq!(p.node(), 3);
        p.fail_over();
        assert_eq!(p.node(), 1, "wraps around");
        for _ in 1..RETURN_HOME_AFTER {
            assert!(!p.count_op());
        }
        assert!(p.count_op());
        assert_eq!(p.node(), 2);
        assert!(!p.count_op(), "at home nothing is counted");
        roster.remove(2);
        assert!(p.follow_roster());
        assert_ne!(p.node(), 2);
        assert_eq!(p.addr().as_deref(), Some(format!("10.0.0.{}:1", p.node()).as_str()));
    }
}
