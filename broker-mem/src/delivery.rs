//! A message on its way to a consumer, and the record a channel keeps of it until it is
//! settled.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use smol_str::SmolStr;

use crate::message::{Message, Properties};
use crate::queue::Queued;

/// One message handed to a consumer (AMQP `basic.deliver`).
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// Identifies this delivery on its channel for ack / nack / reject. Starts at 1 on each
    /// channel and increases by one per delivery.
    pub delivery_tag: u64,
    /// True when the message was delivered before and requeued (explicitly or by a channel
    /// close). False guarantees no consumer has seen it.
    pub redelivered: bool,
    /// The exchange it was published to (`""` for the default exchange).
    pub exchange: SmolStr,
    /// The routing key it was published with.
    pub routing_key: SmolStr,
    /// Basic properties exactly as published; shared with the broker's copy (and other
    /// deliveries of the same message), so a delivery never copies them.
    pub properties: Arc<Properties>,
    /// The body exactly as published.
    pub body: Bytes,
    /// The consumer it was delivered to.
    pub consumer_tag: SmolStr,
}

impl Delivery {
    pub(crate) fn new(
        delivery_tag: u64,
        consumer_tag: &SmolStr,
        message: &Message,
        redelivered: bool,
    ) -> Delivery {
        Delivery {
            delivery_tag,
            redelivered,
            exchange: message.exchange.clone(),
            routing_key: message.routing_key.clone(),
            properties: Arc::clone(&message.properties),
            body: message.body.clone(),
            consumer_tag: consumer_tag.clone(),
        }
    }
}

/// The answer to a `basic.get` that found a message (`basic.get-ok`).
#[derive(Debug, Clone, PartialEq)]
pub struct GetOk {
    /// The message; its `consumer_tag` is empty.
    pub delivery: Delivery,
    /// Ready messages left in the queue.
    pub message_count: u32,
}

/// A delivery the consumer has not settled yet, kept by its channel under the delivery tag.
#[derive(Debug)]
pub(crate) struct Unacked {
    /// The queue it came from, and that queue's incarnation: a queue deleted and declared again
    /// under the same name is a different queue, and a requeue must not land in it.
    pub queue: SmolStr,
    pub queue_id: u64,
    /// The consumer it went to, whose prefetch credit it uses; the serial tells that consumer
    /// from a later one that reused its tag after a cancel. Serial 0 and an empty tag: it came
    /// from `basic.get`.
    pub consumer_tag: SmolStr,
    pub consumer_serial: u64,
    /// When it was delivered, on the engine's clock (for the consumer timeout).
    pub delivered_at_ms: u64,
    /// The message, with its original enqueue position.
    pub entry: Queued,
}

/// A channel's unsettled deliveries, by delivery tag.
///
/// Tags only grow and consumers mostly settle in order, so this is a deque in tag order with
/// holes: a settle finds its tag by binary search and leaves a hole, and holes at the front
/// are dropped at once. Settling in order is O(1) and moves nothing (a `BTreeMap` shifted its
/// node's entries on every removal from the front); out of order it is O(log n). Holes behind
/// an old unsettled delivery are squeezed out once they outnumber the deliveries, so the
/// deque is never more than about twice the unsettled count.
/// Generic over what it holds only so the tests can fill it with plain numbers.
#[derive(Debug)]
pub(crate) struct UnackedDeliveries<T = Unacked> {
    entries: VecDeque<(u64, Option<T>)>,
    live: usize,
}

impl<T> Default for UnackedDeliveries<T> {
    fn default() -> Self {
        UnackedDeliveries {
            entries: VecDeque::new(),
            live: 0,
        }
    }
}

/// Holes tolerated before a compaction is considered at all (small deques are cheap to scan).
const HOLES_TOLERATED: usize = 64;

impl<T> UnackedDeliveries<T> {
    /// Records a delivery; its tag is greater than every tag recorded before.
    pub(crate) fn insert(&mut self, delivery_tag: u64, unacked: T) {
        debug_assert!(
            self.entries
                .back()
                .is_none_or(|(last, _)| *last < delivery_tag)
        );
        self.entries.push_back((delivery_tag, Some(unacked)));
        self.live += 1;
    }

    /// Puts back a delivery taken out earlier (a rolled-back transaction's settle), at its
    /// tag's place.
    pub(crate) fn restore(&mut self, delivery_tag: u64, unacked: T) {
        match self
            .entries
            .binary_search_by_key(&delivery_tag, |(tag, _)| *tag)
        {
            Ok(at) => {
                debug_assert!(self.entries[at].1.is_none(), "tag {delivery_tag} is held");
                self.entries[at].1 = Some(unacked);
            }
            Err(at) => self.entries.insert(at, (delivery_tag, Some(unacked))),
        }
        self.live += 1;
    }

    /// The delivery under a tag, if it is unsettled.
    pub(crate) fn get(&self, delivery_tag: u64) -> Option<&T> {
        self.entries.get(self.position(delivery_tag)?)?.1.as_ref()
    }

    pub(crate) fn contains_key(&self, delivery_tag: &u64) -> bool {
        self.get(*delivery_tag).is_some()
    }

    /// Takes one delivery out.
    pub(crate) fn remove(&mut self, delivery_tag: &u64) -> Option<T> {
        let at = self.position(*delivery_tag)?;
        let unacked = self.entries[at].1.take()?;
        self.live -= 1;
        self.tidy();
        Some(unacked)
    }

