//! The nodes' `/metrics` (Prometheus text, plain HTTP/1.1 or HTTPS on the gRPC port), read
//! at the end of an executions run for the eager-call counters
//! (`weft_eager_calls_total{node, outcome}`, `docs/architecture.md#eager-calls`): whether the
//! run went through the eager path at all, and how its held calls reached the log.
//!
//! ```text
//!  after the final read, before the nodes stop:
//!    each node of the roster ──GET /metrics (admin token with --auth, TLS with --tls)──► text
//!      └─ weft_eager_calls_total{node="3",outcome="combined"} 812 ─► EagerCounts per node
//!    sum over the nodes that answered ─► results.json, and the summary line
//! ```
//!
//! The counters live in each node's process: a node killed and restarted during the run
//! starts again from 0, and a node stopped for good is not asked. So the figures are a floor
//! on what the run did, and "not exercised" means no node that was still up at the end
//! combined a call since it last started.

use std::time::Duration;

use serde::Serialize;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// How long one node's `/metrics` may take, connect to last byte.
pub const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);
/// Most bytes of one `/metrics` answer read (a node's is tens of KB).
pub const MAX_RESPONSE_BYTES: u64 = 8 << 20;
/// The counter family read.
pub const EAGER_CALLS: &str = "weft_eager_calls_total";

/// Reading a node's `/metrics` failed; nothing changed on the node.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The connection, the TLS handshake or the exchange failed.
    #[error("{addr}/metrics: {source}")]
    Io { addr: String, source: std::io::Error },
    /// No full answer within [`SCRAPE_TIMEOUT`] (a paused or cut-off node).
    #[error("{addr}/metrics: no answer within {SCRAPE_TIMEOUT:?}")]
    Timeout { addr: String },
    /// The node answered, but not with the metrics (e.g. 401 without a token).
    #[error("{addr}/metrics: {reason}")]
    Answer { addr: String, reason: String },
}

/// Eager calls by how their create reached the log (the `outcome` label).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct EagerCounts {
    /// Created in the entry that carries their completion: the eager path taken in full.
    pub combined: u64,
    /// Created alone once the linger ran out (the handler took longer).
    pub lingered: u64,
    /// Created alone because another command named them first.
    pub named: u64,
    /// Answered "not applied": the node stopped leading while it held them.
    pub dropped: u64,
}

impl EagerCounts {
    /// The counts in a `/metrics` text: the [`EAGER_CALLS`] samples summed by outcome
    /// (outcomes other than the four are left out; other lines are ignored).
    pub fn parse(text: &str) -> Self {
        let mut counts = Self::default();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix(EAGER_CALLS).and_then(|r| r.strip_prefix('{')) else {
                continue;
            };
            let Some((labels, value)) = rest.rsplit_once('}') else { continue };
            let Some(value) = value.split_whitespace().next().and_then(|v| v.parse::<f64>().ok()) else {
                continue;
            };
            let value = if value.is_finite() && value > 0.0 { value as u64 } else { 0 };
            let field = match label(labels, "outcome") {
                Some("combined") => &mut counts.combined,
                Some("lingered") => &mut counts.lingered,
                Some("named") => &mut counts.named,
                Some("dropped") => &mut counts.dropped,
                _ => continue,
            };
            *field += value;
        }
        counts
    }

    fn add(&mut self, other: &Self) {
        self.combined += other.combined;
        self.lingered += other.lingered;
        self.named += other.named;
        self.dropped += other.dropped;
    }

    /// Every eager call counted.
    pub fn total(&self) -> u64 {
        self.combined + self.lingered + self.named + self.dropped
    }
}

