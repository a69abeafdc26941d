//! The final reads of a run (the set's elements, the counter's state, the stream's items): a
//! linearizable, paged read, tried on each live node in turn until one answers or the
//! patience runs out, and recorded as one operation.

use std::future::Future;
use std::time::{Duration, Instant};

use weft_proto::fabric::v1 as pb;
use weft_proto::fabric::v1::state_client::StateClient;

use crate::history::{Op, Type};
use crate::outcome::code_message;
use crate::recorder::Recorder;

/// Entries per page of a final read.
pub const LIST_PAGE: u32 = 1000;
/// How long one page request may take.
pub const PAGE_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause before asking the next node after a failed read.
const RETRY_PAUSE: Duration = Duration::from_millis(500);

/// Every entry of `namespace`, by linearizable reads through `addr`.
pub async fn list_namespace(addr: &str, namespace: &str) -> Result<Vec<pb::KeyValue>, tonic::Status> {
    let mut client = StateClient::new(crate::db::channel(addr, PAGE_TIMEOUT));
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let mut r = tonic::Request::new(pb::ListRequest {
            namespace: namespace.to_owned(),
            prefix: String::new(),
            page_token: token.clone(),
            limit: LIST_PAGE,
            consistency: pb::Consistency::Linearizable as i32,
        });
        r.set_timeout(PAGE_TIMEOUT);
        let page = client.list(r).await?.into_inner();
        out.extend(page.entries);
        if page.next_page_token.is_empty() {
            return Ok(out);
        }
        token = page.next_page_token;
    }
}

/// Records `invoke` for `process`, then `read`s through each of `nodes` in turn until one
/// answers (recorded ok with what it read, and returned) or `patience` runs out; each
/// failure is recorded.
pub async fn until_answered<F, Fut>(
    nodes: &[(u64, String)],
    recorder: &Recorder,
    process: u64,
    patience: Duration,
    invoke: Op,
    mut read: F,
) -> Option<Op>
where
    F: FnMut(String) -> Fut,
    Fut: Future<Output = Result<Op, tonic::Status>>,
{
    if nodes.is_empty() {
        return None;
    }
    let deadline = Instant::now() + patience;
    for (node, addr) in nodes.iter().cycle() {
        recorder.record(Some(process), Type::Invoke, invoke.clone(), Some(*node), None);
        match read(addr.clone()).await {
            Ok(op) => {
                recorder.record(Some(process), Type::Ok, op.clone(), Some(*node), None);
                return Some(op);
            }
            Err(s) => {
                recorder.record(
                    Some(process),
                    Type::Fail,
                    invoke.clone(),
                    Some(*node),
                    Some(code_message(&s)),
                );
                if Instant::now() > deadline {
                    return None;
                }
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }
    None
}
