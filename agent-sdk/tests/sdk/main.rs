//! Integration tests of the SDK: real fabric nodes (in this process, or `weft` processes),
//! workers and clients over real sockets on 127.0.0.1.

mod auth;
mod calls;
mod demand;
mod eager;
mod faults;
mod instances;
mod leases;
mod schedules;
mod streams;
mod support;
