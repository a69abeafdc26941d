//! `weft streams get|read|tail`: a stream's items: one (by seq, or the last with a key), a range
//! a page at a time, the last ones, and with `tail --follow` the live ones through Listen.
//!
//! ```text
//!   tail --follow             Listen(plain reader from SEQ) ── item ──► print ──► credit
//!   tail --follow --cursor C  Listen(on cursor C)            ── item ──► print ──► ack
//!
//!   node lost (an error that is not a refusal, the stream cut, heartbeats missed, "removed")
//!     ──► the next endpoint (the cluster's members, learned at the start): a reader from the
//!         last printed seq + 1, a cursor listener at the cursor (what it had not acked comes
//!         again), for up to RESUME_FOR without a sign of life
//!   not started yet, and not applied (or not reached) ──► the next endpoint of the list given,
//!         after a pause; the last one's error fails the command
//!   end ──► closed: exit 0 · closed with an error, deleted: exit 1 · ctrl-c, SIGTERM: 130
//! ```

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::mpsc;
use tonic::Status;
use weft_proto::fabric::v1 as pb;
use weft_proto::fabric::v1::streams_client::StreamsClient;
use weft_proto::wire::Outcome;

use crate::INTERRUPTED_EXIT;
use crate::args::MAX_LIST_ALL_ITEMS;
use crate::connect::{self, Conn, Failover, REQUEST_TIMEOUT, consistency};
use crate::render::{age, error_json, fail, item_json, item_line, non_empty, out, outln, payload_text};

/// Items one read asks for. Small enough for any sane `max_list_page`, and for pages of large
/// items to stay under the message limit.
const READ_PAGE: u32 = 100;
/// Items `read` prints by default.
const DEFAULT_READ_LIMIT: u64 = 100;
/// Items `tail` prints before it follows, by default (as `tail(1)` prints lines).
const DEFAULT_LAST: u64 = 10;
/// Most items `tail --last` asks for.
const MAX_LAST: u64 = MAX_LIST_ALL_ITEMS as u64;
/// Seqs the first window of `tail --last N --filter P` spans, looking back from the end for
/// N matching items; each further window is twice as wide, up to [`MAX_SCAN_SPAN`].
const FIRST_SCAN_SPAN: u64 = 256;
const MAX_SCAN_SPAN: u64 = 65_536;
/// Items the fabric may send a follow before it grants more.
const WINDOW: u32 = 256;
/// A follow gives credit back in batches of this many printed items (a cursor's credit is a
/// Raft write; acks need none).
const CREDIT_BATCH: u32 = WINDOW / 4;
/// Messages a follow may have waiting to be sent: one per item in the window, and a few more.
const OUTBOUND: usize = WINDOW as usize + 16;
/// Heartbeats a follow may miss before it takes its node for lost.
const MISSED_HEARTBEATS: u32 = 3;
/// How long a follow keeps trying to resume without a sign of life (an item or a heartbeat).
const RESUME_FOR: Duration = Duration::from_secs(60);
/// Pause after a round of endpoints that all failed; doubles up to [`RESUME_PAUSE_MAX`].
const RESUME_PAUSE: Duration = Duration::from_millis(250);
const RESUME_PAUSE_MAX: Duration = Duration::from_secs(2);
/// How long an interrupted cursor follow waits for the answers to its last acks.
const ACK_DRAIN: Duration = Duration::from_secs(3);

/// Flags of `weft streams get`.
#[derive(Debug, clap::Args)]
pub struct GetArgs {
    /// The stream.
    pub name: String,
    /// The item's seq.
    #[arg(required_unless_present = "key", conflicts_with = "key")]
    pub seq: Option<u64>,
    /// Instead of a seq: the last item with exactly this key.
    #[arg(long)]
    pub key: Option<String>,
    /// Read the contacted node's replica without asking the leader.
    #[arg(long)]
    pub stale: bool,
}

