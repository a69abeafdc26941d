//! Schedules: cron expressions kept in the fabric that call an agent's delegate at each due
//! time, once per due time whichever node leads.
//!
//! ```text
//!   client.schedule("nightly").create(&Spec::cron("0 2 * * *", "reports", "build"), &args)
//!     ─► every due time: an execution of reports/build (key schedule:nightly:<due_ms>)
//!   get (next due times, latest runs) · pause · resume · trigger · delete
//! ```
//!
//! - [`Schedule`]: one schedule by name, from [`Client::schedule`](crate::Client::schedule).
//! - [`Spec`]: what a schedule calls and when, with its policies.
//! - [`Info`] and [`Run`]: a schedule and its runs as the fabric reports them.

use serde::Serialize;
use weft_proto::fabric::v1 as pb;
use weft_proto::fabric::v1::schedules_client::SchedulesClient;

use crate::connection::Connection;
use crate::{Codec, Error, codec};

/// What to do with a due time while the previous run's execution is unfinished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overlap {
    /// Skip it (recorded as skipped).
    #[default]
    Skip,
    /// Start it once the previous run finishes; at most one waits.
    QueueOne,
    /// Start it alongside.
    Allow,
}

/// What to do with due times missed while the cluster could not fire them (reached more than
/// a minute late).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CatchUp {
    /// Skip them; go on from the next due time.
    #[default]
    Skip,
    /// Run once for all of them, then go on from the next due time.
    Once,
}

/// What a schedule calls and when.
///
/// ```
/// use weft_agent::schedule::{Overlap, Spec};
/// let spec = Spec::cron("0 2 * * MON-FRI", "reports", "build")
///     .time_zone("Europe/Berlin")
///     .overlap(Overlap::QueueOne);
/// assert_eq!(spec.agent, "reports");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// Five fields (minute hour day-of-month month day-of-week) or six, seconds first.
    pub cron: String,
    /// An IANA time zone the expression is read in; none: UTC.
    pub time_zone: Option<String>,
    /// The agent each run calls.
    pub agent: String,
    /// Its delegate.
    pub delegate: String,
    /// The instance each run calls, if any.
    pub instance: Option<String>,
    /// Fail a run not finished this long after it was created.
    pub timeout_ms: Option<u64>,
    /// See [`Overlap`].
    pub overlap: Overlap,
    /// See [`CatchUp`].
    pub catch_up: CatchUp,
    /// Create it paused.
    pub paused: bool,
}

impl Spec {
    /// A schedule that calls `agent`'s `delegate` at each due time of `cron` (UTC), skipping
    /// overlapping and missed due times.
    pub fn cron(cron: &str, agent: &str, delegate: &str) -> Self {
        Self {
            cron: cron.to_owned(),
            time_zone: None,
            agent: agent.to_owned(),
            delegate: delegate.to_owned(),
            instance: None,
            timeout_ms: None,
            overlap: Overlap::Skip,
            catch_up: CatchUp::Skip,
            paused: false,
        }
    }

    /// Reads the expression in an IANA time zone (`Europe/Berlin`).
    pub fn time_zone(mut self, zone: &str) -> Self {
        self.time_zone = Some(zone.to_owned());
        self
    }

    /// Calls this instance of the agent.
    pub fn instance(mut self, id: &str) -> Self {
        self.instance = Some(id.to_owned());
        self
    }

    /// Fails a run not finished within `timeout`.
    pub fn timeout(mut self, timeout: std::time::Duration) -> Self {
        self.timeout_ms = Some(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX));
        self
    }

    /// See [`Overlap`].
    pub fn overlap(mut self, overlap: Overlap) -> Self {
        self.overlap = overlap;
        self
    }

    /// See [`CatchUp`].
    pub fn catch_up(mut self, catch_up: CatchUp) -> Self {
        self.catch_up = catch_up;
        self
    }

    /// Creates it paused.
    pub fn paused(mut self) -> Self {
        self.paused = true;
        self
    }
}

/// A schedule as the fabric reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    /// Its name.
    pub name: String,
    /// Its expression.
    pub cron: String,
    /// Its time zone; empty: UTC.
    pub time_zone: String,
    /// The agent and delegate it calls.
    pub agent: String,
    /// The delegate.
    pub delegate: String,
    /// Paused: no run until resumed.
    pub paused: bool,
    /// Its next due time (ms since the epoch), unless paused or never due again.
    pub next_due_ms: Option<u64>,
    /// Its next due times (from [`Schedule::get`]).
    pub upcoming_ms: Vec<u64>,
    /// Runs started, in all.
    pub started: u64,
    /// Due times skipped or refused, in all.
    pub skipped: u64,
    /// The latest runs, oldest first (at most 20).
    pub runs: Vec<Run>,
}

/// One run of a schedule, or a due time it skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    /// The due time (a trigger's: when it was triggered), ms since the epoch.
    pub due_ms: u64,
    /// When the fabric fired it.
    pub fired_ms: u64,
    /// `due`, `catch_up`, `trigger` or `queued`.
    pub cause: String,
    /// `started`, `skipped`, `queued` or `refused`.
    pub outcome: String,
    /// Why it was skipped or refused.
    pub reason: String,
    /// Its execution (0: none started).
    pub execution_id: u64,
    /// That execution's status when asked (`forgotten` after its retention).
    pub status: String,
}

