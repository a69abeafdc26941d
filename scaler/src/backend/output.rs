//! Replica output: a bounded in-memory ring per replica (the tail shown in crash reports)
//! and, optionally, a log file per agent rotated at a size.

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The last bytes a replica wrote, at most `max`.
#[derive(Debug)]
pub struct Ring {
    buf: VecDeque<u8>,
    max: usize,
}

impl Ring {
    /// An empty ring keeping the last `max` bytes.
    pub fn new(max: usize) -> Self {
        Self { buf: VecDeque::with_capacity(max.min(4096)), max }
    }

    /// Adds `bytes`, dropping the oldest past the bound.
    pub fn push(&mut self, bytes: &[u8]) {
        let bytes = &bytes[bytes.len().saturating_sub(self.max)..];
        let over = (self.buf.len() + bytes.len()).saturating_sub(self.max);
        self.buf.drain(..over);
        self.buf.extend(bytes);
    }

    /// What it holds, as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        let (a, b) = self.buf.as_slices();
        let mut v = Vec::with_capacity(a.len() + b.len());
        v.extend_from_slice(a);
        v.extend_from_slice(b);
        String::from_utf8_lossy(&v).into_owned()
    }
}

/// One agent's log file: lines prefixed with the replica, rotated once (to `.1`) when it
/// reaches `max_bytes`. Cheap to clone; clones share the file.
#[derive(Debug, Clone)]
pub struct AgentLog {
    inner: Arc<Mutex<LogFile>>,
}

#[derive(Debug)]
struct LogFile {
    path: PathBuf,
    max_bytes: u64,
    file: Option<std::fs::File>,
    len: u64,
}

impl AgentLog {
    /// The log of `agent` in `dir`, created when first written.
    pub fn new(dir: &Path, agent: &str, max_bytes: u64) -> Self {
        let path = dir.join(format!("{agent}.log"));
        Self { inner: Arc::new(Mutex::new(LogFile { path, max_bytes, file: None, len: 0 })) }
    }

    /// Appends `bytes` from `replica`, each line prefixed with `[replica] `. Errors are
    /// logged once per file and otherwise ignored: output must never stop a replica.
    pub fn write(&self, replica: &str, bytes: &[u8]) {
        let mut log = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut text = Vec::with_capacity(bytes.len() + 64);
        for line in bytes.split_inclusive(|b| *b == b'\n') {
            text.extend_from_slice(format!("[{replica}] ").as_bytes());
            text.extend_from_slice(line);
        }
        if !text.ends_with(b"\n") {
            text.push(b'\n');
        }
        if let Err(e) = log.append(&text) {
            tracing::warn!(path = %log.path.display(), error = %e, "cannot write the replica log");
            log.file = None;
        }
    }
}

impl LogFile {
    fn append(&mut self, text: &[u8]) -> std::io::Result<()> {
        if self.file.is_none() {
            if let Some(dir) = self.path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let file = std::fs::OpenOptions::new().create(true).append(true).open(&self.path)?;
            self.len = file.metadata()?.len();
            self.file = Some(file);
        }
        if self.len + text.len() as u64 > self.max_bytes {
            self.file = None;
            let mut old = self.path.clone().into_os_string();
            old.push(".1");
            std::fs::rename(&self.path, &old)?;
            self.file = Some(std::fs::OpenOptions::new().create(true).append(true).open(&self.path)?);
            self.len = 0;
        }
        if let Some(f) = self.file.as_mut() {
            f.write_all(text)?;
            self.len += text.len() as u64;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_keeps_the_last_bytes() {
        let mut r = Ring::new(8);
        r.push(b"hello ");
        r.push(b"world");
        assert_eq!(r.text(), "lo world");
        r.push(b"0123456789abc");
        assert_eq!(r.text(), "56789abc");
    }

    #[test]
    fn the_log_is_prefixed_and_rotated() {
        let dir = tempfile::tempdir().unwrap();
        let log = AgentLog::new(dir.path(), "work", 4096);
        log.write("work-1", b"one\ntwo\n");
        let text = std::fs::read_to_string(dir.path().join("work.log")).unwrap();
        assert_eq!(text, "[work-1] one\n[work-1] two\n");
        for _ in 0..200 {
            log.write("work-1", b"0123456789012345678901234567890123456789\n");
        }
        let len = std::fs::metadata(dir.path().join("work.log")).unwrap().len();
        assert!(len <= 4096, "{len}");
        assert!(dir.path().join("work.log.1").exists());
    }
}
