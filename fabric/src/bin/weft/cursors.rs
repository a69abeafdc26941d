//! `weft cursors list|info|create|delete`: durable positions on a stream, shared by the
//! listeners that follow them (`weft streams tail --follow --cursor NAME` is one).

use serde_json::json;
use weft_proto::fabric::v1 as pb;
use weft_proto::fabric::v1::streams_client::StreamsClient;

use crate::args::parse_positive_duration_ms;
use crate::connect::{self, REQUEST_TIMEOUT, consistency};
use crate::render::{duration_text, fail, non_empty, outln};

/// `weft cursors` and its operations.
pub type Args = connect::Group<Op>;

/// Operations on the cursors of a stream. STREAM is the stream's name, NAME the cursor's.
#[derive(Debug, clap::Subcommand)]
pub enum Op {
    /// List a stream's cursors, with their position and what they hold.
    List {
        /// The stream whose cursors to list.
        stream: String,
        /// Read the contacted node's replica without asking the leader.
        #[arg(long)]
        stale: bool,
    },
    /// Show one cursor: its settings, position and counters.
    Info {
        /// The stream the cursor reads.
        stream: String,
        /// The cursor's name.
        name: String,
        /// Read the contacted node's replica without asking the leader.
        #[arg(long)]
        stale: bool,
    },
    /// Create a cursor (or find it, if one of that name has the same settings).
    Create {
        /// The stream the cursor reads.
        stream: String,
        /// The cursor's name.
        name: String,
        #[command(flatten)]
        config: ConfigFlags,
    },
    /// Delete a cursor; its listeners end ("deleted").
    Delete {
        /// The stream the cursor reads.
        stream: String,
        /// The cursor's name.
        name: String,
    },
}

/// A cursor's settings as flags.
#[derive(Debug, Clone, clap::Args)]
pub struct ConfigFlags {
    /// Where it starts: all, new, last, last-per-key, from-seq:N, from-time:MS (milliseconds
    /// since the Unix epoch).
    #[arg(long, value_name = "POLICY", value_parser = parse_deliver, default_value = "all")]
    pub deliver: Deliver,
    /// Only items whose key matches: tokens split by '.', '*' for one token, '>' last for
    /// the rest ("orders.*.paid", "orders.>").
    #[arg(long, value_name = "PATTERN")]
    pub filter: Option<String>,
    /// explicit: each item must be acked, or it comes again after --ack-wait; none:
    /// delivered is done.
    #[arg(long, value_enum, default_value_t = Ack::Explicit)]
    pub ack: Ack,
    /// How long a delivery waits for its ack before it is delivered again (default 30s).
    #[arg(long, value_name = "DUR", value_parser = parse_positive_duration_ms)]
    pub ack_wait: Option<u64>,
    /// Deliveries of one item before it goes to --dead-letter (or is dropped); default: no
    /// limit.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_deliveries: Option<u32>,
    /// The stream an item goes to once it ran out of deliveries.
    #[arg(long, value_name = "STREAM")]
    pub dead_letter: Option<String>,
    /// Most items delivered and not yet acked, over all its listeners (default 1000).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_ack_pending: Option<u32>,
}

impl ConfigFlags {
    /// The settings as the protocol carries them (0 and empty: the fabric's defaults).
    pub fn to_pb(&self) -> pb::CursorConfig {
        pb::CursorConfig {
            deliver: self.deliver.policy as i32,
            from_seq: self.deliver.from_seq,
            from_time_ms: self.deliver.from_time_ms,
            filter: self.filter.clone().unwrap_or_default(),
            ack: self.ack.to_pb() as i32,
            ack_wait_ms: self.ack_wait.unwrap_or(0),
            max_deliveries: self.max_deliveries.unwrap_or(0),
            dead_letter: self.dead_letter.clone().unwrap_or_default(),
            max_ack_pending: self.max_ack_pending.unwrap_or(0),
        }
    }
}

/// Whether deliveries must be acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Ack {
    Explicit,
    None,
}

impl Ack {
    fn to_pb(self) -> pb::AckPolicy {
        match self {
            Ack::Explicit => pb::AckPolicy::AckExplicit,
            Ack::None => pb::AckPolicy::AckNone,
        }
    }
}

/// A deliver policy with its position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deliver {
    pub policy: pb::DeliverPolicy,
    pub from_seq: u64,
    pub from_time_ms: u64,
}

