//! weft-jepsen: tries hard to break Weft's promises against real `weft node` processes.
pub mod checker;
pub mod history;