/// Flags of `weft streams read`.
#[derive(Debug, clap::Args)]
pub struct ReadArgs {
    /// The stream.
    pub name: String,
    /// The first seq to read (default: the first stored).
    #[arg(long, value_name = "SEQ", default_value_t = 0)]
    pub from: u64,
    /// Most items to print; if more follow, prints the --from that continues.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_READ_LIMIT,
          value_parser = clap::value_parser!(u64).range(1..=MAX_LIST_ALL_ITEMS as u64))]
    pub limit: u64,
    /// Only items whose key matches: tokens split by '.', '*' for one token, '>' last for
    /// the rest ("orders.*.paid", "orders.>").
    #[arg(long, value_name = "PATTERN")]
    pub filter: Option<String>,
    /// Read the contacted node's replica without asking the leader.
    #[arg(long)]
    pub stale: bool,
}

/// Flags of `weft streams tail`.
#[derive(Debug, clap::Args)]
pub struct TailArgs {
    /// The stream.
    pub name: String,
    /// Start at this seq instead of the last items.
    #[arg(long, value_name = "SEQ", conflicts_with = "last")]
    pub from: Option<u64>,
    /// Start with the last N items (matching --filter); 0: only new ones. Default 10.
    #[arg(long, value_name = "N", conflicts_with = "cursor",
          value_parser = clap::value_parser!(u64).range(0..=MAX_LAST))]
    pub last: Option<u64>,
    /// Only items whose key matches ("orders.*.paid", "orders.>").
    #[arg(long, value_name = "PATTERN")]
    pub filter: Option<String>,
    /// Then print live items until the stream ends (exit 0 when it closed ok, 1 when it
    /// closed with an error or was deleted) or ctrl-c (130); with --json, one object a line.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Follow this durable cursor instead, acking each item once printed (competing with
    /// any other listener of the cursor).
    #[arg(long, value_name = "NAME", requires = "follow")]
    pub cursor: Option<String>,
    /// Create the cursor if it does not exist: from --from SEQ (default: every item),
    /// with --filter, explicit acks. For other settings use `weft cursors create`.
    #[arg(long, requires = "cursor")]
    pub create: bool,
}

/// `weft streams get`.
pub async fn get(conn: Conn, args: GetArgs) -> anyhow::Result<i32> {
    let json_out = conn.json;
    let mut client: StreamsClient<Failover> = connect::client(&conn.endpoint, Some(REQUEST_TIMEOUT))?;
    let item = match (args.key, args.seq) {
        (Some(key), _) => {
            let req = pb::LastByKeyRequest { stream: args.name, key, consistency: consistency(args.stale) };
            client.last_by_key(req).await.map(|r| r.into_inner())
        }
        (None, seq) => {
            let seq = seq.unwrap_or_default();
            let req = pb::ReadRequest {
                stream: args.name.clone(),
                from_seq: seq,
                limit: 1,
                filter: String::new(),
                consistency: consistency(args.stale),
            };
            match client.read(req).await {
                Err(e) => Err(e),
                Ok(r) => match r.into_inner().items.into_iter().next().filter(|i| i.seq == seq) {
                    Some(item) => Ok(item),
                    None => Err(no_item(&mut client, &args.name, seq, args.stale).await),
                },
            }
        }
    };
    match item {
        Err(e) => Ok(fail(e, json_out)),
        Ok(item) if json_out => {
            outln!("{}", item_json(&item));
            Ok(0)
        }
        Ok(item) => {
            print_item(&item);
            Ok(0)
        }
    }
}

/// The NOT_FOUND of a seq a stream does not hold, with the seqs it holds.
async fn no_item(client: &mut StreamsClient<Failover>, stream: &str, seq: u64, stale: bool) -> Status {
    let req = pb::StreamInfoRequest { name: stream.to_owned(), consistency: consistency(stale) };
    let holds = match client.info(req).await.map(|r| r.into_inner()) {
        Ok(s) if s.items == 0 => format!("; it holds none (the next is {})", s.last_seq + 1),
        Ok(s) => format!("; it holds {}..{}", s.first_seq, s.last_seq),
        Err(_) => String::new(),
    };
    Status::not_found(format!("stream '{stream}' holds no item {seq}{holds}"))
}

