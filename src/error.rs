//! Errors shared by the smsmesh crates and their mapping to gRPC statuses.
//!
//! Library code returns [`Error`]; gRPC adapters call `.map_err(Into::into)`
//! so every status code is chosen in one place. Input quoted in a message goes
//! through [`echo`], so it is never longer than [`MAX_ECHO`] bytes.

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

/// Longest part of a client's or node's input quoted back in an error message, in bytes.
pub const MAX_ECHO: usize = 64;

/// `input` quoted for an error message: whole when short, else its first
/// [`MAX_ECHO`] bytes (at a character boundary) and its length. An error never
/// copies a huge input, and stays readable to every client.
pub fn echo(input: &str) -> String {
    if input.len() <= MAX_ECHO {
        return format!("{input:?}");
    }
    let mut end = MAX_ECHO;
    while !input.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}… ({} bytes)", &input[..end], input.len())
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        Status::new(e.code(), e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echoes_are_short_and_cut_at_a_character() {
        assert_eq!(echo("abc"), "\"abc\"");
        let long = "é".repeat(1_000_000);
        let e = echo(&long);
        assert!(e.len() < 2 * MAX_ECHO, "{e}");
        assert!(e.ends_with("… (2000000 bytes)"), "{e}");
    }
}
