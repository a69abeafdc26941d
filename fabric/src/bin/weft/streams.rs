//! `weft streams create|list|info|append|get|read|tail|close|delete`: append-only streams of
//! items. Reading items (`get`, `read`, `tail`) lives in [`crate::items`].

use std::path::PathBuf;

use serde_json::json;
use weft_proto::fabric::v1 as pb;
use weft_proto::fabric::v1::streams_client::StreamsClient;

use crate::args::{Input, json_text, parse_header, parse_positive_duration_ms};
use crate::connect::{self, Failover, REQUEST_TIMEOUT, consistency};
use crate::cursors::{cursor_json, print_cursors};
use crate::items;
use crate::render::{age, duration_text, error_json, fail, non_empty, outln};

/// Most items one `append --lines` request carries by default: the fabric's
/// `max_batch_items` default.
const DEFAULT_BATCH_ITEMS: u64 = 1_000;
/// Most payload bytes one `append --lines` request carries, well under the fabric's default
/// `max_message_bytes` (8 MiB); a single larger line still goes alone.
const MAX_BATCH_BYTES: usize = 4 << 20;

/// `weft streams` and its operations.
pub type Args = connect::Group<Op>;

/// Operations on streams: append-only sequences of items, numbered 1, 2, 3, ... (the seq).
#[derive(Debug, clap::Subcommand)]
pub enum Op {
    /// Create a stream (or find it, if one of that name has the same settings).
    Create {
        /// The stream's name.
        name: String,
        /// persistent: kept until a limit removes items; ephemeral: removed once every
        /// cursor acked them; workqueue: each item goes to one consumer, removed when acked.
        #[arg(long, value_enum, default_value_t = Kind::Persistent)]
        kind: Kind,
        /// Most items kept (default: no limit).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        max_items: Option<u64>,
        /// Most bytes of items (payload, key, headers) kept (default: no limit).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        max_bytes: Option<u64>,
        /// Oldest item kept: 30s, 5m, 2h, 7d (default: no limit).
        #[arg(long, value_name = "DUR", value_parser = parse_positive_duration_ms)]
        max_age: Option<u64>,
        /// What a limit reached does: old removes the oldest items, new refuses the append.
        #[arg(long, value_enum, default_value_t = Discard::Old)]
        discard: Discard,
        /// How long an append's --msg-id is remembered (default 2m).
        #[arg(long, value_name = "DUR", value_parser = parse_positive_duration_ms)]
        dedup_window: Option<u64>,
    },
    /// List streams by name.
    List {
        /// Streams per page (default: the server's page size).
        #[arg(long, default_value_t = 0)]
        limit: u32,
        /// Continue after this stream name (printed at the end of the previous page).
        #[arg(long, value_name = "NAME", default_value = "")]
        page_token: String,
        /// Fetch every page.
        #[arg(long)]
        all: bool,
        /// Read the contacted node's replica without asking the leader.
        #[arg(long)]
        stale: bool,
    },
    /// Show a stream: its settings, seqs, size, status and cursors.
    Info {
        /// The stream's name.
        name: String,
        /// Read the contacted node's replica without asking the leader.
        #[arg(long)]
        stale: bool,
    },
    /// Append one item (VALUE, a file, or stdin with -), or with --lines one item per line.
    ///
    /// The value is JSON, like `weft call` arguments: '"text"', '{"n": 1}', 42. Prints the
    /// seq(s) given and whether the append was a duplicate (stored before; nothing new).
    #[command(verbatim_doc_comment)]
    Append(AppendArgs),
    /// Print one item: by seq, or the last with a key (--key).
    Get(items::GetArgs),
    /// Print stored items from a seq on, a page at a time.
    Read(items::ReadArgs),
    /// Print the last items (or from --from); with --follow, then live ones until the stream
    /// ends or ctrl-c.
    Tail(items::TailArgs),
    /// Close a stream: no more appends; listeners get what is left, then the end.
    Close {
        /// The stream's name.
        name: String,
        /// End the stream with this error (listeners see it; `tail --follow` exits 1).
        #[arg(long, value_name = "MSG")]
        error: Option<String>,
    },
    /// Delete a stream, its items and its cursors; listeners end ("deleted").
    Delete {
        /// The stream's name.
        name: String,
    },
}