/// One item in detail: a headline, then one line per field.
fn print_item(i: &pb::Item) {
    outln!("item {}  key {}", i.seq, non_empty(&i.key).unwrap_or("-"));
    let line = |name: &str, value: String| outln!("  {name:<10} {value}");
    line("time_ms", format!("{} ({} ago)", i.time_ms, age(i.time_ms)));
    for h in &i.headers {
        line("header", format!("{}={}", h.name, h.value));
    }
    line("payload", i.payload.as_ref().map_or_else(|| "null".to_owned(), |p| payload_text(p, false)));
}

/// `weft streams read`.
pub async fn read(conn: Conn, args: ReadArgs) -> anyhow::Result<i32> {
    let mut client: StreamsClient<Failover> = connect::client(&conn.endpoint, Some(REQUEST_TIMEOUT))?;
    let range = Range {
        stream: &args.name,
        from: args.from,
        until: None,
        max: args.limit,
        filter: args.filter.as_deref().unwrap_or_default(),
        consistency: consistency(args.stale),
    };
    Ok(range.print(&mut client, conn.json).await)
}

/// `weft streams tail`.
pub async fn tail(conn: Conn, args: TailArgs) -> anyhow::Result<i32> {
    let json_out = conn.json;
    let filter = args.filter.clone().unwrap_or_default();
    if let Some(cursor) = &args.cursor {
        if !args.create && (args.from.is_some() || args.filter.is_some()) {
            let why = "--from and --filter apply to --cursor only with --create: an existing cursor \
                       has its own position and filter (nothing was sent)";
            return Ok(fail(Status::invalid_argument(why), json_out));
        }
        let config = args.create.then(|| {
            // Every item, explicit acks, the fabric's defaults.
            let mut config = pb::CursorConfig::default();
            if let Some(seq) = args.from {
                config.deliver = pb::DeliverPolicy::DeliverFromSeq as i32;
                config.from_seq = seq;
            }
            config.filter = filter.clone();
            config
        });
        let follow = Follow {
            stream: args.name,
            filter: String::new(),
            cursor: Some((cursor.clone(), config)),
            next_seq: 0,
            uid: 0,
            json_out,
        };
        return Ok(follow.run(&conn.endpoint).await);
    }
    let mut client: StreamsClient<Failover> = connect::client(&conn.endpoint, Some(REQUEST_TIMEOUT))?;
    let info =
        client.info(pb::StreamInfoRequest { name: args.name.clone(), consistency: consistency(false) });
    let info = match info.await {
        Ok(r) => r.into_inner(),
        Err(e) => return Ok(fail(e, json_out)),
    };
    let from = match args.from {
        Some(seq) => seq,
        None => {
            let last = args.last.unwrap_or(DEFAULT_LAST);
            match start_of_last(&mut client, &info, last, &filter).await {
                Ok(seq) => seq,
                Err(e) => return Ok(fail(e, json_out)),
            }
        }
    };
    if !args.follow {
        let range = Range {
            stream: &args.name,
            from,
            until: Some(info.last_seq),
            max: u64::MAX,
            filter: &filter,
            consistency: consistency(false),
        };
        return Ok(range.print(&mut client, json_out).await);
    }
    let follow = Follow { stream: args.name, filter, cursor: None, next_seq: from, uid: info.uid, json_out };
    Ok(follow.run(&conn.endpoint).await)
}

/// Where the last `n` items matching `filter` begin (`last_seq + 1` for none); the first
/// stored seq if fewer match.
async fn start_of_last(
    client: &mut StreamsClient<Failover>,
    info: &pb::StreamInfo,
    n: u64,
    filter: &str,
) -> Result<u64, Status> {
    let (first, last) = (info.first_seq, info.last_seq);
    if n == 0 || info.items == 0 {
        return Ok(last + 1);
    }
    if filter.is_empty() {
        return Ok((last + 1).saturating_sub(n).max(first));
    }
    // Windows of seqs, from the end backwards, until they hold n matching items.
    let (mut end, mut span, mut found) =
        (last, FIRST_SCAN_SPAN.max(n.saturating_mul(2)).min(MAX_SCAN_SPAN), 0);
    loop {
        let start = end.saturating_sub(span - 1).max(first);
        let seqs = matching_seqs(client, &info.name, start, end, filter).await?;
        let wanted = n - found;
        if seqs.len() as u64 >= wanted {
            return Ok(seqs[seqs.len() - wanted as usize]);
        }
        found += seqs.len() as u64;
        if start <= first {
            return Ok(first);
        }
        end = start - 1;
        span = (span * 2).min(MAX_SCAN_SPAN);
    }
}

