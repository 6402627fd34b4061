//! Acknowledgements of the consumer channel, batched with `multiple` where that is safe.
//!
//! Every job task answers its delivery (result cached and published with a confirm) and then
//! hands the delivery's acknowledgement here, instead of sending a `basic.ack` of its own. One
//! task per session takes what has been handed over so far and sends, for the deliveries below
//! every delivery still being worked on, one `basic.ack` with `multiple` (RabbitMQ settles them
//! in one quorum-queue command). An answered delivery above one still being worked on waits at
//! most [`LINGER`] for it, and is then acknowledged alone: a slow job holds back others' acks
//! (and the prefetch they take up) for no longer than that.
//!
//! `multiple` acknowledges every unacknowledged delivery of the channel up to its tag, so it
//! must never reach a delivery that is still being worked on, or one that the consumer loop has
//! not seen yet (a crash would then lose it). Delivery tags of a channel are consecutive from 1,
//! so the ledger knows which tags it has seen: the consumer loop registers each delivery
//! ([`Acks::received`]) before its task starts, and a `multiple` ack goes no higher than the
//! last tag before the first one not seen or not settled.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use lapin::options::BasicAckOptions;
use lapin::Acker;
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

/// What the ledger hears about a delivery of the channel.
enum Event {
    /// The consumer loop took delivery `tag`: a job task now works on it.
    Received(u64),
    /// Delivery `tag` was answered: acknowledge it.
    Answered(u64, Acker),
    /// Delivery `tag` was settled otherwise (returned to its queue).
    Settled(u64),
    /// Everything handed over before this has been sent.
    Flush(oneshot::Sender<()>),
    /// The oldest waiting ack has waited [`LINGER`] (made by the task itself).
    Lingered,
}

/// The acknowledgements of one consumer channel. Cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct Acks {
    events: mpsc::UnboundedSender<Event>,
}

impl Acks {
    /// Starts the task that acknowledges deliveries of one channel.
    pub(crate) fn start() -> Acks {
        let (events, receiver) = mpsc::unbounded_channel();
        tokio::spawn(run(receiver));
        Acks { events }
    }

    /// The consumer loop took delivery `tag`; call before the job's task starts.
    pub(crate) fn received(&self, tag: u64) {
        let _ = self.events.send(Event::Received(tag));
    }

    /// Delivery `tag` is answered: acknowledge it (soon, maybe with others).
    pub(crate) fn answered(&self, tag: u64, acker: Acker) {
        let _ = self.events.send(Event::Answered(tag, acker));
    }

    /// Delivery `tag` was settled without an ack (a `nack` that requeued it).
    pub(crate) fn settled(&self, tag: u64) {
        let _ = self.events.send(Event::Settled(tag));
    }

    /// Returns once every acknowledgement handed over before the call has been sent.
    pub(crate) async fn flush(&self) {
        let (done, sent) = oneshot::channel();
        if self.events.send(Event::Flush(done)).is_ok() {
            let _ = sent.await;
        }
    }
}

/// How long an answered delivery above a delivery still being worked on may wait for that one,
/// so that both go in one `multiple` ack, before it is acknowledged alone.
const LINGER: Duration = Duration::from_millis(2);

/// Takes whatever events are waiting, then acknowledges what can be, until every handle is gone.
async fn run(mut events: mpsc::UnboundedReceiver<Event>) {
    let mut ledger = Ledger::default();
    // Answered deliveries above one still being worked on, since when.
    let mut waiting: Vec<(u64, Acker, Instant)> = Vec::new();
    loop {
        let next = match waiting.iter().map(|(_, _, since)| *since).min() {
            None => events.recv().await,
            Some(oldest) => {
                match tokio::time::timeout_at((oldest + LINGER).into(), events.recv()).await {
                    Ok(next) => next,
                    Err(_) => Some(Event::Lingered),
                }
            }
        };
        let Some(first) = next else {
            break;
        };
        let now = Instant::now();
        let mut flushed = Vec::new();
        let mut take = |event| match event {
            Event::Received(tag) => ledger.received(tag),
            Event::Settled(tag) => ledger.settled(tag),
            Event::Answered(tag, acker) => {
                ledger.settled(tag);
                waiting.push((tag, acker, now));
            }
            Event::Flush(done) => flushed.push(done),
            Event::Lingered => {}
        };
        take(first);
        while let Ok(event) = events.try_recv() {
            take(event);
        }
        // A flush (or a linger that ran out) sends everything; otherwise what waited long enough.
        let cutoff = if flushed.is_empty() {
            now.checked_sub(LINGER).unwrap_or(now)
        } else {
            now
        };
        let (multiple, alone, still) = ledger.plan(std::mem::take(&mut waiting), cutoff);
        waiting = still;
        for (acker, multiple) in multiple
            .map(|acker| (acker, true))
            .into_iter()
            .chain(alone.into_iter().map(|acker| (acker, false)))
        {
            if let Err(error) = acker.ack(BasicAckOptions { multiple }).await {
                warn!(%error, multiple, "ack failed; the job will be redelivered and answered from the cache");
            }
        }
        for done in flushed {
            let _ = done.send(());
        }
    }
    // Every handle is gone: nothing else will be answered.
    for (_, acker, _) in waiting {
        let _ = acker.ack(BasicAckOptions::default()).await;
    }
}

/// Tags kept above a gap in the tags seen, at most.
const MAX_AHEAD: usize = 1 << 16;

