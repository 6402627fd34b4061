//! Which tenant queues this worker consumes (issue 11, finding 7: fairness between tenants).
//!
//! A tenant's first jobs for a routing key reach the shared queue of that key through the intake
//! exchange. The worker that takes one declares the tenant's own queue (bound by
//! `<tenant>.<routing key>`, so that the tenant's later jobs wait there, behind its own backlog
//! only), consumes it, and announces it on the stream `<ns>.tenants`; every worker reads that
//! stream from its start, at every connection, and consumes the announced queues of the routing
//! keys it serves. The announcements live in the broker next to the bindings they describe, so
//! no queue can be bound and unknown to the workers. A worker consumes at most
//! `DTEE_MAX_TENANT_QUEUES` tenant queues; tenants beyond that are served from the shared
//! queues.

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
    max: usize,
    warned_full: bool,
}

impl Tenants {
    /// No tenant queues yet, for a worker serving `routes`, consuming at most `max`.
    pub(crate) fn new(routes: &[String], max: usize) -> Tenants {
        Tenants {
            routes: routes.iter().cloned().collect(),
            known: BTreeSet::new(),
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

    /// Records `queue` as consumed if it is of a served routing key, not known yet, and there
    /// is room; returns whether it was recorded (and should now be consumed).
    pub(crate) fn learn(&mut self, queue: &TenantQueue) -> bool {
        if !self.routes.contains(&queue.route) || self.known.contains(queue) {
            return false;
        }
        if self.known.len() >= self.max {
            if !self.warned_full {
                self.warned_full = true;
                warn!(
                    max = self.max,
                    "this worker consumes DTEE_MAX_TENANT_QUEUES tenant queues; further tenants are served from the shared queues"
                );
            }
            return false;
        }
        self.known.insert(queue.clone())
    }

    /// Forgets a queue that could not be consumed, so that it is tried again later.
    pub(crate) fn forget(&mut self, queue: &TenantQueue) {
        self.known.remove(queue);
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
        assert!(tenants.learn(&queue("wasm", "a")));
        assert!(!tenants.learn(&queue("wasm", "a")), "known already");
        assert!(!tenants.learn(&queue("cuda", "b")), "not served");
        assert!(tenants.learn(&queue("wasm", "b")));
        assert!(!tenants.learn(&queue("wasm", "c")), "over the limit");
        tenants.forget(&queue("wasm", "a"));
        assert!(tenants.learn(&queue("wasm", "c")));
        assert_eq!(tenants.queues(), [queue("wasm", "b"), queue("wasm", "c")]);
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
