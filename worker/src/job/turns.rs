//! One delivery of a job id at a time per worker. A worker with several kernel slots can take a
//! second delivery of an id (the same job submitted twice, or by two tenants) while the first
//! runs; without a turn it would find nothing cached and run the job again. With one, the second
//! waits until the first is delivered (its result cached), and then the result cache or the
//! applied record answers it (`prior`). A failure that is not final is not cached, so after one
//! the next delivery runs the job, as it would anywhere.
//!
//! A waiting delivery holds no kernel or compile slot, only its place in the prefetch window.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use dtee_schemas::Digest;
use tokio::sync::OwnedMutexGuard;

/// The job ids being evaluated or delivered on this worker.
#[derive(Debug, Default)]
pub(crate) struct Turns {
    running: Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>,
}

/// This delivery's turn for its job id; the next delivery of the id goes on when it is dropped.
#[derive(Debug)]
pub(crate) struct Turn<'a> {
    turns: &'a Turns,
    id: Digest,
    lock: Arc<tokio::sync::Mutex<()>>,
    _guard: OwnedMutexGuard<()>,
}

impl Turns {
    /// Waits until no other delivery of `id` is evaluated or delivered on this worker.
    pub(crate) async fn take(&self, id: &Digest) -> Turn<'_> {
        let lock = {
            let mut running = self.running.lock().expect("turns lock");
            Arc::clone(running.entry(id.clone()).or_default())
        };
        let guard = Arc::clone(&lock).lock_owned().await;
        Turn {
            turns: self,
            id: id.clone(),
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
            running.remove(&self.id);
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
        let first = turns.take(&a).await;
        // Another id goes on at once.
        let other = tokio::time::timeout(Duration::from_millis(100), turns.take(&b)).await;
        assert!(other.is_ok());
        drop(other);
        // The same id waits until the first turn ends.
        let waiter = {
            let turns = Arc::clone(&turns);
            let a = a.clone();
            tokio::spawn(async move {
                let _turn = turns.take(&a).await;
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
        let first = turns.take(&id).await;
        let gave_up = tokio::time::timeout(Duration::from_millis(20), turns.take(&id)).await;
        assert!(gave_up.is_err());
        drop(first);
        assert_eq!(turns.len(), 0);
        let again = tokio::time::timeout(Duration::from_millis(100), turns.take(&id)).await;
        assert!(again.is_ok());
    }
}
