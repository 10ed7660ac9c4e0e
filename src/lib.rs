//! Wire API and shared types of smsmesh.
//!
//! # Layout
//! - [`pb`]: code generated from `proto/smsmesh/v1/*.proto` (the `Coordinator`
//!   client API and the `NodeLink` node stream), and [`FILE_DESCRIPTOR_SET`]
//!   for gRPC server reflection.
//! - [`ids`]: batch and message ids as users see them.
//! - [`sms`]: validation of phone numbers and bodies, with SMS segment counting.
//! - [`synth`]: the deterministic generator of synthetic batches.
//! - [`error`]: the one mapping of smsmesh errors to gRPC statuses.
//! - [`cli`]: shutdown signals, the same in every program.
//! - [`client`]: reaching the coordinator: plaintext or TLS endpoints, bearer tokens.
//! - [`metrics`]: the Prometheus `/metrics` endpoint and scrape-time helpers.
//! - [`telemetry`]: logs, OTLP trace export and W3C trace-context propagation.
//! - [`wire`]: the hand-written encoding of `Jobs` frames (`pb::Jobs`).
#![forbid(unsafe_code)]

pub mod cli;
pub mod client;
pub mod codec;
pub mod encode;
pub mod error;
pub mod ids;
pub mod metrics;
pub mod outbuf;
pub mod priority;
pub mod sms;
pub mod synth;
pub mod telemetry;
pub mod tls_probe;
pub mod wire;

pub use error::{Error, echo};
pub use ids::{BatchId, MessageId};

/// Generated protobuf and gRPC code of package `smsmesh.v1`.
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod pb {
    tonic::include_proto!("smsmesh.v1");
}

/// Encoded `FileDescriptorSet` of every smsmesh proto, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/smsmesh_descriptor.bin"));