    /// What a settle of `delivery_tag` covers, taken out with the tags, in tag order: the
    /// one delivery, or with `multiple` every one up to it (all of them for tag 0). None when
    /// the tag is unknown (406).
    pub(crate) fn take_tagged(
        &mut self,
        delivery_tag: u64,
        multiple: bool,
    ) -> Option<Vec<(u64, T)>> {
        if !multiple {
            let unacked = self.remove(&delivery_tag)?;
            return Some(vec![(delivery_tag, unacked)]);
        }
        if delivery_tag != 0 && !self.contains_key(&delivery_tag) {
            return None;
        }
        let mut taken = Vec::new();
        while let Some((tag, _)) = self.entries.front()
            && (delivery_tag == 0 || *tag <= delivery_tag)
        {
            if let Some((tag, Some(unacked))) = self.entries.pop_front() {
                taken.push((tag, unacked));
            }
        }
        self.live -= taken.len();
        Some(taken)
    }

    /// Takes out every delivery, in tag order.
    pub(crate) fn take_all(&mut self) -> impl Iterator<Item = T> + use<T> {
        self.live = 0;
        std::mem::take(&mut self.entries)
            .into_iter()
            .filter_map(|(_, unacked)| unacked)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// How many deliveries are unsettled.
    pub(crate) fn len(&self) -> usize {
        self.live
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&u64, &T)> {
        self.entries
            .iter()
            .filter_map(|(tag, unacked)| Some((tag, unacked.as_ref()?)))
    }

    fn position(&self, delivery_tag: u64) -> Option<usize> {
        // Tags are usually dense (one per delivery, holes tidied away), so the tag's offset from
        // the first one is the first guess; a gap (no-ack deliveries take tags too) falls back
        // to the binary search.
        let first = self.entries.front()?.0;
        let guess = usize::try_from(delivery_tag.checked_sub(first)?).ok()?;
        if self
            .entries
            .get(guess)
            .is_some_and(|(tag, _)| *tag == delivery_tag)
        {
            return Some(guess);
        }
        self.entries
            .binary_search_by_key(&delivery_tag, |(tag, _)| *tag)
            .ok()
    }

    /// Drops holes at the front; squeezes out the rest when they outnumber the deliveries.
    fn tidy(&mut self) {
        while let Some((_, None)) = self.entries.front() {
            self.entries.pop_front();
        }
        let holes = self.entries.len() - self.live;
        if holes > HOLES_TOLERATED && holes > self.live {
            self.entries.retain(|(_, unacked)| unacked.is_some());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::UnackedDeliveries;

    #[derive(Debug, Clone)]
    enum Op {
        Deliver,
        Settle(usize),
        SettleThrough(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => Just(Op::Deliver),
            3 => any::<usize>().prop_map(Op::Settle),
            1 => any::<usize>().prop_map(Op::SettleThrough),
        ]
    }

    proptest! {
        /// Against a `BTreeMap`, with delivery 1 never settled (one old delivery holding up
        /// the front) in half the cases, so holes pile up and compaction runs.
        #[test]
        fn behaves_like_an_ordered_map(ops in proptest::collection::vec(op(), 0..600), pin_first: bool) {
            let mut deque = UnackedDeliveries::default();
            let mut model = BTreeMap::new();
            let mut last_tag = 0_u64;
            for op in ops {
                match op {
                    Op::Deliver => {
                        last_tag += 1;
                        deque.insert(last_tag, last_tag * 10);
                        model.insert(last_tag, last_tag * 10);
                    }
                    Op::Settle(pick) | Op::SettleThrough(pick) if !model.is_empty() => {
                        let tags: Vec<u64> = model.keys().copied().filter(|t| !pin_first || *t != 1).collect();
                        if tags.is_empty() {
                            continue;
                        }
                        let tag = tags[pick % tags.len()];
                        if matches!(op, Op::Settle(_)) {
                            prop_assert_eq!(deque.remove(&tag), model.remove(&tag));
                        } else if !pin_first {
                            let rest = model.split_off(&(tag + 1));
                            let settled: Vec<u64> = std::mem::replace(&mut model, rest).into_values().collect();
                            let taken: Vec<u64> = deque.take_tagged(tag, true).unwrap().into_iter().map(|(_, v)| v).collect();
                            prop_assert_eq!(taken, settled);
                        }
                    }
                    _ => {}
                }
                prop_assert_eq!(deque.is_empty(), model.is_empty());
                let held: Vec<(u64, u64)> = deque.iter().map(|(t, v)| (*t, *v)).collect();
                let expected: Vec<(u64, u64)> = model.iter().map(|(t, v)| (*t, *v)).collect();
                prop_assert_eq!(held, expected);
                prop_assert!(deque.entries.len() <= 2 * model.len() + super::HOLES_TOLERATED + 1);
                for tag in 1..=last_tag + 1 {
                    prop_assert_eq!(deque.contains_key(&tag), model.contains_key(&tag));
                }
            }
            let all: Vec<u64> = deque.take_all().collect();
            prop_assert_eq!(all, model.into_values().collect::<Vec<_>>());
            prop_assert!(deque.is_empty());
        }
    }
}
