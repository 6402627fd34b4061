//! One delivery of a tenant's job id at a time per worker. A worker with several kernel slots can
//! take a second delivery of an id (the same job submitted twice) while the first runs; without
//! a turn it would find nothing cached and run the job again. With one, the second waits until
//! the first's outcome is cached, and then the result cache or the applied record answers it
//! (`prior`). A failure that is not final is not cached, so after one the next delivery runs
//! the job, as it would anywhere.
//!
//! Turns are per tenant: a delivery holds its turn while it waits for its tenant's fair share of
//! the slots, so another tenant's identical job (a stateless job without a nonce has one id for
//! everyone) must not wait behind it. Two tenants' identical jobs may then run at once on one
//! worker; the result cache keeps the first answer, and both publish it. A turn ends once the
//! outcome is cached, before it is published: a broker slow to take a result (or a submitter
//! whose result queue refuses it, resent for seconds) holds up no other delivery.
//!
//! A waiting delivery holds no kernel or compile slot, only its place in the prefetch window.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use dtee_schemas::Digest;
use tokio::sync::OwnedMutexGuard;

/// A tenant and a job id.
type TurnKey = (String, Digest);

/// The tenants' job ids being evaluated on this worker.
#[derive(Debug, Default)]
pub(crate) struct Turns {
    running: Mutex<HashMap<TurnKey, Arc<tokio::sync::Mutex<()>>>>,
}

/// This delivery's turn for its job id; the next delivery of the id goes on when it is dropped.
#[derive(Debug)]
pub(crate) struct Turn<'a> {
    turns: &'a Turns,
    key: TurnKey,
    lock: Arc<tokio::sync::Mutex<()>>,
    _guard: OwnedMutexGuard<()>,
}

impl Turns {
    /// Waits until no other delivery of `tenant`'s job `id` is evaluated on this worker.
    pub(crate) async fn take(&self, tenant: &str, id: &Digest) -> Turn<'_> {
        let key = (tenant.to_owned(), id.clone());
        let lock = {
            let mut running = self.running.lock().expect("turns lock");
            Arc::clone(running.entry(key.clone()).or_default())
        };
        let guard = Arc::clone(&lock).lock_owned().await;
        Turn {
            turns: self,
            key,
            lock,
            _guard: guard,
        }
    }

    /// How many job ids have an entry (for tests: entries go with their last turn).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.running.lock().expect("turns lock").len()
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let mut running = self.turns.running.lock().expect("turns lock");
        // The map, this turn's `lock` and its guard hold the only references: nobody waits.
        // (A waiter clones under this same lock, so it cannot appear after the check.)
        if Arc::strong_count(&self.lock) <= 3 {
            running.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_second_delivery_of_an_id_waits_for_the_first_and_others_do_not() {
        let turns = Arc::new(Turns::default());
        let (a, b) = (Digest::of(b"a"), Digest::of(b"b"));
        let first = turns.take("t", &a).await;
        // Another id goes on at once.
        let other = tokio::time::timeout(Duration::from_millis(100), turns.take("t", &b)).await;
        assert!(other.is_ok());
        drop(other);
        // So does another tenant's delivery of the same id.
        let tenant = tokio::time::timeout(Duration::from_millis(100), turns.take("u", &a)).await;
        assert!(
            tenant.is_ok(),
            "another tenant's identical job does not wait"
        );
        drop(tenant);
        // The same tenant's id waits until the first turn ends.
        let waiter = {
            let turns = Arc::clone(&turns);
            let a = a.clone();
            tokio::spawn(async move {
                let _turn = turns.take("t", &a).await;
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished());
        drop(first);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the waiter goes on")
            .unwrap();
        assert_eq!(turns.len(), 0, "entries go with their last turn");
    }

    #[tokio::test]
    async fn a_cancelled_waiter_leaves_nothing_behind() {
        let turns = Turns::default();
        let id = Digest::of(b"x");
        let first = turns.take("t", &id).await;
        let gave_up = tokio::time::timeout(Duration::from_millis(20), turns.take("t", &id)).await;
        assert!(gave_up.is_err());
        drop(first);
        assert_eq!(turns.len(), 0);
        let again = tokio::time::timeout(Duration::from_millis(100), turns.take("t", &id)).await;
        assert!(again.is_ok());
    }
}