impl Deliver {
    /// Every stored item.
    pub const ALL: Deliver = Deliver { policy: pb::DeliverPolicy::DeliverAll, from_seq: 0, from_time_ms: 0 };
}

/// Parses `all`, `new`, `last`, `last-per-key`, `from-seq:N` or `from-time:MS`.
pub fn parse_deliver(s: &str) -> Result<Deliver, String> {
    use pb::DeliverPolicy as P;
    let plain = |policy| Ok(Deliver { policy, ..Deliver::ALL });
    let number = |n: &str, what: &str| {
        n.parse::<u64>().map_err(|_| format!("'{s}': {what} must be a whole number, e.g. {what}:42"))
    };
    match s.split_once(':') {
        None if s == "all" => plain(P::DeliverAll),
        None if s == "new" => plain(P::DeliverNew),
        None if s == "last" => plain(P::DeliverLast),
        None if s == "last-per-key" => plain(P::DeliverLastPerKey),
        Some(("from-seq", n)) => {
            Ok(Deliver { policy: P::DeliverFromSeq, from_seq: number(n, "from-seq")?, from_time_ms: 0 })
        }
        Some(("from-time", n)) => {
            Ok(Deliver { policy: P::DeliverFromTime, from_seq: 0, from_time_ms: number(n, "from-time")? })
        }
        _ => Err(format!(
            "'{s}' is not a deliver policy (all, new, last, last-per-key, from-seq:N, from-time:MS)"
        )),
    }
}

/// A cursor's deliver policy as `--deliver` takes it.
fn deliver_text(c: &pb::CursorConfig) -> String {
    use pb::DeliverPolicy as P;
    match P::try_from(c.deliver) {
        Ok(P::DeliverAll) => "all".into(),
        Ok(P::DeliverNew) => "new".into(),
        Ok(P::DeliverLast) => "last".into(),
        Ok(P::DeliverLastPerKey) => "last-per-key".into(),
        Ok(P::DeliverFromSeq) => format!("from-seq:{}", c.from_seq),
        Ok(P::DeliverFromTime) => format!("from-time:{}", c.from_time_ms),
        Err(_) => format!("unknown ({})", c.deliver),
    }
}

fn ack_text(c: &pb::CursorConfig) -> &'static str {
    match pb::AckPolicy::try_from(c.ack) {
        Ok(pb::AckPolicy::AckExplicit) => "explicit",
        Ok(pb::AckPolicy::AckNone) => "none",
        Err(_) => "unknown",
    }
}

/// A cursor as `--json` prints it (`cursors`, and `streams info`).
pub fn cursor_json(c: &pb::CursorInfo) -> serde_json::Value {
    let config = c.config.clone().unwrap_or_default();
    json!({
        "stream": c.stream,
        "name": c.name,
        "config": {
            "deliver": deliver_text(&config),
            "filter": non_empty(&config.filter),
            "ack": ack_text(&config),
            "ack_wait_ms": config.ack_wait_ms,
            "max_deliveries": (config.max_deliveries != 0).then_some(config.max_deliveries),
            "dead_letter": non_empty(&config.dead_letter),
            "max_ack_pending": config.max_ack_pending,
        },
        "ack_floor": c.ack_floor,
        "next_seq": c.next_seq,
        "lag": c.lag,
        "ack_pending": c.ack_pending,
        "redelivery_pending": c.redelivery_pending,
        "delivered": c.delivered,
        "redelivered": c.redelivered,
        "dead_lettered": c.dead_lettered,
        "listeners": c.listeners,
        "unnamed": c.unnamed,
    })
}

/// Cursors as a table, one line each.
pub fn print_cursors(cursors: &[pb::CursorInfo]) {
    let row = |cells: [&str; 8]| {
        outln!(
            "{:<20} {:<14} {:<8} {:>10} {:>10} {:>8} {:>8} {:>9}",
            cells[0],
            cells[1],
            cells[2],
            cells[3],
            cells[4],
            cells[5],
            cells[6],
            cells[7]
        )
    };
    row(["NAME", "DELIVER", "ACK", "ACK FLOOR", "NEXT SEQ", "LAG", "PENDING", "LISTENERS"]);
    for c in cursors {
        let config = c.config.clone().unwrap_or_default();
        row([
            &c.name,
            &deliver_text(&config),
            ack_text(&config),
            &c.ack_floor.to_string(),
            &c.next_seq.to_string(),
            &c.lag.to_string(),
            &c.ack_pending.to_string(),
            &c.listeners.to_string(),
        ]);
    }
}

