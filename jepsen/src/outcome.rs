//! How the outcome of one call becomes a history type: ok, fail (it certainly changed
//! nothing) or info (it may have). Whether a failed call changed anything is read with the
//! wire contract's one table, [`weft_proto::wire::Outcome`]: not applied, overloaded and
//! refused calls are `fail`; every other error is `info`.

use weft_proto::wire::Outcome;

use crate::history::Op;

/// The result of one call.
pub(crate) enum Done {
    Ok(Op),
    Fail(Op, String),
    Info(Op, String),
}

/// A status as the history records it: the code first (the register checker keys on it),
/// then the message.
pub(crate) fn code_message(s: &tonic::Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}

/// A call of `op` that may have changed state and failed with `s`.
pub(crate) fn failed(op: Op, s: &tonic::Status) -> Done {
    if Outcome::of(s).is_definite() {
        Done::Fail(op, code_message(s))
    } else {
        Done::Info(op, code_message(s))
    }
}

#[cfg(test)]
pub(crate) fn kind(d: &Done) -> &'static str {
    match d {
        Done::Ok(_) => "ok",
        Done::Fail(..) => "fail",
        Done::Info(..) => "info",
    }
}
