//! Which tenant queues this worker consumes (issue 11, finding 7: fairness between tenants).
//!
//! A tenant's first jobs for a routing key reach the shared queue of that key through the intake
//! exchange. The worker that takes one declares the tenant's own queue (bound by
//! `<tenant>.<routing key>`, so that the tenant's later jobs wait there, behind its own backlog
//! only), consumes it, and announces it on the stream `<ns>.tenants`; every worker reads that
//! stream from its start, at every connection, and consumes the announced queues of the routing
//! keys it serves. The announcements live in the broker next to the bindings they describe, so
//! no queue can be bound and unknown to the workers. A queue that could not be consumed, or
//! announced, is tried again every few seconds (`Consumer::retry_tenant_queues`), so a worker
//! that stops after declaring a queue leaves it to the others. Workers declare new tenant
//! queues while they know fewer than `DTEE_MAX_TENANT_QUEUES`; tenants beyond that are served
//! from the shared queues. Every announced queue is consumed, whatever their number: its
//! tenant's jobs wait there and nowhere else.

use std::collections::BTreeSet;

use dtee_schemas::protocol::split_submit_routing_key;
use lapin::message::Delivery;
use tracing::warn;

use super::session::TenantQueue;

/// The tenant queues a worker consumes, kept across reconnections.
#[derive(Debug)]
pub(crate) struct Tenants {
    routes: BTreeSet<String>,
    known: BTreeSet<TenantQueue>,
    /// Queues this worker declared whose announcement has not reached the broker yet.
    unannounced: BTreeSet<TenantQueue>,
    max: usize,
    warned_full: bool,
}

impl Tenants {
    /// No tenant queues yet, for a worker serving `routes`, declaring new ones while it knows
    /// fewer than `max`.
    pub(crate) fn new(routes: &[String], max: usize) -> Tenants {
        Tenants {
            routes: routes.iter().cloned().collect(),
            known: BTreeSet::new(),
            unannounced: BTreeSet::new(),
            max,
            warned_full: false,
        }
    }

    /// The tenant queues to consume.
    pub(crate) fn queues(&self) -> Vec<TenantQueue> {
        self.known.iter().cloned().collect()
    }

    /// The tenant queue that `delivery` shows to be missing: a job published under
    /// `<tenant>.<routing key>` by that tenant (its `user_id`) for a routing key this worker
    /// serves, whose queue this worker does not consume (so the job came through the shared
    /// queue).
    pub(crate) fn missing(&self, delivery: &Delivery) -> Option<TenantQueue> {
        let user = delivery.properties.user_id().as_ref()?;
        let (tenant, route) = split_submit_routing_key(delivery.routing_key.as_str())?;
        if tenant != user.as_str() {
            return None;
        }
        let queue = TenantQueue {
            route: route.to_owned(),
            tenant: tenant.to_owned(),
        };
        (self.routes.contains(route) && !self.known.contains(&queue)).then_some(queue)
    }

    /// Records `queue` as one to consume if it is of a served routing key and not known yet;
    /// returns whether it was recorded (and should now be consumed). An announced queue is
    /// always recorded: it is bound, so its tenant's jobs wait there and nowhere else. A queue
    /// to `provision` (declare, because a job came through a shared queue) is recorded only
    /// while fewer than `max` are known; beyond that, tenants are served from the shared
    /// queues.
    pub(crate) fn learn(&mut self, queue: &TenantQueue, provision: bool) -> bool {
        if !self.routes.contains(&queue.route) || self.known.contains(queue) {
            return false;
        }
        if provision && self.known.len() >= self.max {
            if !self.warned_full {
                self.warned_full = true;
                warn!(
                    max = self.max,
                    "DTEE_MAX_TENANT_QUEUES tenant queues exist; further tenants are served from the shared queues"
                );
            }
            return false;
        }
        self.known.insert(queue.clone())
    }

    /// Forgets a queue that could not be declared: its tenant's jobs still reach the shared
    /// queue, and the next one provisions it again.
    pub(crate) fn forget(&mut self, queue: &TenantQueue) {
        self.known.remove(queue);
        self.unannounced.remove(queue);
    }

    /// `queue` was declared here and is still to be announced.
    pub(crate) fn announce_later(&mut self, queue: &TenantQueue) {
        self.unannounced.insert(queue.clone());
    }

    /// `queue` is in the announcements (this worker's confirmed, or read from the stream).
    pub(crate) fn announced(&mut self, queue: &TenantQueue) {
        self.unannounced.remove(queue);
    }

    /// The queues declared here whose announcement is still to be sent.
    pub(crate) fn unannounced(&self) -> Vec<TenantQueue> {
        self.unannounced.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(route: &str, tenant: &str) -> TenantQueue {
        TenantQueue {
            route: route.to_owned(),
            tenant: tenant.to_owned(),
        }
    }

    #[test]
    fn only_served_new_queues_are_learnt_up_to_the_limit() {
        let mut tenants = Tenants::new(&["wasm".to_owned()], 2);
        assert!(tenants.learn(&queue("wasm", "a"), true));
        assert!(!tenants.learn(&queue("wasm", "a"), true), "known already");
        assert!(!tenants.learn(&queue("cuda", "b"), false), "not served");
        assert!(tenants.learn(&queue("wasm", "b"), true));
        assert!(!tenants.learn(&queue("wasm", "c"), true), "over the limit");
        tenants.forget(&queue("wasm", "a"));
        assert!(tenants.learn(&queue("wasm", "c"), true));
        assert_eq!(tenants.queues(), [queue("wasm", "b"), queue("wasm", "c")]);
        // An announced queue is bound: consumed whatever the limit.
        assert!(tenants.learn(&queue("wasm", "d"), false));
        assert_eq!(tenants.queues().len(), 3);
    }

    #[test]
    fn announcements_parse_strictly() {
        assert_eq!(
            TenantQueue::parse("wasm.tpm/alice"),
            Some(queue("wasm.tpm", "alice"))
        );
        assert_eq!(TenantQueue::parse("wasm/a.b"), None);
        assert_eq!(TenantQueue::parse("wasm/_"), None);
        assert_eq!(TenantQueue::parse("/alice"), None);
        assert_eq!(TenantQueue::parse("wasm"), None);
    }
}
