//! regwatch: watches container image registries and publishes a CloudEvent for every new tag and
//! every tag that moves to a new digest.
//!
//! Data flow: [`config`] → [`watch::scheduler`] → [`registry`] adapter → [`watch::diff`] →
//! [`store`] (snapshot + outbox in one transaction) → [`sink`] (Kafka or stdout).

pub mod admin;
pub mod config;
pub mod daemon;
pub mod event;
pub mod metrics;
pub mod registry;
pub mod sink;
pub mod store;
pub mod watch;
pub mod watchdog;
pub mod webhook;
