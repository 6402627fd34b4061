//! Slots shared fairly between tenants: a counting semaphore whose waiters are served by tenant,
//! not by arrival. When a slot frees, it goes to the waiting tenant that holds the fewest slots
//! (ties: the tenant whose turn came least recently), so a tenant with a thousand queued jobs
//! and a tenant with one take turns, and the one with one waits for at most one slot to free.
//!
//! Used for kernel slots and compile slots (issue 11, finding 7). A permit is a value: dropping
//! it (also when a waiting task is cancelled after the slot was handed to it) returns the slot.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// A fixed number of slots, handed out fairly between tenants.
#[derive(Debug)]
pub(crate) struct FairSlots {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Slots nobody holds.
    free: usize,
    /// Slots held, per tenant (tenants holding none are absent).
    held: HashMap<Arc<str>, usize>,
    /// Waiters, per tenant, in arrival order (tenants without waiters are absent).
    waiting: HashMap<Arc<str>, VecDeque<oneshot::Sender<SlotPermit>>>,
    /// Tenants with waiters, in the order their turn comes when they hold equally many slots.
    turns: VecDeque<Arc<str>>,
    /// Slots retired while held: the next ones returned are kept instead of handed on.
    owed: usize,
}

/// One slot, held by one tenant until dropped.
#[derive(Debug)]
pub(crate) struct SlotPermit {
    slots: Arc<FairSlots>,
    tenant: Arc<str>,
    /// False once the permit was never received (its waiter had gone): dropping it then
    /// returns nothing, since the slot was handed on instead.
    live: bool,
}

impl Drop for SlotPermit {
    fn drop(&mut self) {
        if self.live {
            self.slots.release(&self.tenant);
        }
    }
}

impl FairSlots {
    /// `count` slots, all free.
    pub(crate) fn new(count: usize) -> Arc<FairSlots> {
        Arc::new(FairSlots {
            state: Mutex::new(State {
                free: count,
                ..State::default()
            }),
        })
    }

    /// Waits for a slot for `tenant`. Cancel-safe: a cancelled wait takes nothing.
    pub(crate) async fn acquire(self: &Arc<Self>, tenant: &str) -> SlotPermit {
        let receiver = {
            let mut guard = self.state.lock().expect("fair slots lock");
            let state = &mut *guard;
            if state.free > 0 && state.turns.is_empty() {
                state.free -= 1;
                let tenant: Arc<str> = Arc::from(tenant);
                *state.held.entry(Arc::clone(&tenant)).or_default() += 1;
                return SlotPermit {
                    slots: Arc::clone(self),
                    tenant,
                    live: true,
                };
            }
            let (sender, receiver) = oneshot::channel();
            let tenant: Arc<str> = Arc::from(tenant);
            let queue = state.waiting.entry(Arc::clone(&tenant)).or_default();
            let first = queue.is_empty();
            queue.push_back(sender);
            if first {
                state.turns.push_back(tenant);
            }
            receiver
        };
        // The sender is only dropped unsent when the semaphore is dropped, which cannot happen
        // while `self` is alive.
        receiver.await.expect("fair slots outlive their waiters")
    }

    /// Takes one slot away for good (a GPU device given up): a free one now, or else the next
    /// one returned.
    pub(crate) fn retire(&self) {
        let mut state = self.state.lock().expect("fair slots lock");
        if state.free > 0 {
            state.free -= 1;
        } else {
            state.owed += 1;
        }
    }

    /// Slots held by `tenant` now (for tests and metrics).
    #[cfg(test)]
    pub(crate) fn held_by(&self, tenant: &str) -> usize {
        let state = self.state.lock().expect("fair slots lock");
        state.held.get(tenant).copied().unwrap_or(0)
    }

    /// Returns `tenant`'s slot and hands it to the next waiter, if any.
    fn release(self: &Arc<Self>, tenant: &str) {
        let mut guard = self.state.lock().expect("fair slots lock");
        let state = &mut *guard;
        if let Some(held) = state.held.get_mut(tenant) {
            *held -= 1;
            if *held == 0 {
                state.held.remove(tenant);
            }
        }
        // The releasing tenant just had a turn: among tenants holding as many slots, it goes
        // last.
        if let Some(position) = state.turns.iter().position(|t| &**t == tenant) {
            if let Some(turned) = state.turns.remove(position) {
                state.turns.push_back(turned);
            }
        }
        if state.owed > 0 {
            state.owed -= 1;
            return;
        }
        loop {
            let Some((next, sender)) = state.next_waiter() else {
                state.free += 1;
                return;
            };
            *state.held.entry(Arc::clone(&next)).or_default() += 1;
            let permit = SlotPermit {
                slots: Arc::clone(self),
                tenant: Arc::clone(&next),
                live: true,
            };
            match sender.send(permit) {
                Ok(()) => return,
                // The waiter was cancelled: undo and try the next one.
                Err(mut unsent) => {
                    unsent.live = false;
                    if let Some(held) = state.held.get_mut(&next) {
                        *held -= 1;
                        if *held == 0 {
                            state.held.remove(&next);
                        }
                    }
                }
            }
        }
    }
}

