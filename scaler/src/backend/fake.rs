//! A scripted backend for the controller's unit tests: starts and stops are recorded,
//! crashes and failed starts are made by the test.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;

use super::{Error, Exited, Found, Launch, ReplicaId};

#[derive(Debug, Default)]
struct State {
    running: BTreeMap<ReplicaId, (Launch, String)>,
    starts: Vec<Launch>,
    stops: Vec<ReplicaId>,
    fail_start: Option<String>,
    fail_find: bool,
    next_pid: u32,
}

/// The fake backend; clones share it.
#[derive(Debug, Clone)]
pub struct Backend {
    state: Arc<Mutex<State>>,
    exits: mpsc::Sender<Exited>,
}

impl Backend {
    pub fn new(exits: mpsc::Sender<Exited>) -> Self {
        Self { state: Arc::default(), exits }
    }

    /// The same processes, reporting exits on `exits` (a second scaler on the same host).
    pub fn sharing(&self, exits: mpsc::Sender<Exited>) -> Self {
        Self { state: self.state.clone(), exits }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    pub fn start(&self, launch: &Launch) -> Result<String, Error> {
        let mut s = self.state();
        if let Some(reason) = s.fail_start.clone() {
            return Err(Error::Start {
                what: format!("command '{}'", launch.command.clone().unwrap_or_default()),
                reason,
            });
        }
        s.next_pid += 1;
        let handle = format!("{}@1", s.next_pid);
        s.starts.push(launch.clone());
        s.running.insert(launch.replica.clone(), (launch.clone(), handle.clone()));
        Ok(handle)
    }

    /// A stop exits the replica at once.
    pub fn stop(&self, replica: &str, _grace: Duration) -> Result<(), Error> {
        let mut s = self.state();
        if s.running.remove(replica).is_none() {
            return Err(Error::Unknown(replica.to_owned()));
        }
        s.stops.push(replica.to_owned());
        let exited = Exited {
            replica: replica.to_owned(),
            code: Some(0),
            signal: None,
            stopped: true,
            output_tail: String::new(),
        };
        self.exits.try_send(exited).expect("exit channel has room");
        Ok(())
    }

    pub fn find(&self) -> Result<Vec<Found>, Error> {
        if self.state().fail_find {
            return Err(Error::Unavailable { backend: "fake", reason: "cannot look".into() });
        }
        Ok(self
            .state()
            .running
            .values()
            .map(|(l, handle)| Found {
                replica: l.replica.clone(),
                agent: l.agent.clone(),
                instance: l.instance.clone(),
                handle: handle.clone(),
            })
            .collect())
    }

    /// Test control: looking for running replicas fails (`true`) or works.
    pub fn fail_finds(&self, fail: bool) {
        self.state().fail_find = fail;
    }

    pub fn adopt(&self, found: &Found) -> Result<(), Error> {
        if self.state().running.contains_key(&found.replica) {
            Ok(())
        } else {
            Err(Error::Gone { replica: found.replica.clone(), handle: found.handle.clone() })
        }
    }

    /// Test control: the replica crashes with `code` and `tail`.
    pub fn crash(&self, replica: &str, code: i32, tail: &str) {
        assert!(self.state().running.remove(replica).is_some(), "{replica} is not running");
        let exited = Exited {
            replica: replica.to_owned(),
            code: Some(code),
            signal: None,
            stopped: false,
            output_tail: tail.into(),
        };
        self.exits.try_send(exited).expect("exit channel has room");
    }

    /// Test control: starts fail with `reason` (None: they succeed).
    pub fn fail_starts(&self, reason: Option<&str>) {
        self.state().fail_start = reason.map(str::to_owned);
    }

    /// Test control: a process some other scaler started.
    pub fn plant(&self, launch: Launch) {
        let mut s = self.state();
        s.next_pid += 1;
        let handle = format!("{}@1", s.next_pid);
        s.running.insert(launch.replica.clone(), (launch, handle));
    }

    /// The replicas running, by id.
    pub fn running(&self) -> Vec<Launch> {
        self.state().running.values().map(|(l, _)| l.clone()).collect()
    }

    /// Every start so far.
    pub fn starts(&self) -> Vec<Launch> {
        self.state().starts.clone()
    }

    /// Every stop so far.
    pub fn stops(&self) -> Vec<ReplicaId> {
        self.state().stops.clone()
    }
}
