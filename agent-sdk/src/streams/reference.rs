//! [`StreamRef`]: a stream as a value, to pass between agents.

use serde::{Deserialize, Serialize};

/// A stream as a value: its name and uid. An agent returns one from a call (or puts one in
/// state, or in an item); whoever gets it listens with
/// [`Client::stream_from`](crate::Client::stream_from). The uid tells the stream from a later
/// one of the same name: if the stream was deleted (and maybe created again), listeners on
/// the reference end with [`Error::StreamDeleted`](crate::Error::StreamDeleted) instead of
/// reading another stream.
///
/// ```no_run
/// use futures::StreamExt;
/// use weft_agent::StreamRef;
/// # async fn demo(client: weft_agent::Client) -> Result<(), weft_agent::Error> {
/// // An agent's delegate that makes a stream and returns it.
/// let report: StreamRef = client.call("reports", "start", &"2024-Q3").await?;
/// let mut lines = client.stream_from(&report).listener::<String>().start().await?;
/// while let Some(line) = lines.next().await {
///     println!("{}", line?.value);
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StreamRef {
    /// The stream's name.
    pub name: String,
    /// Its uid (see [`Info::uid`](super::Info::uid)).
    pub uid: u64,
}
