//! The cost of gossip keys per packet: framing and checking a packet plain, with an
//! HMAC-SHA256 and encrypted with ChaCha20-Poly1305, in this process (no nodes). Also what a
//! packet costs a node that holds two keys during a rotation and receives the second, and what
//! a forged packet costs a node holding the most keys ([`MAX_KEYS`]), every one of which fails.

use std::hint::black_box;
use std::time::{Duration, Instant};

use weft_fabric::membership::keys::{Keys, MAX_KEYS, generate};
use weft_fabric::membership::packet::{Auth, Unauthenticated};

/// Payload sizes measured: a probe with few updates, and a full packet.
const PAYLOAD_BYTES: [usize; 2] = [128, 1300];
const CLUSTER: &str = "bench";

/// One measured case.
pub struct Row {
    mode: &'static str,
    case: &'static str,
    payload_bytes: usize,
    ns_per_packet: f64,
}

/// ns per call of `op`, run in batches for `secs`.
fn time(secs: Duration, mut op: impl FnMut()) -> f64 {
    for _ in 0..1_000 {
        op(); // warm-up
    }
    let (mut calls, started) = (0u64, Instant::now());
    while started.elapsed() < secs {
        for _ in 0..1_000 {
            op();
        }
        calls += 1_000;
    }
    started.elapsed().as_nanos() as f64 / calls as f64
}

fn keys(list: &[&str]) -> Keys {
    Keys::parse_list(&list.join(",")).expect("generated keys parse")
}

/// Measures every case for `secs` each.
pub fn measure(secs: Duration) -> Vec<Row> {
    let (k1, k2) = (generate(), generate());
    let others: Vec<String> = (0..MAX_KEYS).map(|_| generate()).collect();
    let mut rows = Vec::new();
    for payload_bytes in PAYLOAD_BYTES {
        let payload = vec![0x5a_u8; payload_bytes];
        for (mode, encrypt) in [("plain", None), ("mac", Some(false)), ("encrypted", Some(true))] {
            let sender = match encrypt {
                None => Auth::off(),
                Some(e) => Auth::new(keys(&[&k1]), e, Unauthenticated::Refuse),
            };
            let packet = sender.seal(CLUSTER, &payload);
            let mut scratch = Vec::with_capacity(packet.len());
            let mut row = |case, ns| rows.push(Row { mode, case, payload_bytes, ns_per_packet: ns });
            // One allocation per packet, as a node's send does.
            row("seal (send)", time(secs, || drop(black_box(sender.seal(CLUSTER, black_box(&payload))))));
            row(
                "open (receive)",
                time(secs, || {
                    black_box(sender.open(CLUSTER, black_box(&packet), &mut scratch).is_ok());
                }),
            );
            let Some(encrypt) = encrypt else { continue };
            let rotating = Auth::new(keys(&[&k2, &k1]), encrypt, Unauthenticated::Refuse);
            row(
                "open, rotating: the 2nd of 2 keys verifies",
                time(secs, || {
                    black_box(rotating.open(CLUSTER, black_box(&packet), &mut scratch).is_ok());
                }),
            );
            let forged_for = Auth::new(
                keys(&others.iter().map(String::as_str).collect::<Vec<_>>()),
                encrypt,
                Unauthenticated::Refuse,
            );
            row(
                "refuse a forged packet (4 keys tried)",
                time(secs, || {
                    black_box(forged_for.open(CLUSTER, black_box(&packet), &mut scratch).is_err());
                }),
            );
        }
    }
    rows
}

/// The figures as a markdown table.
pub fn markdown(rows: &[Row]) -> String {
    let mut out = String::from(
        "\n## Gossip packets: the cost of gossip keys\n\n| mode | case | payload bytes | ns/packet |\n|---|---|---:|---:|\n",
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {} | {:.0} |\n",
            r.mode, r.case, r.payload_bytes, r.ns_per_packet
        ));
    }
    out
}