/// One cursor in detail: a headline, then one line per field.
fn print_cursor(c: &pb::CursorInfo) {
    let config = c.config.clone().unwrap_or_default();
    let unnamed = if c.unnamed { "  (a listener's own, removed when idle)" } else { "" };
    outln!(
        "cursor {}/{}  deliver {}  ack {}{unnamed}",
        c.stream,
        c.name,
        deliver_text(&config),
        ack_text(&config)
    );
    let line = |name: &str, value: String| outln!("  {name:<19} {value}");
    line("ack_floor", c.ack_floor.to_string());
    line("next_seq", c.next_seq.to_string());
    line("lag", c.lag.to_string());
    line("ack_pending", c.ack_pending.to_string());
    line("redelivery_pending", c.redelivery_pending.to_string());
    line(
        "delivered",
        format!("{} (redelivered {}, dead-lettered {})", c.delivered, c.redelivered, c.dead_lettered),
    );
    line("listeners", c.listeners.to_string());
    if let Some(filter) = non_empty(&config.filter) {
        line("filter", filter.to_owned());
    }
    line("ack_wait", duration_text(config.ack_wait_ms));
    line("max_ack_pending", config.max_ack_pending.to_string());
    if config.max_deliveries != 0 {
        line("max_deliveries", config.max_deliveries.to_string());
    }
    if let Some(dlq) = non_empty(&config.dead_letter) {
        line("dead_letter", dlq.to_owned());
    }
}

/// Prints a cursor in detail, or as JSON.
fn show(c: &pb::CursorInfo, json_out: bool) {
    if json_out {
        outln!("{}", cursor_json(c));
    } else {
        print_cursor(c);
    }
}

/// `weft cursors ...`.
pub async fn run(args: Args) -> anyhow::Result<i32> {
    let json_out = args.conn.json;
    let mut client: StreamsClient<_> = connect::client(&args.conn.endpoint, Some(REQUEST_TIMEOUT))?;
    match args.op {
        Op::List { stream, stale } => {
            let req = pb::ListCursorsRequest { stream, consistency: consistency(stale) };
            let cursors = match client.list_cursors(req).await {
                Err(e) => return Ok(fail(e, json_out)),
                Ok(r) => r.into_inner().cursors,
            };
            if json_out {
                let items: Vec<_> = cursors.iter().map(cursor_json).collect();
                outln!("{}", json!({ "cursors": items }));
            } else if cursors.is_empty() {
                eprintln!("(no cursors)");
            } else {
                print_cursors(&cursors);
            }
            Ok(0)
        }
        Op::Info { stream, name, stale } => {
            let req = pb::CursorInfoRequest { stream, name, consistency: consistency(stale) };
            match client.cursor_info(req).await {
                Err(e) => Ok(fail(e, json_out)),
                Ok(r) => {
                    show(&r.into_inner(), json_out);
                    Ok(0)
                }
            }
        }
        Op::Create { stream, name, config } => {
            let req = pb::CreateCursorRequest { stream, name, config: Some(config.to_pb()) };
            match client.create_cursor(req).await {
                Err(e) => Ok(fail(e, json_out)),
                Ok(r) => {
                    show(&r.into_inner(), json_out);
                    Ok(0)
                }
            }
        }
        Op::Delete { stream, name } => {
            let req = pb::DeleteCursorRequest { stream: stream.clone(), name: name.clone() };
            match client.delete_cursor(req).await {
                Err(e) => Ok(fail(e, json_out)),
                Ok(r) => {
                    let existed = r.into_inner().existed;
                    if json_out {
                        outln!("{}", json!({ "existed": existed }));
                    } else if existed {
                        outln!("deleted cursor {stream}/{name}");
                    } else {
                        outln!("no cursor {stream}/{name} (nothing deleted)");
                    }
                    Ok(0)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deliver_policies_read_back() {
        for text in ["all", "new", "last", "last-per-key", "from-seq:42", "from-time:1700000000000"] {
            let d = parse_deliver(text).unwrap();
            let config = pb::CursorConfig {
                deliver: d.policy as i32,
                from_seq: d.from_seq,
                from_time_ms: d.from_time_ms,
                ..Default::default()
            };
            assert_eq!(deliver_text(&config), text);
        }
        assert!(parse_deliver("from-seq:x").unwrap_err().contains("whole number"));
        assert!(parse_deliver("first").unwrap_err().contains("not a deliver policy"));
    }
}
