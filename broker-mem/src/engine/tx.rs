//! Transactions (`tx.select`, `tx.commit`, `tx.rollback`), as RabbitMQ runs them: on a
//! transactional channel a publish is checked and routed at once but enqueued only at the
//! commit, which looks its queues up then (through the default exchange, whose route is the
//! queue's name, a queue declared in between counts); an ack, nack or reject is checked at
//! once (an unknown tag is still 406) but applied only at the commit, so the consumer's
//! prefetch credit comes back then. A rollback
//! drops the publishes and puts the settled deliveries back among the channel's unacked ones;
//! a close rolls back, then requeues as any close does. Commit applies the publishes first,
//! then the settles, each in the order they came. A classic queue that refuses one of the
//! publishes (`reject-publish`) does not stop the rest; the commit then fails with RabbitMQ's
//! 406 `partial tx completion`, which closes the channel. A quorum queue over its limit drops
//! its copy and the commit is ok (RabbitMQ 3.10.8, probed: its refusal reaches only a
//! confirming channel).

use smol_str::SmolStr;

use super::{Engine, Outcome};
use crate::channel::ChannelId;
use crate::delivery::Unacked;
use crate::error::{Error, Fault, ReplyCode};
use crate::limits::TX_PENDING_MAX;
use crate::message::{Confirm, Message, PublishOptions, Returned};

/// What a transaction holds until its commit.
#[derive(Debug, Default)]
pub(crate) struct Transaction {
    /// Publishes, routed when they came: the queues, the message, its flags.
    publishes: Vec<(Vec<SmolStr>, Message, PublishOptions)>,
    /// The copies those publishes make once enqueued, and their body bytes: held to the
    /// broker's ceilings while they wait.
    copies: usize,
    bytes: usize,
    /// Settled deliveries with their tags and what settles them.
    settles: Vec<(u64, Unacked, Outcome)>,
    /// The settles as RabbitMQ's channel keeps them for the commit (rabbit_channel's
    /// `ack_cons`): consecutive settles of one kind joined, each with how many consumer
    /// deliveries (not `basic.get`s) it took. The commit tells the channel's limiter once per
    /// entry, as RabbitMQ's does. A settle that took nothing still starts an entry.
    settle_runs: Vec<(Outcome, usize)>,
}

impl Transaction {
    /// What counts against [`TX_PENDING_MAX`]: publishes, and settled deliveries or settle
    /// runs, whichever are more (a settle of nothing takes no delivery but may start a run).
    fn len(&self) -> usize {
        self.publishes.len() + self.settles.len().max(self.settle_runs.len())
    }

    /// The deliveries settled in the transaction and not yet applied: still unacked for the
    /// broker's books.
    pub(crate) fn settled(&self) -> impl Iterator<Item = (&u64, &Unacked)> {
        self.settles.iter().map(|(tag, unacked, _)| (tag, unacked))
    }
}

fn not_transactional() -> Fault {
    Fault::channel(
        ReplyCode::PreconditionFailed,
        "channel is not transactional".to_owned(),
    )
}

fn too_large() -> Fault {
    Fault::channel(
        ReplyCode::PreconditionFailed,
        format!("the transaction holds {TX_PENDING_MAX} publishes and settles, broker-mem's limit"),
    )
}

impl Engine {
    /// `tx.select`: the channel becomes transactional (for good; selecting again is Ok).
    /// The wire server refuses it on a channel in confirm mode, as RabbitMQ does.
    pub fn tx_select(&mut self, channel: ChannelId) -> Result<(), Error> {
        self.run(channel, |engine| {
            if let Some(state) = engine.channels.get_mut(&channel) {
                state.tx.get_or_insert_with(Transaction::default);
            }
            Ok(())
        })
    }

    /// Whether the channel is transactional.
    pub fn in_transaction(&self, channel: ChannelId) -> bool {
        self.channels
            .get(&channel)
            .is_some_and(|state| state.tx.is_some())
    }

    /// `tx.commit`: enqueues the transaction's publishes, then applies its acks, nacks and
    /// rejects, in order; the channel stays transactional. Returns the mandatory messages no
    /// queue took, which RabbitMQ sends back (`basic.return`) before `tx.commit-ok`. 406 on a
    /// channel that is not transactional. If the broker cannot hold the publishes, the commit
    /// is refused with 406 and nothing is enqueued. If a classic queue refuses one of them
    /// (`reject-publish`, `reject-publish-dlx`), everything else is done and the commit is a
    /// 406 `partial tx completion` that closes the channel (RabbitMQ 3.10, probed); that
    /// commit's returns are then only in [`Engine::returned`]. A quorum queue over its limit
    /// drops its copy silently (probed too).
    pub fn tx_commit(&mut self, channel: ChannelId) -> Result<Vec<Returned>, Error> {
        let mut returned = Vec::new();
        self.tx_commit_returning(channel, &mut returned)
            .map(|()| returned)
    }