impl Info {
    fn from_pb(s: pb::Schedule) -> Self {
        let call = s.call.unwrap_or_default();
        Self {
            name: s.name,
            cron: s.cron,
            time_zone: s.time_zone,
            agent: call.agent,
            delegate: call.delegate,
            paused: s.paused,
            next_due_ms: s.next_due_ms,
            upcoming_ms: s.upcoming_ms,
            started: s.started,
            skipped: s.skipped,
            runs: s.runs.into_iter().map(Run::from_pb).collect(),
        }
    }
}

impl Run {
    fn from_pb(r: pb::ScheduleRun) -> Self {
        Self {
            due_ms: r.due_ms,
            fired_ms: r.fired_ms,
            cause: r.cause,
            outcome: r.outcome,
            reason: r.reason,
            execution_id: r.execution_id,
            status: r.status,
        }
    }
}

/// One named schedule. See [`Client::schedule`](crate::Client::schedule).
///
/// ```no_run
/// use weft_agent::schedule::Spec;
/// # async fn demo(client: weft_agent::Client) -> Result<(), weft_agent::Error> {
/// let nightly = client.schedule("nightly");
/// nightly.create(&Spec::cron("0 2 * * *", "reports", "build"), &true).await?;
/// let info = nightly.get().await?.expect("it exists");
/// println!("next at {:?}, {} runs so far", info.next_due_ms, info.started);
/// nightly.pause().await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Schedule {
    conn: Connection,
    codec: Codec,
    name: String,
}

fn overlap_name(o: Overlap) -> &'static str {
    match o {
        Overlap::Skip => "skip",
        Overlap::QueueOne => "queue_one",
        Overlap::Allow => "allow",
    }
}

impl Schedule {
    pub(crate) fn new(conn: Connection, codec: Codec, name: &str) -> Self {
        Self { conn, codec, name: name.to_owned() }
    }

    /// The schedule's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Creates the schedule: from its next due time after now, each due time calls
    /// `spec`'s delegate with `args`. The same schedule again answers the existing one; another
    /// under this name is [`Error::Refused`] with `AlreadyExists`. A bad expression, time
    /// zone or name is `InvalidArgument`, naming the field. Retried across nodes (creating
    /// is idempotent).
    pub async fn create<A: Serialize + ?Sized>(&self, spec: &Spec, args: &A) -> Result<Info, Error> {
        let call = pb::CreateExecutionRequest {
            agent: spec.agent.clone(),
            instance: spec.instance.clone().unwrap_or_default(),
            delegate: spec.delegate.clone(),
            payload: Some(codec::encode(self.codec, args)?),
            timeout_ms: spec.timeout_ms,
            ..Default::default()
        };
        let req = pb::CreateScheduleRequest {
            name: self.name.clone(),
            cron: spec.cron.clone(),
            time_zone: spec.time_zone.clone().unwrap_or_default(),
            call: Some(call),
            overlap: overlap_name(spec.overlap).to_owned(),
            catch_up: match spec.catch_up {
                CatchUp::Skip => "skip",
                CatchUp::Once => "once",
            }
            .to_owned(),
            paused: spec.paused,
        };
        let created = self
            .conn
            .call(true, &req, |channel, request| async move {
                Ok(SchedulesClient::new(channel).create(request).await?.into_inner())
            })
            .await?;
        created.schedule.map(Info::from_pb).ok_or_else(|| Error::Refused {
            code: tonic::Code::Internal,
            message: "the answer to a create carried no schedule".into(),
        })
    }

    /// The schedule with its next due times and latest runs (a linearizable read); `None`
    /// when there is none.
    pub async fn get(&self) -> Result<Option<Info>, Error> {
        let req = pb::GetScheduleRequest {
            name: self.name.clone(),
            consistency: pb::Consistency::Linearizable as i32,
            upcoming: 0,
        };
        let got = self
            .conn
            .call(true, &req, |channel, request| async move {
                Ok(SchedulesClient::new(channel).get(request).await?.into_inner())
            })
            .await;
        match got {
            Ok(s) => Ok(Some(Info::from_pb(s))),
            Err(Error::Refused { code: tonic::Code::NotFound, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// No run until resumed.
    pub async fn pause(&self) -> Result<Info, Error> {
        let req = pb::ScheduleRef { name: self.name.clone() };
        let s = self
            .conn
            .call(true, &req, |channel, request| async move {
                Ok(SchedulesClient::new(channel).pause(request).await?.into_inner())
            })
            .await?;
        Ok(Info::from_pb(s))
    }

    /// Due again from the next due time after now (what was due while paused does not run).
    pub async fn resume(&self) -> Result<Info, Error> {
        let req = pb::ScheduleRef { name: self.name.clone() };
        let s = self
            .conn
            .call(true, &req, |channel, request| async move {
                Ok(SchedulesClient::new(channel).resume(request).await?.into_inner())
            })
            .await?;
        Ok(Info::from_pb(s))
    }

    /// A run now, outside the due times (its overlap policy applies: the run may come back
    /// `skipped`). Not retried on another node after an unknown outcome, so it runs at most
    /// once per call.
    pub async fn trigger(&self) -> Result<Run, Error> {
        let req = pb::ScheduleRef { name: self.name.clone() };
        let run = self
            .conn
            .call(false, &req, |channel, request| async move {
                Ok(SchedulesClient::new(channel).trigger(request).await?.into_inner())
            })
            .await?;
        Ok(Run::from_pb(run))
    }

    /// Removes the schedule (runs started go on); `false` when there was none.
    pub async fn delete(&self) -> Result<bool, Error> {
        let req = pb::ScheduleRef { name: self.name.clone() };
        self.conn
            .call(true, &req, |channel, request| async move {
                Ok(SchedulesClient::new(channel).delete(request).await?.into_inner().deleted)
            })
            .await
    }
}
