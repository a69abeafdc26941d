//! The standard gRPC health service, `grpc.health.v1.Health`, kept in step with
//! [`readiness`](crate::readiness): SERVING while the node can serve, NOT_SERVING while it cannot, for the whole
//! server (service name `""`) and for each Weft service by its full name
//! (`weft.fabric.v1.State`, ...). Other names are NOT_FOUND.
//!
//! ```text
//!   Raft metrics change ─┐
//!   every readiness TICK ┴─► readiness::Probe::check ──(turned)──► Service::run ──► reporter
//!   GET /readyz ──────────► readiness::Probe::check                                    │
//!                                                  Check / Watch ◄── HealthServer ◄────┘
//! ```
//!
//! Every status is one `tokio::sync::watch` value per name, so a slow `Watch` caller holds no
//! queue: it sees the latest status.

use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::server::HealthReporter;

use crate::readiness::Probe;

/// Publishes readiness to the health service until shutdown.
pub struct Service {
    probe: Probe,
    reporter: HealthReporter,
    services: Vec<&'static str>,
    /// What was published last (a `Watch` caller sees every publication).
    published: bool,
}

impl Service {
    /// The health server to add to the node's routes, and the service that keeps its statuses
    /// current. Every status starts as what `probe` judges now, before anyone can ask.
    pub async fn new(probe: Probe, services: Vec<&'static str>) -> (HealthServer<impl Health>, Self) {
        let (reporter, server) = tonic_health::server::health_reporter();
        let ready = probe.check().ready;
        let mut service = Self { probe, reporter, services, published: !ready };
        service.publish(ready).await;
        (server, service)
    }

    /// Follows readiness until `shutdown` (readiness is judged by
    /// [`readiness::run`](crate::readiness::run)).
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut verdicts = self.probe.subscribe();
        // Judge once after subscribing, so no turn since `new` is missed.
        self.probe.check();
        loop {
            let ready = verdicts.borrow_and_update().ready;
            self.publish(ready).await;
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                changed = verdicts.changed() => if changed.is_err() {
                    return;
                },
            }
        }
    }

    async fn publish(&mut self, ready: bool) {
        if ready == self.published {
            return;
        }
        self.published = ready;
        let status = if ready { ServingStatus::Serving } else { ServingStatus::NotServing };
        for name in std::iter::once("").chain(self.services.iter().copied()) {
            self.reporter.set_service_status(name, status).await;
        }
    }
}