/// Flags of `weft streams append`.
#[derive(Debug, clap::Args)]
pub struct AppendArgs {
    /// The stream.
    pub name: String,
    /// The item as JSON; - reads it from stdin.
    #[arg(value_name = "VALUE", allow_negative_numbers = true, required_unless_present = "file")]
    pub value: Option<String>,
    /// Read the item (or with --lines, the items) from this file.
    #[arg(long, value_name = "FILE", conflicts_with = "value")]
    pub file: Option<PathBuf>,
    /// The item's key: dot-separated tokens of [A-Za-z0-9_-], for filters and `get --key`.
    #[arg(long)]
    pub key: Option<String>,
    /// A header NAME=VALUE; repeat for more.
    #[arg(long = "header", value_name = "NAME=VALUE", value_parser = parse_header)]
    pub headers: Vec<(String, String)>,
    /// Appending again with this id within the stream's dedup window stores nothing and
    /// prints the first append's seqs, as a duplicate.
    #[arg(long, value_name = "ID")]
    pub msg_id: Option<String>,
    /// Only append if the stream's last seq is N (0: it is empty).
    #[arg(long, value_name = "N")]
    pub expected_last_seq: Option<u64>,
    /// An exactly-once producer's id (with --epoch and --sequence).
    #[arg(long, value_name = "ID", requires_all = ["epoch", "sequence"])]
    pub producer: Option<String>,
    /// The producer's epoch: a restarted producer takes a higher one.
    #[arg(long, value_name = "E", requires = "producer")]
    pub epoch: Option<u64>,
    /// The producer's sequence for this append: 1, 2, 3, ...
    #[arg(long, value_name = "S", requires = "producer", value_parser = clap::value_parser!(u64).range(1..))]
    pub sequence: Option<u64>,
    /// Each non-blank line of the input is one item, appended in atomic batches of up to
    /// --batch items.
    #[arg(long)]
    pub lines: bool,
    /// With --lines: most items per append.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_BATCH_ITEMS, requires = "lines",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub batch: u64,
}

/// A stream's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    Persistent,
    Ephemeral,
    Workqueue,
}

/// What a stream limit reached does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Discard {
    Old,
    New,
}

fn kind_text(kind: i32) -> &'static str {
    match pb::StreamKind::try_from(kind) {
        Ok(pb::StreamKind::Persistent) => "persistent",
        Ok(pb::StreamKind::Ephemeral) => "ephemeral",
        Ok(pb::StreamKind::Workqueue) => "workqueue",
        Err(_) => "unknown",
    }
}

fn discard_text(discard: i32) -> &'static str {
    match pb::Discard::try_from(discard) {
        Ok(pb::Discard::Old) => "old",
        Ok(pb::Discard::New) => "new",
        Err(_) => "unknown",
    }
}

/// `open`, `closed`, or `failed` (closed with an error).
fn state_text(s: &pb::StreamInfo) -> &'static str {
    match (s.closed, s.close_error.is_empty()) {
        (false, _) => "open",
        (true, true) => "closed",
        (true, false) => "failed",
    }
}

/// A stream as `--json` prints it.
fn stream_json(s: &pb::StreamInfo) -> serde_json::Value {
    let limits = s.limits.unwrap_or_default();
    let some = |n: u64| (n != 0).then_some(n);
    json!({
        "name": s.name,
        "kind": kind_text(s.kind),
        "limits": {
            "max_items": some(limits.max_items),
            "max_bytes": some(limits.max_bytes),
            "max_age_ms": some(limits.max_age_ms),
            "discard": discard_text(limits.discard),
            "dedup_window_ms": limits.dedup_window_ms,
        },
        "first_seq": s.first_seq,
        "last_seq": s.last_seq,
        "items": s.items,
        "bytes": s.bytes,
        "closed": s.closed,
        "close_error": non_empty(&s.close_error),
        "created_ms": s.created_ms,
        "uid": s.uid,
        "cursors": s.cursors.iter().map(cursor_json).collect::<Vec<_>>(),
    })
}

/// The seqs a stream holds, for people: `1..12` or `none (next is 13)`.
fn seqs_text(s: &pb::StreamInfo) -> String {
    if s.items == 0 {
        format!("none (next is {})", s.last_seq + 1)
    } else {
        format!("{}..{}", s.first_seq, s.last_seq)
    }
}