/// The seqs in `start..=end` whose keys match `filter`.
async fn matching_seqs(
    client: &mut StreamsClient<Failover>,
    stream: &str,
    start: u64,
    end: u64,
    filter: &str,
) -> Result<Vec<u64>, Status> {
    let mut seqs = Vec::new();
    let mut next = start;
    loop {
        let req = pb::ReadRequest {
            stream: stream.to_owned(),
            from_seq: next,
            limit: READ_PAGE,
            filter: filter.to_owned(),
            consistency: consistency(false),
        };
        let page = client.read(req).await?.into_inner();
        seqs.extend(page.items.iter().map(|i| i.seq).filter(|seq| *seq <= end));
        if page.next_seq == 0 || page.next_seq > end {
            return Ok(seqs);
        }
        next = page.next_seq;
    }
}

/// Stored items to print, a page at a time.
struct Range<'a> {
    stream: &'a str,
    /// The first seq (0: the first stored).
    from: u64,
    /// None after this seq.
    until: Option<u64>,
    /// Most items to print.
    max: u64,
    filter: &'a str,
    consistency: i32,
}

impl Range<'_> {
    /// Prints the items as they come, as text lines or one JSON document written as it goes
    /// (`{"items": [...], "next_seq": N}`, with `"error"` if a later page failed); returns the
    /// exit code.
    async fn print(&self, client: &mut StreamsClient<Failover>, json_out: bool) -> i32 {
        let mut printer = Printer { json_out, printed: 0, opened: false };
        let mut next = self.from;
        let more = loop {
            if printer.printed >= self.max {
                break Some(next);
            }
            let req = pb::ReadRequest {
                stream: self.stream.to_owned(),
                from_seq: next,
                limit: (self.max - printer.printed).min(u64::from(READ_PAGE)) as u32,
                filter: self.filter.to_owned(),
                consistency: self.consistency,
            };
            let page = match client.read(req).await {
                Ok(r) => r.into_inner(),
                Err(e) => return printer.failed(e),
            };
            let past_end = |seq: u64| self.until.is_some_and(|until| seq > until);
            for item in page.items.iter().filter(|i| !past_end(i.seq)) {
                printer.item(item);
            }
            if page.next_seq == 0 || past_end(page.next_seq) {
                break None;
            }
            next = page.next_seq;
        };
        printer.finish(more)
    }
}

/// Prints items as they are read; see [`Range::print`].
struct Printer {
    json_out: bool,
    printed: u64,
    /// Whether the JSON document has begun.
    opened: bool,
}

impl Printer {
    fn open(&mut self) {
        if self.json_out && !self.opened {
            out!("{{\"items\":[");
        }
        self.opened = true;
    }

    fn item(&mut self, item: &pb::Item) {
        self.open();
        if !self.json_out {
            outln!("{}", item_line(item));
        } else if self.printed == 0 {
            out!("{}", item_json(item));
        } else {
            out!(",{}", item_json(item));
        }
        self.printed += 1;
    }

    /// Ends the output; `more` is where the next items start, if any may follow.
    fn finish(mut self, more: Option<u64>) -> i32 {
        if self.json_out {
            self.open();
            outln!("],\"next_seq\":{}}}", json!(more));
        } else {
            if self.printed == 0 {
                eprintln!("(no items)");
            }
            if let Some(seq) = more {
                eprintln!("more items may follow: --from {seq}");
            }
        }
        0
    }

