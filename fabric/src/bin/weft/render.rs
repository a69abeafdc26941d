//! Output shared by the commands: `outln!`/`out!` for a closed stdout, failed calls (as text or
//! `--json`), values and payloads, executions as JSON and their outcome, stream items, ages and
//! durations.

use serde_json::json;
use weft_proto::fabric::v1 as pb;

/// `println!` for the command line's output: when the reader has gone away (`weft executions
/// list | head`), the process ends quietly with status 141, as if killed by SIGPIPE, as other
/// Unix tools do, instead of panicking. Rust ignores SIGPIPE, so every write would fail.
macro_rules! outln {
    () => { $crate::render::write_stdout(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::render::write_stdout(format_args!("{}\n", format_args!($($arg)*))) };
}

/// `print!` with [`outln!`]'s handling of a closed stdout.
macro_rules! out {
    ($($arg:tt)*) => { $crate::render::write_stdout(format_args!($($arg)*)) };
}

pub(crate) use {out, outln};

/// The status of a process killed by SIGPIPE, for a shell: 128 + 13.
const BROKEN_PIPE_EXIT: i32 = 141;

/// Writes to stdout; see [`outln!`].
pub fn write_stdout(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    if let Err(e) = std::io::stdout().lock().write_fmt(args) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(BROKEN_PIPE_EXIT);
        }
        eprintln!("error: cannot write to stdout: {e}");
        std::process::exit(1);
    }
}

/// A failed call as `--json` prints it under `"error"`: its code and message.
pub fn error_json(status: &tonic::Status) -> serde_json::Value {
    let mut error = json!({"code": format!("{:?}", status.code()), "message": status.message()});
    // A wait that ran out names the execution that goes on; scripts want it as a field.
    let execution = weft_proto::wire::execution_of(status);
    if let (Some(id), Some(o)) = (execution, error.as_object_mut()) {
        o.insert("execution_id".into(), id.into());
    }
    error
}

/// Prints a failed call and returns the exit code.
pub fn fail(status: tonic::Status, json_out: bool) -> i32 {
    if let Some(problem) = weft_agent::tls::setup_problem(&status) {
        let status = tonic::Status::unavailable(format!("{problem} (client TLS: --tls-ca, WEFT_TLS_CA)"));
        return fail(status, json_out);
    }
    if json_out {
        outln!("{}", json!({ "error": error_json(&status) }));
    } else {
        eprintln!("error ({:?}): {}", status.code(), status.message());
    }
    1
}