/// Streams as a table, one line each.
fn print_streams(streams: &[pb::StreamInfo]) {
    outln!(
        "{:<24} {:<10} {:<6} {:>10} {:>12} {:>10} {:>7} {:>6}",
        "NAME",
        "KIND",
        "STATE",
        "ITEMS",
        "BYTES",
        "LAST SEQ",
        "CURSORS",
        "AGE"
    );
    for s in streams {
        outln!(
            "{:<24} {:<10} {:<6} {:>10} {:>12} {:>10} {:>7} {:>6}",
            s.name,
            kind_text(s.kind),
            state_text(s),
            s.items,
            s.bytes,
            s.last_seq,
            s.cursors.len(),
            age(s.created_ms)
        );
    }
}

/// One stream in detail: a headline, one line per field, then its cursors.
fn print_stream(s: &pb::StreamInfo) {
    outln!("stream {}  {}  {}", s.name, kind_text(s.kind), state_text(s));
    let line = |name: &str, value: String| outln!("  {name:<14} {value}");
    line("seqs", seqs_text(s));
    line("items", format!("{} ({} bytes)", s.items, s.bytes));
    let l = s.limits.unwrap_or_default();
    let limit = |n: u64, text: String| if n == 0 { "none".to_owned() } else { text };
    line(
        "limits",
        format!(
            "max items {}, max bytes {}, max age {}, discard {}",
            limit(l.max_items, l.max_items.to_string()),
            limit(l.max_bytes, l.max_bytes.to_string()),
            limit(l.max_age_ms, duration_text(l.max_age_ms)),
            discard_text(l.discard)
        ),
    );
    line("dedup window", duration_text(l.dedup_window_ms));
    line("created_ms", format!("{} ({} ago)", s.created_ms, age(s.created_ms)));
    line("uid", s.uid.to_string());
    if !s.close_error.is_empty() {
        line("close error", s.close_error.clone());
    }
    if s.cursors.is_empty() {
        line("cursors", "none".into());
    } else {
        outln!();
        print_cursors(&s.cursors);
    }
}

/// Prints a stream in detail, or as JSON.
fn show(s: &pb::StreamInfo, json_out: bool) {
    if json_out {
        outln!("{}", stream_json(s));
    } else {
        print_stream(s);
    }
}

/// `weft streams ...`.
pub async fn run(args: Args) -> anyhow::Result<i32> {
    let json_out = args.conn.json;
    let endpoint = args.conn.endpoint.clone();
    let client = async || -> anyhow::Result<StreamsClient<Failover>> {
        connect::client(&endpoint, Some(REQUEST_TIMEOUT))
    };
    match args.op {
        Op::Get(get) => items::get(args.conn, get).await,
        Op::Read(read) => items::read(args.conn, read).await,
        Op::Tail(tail) => items::tail(args.conn, tail).await,
        Op::Append(append) => self::append(args.conn, append).await,
        Op::Create { name, kind, max_items, max_bytes, max_age, discard, dedup_window } => {
            let kind = match kind {
                Kind::Persistent => pb::StreamKind::Persistent,
                Kind::Ephemeral => pb::StreamKind::Ephemeral,
                Kind::Workqueue => pb::StreamKind::Workqueue,
            };
            let discard = match discard {
                Discard::Old => pb::Discard::Old,
                Discard::New => pb::Discard::New,
            };
            let limits = pb::StreamLimits {
                max_items: max_items.unwrap_or(0),
                max_bytes: max_bytes.unwrap_or(0),
                max_age_ms: max_age.unwrap_or(0),
                discard: discard as i32,
                dedup_window_ms: dedup_window.unwrap_or(0),
            };
            let req =
                pb::CreateStreamRequest { name, kind: kind as i32, limits: Some(limits), generator: None };
            match client().await?.create(req).await {
                Err(e) => Ok(fail(e, json_out)),
                Ok(r) => {
                    show(&r.into_inner(), json_out);
                    Ok(0)
                }
            }
        }
        Op::List { limit, page_token, all, stale } => {
            let mut client = client().await?;
            let listed = connect::pages(page_token, all, async |page_token| {
                let req = pb::ListStreamsRequest { page_token, limit, consistency: consistency(stale) };
                let page = client.list(req).await?.into_inner();
                Ok((page.streams, page.next_page_token))
            })
            .await;
            let (streams, page_token) = match listed {
                Ok(listed) => listed,
                Err(e) => return Ok(fail(e, json_out)),
            };
            if json_out {
                let items: Vec<_> = streams.iter().map(stream_json).collect();
                outln!("{}", json!({"streams": items, "next_page_token": non_empty(&page_token)}));
                return Ok(0);
            }
            if streams.is_empty() {
                eprintln!("(no streams)");
            } else {
                print_streams(&streams);
            }
            if !page_token.is_empty() {
                eprintln!("more streams follow: --page-token '{page_token}' (or --all)");
            }
            Ok(0)
        }
        Op::Info { name, stale } => {
            match client().await?.info(pb::StreamInfoRequest { name, consistency: consistency(stale) }).await
            {
                Err(e) => Ok(fail(e, json_out)),
                Ok(r) => {
                    show(&r.into_inner(), json_out);
                    Ok(0)
                }
            }
        }
        Op::Close { name, error } => {
            let req = pb::CloseStreamRequest { name, error: error.unwrap_or_default() };
            match client().await?.close(req).await {
                Err(e) => Ok(fail(e, json_out)),
                Ok(r) if json_out => {
                    outln!("{}", stream_json(&r.into_inner()));
                    Ok(0)
                }
                Ok(r) => {
                    let s = r.into_inner();
                    let how = if s.close_error.is_empty() {
                        String::new()
                    } else {
                        format!(" with error: {}", s.close_error)
                    };
                    outln!("closed stream {} at seq {}{how}", s.name, s.last_seq);
                    Ok(0)
                }
            }
        }
        Op::Delete { name } => {
            match client().await?.delete(pb::DeleteStreamRequest { name: name.clone() }).await {
                Err(e) => Ok(fail(e, json_out)),
                Ok(r) => {
                    let existed = r.into_inner().existed;
                    if json_out {
                        outln!("{}", json!({ "existed": existed }));
                    } else if existed {
                        outln!("deleted stream {name}");
                    } else {
                        outln!("no stream {name} (nothing deleted)");
                    }
                    Ok(0)
                }
            }
        }
    }
}

