//! Argument values several commands share: durations (`--ttl`, `--timeout`, `--max-age`), JSON
//! values (`ARGS`, `--args`, a stream item) given inline, in a file or on stdin, item headers,
//! and how much `--all` gathers.

use std::io::Read as _;
use std::path::PathBuf;

use weft_proto::fabric::v1 as pb;

/// How long `call`, `executions wait`, `instances start` and `instances stop` wait by default.
pub const DEFAULT_WAIT: &str = "30s";

/// Most items `--all` gathers; past it the listing stops and prints where to continue.
pub const MAX_LIST_ALL_ITEMS: usize = 100_000;

/// Largest input read from a file or stdin (`streams append --file F`, `-`): past it, split
/// the input.
pub const MAX_INPUT_BYTES: u64 = 64 << 20;

/// Parses `500ms`, `30s`, `5m`, `2h`, `7d` or a bare number of milliseconds.
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
        "d" => 86_400_000,
        _ => {
            return Err(format!("'{s}' has an unknown unit '{unit}' (use ms, s, m, h or d)"));
        }
    };
    n.checked_mul(factor).ok_or_else(|| format!("'{s}' is too long"))
}

/// A duration that sets a limit or a wait: more than zero (leave the flag out for none).
pub fn parse_positive_duration_ms(s: &str) -> Result<u64, String> {
    match parse_duration_ms(s)? {
        0 => Err(format!("'{s}' is zero; give a duration over 0 (or leave the flag out)")),
        ms => Ok(ms),
    }
}

/// Parses an item header `NAME=VALUE` (the value may be empty and may hold `=`).
pub fn parse_header(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_owned(), value.to_owned())),
        _ => Err(format!("'{s}' is not a header like NAME=VALUE")),
    }
}

/// Where a value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// Given on the command line.
    Inline(String),
    /// The contents of a file.
    File(PathBuf),
    /// Standard input (`-`).
    Stdin,
}

impl Input {
    /// The input named by a positional VALUE (see [`Input::arg`]) or `--file` (clap lets one
    /// through).
    pub fn of(value: Option<String>, file: Option<PathBuf>) -> Option<Self> {
        match (value, file) {
            (Some(v), _) => Some(Input::arg(&v)),
            (None, Some(f)) if f.as_os_str() == "-" => Some(Input::Stdin),
            (None, Some(f)) => Some(Input::File(f)),
            (None, None) => None,
        }
    }

    /// The input a positional value names: `-` is stdin, `@FILE` a file, `@@TEXT` the text
    /// `@TEXT`, anything else itself.
    pub fn arg(value: &str) -> Self {
        match value {
            "-" => Input::Stdin,
            v if v.starts_with("@@") => Input::Inline(v[1..].to_owned()),
            v if v.len() > 1 && v.starts_with('@') => Input::File(PathBuf::from(&v[1..])),
            v => Input::Inline(v.to_owned()),
        }
    }

    /// How errors name it: `VALUE`, `file F`, `stdin`.
    pub fn name(&self) -> String {
        match self {
            Input::Inline(_) => "VALUE".into(),
            Input::File(f) => format!("file {}", f.display()),
            Input::Stdin => "stdin".into(),
        }
    }

    /// Reads it whole, up to [`MAX_INPUT_BYTES`], as UTF-8 text. Refused here, before anything
    /// is sent, if it cannot be read.
    pub fn read(&self) -> Result<String, tonic::Status> {
        let refused = |why: String| tonic::Status::invalid_argument(format!("{why} (nothing was sent)"));
        let reader: Box<dyn std::io::Read> = match self {
            Input::Inline(text) => return Ok(text.clone()),
            Input::File(f) => Box::new(
                std::fs::File::open(f).map_err(|e| refused(format!("cannot read {}: {e}", self.name())))?,
            ),
            Input::Stdin => Box::new(std::io::stdin().lock()),
        };
        let mut bytes = Vec::new();
        reader
            .take(MAX_INPUT_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| refused(format!("cannot read {}: {e}", self.name())))?;
        if bytes.len() as u64 > MAX_INPUT_BYTES {
            return Err(refused(format!("{} is over {MAX_INPUT_BYTES} bytes; split it", self.name())));
        }
        String::from_utf8(bytes).map_err(|e| refused(format!("{} is not UTF-8 text: {e}", self.name())))
    }
}

/// The JSON payload of the positional ARGS or `--args` (clap lets at most one through);
/// `null` without either. Refused here, before anything is sent, if it is not JSON.
///
/// Either may be `@FILE` (the JSON is read from the file) or `-` (from stdin).
pub fn json_payload(positional: Option<String>, flag: Option<String>) -> Result<pb::Payload, tonic::Status> {
    let (text, source) = match (positional, flag) {
        (Some(text), _) => (text, "ARGS"),
        (None, Some(text)) => (text, "--args"),
        (None, None) => ("null".to_owned(), ""),
    };
    let input = Input::arg(&text);
    let source = match &input {
        Input::Inline(_) => source.to_owned(),
        other => format!("{source} ({})", other.name()),
    };
    json_text(input.read()?, &source)
}

/// `text` as a JSON payload; `source` names it in the error if it is not JSON.
pub fn json_text(text: String, source: &str) -> Result<pb::Payload, tonic::Status> {
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
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("250"), Ok(250));
        assert_eq!(parse_duration_ms("250ms"), Ok(250));
        assert_eq!(parse_duration_ms("3s"), Ok(3_000));
        assert_eq!(parse_duration_ms("2m"), Ok(120_000));
        assert_eq!(parse_duration_ms("1h"), Ok(3_600_000));
        assert!(parse_duration_ms("3 days").is_err());
        assert!(parse_duration_ms("s").is_err());
        assert_eq!(parse_duration_ms("7d"), Ok(7 * 86_400_000));
        assert!(parse_positive_duration_ms("0s").unwrap_err().contains("zero"));
        assert_eq!(parse_positive_duration_ms("2m"), Ok(120_000));
    }

    #[test]
    fn headers() {
        assert_eq!(parse_header("trace=a=b"), Ok(("trace".into(), "a=b".into())));
        assert_eq!(parse_header("empty="), Ok(("empty".into(), String::new())));
        assert!(parse_header("novalue").unwrap_err().contains("NAME=VALUE"));
        assert!(parse_header("=v").is_err());
    }

    #[test]
    fn inputs() {
        assert_eq!(Input::of(Some("-".into()), None), Some(Input::Stdin));
        assert_eq!(Input::of(None, Some("-".into())), Some(Input::Stdin));
        assert_eq!(Input::of(Some("1".into()), None), Some(Input::Inline("1".into())));
        let missing = Input::File("/nonexistent/weft-input".into()).read().unwrap_err();
        assert!(missing.message().starts_with("cannot read file /nonexistent/weft-input: "), "{missing}");
        assert_eq!(Input::arg("-"), Input::Stdin);
        assert_eq!(Input::arg("@args.json"), Input::File("args.json".into()));
        assert_eq!(Input::arg("@@home"), Input::Inline("@home".into()));
        assert_eq!(Input::arg("@"), Input::Inline("@".into()));
        assert_eq!(Input::arg("{}"), Input::Inline("{}".into()));
        let missing = json_payload(Some("@/nonexistent/args.json".into()), None).unwrap_err();
        assert!(missing.message().contains("cannot read file /nonexistent/args.json"), "{missing}");
        let bad = json_text("{x".into(), "line 3 of stdin").unwrap_err();
        assert!(bad.message().starts_with("line 3 of stdin is not valid JSON"), "{bad}");
    }
}
