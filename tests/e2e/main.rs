//! End-to-end tests: the real handler binary against real Kafka, PostgreSQL and the
//! registry of the local stack (see `harness`). One test binary, so the (slow) link
//! happens once; the tests in it run in parallel, each on its own topics and database.

mod barrier;
mod harness;
mod invariants;

mod accounts;
mod acls;
mod bad_input;
mod brokers;
mod concurrency;
mod database_tls;
mod deploys;
mod drop_in;
mod faults;
mod lifecycle;
mod operations;
mod prometheus;
mod replay;
mod transfers;
