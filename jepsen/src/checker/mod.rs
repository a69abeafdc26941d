//! Checkers: each judges a history and returns a [`Verdict`].
//!
//! - [`linearizable`]: the generic Wing–Gong/Lowe search over a sequential model.
//! - [`register`]: per-key linearizability of read / write / compare-and-set.
//! - [`set`]: every acknowledged add is in the final read.
//! - [`executions`]: every acknowledged increment applied exactly once, none twice.
//! - [`streams`]: one order, no acknowledged append lost, a retried producer sequence
//!   stored once, every item delivered (promise 3).

pub mod executions;
pub mod linearizable;
pub mod register;
pub mod set;
pub mod streams;

use serde::Serialize;

use crate::history::Event;

/// A checker's judgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Validity {
    /// The history keeps the promise.
    Valid,
    /// The history breaks it; the verdict says how.
    Invalid,
    /// The checker could not decide (search bound hit, or no final read).
    Unknown,
}

impl Validity {
    /// Combines verdicts: any invalid wins, then unknown.
    pub fn and(self, other: Validity) -> Validity {
        use Validity::*;
        match (self, other) {
            (Invalid, _) | (_, Invalid) => Invalid,
            (Unknown, _) | (_, Unknown) => Unknown,
            _ => Valid,
        }
    }
}

impl std::fmt::Display for Validity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Validity::Valid => "valid",
            Validity::Invalid => "INVALID",
            Validity::Unknown => "unknown",
        })
    }
}

/// One checker's result.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    /// The checker's name (`register`, `set`).
    pub checker: String,
    pub validity: Validity,
    /// One line for humans.
    pub summary: String,
    /// Checker-specific figures and anomalies.
    pub details: serde_json::Value,
    /// The smallest failing sub-history found, as history events (invoke and completion).
    #[serde(skip)]
    pub failing: Option<Vec<Event>>,
}