/// The items an append's input makes: the whole input as one, or one per non-blank line.
/// Every one is checked here, before anything is sent.
fn input_items(args: &AppendArgs) -> Result<Vec<pb::NewItem>, tonic::Status> {
    let input = Input::of(args.value.clone(), args.file.clone())
        .ok_or_else(|| tonic::Status::invalid_argument("give VALUE, --file FILE or - (stdin)"))?;
    let text = input.read()?;
    let item = |payload| pb::NewItem {
        key: args.key.clone().unwrap_or_default(),
        payload: Some(payload),
        headers: args
            .headers
            .iter()
            .map(|(name, value)| pb::Header { name: name.clone(), value: value.clone() })
            .collect(),
    };
    if !args.lines {
        // A file or stdin usually ends with a newline; it is not part of the value.
        let text = if matches!(input, Input::Inline(_)) { text } else { text.trim_end().to_owned() };
        return Ok(vec![item(json_text(text, &input.name())?)]);
    }
    let mut items = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let source = format!("line {} of {}", n + 1, input.name());
        items.push(item(json_text(line.to_owned(), &source)?));
    }
    if items.is_empty() {
        return Err(tonic::Status::invalid_argument(format!(
            "{} has no items (every line is blank; nothing was sent)",
            input.name()
        )));
    }
    Ok(items)
}

/// Splits items into appends of at most `max_items` items and (but for a single larger item)
/// [`MAX_BATCH_BYTES`] payload bytes.
fn batches(items: Vec<pb::NewItem>, max_items: usize) -> Vec<Vec<pb::NewItem>> {
    let mut batches: Vec<Vec<pb::NewItem>> = Vec::new();
    let mut bytes = 0;
    for item in items {
        let size = item.payload.as_ref().map_or(0, |p| p.data.len());
        match batches.last_mut() {
            Some(batch) if batch.len() < max_items && bytes + size <= MAX_BATCH_BYTES => {
                bytes += size;
                batch.push(item);
            }
            _ => {
                bytes = size;
                batches.push(vec![item]);
            }
        }
    }
    batches
}

