//! Gateways: what actually sends an SMS. A node has one: the simulated one
//! here, or SMPP (`crate::smpp`).

use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use rand::Rng;
use smsmesh::pb;
use tokio::sync::mpsc;

/// What one attempt came to, as the gateway saw it.
pub type Outcome = Result<Accepted, Failure>;

/// A send the provider accepted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Accepted {
    /// The provider's id of each segment, in order (none from a simulation).
    pub provider_ids: Vec<String>,
}

/// A send that did not go through, and what kind of failure it was.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// What the coordinator should do with the message.
    pub class: FailureClass,
    /// Why, in words (for SMPP: the command status and its name).
    pub reason: String,
}

/// The kinds of failure: each is one `Outcome` on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureClass {
    /// Retried after a backoff while attempts are left.
    Temporary,
    /// Final at once (e.g. an invalid destination).
    Permanent,
    /// The provider asked to slow down: sent again without using an attempt.
    Throttled,
    /// No answer came: the provider may have sent it, so a retry may duplicate.
    Unknown,
}

impl Failure {
    /// A temporary failure.
    pub fn temporary(reason: impl Into<String>) -> Self {
        Failure {
            class: FailureClass::Temporary,
            reason: reason.into(),
        }
    }

    /// A failure of `class`.
    pub fn new(class: FailureClass, reason: impl Into<String>) -> Self {
        Failure {
            class,
            reason: reason.into(),
        }
    }
}

/// A send the gateway started: finished already, due at a known time, or
/// still going.
///
/// A gateway that knows the outcome at once (a zero-latency simulation, a
/// message it rejects before any I/O) says so with `Done`, and the node
/// reports it without scheduling a task for it. One that knows the outcome
/// and when it is due (a simulation with latency) says `After`: the node
/// keeps such sends in one timer queue instead of a task and a timer each.
pub enum Sending {
    /// The outcome is known now.
    Done(Outcome),
    /// The outcome, due once `after` has passed.
    After(Delayed),
    /// The outcome comes when this future resolves.
    Pending(BoxFuture<'static, Outcome>),
}

/// What is done to an outcome when it is due.
pub type Finish = Box<dyn FnOnce(Outcome) -> Outcome + Send>;

/// An outcome known now and due later.
pub struct Delayed {
    /// How long until it is due.
    pub after: Duration,
    /// The outcome.
    pub outcome: Outcome,
    /// Applied to the outcome when it is due (see [`Sending::map`]).
    pub finish: Option<Finish>,
}

impl Delayed {
    /// The outcome as it is once due.
    pub fn finish(self) -> Outcome {
        match self.finish {
            Some(f) => f(self.outcome),
            None => self.outcome,
        }
    }
}

impl Sending {
    /// Applies `f` to the outcome, now or when it comes (for a delayed one:
    /// when it is due, not before).
    pub fn map(self, f: impl FnOnce(Outcome) -> Outcome + Send + 'static) -> Self {
        match self {
            Sending::Done(r) => Sending::Done(f(r)),
            Sending::After(d) => Sending::After(Delayed {
                finish: Some(match d.finish {
                    Some(first) => Box::new(move |r| f(first(r))),
                    None => Box::new(f),
                }),
                ..d
            }),
            Sending::Pending(fut) => Sending::Pending(fut.map(f).boxed()),
        }
    }
}

/// Sends one message.
pub trait Gateway: Send + Sync + 'static {
    /// The kind, as the node reports it in Hello (e.g. "simulated").
    fn kind(&self) -> &'static str;
    /// Starts sending `job`.
    fn send(&self, job: &pb::Job) -> Sending;
    /// Whether the gateway can send now, and changes of it; `None` for a
    /// gateway that always can. A node grants no credit while it cannot.
    fn ready(&self) -> Option<tokio::sync::watch::Receiver<bool>> {
        None
    }
    /// Whether it sends at all: a gateway that only receives (an SMPP
    /// receiver bind) takes no jobs; its node grants no credit and hands in
    /// the receipts it gets.
    fn takes_jobs(&self) -> bool {
        true
    }
    /// Who delivers the sends, as Hello names it: provider ids are unique
    /// within it. Empty for a gateway that gives no ids.
    fn provider(&self) -> String {
        String::new()
    }
    /// The delivery receipts the provider sends, for the node to hand to the
    /// coordinator; the first call takes them, later calls get `None`.
    fn receipts(&self) -> Option<mpsc::Receiver<IncomingReceipt>> {
        None
    }
}

/// A receipt from the provider, and what to do once the coordinator has
/// stored it (the SMPP gateway answers deliver_sm only then, so a receipt
/// the node loses, say in a crash, is sent again by the SMSC).
pub type IncomingReceipt = (pb::Receipt, Option<OnStored>);

/// What is done once the coordinator has stored a receipt (answering its
/// deliver_sm, say); dropped undone if the node loses the receipt first. Run
/// by the node's task as the ack comes: it must not block.
pub struct OnStored(Box<dyn FnOnce() + Send + Sync>);

impl OnStored {
    /// `f`, run once the receipt is stored.
    pub fn new(f: impl FnOnce() + Send + Sync + 'static) -> Self {
        OnStored(Box::new(f))
    }

    /// The receipt is stored.
    pub fn stored(self) {
        (self.0)();
    }
}

/// Tells a waiting task that the receipt is stored.
impl From<tokio::sync::oneshot::Sender<()>> for OnStored {
    fn from(tx: tokio::sync::oneshot::Sender<()>) -> Self {
        OnStored::new(move || {
            let _ = tx.send(());
        })
    }
}

/// A gateway that only waits and sometimes fails: latency drawn from an
/// exponential distribution around `mean_latency`, failures at `failure_rate`.
#[derive(Clone, Debug)]
pub struct Simulated {
    /// Mean of the exponential latency; zero means no delay.
    pub mean_latency: Duration,
    /// Probability (0 to 1) that an attempt fails.
    pub failure_rate: f64,
}

impl Gateway for Simulated {
    fn kind(&self) -> &'static str {
        "simulated"
    }

    fn send(&self, _job: &pb::Job) -> Sending {
        let mut rng = rand::rng();
        let fail = self.failure_rate > 0.0 && rng.random::<f64>() < self.failure_rate;
        let outcome = move || {
            if fail {
                Err(Failure::temporary(
                    "simulated gateway failure (submit_sm rejected)",
                ))
            } else {
                Ok(Accepted::default())
            }
        };
        if self.mean_latency.is_zero() {
            return Sending::Done(outcome());
        }
        // Inverse transform: -mean * ln(1 - u), u in [0, 1).
        let u: f64 = rng.random();
        let delay = self
            .mean_latency
            .mul_f64(-(1.0 - u).ln())
            .min(self.mean_latency * 50);
        Sending::After(Delayed {
            after: delay,
            outcome: outcome(),
            finish: None,
        })
    }
}