    /// Ends the output with an error; returns the exit code.
    fn failed(self, e: Status) -> i32 {
        if !self.opened {
            return fail(e, self.json_out);
        }
        if self.json_out {
            outln!("],\"next_seq\":null,\"error\":{}}}", error_json(&e));
        } else {
            eprintln!("error ({:?}): {} (after {} items)", e.code(), e.message(), self.printed);
        }
        1
    }
}

/// A `tail --follow`: what it listens to and how far it got.
struct Follow {
    stream: String,
    /// A plain reader's key filter.
    filter: String,
    /// A cursor's name, and its settings when the follow may create it.
    cursor: Option<(String, Option<pb::CursorConfig>)>,
    /// A plain reader's next seq: where it resumes.
    next_seq: u64,
    /// The stream's uid once known: a resume on a stream deleted and created again ends.
    uid: u64,
    json_out: bool,
}

/// How one Listen call ended.
enum Stop {
    /// The fabric ended it: the stream closed or was deleted, or the cursor was.
    End(pb::StreamEnd),
    /// ctrl-c or SIGTERM.
    Interrupted,
    /// The fabric refused it, and would refuse it again.
    Refused(Status),
    /// The node, or the way to it, failed; another node may serve.
    Lost {
        why: Status,
        /// Whether the listener had started.
        started: bool,
        /// Whether it showed signs of life (an item or a heartbeat).
        alive: bool,
    },
}

/// What one Listen call has seen.
#[derive(Default)]
struct Session {
    started: bool,
    alive: bool,
    /// Items printed and not yet credited.
    credit_due: u32,
    /// Acks sent and not yet answered.
    acks_waiting: usize,
}