/// One append's answer, for people: `appended: seqs 4-6`, or a duplicate.
fn appended_text(r: &pb::AppendResponse) -> String {
    let seqs = if r.first_seq == r.last_seq {
        format!("seq {}", r.first_seq)
    } else {
        format!("seqs {}-{}", r.first_seq, r.last_seq)
    };
    if r.duplicate {
        format!("duplicate: {seqs} (appended before; nothing was appended now)")
    } else {
        format!("appended: {seqs}")
    }
}

/// `weft streams append`.
async fn append(conn: connect::Conn, args: AppendArgs) -> anyhow::Result<i32> {
    let json_out = conn.json;
    let items = match input_items(&args) {
        Ok(items) => items,
        Err(e) => return Ok(fail(e, json_out)),
    };
    let batches = batches(items, usize::try_from(args.batch).unwrap_or(usize::MAX));
    if batches.len() > 1 && args.msg_id.is_some() {
        let why = format!(
            "--msg-id names one append, and the input makes {} (of up to --batch {} items); use \
             --producer for exactly-once over several (nothing was sent)",
            batches.len(),
            args.batch
        );
        return Ok(fail(tonic::Status::invalid_argument(why), json_out));
    }
    let mut client: StreamsClient<_> = connect::client(&conn.endpoint, Some(REQUEST_TIMEOUT))?;
    let mut done: Vec<(pb::AppendResponse, usize)> = Vec::new();
    let mut expected_last_seq = args.expected_last_seq;
    let count = batches.len();
    for (n, items) in batches.into_iter().enumerate() {
        let size = items.len();
        let producer = args.producer.as_ref().map(|id| pb::Producer {
            id: id.clone(),
            epoch: args.epoch.unwrap_or(0),
            sequence: args.sequence.unwrap_or(1) + n as u64,
        });
        let req = pb::AppendRequest {
            stream: args.name.clone(),
            items,
            expected_last_seq,
            producer,
            msg_id: args.msg_id.clone().unwrap_or_default(),
        };
        match client.append(req).await {
            Ok(r) => {
                let r = r.into_inner();
                // The next batch goes on only where this one ended: together, they are
                // appended only if nobody else appended in between.
                expected_last_seq = expected_last_seq.map(|_| r.last_seq);
                if !json_out {
                    outln!("{}", appended_text(&r));
                }
                done.push((r, size));
            }
            Err(e) if done.is_empty() => return Ok(fail(e, json_out)),
            Err(e) => {
                let sent: usize = done.iter().map(|(_, n)| n).sum();
                if json_out {
                    outln!(
                        "{}",
                        json!({"items": sent, "appends": appends_json(&done), "error": error_json(&e)})
                    );
                } else {
                    eprintln!(
                        "error ({:?}): {} (append {} of {count}; the {sent} items before it were appended)",
                        e.code(),
                        e.message(),
                        n + 1
                    );
                }
                return Ok(1);
            }
        }
    }
    if json_out {
        match &done[..] {
            [(r, _)] if !args.lines => {
                outln!(
                    "{}",
                    json!({"first_seq": r.first_seq, "last_seq": r.last_seq, "duplicate": r.duplicate})
                )
            }
            _ => {
                let sent: usize = done.iter().map(|(_, n)| n).sum();
                outln!("{}", json!({"items": sent, "appends": appends_json(&done)}));
            }
        }
    }
    Ok(0)
}

fn appends_json(done: &[(pb::AppendResponse, usize)]) -> Vec<serde_json::Value> {
    done.iter()
        .map(|(r, n)| {
            json!({"first_seq": r.first_seq, "last_seq": r.last_seq, "duplicate": r.duplicate, "items": n})
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(bytes: usize) -> pb::NewItem {
        pb::NewItem {
            payload: Some(pb::Payload { codec: "json".into(), data: vec![b'1'; bytes] }),
            ..Default::default()
        }
    }

    #[test]
    fn batches_keep_to_items_and_bytes() {
        let sizes = |b: &[Vec<pb::NewItem>]| b.iter().map(Vec::len).collect::<Vec<_>>();
        assert_eq!(sizes(&batches((0..2500).map(|_| item(1)).collect(), 1000)), [1000, 1000, 500]);
        let big = MAX_BATCH_BYTES / 2 + 1;
        assert_eq!(sizes(&batches(vec![item(big), item(big), item(1)], 1000)), [1, 2]);
        assert_eq!(sizes(&batches(vec![item(MAX_BATCH_BYTES * 2)], 1000)), [1]);
    }
}