impl State {
    /// Removes and returns the next waiter: the first in turn order among the waiting tenants
    /// that hold the fewest slots. That tenant goes to the back of the turns if it still waits.
    fn next_waiter(&mut self) -> Option<(Arc<str>, oneshot::Sender<SlotPermit>)> {
        let position = self
            .turns
            .iter()
            .enumerate()
            .min_by_key(|(index, tenant)| (self.held.get(*tenant).copied().unwrap_or(0), *index))
            .map(|(index, _)| index)?;
        let tenant = self.turns.remove(position)?;
        let queue = self.waiting.get_mut(&tenant)?;
        let sender = queue.pop_front()?;
        if queue.is_empty() {
            self.waiting.remove(&tenant);
        } else {
            self.turns.push_back(Arc::clone(&tenant));
        }
        Some((tenant, sender))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Lets spawned tasks run up to their next wait.
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn free_slots_are_taken_at_once_and_returned_on_drop() {
        let slots = FairSlots::new(2);
        let a = slots.acquire("a").await;
        let b = slots.acquire("b").await;
        assert_eq!(slots.held_by("a"), 1);
        drop(a);
        assert_eq!(slots.held_by("a"), 0);
        let again = tokio::time::timeout(Duration::from_secs(1), slots.acquire("a")).await;
        assert!(again.is_ok(), "a returned slot can be taken again");
        drop(b);
    }

    #[tokio::test]
    async fn a_retired_slot_is_never_handed_out_again() {
        let slots = FairSlots::new(2);
        slots.retire();
        let held = slots.acquire("a").await;
        let waiter = {
            let slots = Arc::clone(&slots);
            tokio::spawn(async move { slots.acquire("b").await })
        };
        settle().await;
        assert!(!waiter.is_finished(), "one slot is left, and it is held");
        // Retired while every slot is held: the next one returned is kept.
        slots.retire();
        drop(held);
        settle().await;
        assert!(!waiter.is_finished(), "no slot is left at all");
        waiter.abort();
    }

    #[tokio::test]
    async fn a_tenant_with_one_waiter_goes_before_a_tenant_with_a_backlog() {
        let slots = FairSlots::new(1);
        let first = slots.acquire("flood").await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        // The flooding tenant queues ten waiters, then the other tenant queues one.
        for i in 0..10 {
            let (slots, order) = (Arc::clone(&slots), Arc::clone(&order));
            tasks.push(tokio::spawn(async move {
                let _permit = slots.acquire("flood").await;
                order.lock().unwrap().push(format!("flood{i}"));
            }));
            settle().await;
        }
        let (s, o) = (Arc::clone(&slots), Arc::clone(&order));
        tasks.push(tokio::spawn(async move {
            let _permit = s.acquire("small").await;
            o.lock().unwrap().push("small".to_owned());
        }));
        settle().await;
        drop(first);
        for task in tasks {
            task.await.unwrap();
        }
        let order = order.lock().unwrap().clone();
        assert_eq!(
            order[0], "small",
            "the tenant holding no slot goes first: {order:?}"
        );
        assert_eq!(
            order[1..],
            (0..10).map(|i| format!("flood{i}")).collect::<Vec<_>>()[..]
        );
    }

    #[tokio::test]
    async fn tenants_that_hold_equally_many_slots_take_turns() {
        let slots = FairSlots::new(1);
        let first = slots.acquire("x").await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (tenant, i) in [("a", 0), ("a", 1), ("a", 2), ("b", 0), ("b", 1), ("c", 0)] {
            let (slots, order) = (Arc::clone(&slots), Arc::clone(&order));
            tasks.push(tokio::spawn(async move {
                let _permit = slots.acquire(tenant).await;
                order.lock().unwrap().push(format!("{tenant}{i}"));
            }));
            settle().await;
        }
        drop(first);
        for task in tasks {
            task.await.unwrap();
        }
        let order = order.lock().unwrap().clone();
        assert_eq!(order, ["a0", "b0", "c0", "a1", "b1", "a2"]);
    }

    #[tokio::test]
    async fn a_cancelled_waiter_loses_nothing() {
        let slots = FairSlots::new(1);
        let held = slots.acquire("a").await;
        let cancelled = {
            let slots = Arc::clone(&slots);
            tokio::spawn(async move {
                let _permit = slots.acquire("b").await;
            })
        };
        settle().await;
        let waiting = {
            let slots = Arc::clone(&slots);
            tokio::spawn(async move { slots.acquire("c").await })
        };
        settle().await;
        cancelled.abort();
        let _ = cancelled.await;
        drop(held);
        let permit = tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("the slot passed over the cancelled waiter")
            .unwrap();
        assert_eq!(slots.held_by("c"), 1);
        assert_eq!(slots.held_by("b"), 0);
        drop(permit);
        assert_eq!(slots.held_by("c"), 0);
        let free = tokio::time::timeout(Duration::from_secs(1), slots.acquire("d")).await;
        assert!(free.is_ok(), "no slot was lost");
    }
}
