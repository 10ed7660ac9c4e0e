//! The smsmesh coordinator: accepts batches from clients and pushes their
//! messages to sender nodes, never more to a node than it granted credit for.
//!
//! # Layout
//! - [`config`]: what can be tuned, with defaults.
//! - [`auth`]: client JWTs and tenants, node join tokens, per-tenant limits.
//! - [`batch`]: one batch's per-message state, queues and statistics.
//! - [`callbacks`]: status callbacks to clients' URLs, signed, retried, durable.
//! - [`core`]: the scheduling state and its `on_*` event functions, with no I/O.
//! - [`reactor`]: the task that owns the core, and the [`reactor::Handle`] to it.
//! - [`api`]: the client-facing `Coordinator` gRPC service and request validation.
//! - [`link`]: the `NodeLink` gRPC service: a stream per node, or one for many.
//! - [`node_tx`]: where the core's frames to a node go, on either kind of stream.
//! - [`store`]: the embedded durable store (redb), its formats and its group-commit writer.
//! - [`metrics`]: the Prometheus metrics, read from the reactor's snapshots.
//! - [`incoming`]: accepted connections, closed if they do not open in time.
//! - [`server`]: everything served together on one listener ([`run`]), and
//!   `/metrics` on another ([`run_with_metrics`]).
#![forbid(unsafe_code)]

pub mod api;
pub mod auth;
pub mod batch;
pub mod callbacks;
pub mod config;
pub mod core;
pub mod gathered;
pub mod history;
pub mod incoming;
pub mod leader;
pub mod link;
pub mod metrics;
pub mod node_tx;
pub mod reactor;
pub mod rest;
pub mod server;
pub mod standby;
pub mod store;
pub mod submit;
pub mod upload;
mod watch;

pub use config::{Config, Tls};
pub use server::{Listeners, run, run_on, run_with_metrics};