/// The value of label `name` in a sample's label set (`a="x",b="y"`, no braces); label values
/// may hold escaped quotes, commas and braces.
fn label<'a>(labels: &'a str, name: &str) -> Option<&'a str> {
    let mut rest = labels;
    loop {
        let (key, after) = rest.split_once('=')?;
        let after = after.strip_prefix('"')?;
        // The closing quote is the first one not escaped.
        let mut end = None;
        let mut escaped = false;
        for (i, c) in after.char_indices() {
            match c {
                '\\' if !escaped => escaped = true,
                '"' if !escaped => {
                    end = Some(i);
                    break;
                }
                _ => escaped = false,
            }
        }
        let end = end?;
        if key.trim() == name {
            return Some(&after[..end]);
        }
        rest = after[end + 1..].trim_start_matches([',', ' ']);
    }
}

/// The body of an HTTP/1.1 answer read to the end: status 200 required, a chunked body
/// decoded.
fn body_of(response: &[u8]) -> Result<String, String> {
    let split = response.windows(4).position(|w| w == b"\r\n\r\n").ok_or("no end of headers")?;
    let head = String::from_utf8_lossy(&response[..split]);
    let body = &response[split + 4..];
    let mut lines = head.lines();
    let status = lines.next().unwrap_or_default();
    let code = status.split_whitespace().nth(1).unwrap_or_default();
    if code != "200" {
        let excerpt: String = String::from_utf8_lossy(body).chars().take(200).collect();
        return Err(format!("answered {status}: {}", excerpt.trim()));
    }
    let chunked = lines.any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("transfer-encoding") && v.to_ascii_lowercase().contains("chunked")
        })
    });
    let body = if chunked { dechunk(body)? } else { body.to_vec() };
    String::from_utf8(body).map_err(|_| "the body is not UTF-8".into())
}

/// Decodes a chunked transfer-encoded body (chunk extensions and trailers ignored).
fn dechunk(mut body: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = body.windows(2).position(|w| w == b"\r\n").ok_or("a chunk size without its line end")?;
        let size_line = String::from_utf8_lossy(&body[..eol]);
        let size_hex = size_line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16).map_err(|_| format!("bad chunk size {size_hex:?}"))?;
        body = &body[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if body.len() < size + 2 {
            return Err("a chunk cut short".into());
        }
        out.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}

/// The text of `addr`'s `/metrics`, over TLS with `tls`, sending `token` as a bearer token.
pub async fn scrape(
    addr: &str,
    tls: Option<&weft_agent::Tls>,
    token: Option<&weft_agent::Token>,
) -> Result<String, Error> {
    let io = |source| Error::Io { addr: addr.to_owned(), source };
    let authorization =
        token.map(|t| format!("Authorization: Bearer {}\r\n", t.secret())).unwrap_or_default();
    let request =
        format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\n{authorization}Connection: close\r\n\r\n");
    async fn exchange(
        mut stream: impl AsyncRead + AsyncWrite + Unpin,
        request: &str,
    ) -> std::io::Result<Vec<u8>> {
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.take(MAX_RESPONSE_BYTES).read_to_end(&mut response).await?;
        Ok(response)
    }
    let response = tokio::time::timeout(SCRAPE_TIMEOUT, async {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let Some(tls) = tls else { return exchange(tcp, &request).await };
        let mut config = (*tls.rustls_config()).clone();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h).trim_matches(['[', ']']).to_owned();
        let name =
            tokio_rustls::rustls::pki_types::ServerName::try_from(host).map_err(std::io::Error::other)?;
        let stream = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)).connect(name, tcp).await?;
        exchange(stream, &request).await
    })
    .await
    .map_err(|_| Error::Timeout { addr: addr.to_owned() })?
    .map_err(io)?;
    body_of(&response).map_err(|reason| Error::Answer { addr: addr.to_owned(), reason })
}

/// The eager counters of each node asked: its counts, or why it did not answer.
#[derive(Debug, Clone, Default)]
pub struct EagerReport {
    /// `(node id, counts or error)`, by node id.
    pub nodes: Vec<(u64, Result<EagerCounts, String>)>,
}