pub fn hex(v: &[u8]) -> String {
    v.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes for people: the text if they are UTF-8, else `0x` and their hex.
pub fn value_text(v: &[u8]) -> String {
    match std::str::from_utf8(v) {
        Ok(s) => s.to_owned(),
        Err(_) => format!("0x{}", hex(v)),
    }
}

pub fn non_empty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

/// A JSON payload's value; an empty one (no value) is `null`.
fn parsed_json(data: &[u8]) -> Option<serde_json::Value> {
    if data.is_empty() {
        return Some(serde_json::Value::Null);
    }
    serde_json::from_slice(data).ok()
}

/// Adds a payload to a JSON object as `name` (its value, for codec json) or as
/// `name_bincode_hex`, the way `weft state` shows values as `value` or `value_hex`.
pub fn insert_payload(obj: &mut serde_json::Value, name: &str, payload: Option<&pb::Payload>) {
    let Some(o) = obj.as_object_mut() else { return };
    match payload {
        None => {
            o.insert(name.into(), serde_json::Value::Null);
        }
        Some(p) if p.codec == "json" => {
            let value = parsed_json(&p.data).unwrap_or_else(|| value_text(&p.data).into());
            o.insert(name.into(), value);
        }
        Some(p) => {
            o.insert(format!("{name}_{}_hex", p.codec), hex(&p.data).into());
        }
    }
}

/// A payload for people: JSON (pretty across lines, or compact on one), else its size.
pub fn payload_text(p: &pb::Payload, pretty: bool) -> String {
    if p.codec != "json" {
        return format!("<{} bytes, {}>", p.data.len(), p.codec);
    }
    match parsed_json(&p.data) {
        Some(v) if pretty => serde_json::to_string_pretty(&v).unwrap_or_default(),
        Some(v) => v.to_string(),
        None => value_text(&p.data),
    }
}

/// An execution as `--json` prints it (`call`, `executions`, and `instances` for Start and Stop).
pub fn execution_json(e: &pb::Execution) -> serde_json::Value {
    let mut obj = json!({
        "id": e.id,
        "agent": e.agent,
        "instance": non_empty(&e.instance),
        "delegate": e.delegate,
        "idempotency_key": non_empty(&e.idempotency_key),
        "status": e.status,
        "attempts": e.attempts,
        "session_id": (e.session_id != 0).then_some(e.session_id),
        "created_ms": e.created_ms,
        "deadline_ms": e.deadline_ms,
        "not_before_ms": e.not_before_ms,
        "priority": e.priority,
        "parent_id": (e.parent_id != 0).then_some(e.parent_id),
        "error": e.error.as_ref().map(|x| json!({"kind": x.kind, "message": x.message})),
        "finished_ms": e.finished_ms,
        "retry": e.retry.as_ref().map(|r| json!({
            "max_attempts": r.max_attempts,
            "initial_backoff_ms": r.initial_backoff_ms,
            "max_backoff_ms": r.max_backoff_ms,
            "multiplier_percent": r.multiplier_percent,
        })),
    });
    insert_payload(&mut obj, "args", e.payload.as_ref());
    insert_payload(&mut obj, "result", e.result.as_ref());
    obj
}

/// Prints a final execution's outcome; returns the exit code (1 unless it completed).
///
/// Text: the result on stdout, or `error (<kind>): <message>` on stderr. JSON: the whole
/// execution.
pub fn outcome(e: &pb::Execution, json_out: bool) -> i32 {
    let code = if e.status == "completed" { 0 } else { 1 };
    if json_out {
        outln!("{}", execution_json(e));
        return code;
    }
    match (&e.result, &e.error) {
        (Some(result), _) if code == 0 => outln!("{}", payload_text(result, true)),
        (None, _) if code == 0 => outln!("null"),
        (_, Some(error)) => eprintln!("error ({}): {}", error.kind, error.message),
        (_, None) => eprintln!("error: execution {} is {}", e.id, e.status),
    }
    code
}

/// A stream item as `--json` prints it: its payload as `payload` (JSON) or
/// `payload_<codec>_hex`, as [`insert_payload`] does.
pub fn item_json(i: &pb::Item) -> serde_json::Value {
    let headers: Vec<_> = i.headers.iter().map(|h| json!({"name": h.name, "value": h.value})).collect();
    let mut obj = json!({"seq": i.seq, "key": non_empty(&i.key), "headers": headers, "time_ms": i.time_ms});
    insert_payload(&mut obj, "payload", i.payload.as_ref());
    obj
}

/// A stream item on one line: `SEQ KEY [NAME=VALUE ...] PAYLOAD` (`-` for no key).
pub fn item_line(i: &pb::Item) -> String {
    let mut line = format!("{} {}", i.seq, non_empty(&i.key).unwrap_or("-"));
    if !i.headers.is_empty() {
        let headers: Vec<String> = i.headers.iter().map(|h| format!("{}={}", h.name, h.value)).collect();
        line.push_str(&format!(" [{}]", headers.join(" ")));
    }
    let payload = i.payload.as_ref().map_or_else(|| "null".to_owned(), |p| payload_text(p, false));
    line.push(' ');
    line.push_str(&payload);
    line
}

/// Milliseconds in the largest unit that divides them, as `--max-age` and `--ack-wait` take
/// them: 500ms, 30s, 5m, 2h, 7d.
pub fn duration_text(ms: u64) -> String {
    const UNITS: [(u64, &str); 4] = [(86_400_000, "d"), (3_600_000, "h"), (60_000, "m"), (1_000, "s")];
    match UNITS.iter().find(|(n, _)| ms >= *n && ms.is_multiple_of(*n)) {
        Some((n, unit)) => format!("{}{unit}", ms / n),
        None => format!("{ms}ms"),
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// How long ago a leader-stamped time was, for people: 850ms, 12s, 5m, 3h, 2d.
pub fn age(at_ms: u64) -> String {
    span(now_ms().saturating_sub(at_ms))
}

/// How long until a leader-stamped time, by this machine's clock, for people (0ms once past).
pub fn until(at_ms: u64) -> String {
    span(at_ms.saturating_sub(now_ms()))
}

/// A span of time in its largest whole unit.
fn span(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms}ms"),
        1_000..60_000 => format!("{}s", ms / 1_000),
        60_000..3_600_000 => format!("{}m", ms / 60_000),
        3_600_000..86_400_000 => format!("{}h", ms / 3_600_000),
        _ => format!("{}d", ms / 86_400_000),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_back() {
        assert_eq!(duration_text(120_000), "2m");
        assert_eq!(duration_text(90_000), "90s");
        assert_eq!(duration_text(7 * 86_400_000), "7d");
        assert_eq!(duration_text(1_500), "1500ms");
        assert_eq!(duration_text(0), "0ms");
        for ms in [1, 999, 1_000, 61_000, 3_600_000, 90 * 60_000] {
            assert_eq!(crate::args::parse_duration_ms(&duration_text(ms)), Ok(ms));
        }
    }

    #[test]
    fn items() {
        let item = pb::Item {
            seq: 7,
            key: "orders.eu".into(),
            payload: Some(pb::Payload { codec: "json".into(), data: br#"{"n": 1}"#.to_vec() }),
            headers: vec![pb::Header { name: "trace".into(), value: "t1".into() }],
            time_ms: 5,
        };
        assert_eq!(item_line(&item), r#"7 orders.eu [trace=t1] {"n":1}"#);
        let v = item_json(&item);
        assert_eq!((v["seq"].as_u64(), v["payload"]["n"].as_u64()), (Some(7), Some(1)));
        assert_eq!(v["headers"][0]["value"], "t1");
        let raw = pb::Item {
            seq: 8,
            payload: Some(pb::Payload { codec: "bincode".into(), data: vec![1, 2] }),
            ..Default::default()
        };
        assert_eq!(item_line(&raw), "8 - <2 bytes, bincode>");
        let v = item_json(&raw);
        assert!(v["key"].is_null() && v.get("payload").is_none(), "{v}");
        assert_eq!(v["payload_bincode_hex"], "0102");
    }
}