    /// [`Engine::tx_commit`], handing the returns over even when the commit fails part way:
    /// the wire server sends them before the `channel.close`, as RabbitMQ does.
    pub(crate) fn tx_commit_returning(
        &mut self,
        channel: ChannelId,
        returned: &mut Vec<Returned>,
    ) -> Result<(), Error> {
        self.run(channel, |engine| {
            let Some(state) = engine.channels.get_mut(&channel) else {
                return Err(Fault::Invalid(format!("{channel} is not open")));
            };
            let Some(tx) = state.tx.as_mut() else {
                return Err(not_transactional());
            };
            let tx = std::mem::take(tx);
            if let Some(reason) = engine.over_ceiling_total(tx.copies, tx.bytes) {
                // Put it back: the close that follows the error rolls it back properly.
                if let Some(state) = engine.channels.get_mut(&channel) {
                    state.tx = Some(tx);
                }
                return Err(Fault::channel(
                    ReplyCode::PreconditionFailed,
                    format!("cannot commit: {reason}"),
                ));
            }
            let mut refused = false;
            for (mut targets, message, options) in tx.publishes {
                // Queues deleted since the publish, or not there yet (a default-exchange route
                // names them unchecked), take nothing; a mandatory message that reaches none
                // comes back, as when RabbitMQ delivers at the commit.
                targets.retain(|queue| engine.queues.contains_key(queue));
                // Admitted as a whole above: no copy is refused one by one.
                let published =
                    engine.enqueue_routed(channel, &targets, &[], message, options, None, true);
                returned.extend(published.returned.map(|back| *back));
                // Admitted, without a fault hook: only a classic queue's limit nacks here.
                refused |= matches!(published.confirm, Confirm::Nack { .. });
                // Each queue takes the commit's publishes one by one, delivering and dropping
                // expired heads after each, as for any publish: a message that expires at once
                // is gone before the next one asks for room.
                engine.run_until_idle();
            }
            for (_, unacked, outcome) in tx.settles {
                engine.finish(channel, usize::MAX, unacked, outcome);
            }
            if let Some(index) = engine.channels.get_index_of(&channel) {
                for (_, count) in tx.settle_runs {
                    engine.limiter_settled(index, count);
                }
            }
            if refused {
                return Err(Fault::channel(
                    ReplyCode::PreconditionFailed,
                    "partial tx completion".to_owned(),
                ));
            }
            Ok(())
        })
    }

    /// `tx.rollback`: drops the transaction's publishes; its settled deliveries are unacked
    /// again (RabbitMQ does not redeliver them: they wait for an ack or a close). 406 on a
    /// channel that is not transactional.
    pub fn tx_rollback(&mut self, channel: ChannelId) -> Result<(), Error> {
        self.run(channel, |engine| {
            let Some(state) = engine.channels.get_mut(&channel) else {
                return Err(Fault::Invalid(format!("{channel} is not open")));
            };
            if state.tx.is_none() {
                return Err(not_transactional());
            }
            engine.roll_back(channel);
            Ok(())
        })
    }

    /// Empties the channel's transaction, if it has one: publishes dropped, settled
    /// deliveries back among the unacked.
    pub(super) fn roll_back(&mut self, channel: ChannelId) {
        let Some(state) = self.channels.get_mut(&channel) else {
            return;
        };
        let Some(tx) = state.tx.as_mut() else {
            return;
        };
        let tx = std::mem::take(tx);
        for (tag, unacked, _) in tx.settles {
            state.unacked.restore(tag, unacked);
        }
        // The oldest delivery may be older again: its consumer timeout is a deadline again.
        if let Some(timeout_ms) = self.limits.consumer_timeout_ms
            && let Some((_, oldest)) = state.unacked.iter().next()
        {
            let at = oldest.delivered_at_ms.saturating_add(timeout_ms);
            self.alarm.note(at.saturating_add(1));
        }
    }

    /// Holds a routed publish in the channel's transaction.
    pub(super) fn hold_publish(
        &mut self,
        channel_index: usize,
        targets: Vec<SmolStr>,
        message: Message,
        options: PublishOptions,
    ) -> Result<(), Fault> {
        let Some(tx) = self
            .channels
            .get_index(channel_index)
            .and_then(|(_, state)| state.tx.as_ref())
        else {
            return Ok(());
        };
        if tx.len() >= TX_PENDING_MAX {
            return Err(too_large());
        }
        let copies = tx.copies.saturating_add(targets.len());
        let bytes = tx
            .bytes
            .saturating_add(targets.len().saturating_mul(message.body.len()));
        // What the transaction holds counts against the ceilings now, so that a commit is not
        // left with more than the broker can take.
        if let Some(reason) = self.over_ceiling_total(copies, bytes) {
            return Err(Fault::channel(
                ReplyCode::PreconditionFailed,
                format!("the transaction cannot hold more: {reason}"),
            ));
        }
        if let Some(tx) = self
            .channels
            .get_index_mut(channel_index)
            .and_then(|(_, state)| state.tx.as_mut())
        {
            tx.publishes.push((targets, message, options));
            tx.copies = copies;
            tx.bytes = bytes;
        }
        Ok(())
    }

    /// Holds settled deliveries in the channel's transaction.
    pub(super) fn hold_settles(
        &mut self,
        channel_index: usize,
        settled: Vec<(u64, Unacked)>,
        outcome: Outcome,
    ) -> Result<(), Fault> {
        let Some((_, state)) = self.channels.get_index_mut(channel_index) else {
            return Ok(());
        };
        let Some(tx) = state.tx.as_mut() else {
            return Ok(());
        };
        let outcomes_differ = tx
            .settle_runs
            .last()
            .is_none_or(|(kind, _)| *kind != outcome);
        let settles = tx.settles.len() + settled.len();
        let runs = tx.settle_runs.len() + usize::from(outcomes_differ);
        if tx.publishes.len() + settles.max(runs) > TX_PENDING_MAX {
            // Back where they were: the error's close requeues them.
            for (tag, unacked) in settled {
                state.unacked.restore(tag, unacked);
            }
            return Err(too_large());
        }
        let through_consumers = settled
            .iter()
            .filter(|(_, unacked)| unacked.consumer_serial != 0)
            .count();
        match tx.settle_runs.last_mut() {
            Some((_, count)) if !outcomes_differ => *count += through_consumers,
            _ => tx.settle_runs.push((outcome, through_consumers)),
        }
        tx.settles.extend(
            settled
                .into_iter()
                .map(|(tag, unacked)| (tag, unacked, outcome)),
        );
        Ok(())
    }
}
