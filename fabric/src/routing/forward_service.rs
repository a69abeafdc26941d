//! `weft.cluster.v1.Forward`: the leader's side of [`super::forward`]. Writes arrive encoded
//! and validated by the node that took them; the leader refuses the commands only its own
//! proposer makes ([`leader_only`]), checks the rest again against its own limits, proposes
//! them and answers with the grid's result, or with a status that says the write was certainly
//! not applied.

use tonic::{Request, Response, Status};
use weft_proto::cluster::v1 as cpb;

use super::{Context, Error, Leader};
use crate::codec;
use crate::grid::{self, Command};

/// Serves `weft.cluster.v1.Forward` on one node.
#[derive(Clone)]
pub struct ForwardService {
    ctx: Context,
}

impl ForwardService {
    /// The service for a node.
    pub fn new(ctx: Context) -> Self {
        Self { ctx }
    }

    fn check_cluster(&self, cluster: &str) -> Result<(), Status> {
        if cluster == self.ctx.cluster {
            Ok(())
        } else {
            Err(Status::permission_denied(format!(
                "this node belongs to cluster '{}', not '{cluster}'",
                self.ctx.cluster
            )))
        }
    }
}

/// The name of a command that only the leader's own proposer proposes, looking inside
/// `Fenced` and `Audited`; `None` for any other. Eager calls (`grid/reserved.rs`) are fenced by
/// the leader handing each reserved id and token out once, from the block it reserved: a
/// block reserved for a peer, or a reserved create a peer names, would go around that.
fn leader_only(command: &Command) -> Option<&'static str> {
    match command {
        Command::ReserveBlock { .. } => Some("ReserveBlock"),
        Command::CreateReserved(_) => Some("CreateReserved"),
        Command::Fenced { command, .. } | Command::Audited { command, .. } => leader_only(command),
        _ => None,
    }
}

#[tonic::async_trait]
impl cpb::forward_server::Forward for ForwardService {
    async fn propose(
        &self,
        request: Request<cpb::ProposeRequest>,
    ) -> Result<Response<cpb::ProposeReply>, Status> {
        let req = request.into_inner();
        self.check_cluster(&req.cluster)?;
        let command: Command = codec::decode(&req.command)
            .map_err(|e| Status::invalid_argument(format!("cannot read the forwarded command: {e}")))?;
        if let Some(name) = leader_only(&command) {
            return Err(Status::invalid_argument(format!(
                "{name} is proposed only by the leader's proposer; a peer may not forward it"
            )));
        }
        if self.ctx.leader() != Leader::Local {
            let leader = match self.ctx.leader() {
                Leader::Remote { addr, .. } => Some(addr),
                _ => None,
            };
            return Err(Error::NotLeader { leader }.into_status());
        }
        // The node that took the request checked it against its limits; the effective limit is
        // the stricter of the two nodes'.
        if let Err(e) = command.validate(&self.ctx.limits) {
            let answer: Result<grid::Output, grid::Error> = Err(e);
            return Ok(Response::new(cpb::ProposeReply { result: codec::encode(&answer) }));
        }
        let answer: Result<grid::Output, grid::Error> =
            match tokio::time::timeout(self.ctx.request_timeout, self.ctx.proposer.propose(command)).await {
                Ok(Ok(output)) => Ok(output),
                Ok(Err(Error::Grid(e))) => Err(e),
                Ok(Err(e)) => return Err(e.into_status()),
                Err(_) => {
                    return Err(Error::Indeterminate(format!(
                        "not committed within request_timeout_ms ({} ms)",
                        self.ctx.request_timeout.as_millis()
                    ))
                    .into_status());
                }
            };
        Ok(Response::new(cpb::ProposeReply { result: codec::encode(&answer) }))
    }

    async fn read_index(
        &self,
        request: Request<cpb::ReadIndexRequest>,
    ) -> Result<Response<cpb::ReadIndexReply>, Status> {
        self.check_cluster(&request.get_ref().cluster)?;
        // The follower's call joins this leader's next read-index round, with its local reads
        // and other followers' calls: one quorum confirmation answers them all.
        match tokio::time::timeout(self.ctx.request_timeout, super::forward::leader_read_index(&self.ctx))
            .await
        {
            Ok(Ok(index)) => Ok(Response::new(cpb::ReadIndexReply { index })),
            Ok(Err(e)) => Err(e.into_status()),
            Err(_) => Err(Error::Unavailable(format!(
                "no read index within request_timeout_ms ({} ms)",
                self.ctx.request_timeout.as_millis()
            ))
            .into_status()),
        }
    }
}
