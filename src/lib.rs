//! The Open Bank command handler: reads ConfirmAccountCreation and ConfirmMoneyTransfer
//! commands from Kafka, applies them exactly once to balances in PostgreSQL, and answers
//! on Kafka. See README.md for the design and SPEC.md for the contract.
//!
//! The data path, one module per stage:
//! [`consume`] (poll, decode, apply, hand over, acknowledge, store offsets) →
//! [`wire`] (Avro through the Schema Registry) → [`domain`] (the rules of SPEC §5) and
//! [`db`] (one transaction per batch, the events into an outbox) → [`produce`] (the
//! producer thread: encode, produce, report acknowledgements back); [`outbox`] (one
//! publisher per database sends the BalanceChanged events in each account's commit
//! order).
//!
//! Around it: [`config`] (environment variables, declared once), [`kafka`] (client
//! settings, the dead-letter topic), [`ops`] (metrics, health and readiness over HTTP,
//! the `check` and `health` commands), [`logging`] (`RUST_LOG`, `LOG_FORMAT`), [`app`]
//! (start-up, threads and shutdown) and [`backoff`] (waiting without missing a
//! shutdown).

pub mod app;
pub(crate) mod backoff;
pub mod config;
pub(crate) mod consume;
pub(crate) mod db;
pub mod domain;
pub(crate) mod kafka;
pub mod logging;
pub mod memory;
pub mod ops;
pub(crate) mod outbox;
pub(crate) mod produce;
pub mod wire;
