//! Argument values several commands share: durations (`--ttl`, `--timeout`, `--delay`), JSON
//! arguments (`ARGS` or `--args`), and how much `--all` gathers.

use weft_proto::fabric::v1 as pb;

/// How long `call`, `executions wait`, `instances start` and `instances stop` wait by default.
pub const DEFAULT_WAIT: &str = "30s";

/// Most items `--all` gathers; past it the listing stops and prints where to continue.
pub const MAX_LIST_ALL_ITEMS: usize = 100_000;

/// Parses `500ms`, `30s`, `5m`, `2h` or a bare number of milliseconds.
pub fn parse_duration_ms(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits.parse().map_err(|_| format!("'{s}' is not a duration like 500ms, 30s, 5m or 2h"))?;
    let factor = match unit {
        "" | "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => {
            return Err(format!("'{s}' has an unknown unit '{unit}' (use ms, s, m or h)"));
        }
    };
    n.checked_mul(factor).ok_or_else(|| format!("'{s}' is too long"))
}

/// The JSON payload of the positional ARGS or `--args` (clap lets at most one through);
/// `null` without either. Refused here, before anything is sent, if it is not JSON.
pub fn json_payload(positional: Option<String>, flag: Option<String>) -> Result<pb::Payload, tonic::Status> {
    let (text, source) = match (positional, flag) {
        (Some(text), _) => (text, "ARGS"),
        (None, Some(text)) => (text, "--args"),
        (None, None) => ("null".to_owned(), ""),
    };
    if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(&text) {
        let bare_word = text.trim().chars().next().is_some_and(|c| c.is_alphabetic());
        let hint = if bare_word {
            format!("; a string needs JSON quotes, e.g. '\"{}\"'", text.trim())
        } else {
            String::new()
        };
        return Err(tonic::Status::invalid_argument(format!(
            "{source} is not valid JSON: {e}{hint} (nothing was sent)"
        )));
    }
    // The text as given, not re-encoded: serde_json's numbers would round big ones.
    Ok(pb::Payload { codec: "json".into(), data: text.into_bytes() })
}

#[cfg(test)]
mod tests {
    use super::parse_duration_ms;

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("250"), Ok(250));
        assert_eq!(parse_duration_ms("250ms"), Ok(250));
        assert_eq!(parse_duration_ms("3s"), Ok(3_000));
        assert_eq!(parse_duration_ms("2m"), Ok(120_000));
        assert_eq!(parse_duration_ms("1h"), Ok(3_600_000));
        assert!(parse_duration_ms("3 days").is_err());
        assert!(parse_duration_ms("s").is_err());
    }
}
