//! A client of the coordinator whose every call carries a bearer token: for
//! tests of tenants, scopes and authentication.

use std::time::Duration;

use smsmesh::client::{ClientTls, bearer, endpoint};
use smsmesh::pb::{self, coordinator_client::CoordinatorClient};
use tonic::transport::Channel;

use crate::wait_until;

const LONG: Duration = Duration::from_secs(60);

/// A client whose every call carries `token` (if any).
#[derive(Clone)]
pub struct Caller {
    /// The client the calls go through.
    pub client: CoordinatorClient<Channel>,
    token: Option<String>,
}

impl Caller {
    /// A client of the coordinator at `url`, once it accepts a connection.
    pub async fn new(url: &str, tls: Option<&ClientTls>, token: Option<String>) -> Caller {
        let ep = endpoint(url, tls).unwrap();
        // A coordinator that has just (re)started may still reset the first connection.
        let channel = wait_until(LONG, "a connection to the coordinator", || {
            let ep = ep.clone();
            async move { ep.connect().await.ok() }
        })
        .await
        .unwrap();
        Caller {
            client: CoordinatorClient::new(channel),
            token,
        }
    }

    /// `msg` as a request carrying the token.
    pub fn req<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        if let Some(t) = &self.token {
            bearer(&mut r, t).unwrap();
        }
        r
    }

    /// SubmitBatch: the batch id.
    pub async fn submit(&mut self, req: pb::SubmitBatchRequest) -> Result<String, tonic::Status> {
        let r = self.req(req);
        Ok(self.client.submit_batch(r).await?.into_inner().batch_id)
    }

    /// GetStatus of `target`.
    pub async fn get_status(
        &mut self,
        target: pb::get_status_request::Target,
    ) -> Result<Option<pb::get_status_response::Status>, tonic::Status> {
        let r = self.req(pb::GetStatusRequest {
            target: Some(target),
        });
        Ok(self.client.get_status(r).await?.into_inner().status)
    }

    /// GetStatus of a batch.
    pub async fn status(&mut self, id: &str) -> Result<pb::BatchStatus, tonic::Status> {
        use pb::get_status_request::Target;
        match self.get_status(Target::BatchId(id.into())).await? {
            Some(pb::get_status_response::Status::Batch(b)) => Ok(b),
            other => panic!("unexpected {other:?}"),
        }
    }

    /// GetStatus of a message.
    pub async fn message(&mut self, id: &str) -> Result<pb::MessageStatus, tonic::Status> {
        use pb::get_status_request::Target;
        match self.get_status(Target::MessageId(id.into())).await? {
            Some(pb::get_status_response::Status::Message(m)) => Ok(m),
            other => panic!("unexpected {other:?}"),
        }
    }

    /// CancelBatch.
    pub async fn cancel(&mut self, id: &str) -> Result<pb::BatchStatus, tonic::Status> {
        let r = self.req(pb::CancelBatchRequest {
            batch_id: id.into(),
        });
        Ok(self
            .client
            .cancel_batch(r)
            .await?
            .into_inner()
            .batch
            .unwrap())
    }

    /// The first update of WatchProgress (all batches when `id` is empty).
    pub async fn watch_first(&mut self, id: &str) -> Result<pb::ProgressUpdate, tonic::Status> {
        let r = self.req(pb::WatchProgressRequest {
            batch_id: id.into(),
            interval_ms: 100,
        });
        let mut stream = self.client.watch_progress(r).await?.into_inner();
        Ok(stream.message().await?.expect("an update"))
    }

    /// Waits until the batch has ended (60 s at most).
    pub async fn wait_ended(&mut self, id: &str) -> pb::BatchStatus {
        wait_until(LONG, "the batch to end", || {
            let mut me = self.clone();
            async move {
                let b = me.status(id).await.ok()?;
                (b.state == pb::BatchState::Completed as i32
                    || b.state == pb::BatchState::Cancelled as i32)
                    .then_some(b)
            }
        })
        .await
        .unwrap()
    }
    /// SetClassPaused.
    pub async fn set_paused(
        &mut self,
        class: pb::Priority,
        paused: bool,
    ) -> Result<pb::SetClassPausedResponse, tonic::Status> {
        let r = self.req(pb::SetClassPausedRequest {
            priority: class as i32,
            paused,
        });
        Ok(self.client.set_class_paused(r).await?.into_inner())
    }
}
