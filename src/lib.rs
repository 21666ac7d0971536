//! The Open Bank command handler: reads ConfirmAccountCreation and ConfirmMoneyTransfer
//! commands from Kafka, applies them exactly once to balances in PostgreSQL, and answers
//! on Kafka. See README.md for the design and SPEC.md for the contract.
//!
//! Modules, one concern each:
//! - [`config`]: environment variables ([`tls_stores`]: the JVM handler's keytool stores);
//! - [`rules`]: the business rules as plain functions;
//! - [`records`]: Avro records and the Schema Registry wire format;
//! - [`storage`]: pool, migrations and queries;
//! - [`handler`]: one database transaction per batch of commands;
//! - [`kafka`]: client settings and contexts; [`topics`]: the dead-letter topic, created at start-up;
//! - [`pipeline`]: the consumer loops (delivery guarantee); [`produce`]: the producer thread;
//! - [`metrics`] and [`http`]: Prometheus metrics, health and readiness over HTTP;
//! - [`app`]: wiring and shutdown; [`backoff`]: waiting without missing a shutdown;
//! - [`check`]: the `check` command's report;
//! - [`health_check`]: the `health` command, the container image's health check.

pub mod app;
pub mod backoff;
pub mod check;
pub mod config;
pub mod handler;
pub mod health_check;
pub mod heartbeat;
pub mod http;
pub mod kafka;
pub mod metrics;
pub mod pipeline;
pub mod produce;
pub mod records;
pub mod rules;
pub mod schema;
pub mod secret;
pub mod storage;
pub mod tls_stores;
pub mod topics;