impl EagerReport {
    /// Reads the counters of every node of `nodes` (`(id, IP:PORT)`), one after another.
    pub async fn scrape(
        nodes: &[(u64, String)],
        tls: Option<&weft_agent::Tls>,
        token: Option<&weft_agent::Token>,
    ) -> Self {
        let mut report = Self::default();
        for (id, addr) in nodes {
            let counts =
                scrape(addr, tls, token).await.map(|t| EagerCounts::parse(&t)).map_err(|e| e.to_string());
            if let Err(e) = &counts {
                tracing::warn!(node = id, error = %e, "no eager counters from this node");
            }
            report.nodes.push((*id, counts));
        }
        report
    }

    /// The counts summed over the nodes that answered.
    pub fn total(&self) -> EagerCounts {
        let mut total = EagerCounts::default();
        for (_, counts) in &self.nodes {
            if let Ok(c) = counts {
                total.add(c);
            }
        }
        total
    }

    fn answered(&self) -> usize {
        self.nodes.iter().filter(|(_, c)| c.is_ok()).count()
    }

    /// Whether some node combined a call with its completion.
    pub fn exercised(&self) -> bool {
        self.total().combined > 0
    }

    /// One clause for the summary line.
    pub fn summary(&self) -> String {
        let t = self.total();
        let figures = format!(
            "combined {}, lingered {}, named {}, dropped {}; {} of {} nodes answered",
            t.combined,
            t.lingered,
            t.named,
            t.dropped,
            self.answered(),
            self.nodes.len()
        );
        if self.exercised() {
            format!("eager calls: {figures}")
        } else {
            format!("eager path not exercised (eager calls: {figures})")
        }
    }

