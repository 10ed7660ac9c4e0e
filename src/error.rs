//! Errors shared by the smsmesh crates and their mapping to gRPC statuses.
//!
//! Library code returns [`Error`]; gRPC adapters call `.map_err(Into::into)`
//! so every status code is chosen in one place.

use tonic::{Code, Status};

/// An error that a client or a node can be told about.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum Error {
    /// The request is malformed: a bad field, a missing field, a bad value.
    #[error("{0}")]
    InvalidArgument(String),
    /// A batch or message id that does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request is valid but not in the current state (e.g. a protocol step out of order).
    #[error("{0}")]
    FailedPrecondition(String),
    /// The operation was ended by a conflicting one (e.g. a stream replaced by a newer one).
    #[error("{0}")]
    Aborted(String),
    /// A name or id already in use.
    #[error("{0}")]
    AlreadyExists(String),
    /// A limit was hit; retrying later may work.
    #[error("{0}")]
    ResourceExhausted(String),
    /// The service is shutting down or not ready.
    #[error("{0}")]
    Unavailable(String),
    /// A bug or an internal failure.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// Shorthand for [`Error::InvalidArgument`].
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidArgument(msg.into())
    }

    /// The gRPC code this error maps to.
    pub fn code(&self) -> Code {
        match self {
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::NotFound(_) => Code::NotFound,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::Aborted(_) => Code::Aborted,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::ResourceExhausted(_) => Code::ResourceExhausted,
            Error::Unavailable(_) => Code::Unavailable,
            Error::Internal(_) => Code::Internal,
        }
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        Status::new(e.code(), e.to_string())
    }
}