/// Which delivery tags of the channel have been seen, and which are still being worked on.
#[derive(Debug, Default)]
struct Ledger {
    /// Every tag from 1 to this one has been received.
    seen_upto: u64,
    /// Tags received above `seen_upto + 1` (a gap below them).
    seen_ahead: BTreeSet<u64>,
    /// A gap outlived [`MAX_AHEAD`] later tags (a delivery the consumer loop will never see,
    /// one of a cancelled consumer, say): `seen_ahead` is no longer kept, so `multiple` acks
    /// stay below the gap for the rest of the session and every later ack goes alone.
    stuck: bool,
    /// Tags received and not yet settled.
    working: BTreeSet<u64>,
}

impl Ledger {
    fn received(&mut self, tag: u64) {
        self.working.insert(tag);
        if tag == self.seen_upto + 1 {
            self.seen_upto = tag;
            while self.seen_ahead.remove(&(self.seen_upto + 1)) {
                self.seen_upto += 1;
            }
        } else if tag > self.seen_upto && !self.stuck {
            self.seen_ahead.insert(tag);
            if self.seen_ahead.len() > MAX_AHEAD {
                self.stuck = true;
                self.seen_ahead = BTreeSet::new();
            }
        }
    }

    fn settled(&mut self, tag: u64) {
        self.working.remove(&tag);
    }

    /// The highest tag a `multiple` ack may cover: every tag up to it seen and settled.
    fn safe_upto(&self) -> u64 {
        let first_working = self.working.first().map_or(u64::MAX, |tag| tag - 1);
        self.seen_upto.min(first_working)
    }

    /// The acks to send for `answered` (already settled in the ledger), each with the time it
    /// was answered: one `multiple` ack for those at or below [`Ledger::safe_upto`], one each
    /// for the others answered at or before `cutoff`; the rest wait.
    #[allow(clippy::type_complexity)]
    fn plan<A>(
        &self,
        mut answered: Vec<(u64, A, Instant)>,
        cutoff: Instant,
    ) -> (Option<A>, Vec<A>, Vec<(u64, A, Instant)>) {
        let safe = self.safe_upto();
        answered.sort_by_key(|(tag, _, _)| *tag);
        let above = answered.partition_point(|(tag, _, _)| *tag <= safe);
        let rest = answered.split_off(above);
        let multiple = answered.pop().map(|(_, acker, _)| acker);
        let (alone, waiting): (Vec<_>, Vec<_>) =
            rest.into_iter().partition(|(_, _, since)| *since <= cutoff);
        (
            multiple,
            alone.into_iter().map(|(_, acker, _)| acker).collect(),
            waiting,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ledger(received: &[u64], settled: &[u64]) -> Ledger {
        let mut ledger = Ledger::default();
        for tag in received {
            ledger.received(*tag);
        }
        for tag in settled {
            ledger.settled(*tag);
        }
        ledger
    }

    #[test]
    fn a_multiple_ack_stops_below_the_first_delivery_still_worked_on() {
        // 1..=6 received; 3 still running.
        let ledger = ledger(&[1, 2, 3, 4, 5, 6], &[1, 2, 4, 5, 6]);
        assert_eq!(ledger.safe_upto(), 2);
    }

    #[test]
    fn a_multiple_ack_stops_below_a_tag_the_consumer_loop_has_not_seen() {
        // 4 was delivered to the channel but is still in another consumer's buffer.
        let ledger = ledger(&[1, 2, 3, 5, 6], &[1, 2, 3, 5, 6]);
        assert_eq!(ledger.safe_upto(), 3);
        let mut ledger = ledger;
        ledger.received(4);
        assert_eq!(ledger.safe_upto(), 3, "4 is being worked on");
        ledger.settled(4);
        assert_eq!(ledger.safe_upto(), 6);
    }

    #[test]
    fn answered_deliveries_below_the_safe_tag_share_one_multiple_ack_and_the_rest_go_alone() {
        // 1..=8 received; 4 still running; 1, 2, 3, 6 and 8 answered now (5 and 7 earlier).
        // 6 was answered long enough ago to go alone; 8 just now, so it waits.
        let ledger = ledger(&[1, 2, 3, 4, 5, 6, 7, 8], &[1, 2, 3, 5, 6, 7, 8]);
        let now = Instant::now();
        let (old, new) = (now - LINGER * 2, now);
        let cutoff = now - LINGER;
        let answered = vec![
            (6, 6, old),
            (2, 2, new),
            (8, 8, new),
            (1, 1, new),
            (3, 3, new),
        ];
        let (multiple, alone, waiting) = ledger.plan(answered, cutoff);
        assert_eq!(multiple, Some(3));
        assert_eq!(alone, vec![6]);
        assert_eq!(waiting, vec![(8, 8, new)]);
        // A flush (cutoff now) sends everything.
        let (multiple, alone, waiting) = ledger.plan(waiting, now);
        assert_eq!((multiple, alone, waiting), (None, vec![8], vec![]));
        assert_eq!(ledger.plan::<u64>(vec![], now), (None, vec![], vec![]));
    }

    #[test]
    fn a_gap_that_never_fills_keeps_multiple_acks_below_it_with_bounded_memory() {
        let mut ledger = ledger(&[1, 2], &[1, 2]);
        let last = 3 + MAX_AHEAD as u64 + 10;
        for tag in 4..=last {
            ledger.received(tag);
            ledger.settled(tag);
        }
        assert!(ledger.seen_ahead.is_empty());
        assert_eq!(ledger.safe_upto(), 2);
        ledger.received(3);
        ledger.settled(3);
        assert_eq!(ledger.safe_upto(), 3);
    }

    #[test]
    fn with_nothing_in_flight_everything_seen_is_safe() {
        assert_eq!(ledger(&[], &[]).safe_upto(), 0);
        assert_eq!(ledger(&[1, 2], &[1, 2]).safe_upto(), 2);
    }
}
