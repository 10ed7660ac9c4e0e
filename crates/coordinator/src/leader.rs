//! Leadership among coordinators that share one PostgreSQL database: a lease
//! in the one-row table `smsmesh_leader` (holder, epoch, expiry by the
//! database's clock).
//!
//! A standby takes the lease once it has run out, raising the epoch by one;
//! the leader renews it every quarter of its term. The leader steps down on
//! its own once it cannot prove it still holds the lease (renewed within
//! 80% of the term, timed from before the renewal was sent), so it stops
//! before any standby may take over, even cut off from the database. The
//! epoch fences the store ([`crate::store::pg`]): a deposed leader's writes
//! fail, whatever its clock says.

use std::time::{Duration, Instant};

use tokio_postgres::{Client, NoTls};

/// How a coordinator takes part in leadership.
#[derive(Clone, Debug)]
pub struct Lease {
    /// The database.
    pub url: String,
    /// Who this coordinator is, as other coordinators and logs see it.
    pub holder: String,
    /// How long a lease lasts unrenewed.
    pub ttl: Duration,
}

/// The lead, as held: its epoch and when it was last proven.
#[derive(Clone, Copy, Debug)]
pub struct Held {
    /// The epoch this coordinator leads under.
    pub epoch: i64,
    /// When the request that last renewed (or took) it was sent.
    pub proven: Instant,
}

impl Lease {
    /// A connection for the lease, with a bounded wait for locks (a store
    /// commit holds the leadership row shared for its duration).
    async fn connect(&self) -> Result<Client, String> {
        let mut config = self.url.parse::<tokio_postgres::Config>().map_err(|e| {
            format!(
                "bad database URL {}: {e}",
                crate::store::pg::shown(&self.url)
            )
        })?;
        config.application_name("smscoord-lease");
        config.connect_timeout(self.ttl / 2);
        let (client, connection) = tokio::time::timeout(self.ttl / 2, config.connect(NoTls))
            .await
            .map_err(|_| "timed out connecting to the database".to_string())?
            .map_err(|e| format!("cannot connect to the database: {e}"))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        client
            .batch_execute(&format!(
                "SET lock_timeout = {0}; SET statement_timeout = {0}",
                (self.ttl / 2).as_millis().max(1)
            ))
            .await
            .map_err(|e| format!("cannot set up the lease connection: {e}"))?;
        Ok(client)
    }

    /// Waits until this coordinator holds the lead. `leader` hears who holds
    /// it meanwhile (for the standby's answers).
    pub async fn acquire(&self, leader: &tokio::sync::watch::Sender<String>) -> Held {
        let poll = (self.ttl / 10).max(Duration::from_millis(50));
        let mut client: Option<Client> = None;
        loop {
            if client.as_ref().is_none_or(Client::is_closed) {
                client = match self.connect().await {
                    Ok(c) => Some(c),
                    Err(e) => {
                        tracing::warn!(error = %e, "standby: cannot reach the database");
                        None
                    }
                };
            }
            if let Some(c) = &client {
                let sent = Instant::now();
                let took = c
                    .query_opt(
                        "UPDATE smsmesh_leader SET holder = $1, epoch = epoch + 1, \
                         expires_at = now() + $2 * interval '1 millisecond' \
                         WHERE id = 1 AND expires_at < now() RETURNING epoch",
                        &[&self.holder, &(self.ttl.as_millis() as f64)],
                    )
                    .await;
                match took {
                    Ok(Some(row)) => {
                        let epoch: i64 = row.get(0);
                        tracing::info!(epoch, holder = %self.holder, "this coordinator took the lead");
                        return Held {
                            epoch,
                            proven: sent,
                        };
                    }
                    Ok(None) => {
                        if let Ok(Some(row)) = c
                            .query_opt("SELECT holder FROM smsmesh_leader WHERE id = 1", &[])
                            .await
                        {
                            let holder: String = row.get(0);
                            leader.send_if_modified(|h| {
                                let changed = *h != holder;
                                if changed {
                                    tracing::info!(leader = %holder, "standby: another coordinator leads");
                                    h.clone_from(&holder);
                                }
                                changed
                            });
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "standby: the lease could not be read");
                        client = None;
                    }
                }
            }
            tokio::time::sleep(poll).await;
        }
    }

    /// Keeps the lead until it is lost or can no longer be proven; says why.
    pub async fn keep(&self, mut held: Held) -> String {
        let margin = self.ttl.mul_f64(0.8);
        let mut client: Option<Client> = None;
        let mut tick = tokio::time::interval(self.ttl / 4);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let deadline = held.proven + margin;
            let sent = Instant::now();
            if sent >= deadline {
                return format!(
                    "the lease could not be renewed for {:?} (of a {:?} term): stepping down before a standby may take over",
                    sent - held.proven,
                    self.ttl
                );
            }
            let renew = async {
                let c = match &client {
                    Some(c) if !c.is_closed() => c,
                    _ => client.insert(self.connect().await?),
                };
                c.query_opt(
                    "UPDATE smsmesh_leader SET expires_at = now() + $2 * interval '1 millisecond' \
                     WHERE id = 1 AND epoch = $1 RETURNING epoch",
                    &[&held.epoch, &(self.ttl.as_millis() as f64)],
                )
                .await
                .map(|r| r.is_some())
                .map_err(|e| format!("cannot renew the lease: {e}"))
            };
            match tokio::time::timeout_at(deadline.into(), renew).await {
                Ok(Ok(true)) => held.proven = sent,
                Ok(Ok(false)) => {
                    return format!(
                        "another coordinator took the lead (this one held epoch {})",
                        held.epoch
                    );
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "leader: lease renewal failed; retrying");
                    client = None;
                }
                Err(_) => {
                    client = None;
                }
            }
        }
    }

    /// Gives the lead up at a clean shutdown, so a standby takes over at once.
    pub async fn release(&self, epoch: i64) {
        let Ok(c) = self.connect().await else { return };
        match c
            .execute(
                "UPDATE smsmesh_leader SET expires_at = '-infinity' WHERE id = 1 AND epoch = $1",
                &[&epoch],
            )
            .await
        {
            Ok(_) => tracing::info!(epoch, "the lead is released"),
            Err(e) => {
                tracing::warn!(error = %e, "the lead could not be released; it runs out instead")
            }
        }
    }
}