impl Follow {
    /// Follows until the stream ends, ctrl-c, a refusal, or no node serves for
    /// [`RESUME_FOR`]; returns the exit code.
    async fn run(mut self, endpoint: &str) -> i32 {
        let interrupt = crate::shutdown_signal();
        tokio::pin!(interrupt);
        // The other nodes, learned while the first listener starts: where to resume.
        let first = endpoint.to_owned();
        let mut learning = Some(tokio::spawn(async move { connect::cluster_endpoints(&first).await }));
        let mut endpoints = connect::endpoints(endpoint).unwrap_or_else(|_| vec![endpoint.to_owned()]);
        let given = endpoints.len();
        let (mut at, mut ever_started, mut pause) = (0, false, RESUME_PAUSE);
        let mut opening_pause = weft_agent::INITIAL_BACKOFF;
        let mut lost_since: Option<Instant> = None;
        loop {
            let here = endpoints[at].clone();
            let (why, alive) = match self.listen(&here, interrupt.as_mut(), ever_started).await {
                Stop::End(end) => return self.ended(&end),
                Stop::Interrupted => return INTERRUPTED_EXIT,
                Stop::Refused(status) => return fail(status, self.json_out),
                // A follow that never started fails as any command does; only a started one
                // resumes. As any request does, its opening moves along the list given past a
                // node that did not apply it (or could not be reached).
                Stop::Lost { why, started: false, .. } if !ever_started => {
                    if Outcome::of(&why) != Outcome::NotApplied || at + 1 >= given {
                        return fail(why, self.json_out);
                    }
                    tracing::debug!(endpoint = %here, why = why.message(), "not applied; trying the next endpoint");
                    at += 1;
                    tokio::select! {
                        biased;
                        _ = interrupt.as_mut() => return INTERRUPTED_EXIT,
                        _ = tokio::time::sleep(opening_pause) => {}
                    }
                    opening_pause = weft_agent::next_backoff(opening_pause);
                    continue;
                }
                Stop::Lost { why, started, alive } => {
                    ever_started |= started;
                    (why, alive)
                }
            };
            if let Some(learned) = learning.take()
                && let Ok(learned) = learned.await
            {
                endpoints = learned;
            }
            if alive {
                lost_since = None;
                pause = RESUME_PAUSE;
            }
            let since = *lost_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= RESUME_FOR {
                let tried = endpoints.join(", ");
                let why = format!(
                    "{} (no node of {tried} served the listener for {} s; {})",
                    why.message(),
                    RESUME_FOR.as_secs(),
                    self.position()
                );
                return fail(Status::unavailable(why), self.json_out);
            }
            at = (at + 1) % endpoints.len();
            eprintln!(
                "lost the listener on {here}: {}; resuming on {} {}",
                why.message(),
                endpoints[at],
                self.position()
            );
            if at == 0 {
                tokio::select! {
                    biased;
                    _ = interrupt.as_mut() => return INTERRUPTED_EXIT,
                    _ = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(RESUME_PAUSE_MAX);
            }
        }
    }

    /// Where a resume starts, for people.
    fn position(&self) -> String {
        match &self.cursor {
            Some((name, _)) => format!("at cursor '{name}'"),
            None => format!("from seq {}", self.next_seq),
        }
    }

    /// One Listen call on `endpoint`, printing what it delivers.
    async fn listen(
        &mut self,
        endpoint: &str,
        mut interrupt: Pin<&mut impl Future<Output = ()>>,
        resuming: bool,
    ) -> Stop {
        let mut session = Session::default();
        let mut client: StreamsClient<Failover> =
            match connect::streaming_client(endpoint, Some(REQUEST_TIMEOUT)) {
                Ok(client) => client,
                Err(e) => return session.lost(Status::unavailable(format!("{e:#}"))),
            };
        let (tx, rx) = mpsc::channel(OUTBOUND);
        let (cursor, config) = self.cursor.clone().unwrap_or_default();
        let start = pb::StartListener {
            stream: self.stream.clone(),
            cursor,
            config,
            from_seq: self.next_seq,
            uid: self.uid,
            credit: WINDOW,
            filter: self.filter.clone(),
        };
        let _ = tx.send(listener_message(pb::listener_message::Kind::Start(start))).await;
        let outbound = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
        let listening = tokio::select! {
            biased;
            _ = interrupt.as_mut() => return Stop::Interrupted,
            listening = client.listen(outbound) => listening,
        };
        let mut inbound = match listening {
            Ok(r) => r.into_inner(),
            Err(status) => return session.failed(status),
        };
        // Until `started` names the heartbeat, the fabric has a request's time to answer.
        let mut silence = REQUEST_TIMEOUT;
        loop {
            let received = tokio::select! {
                biased;
                _ = interrupt.as_mut() => {
                    drain(&mut inbound, session.acks_waiting).await;
                    return Stop::Interrupted;
                }
                received = tokio::time::timeout(silence, inbound.message()) => received,
            };
            let kind = match received {
                Err(_) => {
                    let why = format!("{endpoint} sent nothing for {} ms", silence.as_millis());
                    return session.lost(Status::unavailable(why));
                }
                Ok(Err(status)) => return session.failed(status),
                Ok(Ok(None)) => {
                    return session.lost(Status::unavailable("the node ended the listener without an end"));
                }
                Ok(Ok(Some(pb::StreamMessage { kind }))) => kind,
            };
            use pb::stream_message::Kind;
            match kind {
                Some(Kind::Started(started)) => {
                    session.started = true;
                    self.uid = started.uid;
                    silence = Duration::from_millis(started.heartbeat_ms.max(100)) * MISSED_HEARTBEATS;
                    if resuming {
                        eprintln!("resumed on node {} ({endpoint}) {}", started.node_id, self.position());
                    }
                }
                Some(Kind::Item(item)) => {
                    session.alive = true;
                    if let Some(reply) = self.delivered(&item, &mut session) {
                        let _ = tx.send(listener_message(reply)).await;
                    }
                }
                Some(Kind::Heartbeat(_)) => session.alive = true,
                Some(Kind::Acked(acked)) => {
                    session.acks_waiting = session.acks_waiting.saturating_sub(1);
                    if !acked.error.is_empty() {
                        eprintln!(
                            "warning: the ack of seq {} was refused: {} (it comes again)",
                            acked.seq, acked.error
                        );
                    }
                }
                // The fabric let go of a cursor listener (its node was taken for dead, say):
                // the cursor is still there to resume on.
                Some(Kind::End(end)) if end.reason == "removed" => {
                    return session.lost(Status::unavailable(format!(
                        "the fabric removed the listener: {}",
                        end.error
                    )));
                }
                Some(Kind::End(end)) => return Stop::End(end),
                None => {}
            }
        }
    }

    /// Prints a delivered item; returns the ack or credit to send for it, if one is due.
    fn delivered(
        &mut self,
        delivered: &pb::StreamItem,
        session: &mut Session,
    ) -> Option<pb::listener_message::Kind> {
        let on_cursor = self.cursor.is_some();
        // A reader never sends a seq twice; should it, the item is not printed again, and
        // its credit is still due.
        if let Some(item) = delivered.item.as_ref().filter(|i| on_cursor || i.seq >= self.next_seq) {
            self.print(item, on_cursor.then_some(delivered.deliveries));
            if !on_cursor {
                self.next_seq = item.seq + 1;
            }
        }
        if on_cursor && delivered.token != 0 {
            session.acks_waiting += 1;
            let seq = delivered.item.as_ref().map_or(0, |i| i.seq);
            return Some(pb::listener_message::Kind::Ack(pb::Delivery { seq, token: delivered.token }));
        }
        session.credit_due += 1;
        if session.credit_due < CREDIT_BATCH {
            return None;
        }
        let items = std::mem::take(&mut session.credit_due);
        Some(pb::listener_message::Kind::Credit(pb::Credit { items }))
    }

    /// Prints a live item; `deliveries` for a cursor's.
    fn print(&self, item: &pb::Item, deliveries: Option<u32>) {
        if self.json_out {
            let mut line = item_json(item);
            if let (Some(n), Some(o)) = (deliveries, line.as_object_mut()) {
                o.insert("deliveries".into(), n.into());
            }
            outln!("{line}");
        } else if let Some(n) = deliveries.filter(|n| *n > 1) {
            outln!("{}  (delivery {n})", item_line(item));
        } else {
            outln!("{}", item_line(item));
        }
    }

    /// Prints how the stream ended; returns the exit code.
    fn ended(&self, end: &pb::StreamEnd) -> i32 {
        let ok = end.reason == "closed" && end.error.is_empty();
        if self.json_out {
            outln!("{}", json!({"end": {"reason": end.reason, "error": non_empty(&end.error)}}));
        } else if ok {
            eprintln!("end: stream '{}' closed", self.stream);
        } else if end.reason == "closed" {
            eprintln!("end: stream '{}' closed with error: {}", self.stream, end.error);
        } else {
            eprintln!("end: {}: {}", end.reason, end.error);
        }
        if ok { 0 } else { 1 }
    }
}

impl Session {
    fn lost(&self, why: Status) -> Stop {
        Stop::Lost { why, started: self.started, alive: self.alive }
    }

    /// A failed call: refused for good, or lost (see `weft_proto::wire`).
    fn failed(&self, status: Status) -> Stop {
        if Outcome::of(&status) == Outcome::Refused { Stop::Refused(status) } else { self.lost(status) }
    }
}

fn listener_message(kind: pb::listener_message::Kind) -> pb::ListenerMessage {
    pb::ListenerMessage { kind: Some(kind) }
}

/// After ctrl-c: waits up to [`ACK_DRAIN`] for the answers to the acks sent, so the fabric
/// has them before the listener goes (items delivered meanwhile are not printed; the cursor
/// delivers them again).
async fn drain(inbound: &mut tonic::Streaming<pb::StreamMessage>, mut acks_waiting: usize) {
    let until = tokio::time::Instant::now() + ACK_DRAIN;
    while acks_waiting > 0 {
        match tokio::time::timeout_at(until, inbound.message()).await {
            Ok(Ok(Some(pb::StreamMessage { kind: Some(pb::stream_message::Kind::Acked(_)) }))) => {
                acks_waiting -= 1;
            }
            Ok(Ok(Some(_))) => {}
            _ => return,
        }
    }
}
