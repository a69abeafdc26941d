//! Conversions between generated protobuf types and domain types, in one place.

use weft_proto::fabric::v1 as pb;

use crate::grid::{Command, Value};

/// A stored key and value as the protocol shows it.
pub fn key_value(key: String, value: Value) -> pb::KeyValue {
    pb::KeyValue { key, value: value.data, version: value.version, expires_at_ms: value.expires_at_ms }
}

fn ttl(ttl_ms: Option<u64>) -> Option<u64> {
    ttl_ms.filter(|t| *t > 0)
}

/// The grid command a put request asks for.
pub fn put(req: pb::PutRequest) -> Command {
    Command::Put {
        namespace: req.namespace,
        key: req.key,
        value: req.value,
        ttl_ms: ttl(req.ttl_ms),
        if_absent: req.if_absent,
    }
}

/// The grid command a delete request asks for.
pub fn delete(req: pb::DeleteRequest) -> Command {
    Command::Delete { namespace: req.namespace, key: req.key, expected_version: req.expected_version }
}

/// The grid command a compare-and-set request asks for.
pub fn compare_and_set(req: pb::CompareAndSetRequest) -> Command {
    Command::CompareAndSet {
        namespace: req.namespace,
        key: req.key,
        expected_version: req.expected_version,
        value: req.value,
        ttl_ms: ttl(req.ttl_ms),
    }
}

/// Whether a read asked to be served locally.
pub fn is_stale(consistency: i32) -> bool {
    consistency == pb::Consistency::Stale as i32
}
