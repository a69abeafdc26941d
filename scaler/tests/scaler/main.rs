//! Integration tests of the scaler: a real fabric node (in this process), real `weft-scaler`
//! processes and the real `scaled` example agent they start, over real sockets on 127.0.0.1.
//! Each test has a scaler group of its own, so its replicas are found (and cleaned up) apart
//! from every other test's.

mod auth;
mod bad_config;
mod failover;
mod failures;
mod per_instance;
mod pool;
mod support;