    /// For results.json: the total, whether the path was exercised, and each node's counts.
    pub fn to_json(&self) -> serde_json::Value {
        let nodes: Vec<serde_json::Value> = self
            .nodes
            .iter()
            .map(|(id, c)| match c {
                Ok(c) => json!({ "node": id, "counts": c }),
                Err(e) => json!({ "node": id, "error": e }),
            })
            .collect();
        json!({ "exercised": self.exercised(), "total": self.total(), "nodes": nodes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a node's `/metrics` holds around the family (as `metrics::Text` writes it).
    const EXPOSITION: &str = "\
# HELP weft_snapshot_bytes Size of the current snapshot.
# TYPE weft_snapshot_bytes gauge
weft_snapshot_bytes{node=\"2\"} 0
# HELP weft_eager_calls_total Calls the leader pushed to a session before creating them.
# TYPE weft_eager_calls_total counter
weft_eager_calls_total{node=\"2\",outcome=\"combined\"} 812
weft_eager_calls_total{node=\"2\",outcome=\"lingered\"} 40
weft_eager_calls_total{node=\"2\",outcome=\"named\"} 3
weft_eager_calls_total{node=\"2\",outcome=\"dropped\"} 1
weft_eager_calls_totally{node=\"2\",outcome=\"combined\"} 99
weft_executions_created_total{node=\"2\",agent=\"jepsen-counter\",delegate=\"increment_shared\"} 900
";

    #[test]
    fn eager_counters_are_read_by_outcome_and_nothing_else() {
        let c = EagerCounts::parse(EXPOSITION);
        assert_eq!(c, EagerCounts { combined: 812, lingered: 40, named: 3, dropped: 1 });
        assert_eq!(c.total(), 856);
        assert_eq!(EagerCounts::parse(""), EagerCounts::default(), "a node without the family: zeros");
        let odd = "weft_eager_calls_total{outcome=\"combined\",node=\"1\"} 5\n\
                   weft_eager_calls_total{node=\"1\",outcome=\"new-kind\"} 7\n\
                   weft_eager_calls_total{node=\"a \\\"quoted\\\", node\",outcome=\"lingered\"} 2.0\n\
                   weft_eager_calls_total{node=\"1\",outcome=\"named\"} garbage\n\
                   weft_eager_calls_total{node=\"1\",outcome=\"dropped\"} 4 1700000000000\n";
        assert_eq!(
            EagerCounts::parse(odd),
            EagerCounts { combined: 5, lingered: 2, named: 0, dropped: 4 },
            "labels in any order, escaped quotes, a float, a timestamp; unknown outcomes and bad values left out"
        );
    }

    #[test]
    fn only_a_200_answer_has_a_body_and_chunked_bodies_are_decoded() {
        let plain = "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 5\r\n\r\nhello";
        assert_eq!(body_of(plain.as_bytes()).unwrap(), "hello");
        let chunked = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                       4\r\nweft\r\n7;ext=1\r\n_eager_\r\n0\r\n\r\n";
        assert_eq!(body_of(chunked.as_bytes()).unwrap(), "weft_eager_");
        let refused = "HTTP/1.1 401 Unauthorized\r\ncontent-length: 13\r\n\r\nmissing token";
        let e = body_of(refused.as_bytes()).unwrap_err();
        assert!(e.contains("401") && e.contains("missing token"), "{e}");
        assert!(body_of(b"HTTP/1.1 200 OK\r\n").is_err(), "no end of headers");
        let cut = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nff\r\nshort";
        assert!(body_of(cut.as_bytes()).is_err(), "a chunk cut short");
    }

    /// A one-shot HTTP server on 127.0.0.1 that answers `/metrics` with the exposition when
    /// the request carries `Bearer secret`, else 401; the request it got.
    async fn serve_once() -> (String, tokio::task::JoinHandle<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.ends_with(b"\r\n\r\n") {
                let n = socket.read(&mut buf).await.unwrap();
                assert!(n > 0, "the request ended early");
                request.extend_from_slice(&buf[..n]);
            }
            let request = String::from_utf8(request).unwrap();
            let answer = if request.contains("Authorization: Bearer secret\r\n") {
                format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{EXPOSITION}", EXPOSITION.len())
            } else {
                "HTTP/1.1 401 Unauthorized\r\ncontent-length: 13\r\n\r\nmissing token".to_owned()
            };
            socket.write_all(answer.as_bytes()).await.unwrap();
            socket.shutdown().await.unwrap();
            request
        });
        (addr, server)
    }

    #[tokio::test]
    async fn a_node_is_asked_with_its_token_and_a_refusal_is_an_error() {
        let token = weft_agent::Token::new("secret").unwrap();
        let (addr, server) = serve_once().await;
        let report = EagerReport::scrape(&[(4, addr)], None, Some(&token)).await;
        let request = server.await.unwrap();
        assert!(request.starts_with("GET /metrics HTTP/1.1\r\n"), "{request}");
        assert_eq!(report.nodes[0].1, Ok(EagerCounts { combined: 812, lingered: 40, named: 3, dropped: 1 }));

        let (addr, server) = serve_once().await;
        let e = scrape(&addr, None, None).await.unwrap_err();
        server.await.unwrap();
        assert!(matches!(&e, Error::Answer { reason, .. } if reason.contains("401")), "{e}");

        // Nobody listens there any more: the node is listed as not answering.
        let gone = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        let report = EagerReport::scrape(&[(5, gone.to_string())], None, None).await;
        assert!(report.nodes[0].1.is_err());
        assert!(!report.exercised());
    }

    #[test]
    fn the_summary_says_when_the_eager_path_was_not_exercised() {
        let counts = |combined, lingered| Ok(EagerCounts { combined, lingered, named: 0, dropped: 0 });
        let report =
            EagerReport { nodes: vec![(1, counts(0, 3)), (2, counts(7, 1)), (3, Err("no answer".into()))] };
        assert!(report.exercised());
        assert_eq!(
            report.summary(),
            "eager calls: combined 7, lingered 4, named 0, dropped 0; 2 of 3 nodes answered"
        );
        let j = report.to_json();
        assert_eq!(j["total"]["combined"], 7);
        assert_eq!(j["nodes"][2]["error"], "no answer");

        let idle = EagerReport { nodes: vec![(1, counts(0, 12)), (2, counts(0, 0))] };
        assert!(!idle.exercised(), "lingered calls alone never took the one-entry path");
        assert!(idle.summary().starts_with("eager path not exercised"), "{}", idle.summary());
        assert!(EagerReport::default().summary().starts_with("eager path not exercised"));
    }
}
