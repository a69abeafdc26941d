//! Integration tests: real nodes over real sockets on 127.0.0.1 with ephemeral ports. Each
//! test builds its own cluster, so they run in parallel.

mod addresses;
mod audit;
mod authz;
mod bad_input;
mod cli;
mod cli_endpoints;
mod cli_executions;
mod cli_input;
mod cli_streams;
mod dashboard;
mod dashboard_browser;
mod delegates;
mod demand;
mod executions;
mod failover;
mod gossip_keys;
mod health;
mod http_api;
mod leases;
mod locks;
mod logs;
mod membership;
mod membership_process;
mod metrics;
mod process;
mod restart;
mod revoke;
mod schedules;
mod streams;
mod support;
mod tls;
mod tokens;
mod writes;
