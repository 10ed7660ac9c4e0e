//! The core rebuilt from what the store holds, after a restart or a crash.
//!
//! Stored outcomes are final. A batch that was running resumes: every
//! message below its stored reservation without an outcome may have been
//! sent, so it goes out again after the resume grace (counted as re-sent),
//! unless a reconnecting node hands in its result first.

use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;
use smsmesh::BatchId;

use super::Core;
use super::folded::{Folded, FoldedShare};
use crate::Config;
use crate::auth::Tenant;
use crate::batch::{Batch, Content, Counts};
use crate::store::{FinalState, Loaded, LoadedBatch};

impl Core {
    /// A coordinator restored from what the store holds, backed by that store.
    pub fn recover(config: Config, loaded: Loaded, now: Instant) -> Self {
        let mut core = Core::with_durability(config, true);
        for (n, name) in loaded.nodes {
            core.sessions.names.restore(n, name);
        }
        let unix_now = unix_ms();
        core.batches.reserve(loaded.batches.len());
        if let Some(newest) = loaded.batches.iter().map(|lb| lb.batch.id).max() {
            BatchId::keep_after(newest);
        }
        core.durability.events.number_from(loaded.callback_next);
        for mut lb in loaded.batches {
            // Receipts for it may still come, days after it completed.
            let tenant = Tenant::new(&lb.batch.tenant);
            core.durability
                .events
                .watch(lb.batch.id, &tenant, &lb.batch.callback_url);
            // A completed batch is folded straight from its stored outcomes.
            if let Some(f) = folded_at_load(&lb) {
                for s in f.nodes.iter() {
                    core.sessions.names.named(s.node);
                }
                core.batches.insert_folded(lb.batch.id, f);
                continue;
            }
            let messages = std::mem::take(&mut lb.batch.messages);
            let list_body = lb.batch.list_body.take();
            let list_sender = std::mem::take(&mut lb.batch.list_sender);
            let sb = &lb.batch;
            let content = match (sb.synthetic_seed, list_body, lb.list.take()) {
                (Some(seed), _, _) => Content::Synthetic {
                    seed,
                    body: sb.synthetic_body.clone(),
                },
                // The store checked that a list body comes with its recipients.
                (None, Some(body), Some(recipients)) => Content::List {
                    body,
                    sender: list_sender,
                    recipients: std::sync::Arc::new(recipients),
                },
                (None, _, _) => Content::Explicit(messages),
            };
            let age = Duration::from_millis(unix_now.saturating_sub(sb.accepted_unix_ms));
            let accepted = now.checked_sub(age).unwrap_or(now);
            let mut b = Batch::new(
                BatchId(sb.id),
                content,
                sb.total,
                sb.max_attempts as u8,
                accepted,
            );
            b.tenant = Tenant::new(&sb.tenant);
            // A value no version wrote is refused when the store is read (store/load.rs).
            b.class = smsmesh::priority::Class::from_proto(sb.priority as i32, "priority")
                .unwrap_or_default();
            b.fingerprint = sb.fingerprint;
            b.accepted_unix_ms = sb.accepted_unix_ms;
            let errors: FxHashMap<u32, &str> =
                lb.errors.iter().map(|(i, e)| (*i, e.as_str())).collect();
            for o in lb.outcomes() {
                let error = errors.get(&o.index).copied();
                b.restore(o.index, o.state, o.attempts, o.node, o.final_ms, error);
            }
            // The reservation stored with the batch, if its state has none later.
            lb.state.dispatched = lb.state.dispatched.max(sb.reserved);
            let state = &lb.state;
            b.counts.resent = state.resent;
            b.counts.requeued = state.requeued;
            b.counts.duplicates = state.duplicates;
            if state.cancelled {
                b.cancel(now);
                b.cancelled_ms = state.cancelled_ms;
            } else {
                let until = now + core.config.resume_grace;
                let resumed = b.resume(state.dispatched, until);
                if resumed > 0 {
                    tracing::info!(batch = %b.id, resumed, grace = ?core.config.resume_grace, "resuming batch; messages that may have been in flight go out again after the grace period");
                }
            }
            b.reserved = state.dispatched;
            b.dispatched_before_restart = state.dispatched;
            b.check_end(now);
            core.durability.restored(lb.state);
            for (n, _) in b.nodes.iter() {
                core.sessions.names.named(n);
            }
            core.receipts.keep_decided(b.id.0);
            core.batches.insert(b);
        }
        // A stored name no batch names any more (retention removed them) is free.
        for n in core.sessions.names.indexes() {
            core.sessions.names.release(n);
        }
        for (key, id) in loaded.idempotency {
            core.batches.key(key, BatchId(id));
        }
        let mut writes = Vec::new();
        core.receipts.restore(
            (loaded.receipt_waits, loaded.early_receipts),
            &loaded.delivery_tallies,
            loaded.deliveries,
            (now, unix_now),
            &mut writes,
        );
        core.durability.receipts(writes);
        core.batches.sort_running();
        // The first snapshot (and /metrics) shows what was loaded.
        core.batches.changed = true;
        core
    }
}

/// The folded form of a stored batch, if it completed: every message has
/// its outcome and it was not cancelled. What its outcomes do not say (send
/// times, retried attempts) is not known after a restart.
fn folded_at_load(lb: &LoadedBatch) -> Option<Folded> {
    if !lb.completed() {
        return None;
    }
    let (sb, state) = (&lb.batch, &lb.state);
    let (mut sent, mut failed) = (0u64, 0u64);
    let mut nodes: Vec<FoldedShare> = Vec::new();
    for o in lb.outcomes() {
        let is_sent = o.state == FinalState::Sent;
        if is_sent {
            sent += 1;
        } else {
            failed += 1;
        }
        if let Some(node) = o.node.checked_sub(1) {
            let at = match nodes.iter().position(|s| s.node == node) {
                Some(at) => at,
                None => {
                    nodes.push(FoldedShare {
                        node,
                        sent: 0,
                        failed_attempts: 0,
                    });
                    nodes.len() - 1
                }
            };
            if is_sent {
                nodes[at].sent += 1;
            } else {
                nodes[at].failed_attempts += 1;
            }
        }
    }
    nodes.sort_unstable_by_key(|s| s.node);
    Some(Folded {
        tenant: Tenant::new(&sb.tenant),
        max_attempts: sb.max_attempts as u8,
        class: smsmesh::priority::Class::from_proto(sb.priority as i32, "priority")
            .unwrap_or_default(),
        elapsed_ms: 0,
        counts: Counts {
            total: u64::from(sb.total),
            sent,
            failed,
            resent: state.resent,
            requeued: state.requeued,
            duplicates: state.duplicates,
            ..Counts::default()
        },
        accepted_unix_ms: sb.accepted_unix_ms,
        fingerprint: sb.fingerprint,
        seed: sb.synthetic_seed,
        key: None,
        latency: (0, [0.0; 5]),
        nodes: nodes.into_boxed_slice(),
    })
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
