//! The recorder: gives every event its index and timestamp, keeps the history in memory for
//! the checkers, and appends it to the history file as it happens, so a run that dies still
//! leaves its history behind.

use std::io::Write as _;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::history::{Error, Event, Op, Type};

/// Most events one run records; later ones are counted but not kept.
pub const MAX_EVENTS: usize = 20_000_000;

struct Inner {
    events: Vec<Event>,
    file: std::io::BufWriter<std::fs::File>,
    dropped: u64,
}

/// A cheap handle to the run's history.
#[derive(Clone)]
pub struct Recorder {
    start: Instant,
    inner: Arc<Mutex<Inner>>,
}

impl Recorder {
    /// Records into `path` (created or truncated), timing events from now.
    pub fn create(path: &Path) -> Result<Self, Error> {
        let file = std::fs::File::create(path)
            .map_err(|source| Error::Io { path: path.display().to_string(), source })?;
        Ok(Self {
            start: Instant::now(),
            inner: Arc::new(Mutex::new(Inner {
                events: Vec::new(),
                file: std::io::BufWriter::new(file),
                dropped: 0,
            })),
        })
    }

    /// Nanoseconds since the run started.
    pub fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// The instant the run started.
    pub fn start(&self) -> Instant {
        self.start
    }

    /// Records one event and returns its index.
    pub fn record(
        &self,
        process: Option<u64>,
        ty: Type,
        f: Op,
        node: Option<u64>,
        error: Option<String>,
    ) -> u64 {
        let mut inner = self.inner.lock().expect("recorder lock");
        let time_ns = self.now_ns();
        let index = inner.events.len() as u64 + inner.dropped;
        let event = Event { index, time_ns, process, ty, f, node, error };
        if serde_json::to_writer(&mut inner.file, &event).is_ok() {
            let _ = inner.file.write_all(b"\n");
        }
        if inner.events.len() < MAX_EVENTS {
            inner.events.push(event);
        } else {
            inner.dropped += 1;
        }
        index
    }

    /// Flushes the file and returns a copy of the history so far.
    pub fn snapshot(&self) -> Vec<Event> {
        let mut inner = self.inner.lock().expect("recorder lock");
        let _ = inner.file.flush();
        if inner.dropped > 0 {
            tracing::warn!(
                dropped = inner.dropped,
                MAX_EVENTS,
                "history over its bound: checkers see a prefix"
            );
        }
        inner.events.clone()
    }
}
