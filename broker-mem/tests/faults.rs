//! broker-mem's own test hooks: the injected clock, introspection, fault hooks and the broker
//! restart. RabbitMQ has no equivalent a test could drive per vhost, so these run on broker-mem
//! only; the behaviour they fake (a lost frame, a redelivery, a nack, a forced close, a restart)
//! is what RabbitMQ's documentation describes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use broker_mem::{
    ArmedFault, Broker, Bytes, Channel, Confirm, ConsumeOptions, DeathReason, Error, ExchangeKind,
    ExchangeOptions, FieldTable, FieldValue, Limits, Properties, PublishOptions, QueueOptions,
    ReplyCode, TryRecvError,
};

fn clocked() -> (Broker, Arc<AtomicU64>) {
    let now_ms = Arc::new(AtomicU64::new(0));
    let reading = Arc::clone(&now_ms);
    let clock = Arc::new(move || reading.load(Ordering::SeqCst));
    (Broker::with_clock(Limits::default(), clock), now_ms)
}

/// Options of a durable queue.
fn durable_queue() -> QueueOptions {
    QueueOptions {
        durable: true,
        ..QueueOptions::default()
    }
}

fn publish(channel: &Channel, queue: &str, body: &str, persistent: bool) {
    let properties = Properties {
        delivery_mode: Some(if persistent { 2 } else { 1 }),
        ..Properties::default()
    };
    let confirm = channel
        .basic_publish(
            "",
            queue,
            properties,
            Bytes::copy_from_slice(body.as_bytes()),
        )
        .unwrap();
    assert_eq!(confirm, Confirm::Ack);
}

fn text(body: &Bytes) -> String {
    String::from_utf8_lossy(body).into_owned()
}

#[test]
fn ttl_runs_on_the_injected_clock_not_the_wall_clock() {
    let (broker, now_ms) = clocked();
    let connection = broker.connect();
    let channel = connection.open_channel().unwrap();
    let args: FieldTable = [("x-message-ttl".to_owned(), FieldValue::I64(1_000))].into();
    channel
        .queue_declare_with("q", QueueOptions::default(), &args)
        .unwrap();
    publish(&channel, "q", "m", false);
    now_ms.store(999, Ordering::SeqCst);
    broker.tick();
    assert_eq!(broker.queue_depth("q"), Some(1));
    now_ms.store(1_000, Ordering::SeqCst);
    broker.tick();
    assert_eq!(broker.queue_depth("q"), Some(0));
    let dead = broker.dead_lettered();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (dead[0].reason, dead[0].at_ms),
        (DeathReason::Expired, 1_000)
    );
    assert_eq!(dead[0].dead_letter_exchange, None);
}

#[test]
fn a_ttl_of_zero_reaches_a_waiting_consumer_and_expires_otherwise() {
    let (broker, _now_ms) = clocked();
    let connection = broker.connect();
    let channel = connection.open_channel().unwrap();
    let args: FieldTable = [("x-message-ttl".to_owned(), FieldValue::I64(0))].into();
    channel
        .queue_declare_with("q", QueueOptions::default(), &args)
        .unwrap();
    publish(&channel, "q", "nobody", false);
    assert_eq!(broker.queue_depth("q"), Some(0));
    let consumer = channel
        .basic_consume("q", ConsumeOptions::default())
        .unwrap();
    publish(&channel, "q", "someone", false);
    assert_eq!(text(&consumer.try_recv().unwrap().body), "someone");
}

#[test]
fn mandatory_returns_are_recorded() {
    let broker = Broker::new();
    let connection = broker.connect();
    let channel = connection.open_channel().unwrap();
    let mandatory = PublishOptions { mandatory: true };
    let published = channel
        .basic_publish_with(
            "",
            "nowhere",
            mandatory,
            Properties::default(),
            Bytes::from_static(b"m"),
        )
        .unwrap();
    let returned = published.returned.unwrap();
    assert_eq!(
        (returned.reply_code, returned.reply_text.as_str()),
        (312, "NO_ROUTE")
    );
    assert_eq!(published.confirm, Confirm::Ack);
    assert_eq!(broker.returned(), [*returned]);
}

#[test]
fn a_dropped_delivery_is_unacked_until_its_channel_closes() {
    let broker = Broker::new();
    let connection = broker.connect();
    let channel = connection.open_channel().unwrap();
    channel.queue_declare("q", QueueOptions::default()).unwrap();
    publish(&channel, "q", "lost", false);
    publish(&channel, "q", "next", false);
    broker.drop_next_delivery("q");
    let consumer = channel
        .basic_consume("q", ConsumeOptions::default())
        .unwrap();
    let next = consumer.try_recv().unwrap();
    assert_eq!(
        (text(&next.body), next.delivery_tag),
        ("next".to_owned(), 2)
    );
    assert_eq!(broker.unacked_count("q"), Some(2));
    channel.close().unwrap();
    let channel = connection.open_channel().unwrap();
    let again = channel.basic_get("q", true).unwrap().unwrap();
    assert_eq!(
        (text(&again.delivery.body), again.delivery.redelivered),
        ("lost".to_owned(), true)
    );
    broker.check_invariants().unwrap();
}

#[test]
fn a_duplicated_delivery_arrives_twice_the_second_time_redelivered() {
    let broker = Broker::new();
    let connection = broker.connect();
    let channel = connection.open_channel().unwrap();
    channel.queue_declare("q", QueueOptions::default()).unwrap();
    publish(&channel, "q", "twice", false);
    broker.duplicate_next_delivery("q");
    let consumer = channel
        .basic_consume("q", ConsumeOptions::default())
        .unwrap();
    let first = consumer.try_recv().unwrap();
    let second = consumer.try_recv().unwrap();
    assert_eq!(
        (text(&first.body), first.redelivered),
        ("twice".to_owned(), false)
    );
    assert_eq!(
        (text(&second.body), second.redelivered),
        ("twice".to_owned(), true)
    );
    channel.basic_ack(0, true).unwrap();
    assert_eq!(broker.usage().messages, 0);
    broker.check_invariants().unwrap();
}

/// With manual acks and without: a no-ack delivery is settled when it is sent, so once it
/// arrives nothing is held and the consumer's buffer has room again.
#[test]
fn a_delayed_delivery_arrives_when_the_clock_gets_there() {
    for no_ack in [false, true] {
        let (broker, now_ms) = clocked();
        let connection = broker.connect();
        let channel = connection.open_channel().unwrap();
        channel.queue_declare("q", QueueOptions::default()).unwrap();
        publish(&channel, "q", "late", false);
        broker.delay_next_delivery("q", 500);
        let options = ConsumeOptions {
            no_ack,
            ..ConsumeOptions::default()
        };
        let consumer = channel.basic_consume("q", options).unwrap();
        assert_eq!(consumer.try_recv().unwrap_err(), TryRecvError::Empty);
        now_ms.store(500, Ordering::SeqCst);
        broker.tick();
        assert_eq!(text(&consumer.try_recv().unwrap().body), "late");
        if no_ack {
            assert_eq!(broker.usage().messages, 0);
            broker.check_invariants().unwrap();
        }
    }
}

/// A delivery still on its way when its consumer is cancelled is not handed to anyone (a
/// later consumer reusing the tag included): it stays unacked on the channel, and the
/// channel's close requeues it, as RabbitMQ does with a delivery whose consumer is gone.
#[test]
fn a_delayed_delivery_whose_consumer_was_cancelled_waits_for_the_channel_to_close() {
    let (broker, now_ms) = clocked();
    let connection = broker.connect();
    let channel = connection.open_channel().unwrap();
    channel.queue_declare("q", QueueOptions::default()).unwrap();
    publish(&channel, "q", "late", false);
    broker.delay_next_delivery("q", 500);
    let options = ConsumeOptions {
        consumer_tag: "c".to_owned(),
        ..ConsumeOptions::default()
    };
    let cancelled = channel.basic_consume("q", options.clone()).unwrap();
    drop(cancelled);
    channel
        .queue_declare("other", QueueOptions::default())
        .unwrap();
    let successor = channel.basic_consume("other", options).unwrap();
    now_ms.store(500, Ordering::SeqCst);
    broker.tick();
    assert_eq!(successor.try_recv().unwrap_err(), TryRecvError::Empty);
    assert_eq!(broker.unacked_count("q"), Some(1));
    broker.check_invariants().unwrap();
    drop(successor);
    drop(channel);
    assert_eq!(broker.queue_depth("q"), Some(1));
    assert_eq!(broker.unacked_count("q"), Some(0));
}

/// A no-ack delivery lost on its way was settled as it was sent: it must not keep a place in
/// the consumer's buffer, which would then hold one delivery fewer for good.
#[test]
fn a_dropped_no_ack_delivery_leaves_the_consumers_buffer_whole() {
    let broker = Broker::new();
    let connection = broker.connect();
    let channel = connection.open_channel().unwrap();
    channel.queue_declare("q", QueueOptions::default()).unwrap();
    broker.drop_next_delivery("q");
    let options = ConsumeOptions {
        no_ack: true,
        ..ConsumeOptions::default()
    };
    let consumer = channel.basic_consume("q", options).unwrap();
    publish(&channel, "q", "lost", false);
    for n in 0..broker_mem::NO_ACK_BUFFER_MAX {
        publish(&channel, "q", &n.to_string(), false);
    }
    assert_eq!(consumer.buffered(), broker_mem::NO_ACK_BUFFER_MAX);
    assert_eq!(broker.queue_depth("q"), Some(0));
    broker.check_invariants().unwrap();
}

#[test]
fn a_nacked_confirm_enqueues_nothing_or_everything_as_asked() {
    let broker = Broker::new();
    let connection = broker.connect();
    let channel = connection.open_channel().unwrap();
    channel.queue_declare("q", QueueOptions::default()).unwrap();
    broker.nack_next_publish(channel.id(), false);
    let confirm = channel
        .basic_publish("", "q", Properties::default(), Bytes::from_static(b"a"))
        .unwrap();
    assert!(matches!(confirm, Confirm::Nack { .. }));
    assert_eq!(broker.queue_depth("q"), Some(0));
    broker.nack_next_publish(channel.id(), true);
    let confirm = channel
        .basic_publish("", "q", Properties::default(), Bytes::from_static(b"b"))
        .unwrap();
    assert!(matches!(confirm, Confirm::Nack { .. }));
    assert_eq!(broker.queue_depth("q"), Some(1));
    publish(&channel, "q", "c", false);
}

#[test]
fn a_forced_close_requeues_and_reports_the_reply() {
    let broker = Broker::new();
    let connection = broker.connect();
    let channel = connection.open_channel().unwrap();
    channel.queue_declare("q", QueueOptions::default()).unwrap();
    publish(&channel, "q", "m", false);
    let _held = channel.basic_get("q", false).unwrap().unwrap();
    broker.force_close_channel(channel.id(), ReplyCode::PreconditionFailed, "operator");
    assert_eq!(broker.queue_depth("q"), Some(1));
    let error = channel.basic_get("q", false).unwrap_err();
    assert!(
        matches!(&error, Error::ChannelClosed(reply) if reply.text == "operator"),
        "{error:?}"
    );
    let other = connection.open_channel().unwrap();
    broker.force_close_connection(connection.id(), ReplyCode::ConnectionForced, "bye");
    assert!(
        matches!(other.status(), Err(Error::ConnectionClosed(reply)) if reply.code.code() == 320)
    );
}

#[test]
fn a_restart_keeps_durable_queues_with_persistent_messages_only() {
    let broker = Broker::new();
    let connection = broker.connect();
    let channel = connection.open_channel().unwrap();
    let durable = durable_queue();
    channel.queue_declare("kept", durable).unwrap();
    channel
        .queue_declare("lost", QueueOptions::default())
        .unwrap();
    let durable_x = ExchangeOptions {
        durable: true,
        ..ExchangeOptions::default()
    };
    channel
        .exchange_declare("dx", ExchangeKind::Direct, durable_x)
        .unwrap();
    channel
        .exchange_declare("tx", ExchangeKind::Direct, ExchangeOptions::default())
        .unwrap();
    channel.queue_bind("kept", "dx", "k").unwrap();
    channel.queue_bind("kept", "tx", "k").unwrap();
    publish(&channel, "kept", "persistent", true);
    publish(&channel, "kept", "transient", false);
    publish(&channel, "kept", "waiting", true);
    publish(&channel, "lost", "gone", true);
    let _first = channel.basic_get("kept", false).unwrap().unwrap();

    broker.restart();

    assert!(
        matches!(channel.status(), Err(Error::ConnectionClosed(reply)) if reply.code.code() == 320)
    );
    assert_eq!(broker.queue_depth("lost"), None);
    let names: Vec<String> = broker.exchanges().into_iter().map(|x| x.name).collect();
    assert!(names.contains(&"dx".to_owned()) && !names.contains(&"tx".to_owned()));
    let bindings: Vec<(String, String)> = broker
        .bindings()
        .into_iter()
        .map(|b| (b.exchange, b.queue))
        .collect();
    assert_eq!(bindings, [("dx".to_owned(), "kept".to_owned())]);
    let connection = broker.connect();
    let channel = connection.open_channel().unwrap();
    let mut kept = Vec::new();
    while let Some(ok) = channel.basic_get("kept", true).unwrap() {
        kept.push((text(&ok.delivery.body), ok.delivery.redelivered));
    }
    assert_eq!(
        kept,
        [
            ("persistent".to_owned(), true),
            ("waiting".to_owned(), false)
        ]
    );
    broker.check_invariants().unwrap();
}

/// A quorum queue keeps every message through a restart, transient ones too: they all went
/// through its log (RabbitMQ 3.10, probed by restarting the node).
#[test]
fn a_restart_keeps_a_quorum_queues_transient_messages_too() {
    let broker = Broker::new();
    let connection = broker.connect();
    let channel = connection.open_channel().unwrap();
    let mut arguments = FieldTable::new();
    arguments.insert("x-queue-type".into(), FieldValue::String("quorum".into()));
    let durable = durable_queue();
    channel
        .queue_declare_with("replicated", durable, &arguments)
        .unwrap();
    publish(&channel, "replicated", "transient", false);
    publish(&channel, "replicated", "persistent", true);

    broker.restart();

    let connection = broker.connect();
    let channel = connection.open_channel().unwrap();
    let mut kept = Vec::new();
    while let Some(ok) = channel.basic_get("replicated", true).unwrap() {
        kept.push(text(&ok.delivery.body));
    }
    assert_eq!(kept, ["transient", "persistent"]);
    broker.check_invariants().unwrap();
}

/// A restart closes every connection before it dispatches anything: what one connection held
/// unacked goes back to its durable queue, not to a no-ack consumer of a connection that was
/// still to close (which would take it for good, where RabbitMQ recovers it).
#[test]
fn a_restart_keeps_what_was_unacked_even_with_a_no_ack_consumer_open() {
    let broker = Broker::new();
    let holder = broker.connect();
    let holding = holder.open_channel().unwrap();
    let durable = durable_queue();
    holding.queue_declare("kept", durable).unwrap();
    let consumer = holding
        .basic_consume("kept", ConsumeOptions::default())
        .unwrap();
    publish(&holding, "kept", "held", true);
    let held = consumer.try_recv().unwrap();
    assert_eq!(text(&held.body), "held");
    let taker = broker.connect();
    let taking = taker.open_channel().unwrap();
    let no_ack = ConsumeOptions {
        no_ack: true,
        ..ConsumeOptions::default()
    };
    let greedy = taking.basic_consume("kept", no_ack).unwrap();

    broker.restart();

    assert!(greedy.try_recv().is_err(), "a no-ack consumer took it");
    assert_eq!(broker.queue_depth("kept"), Some(1));
    let connection = broker.connect();
    let channel = connection.open_channel().unwrap();
    let ok = channel.basic_get("kept", true).unwrap().unwrap();
    assert_eq!(
        (text(&ok.delivery.body), ok.delivery.redelivered),
        ("held".to_owned(), true)
    );
    broker.check_invariants().unwrap();
}

#[test]
fn nack_next_publish_to_an_exchange_nacks_only_that_publish_on_any_channel() {
    let broker = Broker::new();
    let connection = broker.connect();
    let channel = connection.open_channel().unwrap();
    channel
        .exchange_declare("ex", broker_mem::ExchangeKind::Fanout, Default::default())
        .unwrap();
    channel.queue_declare("q", Default::default()).unwrap();
    channel.queue_bind("q", "ex", "").unwrap();
    broker.nack_next_publish_to("ex", false);
    let first = channel
        .basic_publish("ex", "", Default::default(), Bytes::from_static(b"1"))
        .unwrap();
    assert!(
        matches!(first, broker_mem::Confirm::Nack { .. }),
        "{first:?}"
    );
    assert_eq!(
        broker.queue_depth("q"),
        Some(0),
        "a nack without enqueue routes nothing"
    );
    let other = connection.open_channel().unwrap();
    let second = other
        .basic_publish("ex", "", Default::default(), Bytes::from_static(b"2"))
        .unwrap();
    assert_eq!(second, broker_mem::Confirm::Ack);
    assert_eq!(broker.queue_depth("q"), Some(1));
}

#[test]
fn closing_a_queues_consumer_channels_requeues_and_ends_the_consumers() {
    let broker = Broker::new();
    let connection = broker.connect();
    let channel = connection.open_channel().unwrap();
    channel.queue_declare("q", Default::default()).unwrap();
    channel
        .basic_publish("", "q", Default::default(), Bytes::from_static(b"m"))
        .unwrap();
    let consumer_channel = connection.open_channel().unwrap();
    let consumer = consumer_channel
        .basic_consume("q", Default::default())
        .unwrap();
    let delivery = consumer.try_recv().unwrap();
    assert!(!delivery.redelivered);
    assert_eq!(broker.unacked_count("q"), Some(1));
    broker.force_close_consumer_channels("q", broker_mem::ReplyCode::PreconditionFailed, "fault");
    assert_eq!(
        (broker.queue_depth("q"), broker.unacked_count("q")),
        (Some(1), Some(0))
    );
    assert!(!consumer_channel.is_open());
    assert!(
        channel.is_open(),
        "channels without a consumer on q stay open"
    );
    let again = channel.basic_consume("q", Default::default()).unwrap();
    assert!(again.try_recv().unwrap().redelivered);
}

#[test]
fn x_expires_runs_on_the_injected_clock_and_any_use_restarts_it() {
    let (broker, now_ms) = clocked();
    let connection = broker.connect();
    let channel = connection.open_channel().unwrap();
    let expires = FieldTable::from([("x-expires".to_owned(), FieldValue::I64(100))]);
    let declare = || {
        channel
            .queue_declare_with("q", QueueOptions::default(), &expires)
            .unwrap()
    };
    declare();
    publish(&channel, "q", "held", false);
    now_ms.store(99, Ordering::SeqCst);
    // Publishing is not use; basic.get is, and so is a redeclare.
    publish(&channel, "q", "held too", false);
    assert_eq!(broker.queue_depth("q"), Some(2));
    assert!(channel.basic_get("q", true).unwrap().is_some());
    now_ms.store(198, Ordering::SeqCst);
    declare();
    now_ms.store(297, Ordering::SeqCst);
    assert_eq!(broker.queue_depth("q"), Some(1));
    // A consumer keeps the queue however long it stays; its time starts when it goes.
    let consumer = channel
        .basic_consume("q", ConsumeOptions::default())
        .unwrap();
    now_ms.store(10_000, Ordering::SeqCst);
    assert_eq!(broker.queue_depth("q"), Some(0));
    let delivery = consumer.try_recv().unwrap();
    channel.basic_ack(delivery.delivery_tag, false).unwrap();
    channel.basic_cancel(consumer.tag()).unwrap();
    now_ms.store(10_099, Ordering::SeqCst);
    assert_eq!(broker.queue_depth("q"), Some(0));
    // Exactly x-expires after the last use.
    now_ms.store(10_100, Ordering::SeqCst);
    assert_eq!(broker.queue_depth("q"), None);
    assert!(channel.is_open());
    broker.check_invariants().unwrap();
}

#[test]
fn a_quorum_queue_expires_x_expires_after_its_last_settle_and_declares_do_not_renew_it() {
    let (broker, now_ms) = clocked();
    let connection = broker.connect();
    let channel = connection.open_channel().unwrap();
    let arguments = FieldTable::from([
        ("x-expires".to_owned(), FieldValue::I64(100)),
        (
            "x-queue-type".to_owned(),
            FieldValue::String("quorum".to_owned()),
        ),
    ]);
    let durable = durable_queue();
    let declare = || {
        channel
            .queue_declare_with("q", durable, &arguments)
            .unwrap()
    };
    declare();
    publish(&channel, "q", "got", false);
    publish(&channel, "q", "held", false);
    // Held by an unsettled get and by a cancelled consumer with an unsettled delivery.
    let got = channel.basic_get("q", false).unwrap().unwrap().delivery;
    let consumer = channel
        .basic_consume("q", ConsumeOptions::default())
        .unwrap();
    let held = consumer.try_recv().unwrap();
    channel.basic_cancel(consumer.tag()).unwrap();
    now_ms.store(1_000, Ordering::SeqCst);
    assert_eq!(declare().consumer_count, 2);
    channel.basic_ack(got.delivery_tag, false).unwrap();
    assert_eq!(broker.consumer_count("q"), Some(1));
    // The settle of the last holder starts the time; a declare after it does not restart it.
    now_ms.store(2_000, Ordering::SeqCst);
    channel.basic_reject(held.delivery_tag, true).unwrap();
    now_ms.store(2_050, Ordering::SeqCst);
    assert_eq!(declare().consumer_count, 0);
    now_ms.store(2_099, Ordering::SeqCst);
    assert_eq!(broker.queue_depth("q"), Some(1));
    now_ms.store(2_100, Ordering::SeqCst);
    assert_eq!(broker.queue_depth("q"), None);
    broker.check_invariants().unwrap();
}

#[test]
fn a_restart_starts_a_durable_queues_expiry_again() {
    let (broker, now_ms) = clocked();
    let connection = broker.connect();
    let channel = connection.open_channel().unwrap();
    let expires = FieldTable::from([("x-expires".to_owned(), FieldValue::I64(100))]);
    let durable = durable_queue();
    channel.queue_declare_with("q", durable, &expires).unwrap();
    now_ms.store(90, Ordering::SeqCst);
    broker.restart();
    now_ms.store(189, Ordering::SeqCst);
    assert_eq!(broker.queue_depth("q"), Some(0));
    now_ms.store(190, Ordering::SeqCst);
    assert_eq!(broker.queue_depth("q"), None);
}

#[test]
fn a_delivery_unacked_past_the_consumer_timeout_closes_its_channel() {
    let now_ms = Arc::new(AtomicU64::new(0));
    let reading = Arc::clone(&now_ms);
    let limits = Limits {
        consumer_timeout_ms: Some(1_000),
        ..Limits::default()
    };
    let broker = Broker::with_clock(limits, Arc::new(move || reading.load(Ordering::SeqCst)));
    let connection = broker.connect();
    let slow = connection.open_channel().unwrap();
    let quick = connection.open_channel().unwrap();
    slow.queue_declare("q", QueueOptions::default()).unwrap();
    for body in ["slow", "quick", "got"] {
        publish(&slow, "q", body, false);
    }
    slow.basic_qos(1).unwrap();
    let consumer = slow.basic_consume("q", ConsumeOptions::default()).unwrap();
    assert_eq!(text(&consumer.try_recv().unwrap().body), "slow");
    // basic.get deliveries count too, and acking in time keeps a channel.
    let got = quick.basic_get("q", false).unwrap().unwrap().delivery;
    assert_eq!(text(&got.body), "quick");
    now_ms.store(900, Ordering::SeqCst);
    quick.basic_ack(got.delivery_tag, false).unwrap();
    // Exactly the timeout is not past it.
    now_ms.store(1_000, Ordering::SeqCst);
    broker.tick();
    assert!(slow.is_open());
    now_ms.store(1_001, Ordering::SeqCst);
    broker.tick();
    assert!(!slow.is_open());
    assert!(quick.is_open());
    let reason = slow.status().unwrap_err();
    let Error::ChannelClosed(reply) = reason else {
        panic!("closed by the broker: {reason:?}");
    };
    assert_eq!(reply.code, ReplyCode::PreconditionFailed);
    assert!(
        reply.text.starts_with(
            "delivery acknowledgement on channel 1 timed out. Timeout value used: 1000 ms."
        ),
        "{}",
        reply.text
    );
    // The consumer ended and its delivery is back, marked redelivered.
    assert_eq!(consumer.try_recv().unwrap_err(), TryRecvError::Ended);
    let again = quick.basic_get("q", true).unwrap().unwrap().delivery;
    assert_eq!(
        (text(&again.body), again.redelivered),
        ("slow".to_owned(), true)
    );
    broker.check_invariants().unwrap();
}

#[test]
fn the_consumer_timeout_can_be_turned_off() {
    let now_ms = Arc::new(AtomicU64::new(0));
    let reading = Arc::clone(&now_ms);
    let limits = Limits {
        consumer_timeout_ms: None,
        ..Limits::default()
    };
    let broker = Broker::with_clock(limits, Arc::new(move || reading.load(Ordering::SeqCst)));
    let connection = broker.connect();
    let channel = connection.open_channel().unwrap();
    channel.queue_declare("q", QueueOptions::default()).unwrap();
    publish(&channel, "q", "kept", false);
    let got = channel.basic_get("q", false).unwrap().unwrap();
    now_ms.store(u64::MAX / 2, Ordering::SeqCst);
    broker.tick();
    assert!(channel.is_open());
    channel.basic_ack(got.delivery.delivery_tag, false).unwrap();
    assert_eq!(Limits::default().consumer_timeout_ms, Some(1_800_000));
}

#[test]
fn messages_expiring_before_their_queue_are_dead_lettered_the_rest_go_with_it() {
    let (broker, now_ms) = clocked();
    let connection = broker.connect();
    let channel = connection.open_channel().unwrap();
    channel
        .exchange_declare("dlx", ExchangeKind::Fanout, ExchangeOptions::default())
        .unwrap();
    channel
        .queue_declare("dead", QueueOptions::default())
        .unwrap();
    channel.queue_bind("dead", "dlx", "").unwrap();
    let arguments = FieldTable::from([
        ("x-expires".to_owned(), FieldValue::I64(5_000)),
        (
            "x-dead-letter-exchange".to_owned(),
            FieldValue::String("dlx".into()),
        ),
    ]);
    channel
        .queue_declare_with("q", QueueOptions::default(), &arguments)
        .unwrap();
    let expiring = |ms: &str| Properties {
        expiration: Some(ms.to_owned()),
        ..Properties::default()
    };
    for (body, ttl) in [("before", "1000"), ("after", "9000")] {
        let confirm = channel
            .basic_publish("", "q", expiring(ttl), Bytes::from(body))
            .unwrap();
        assert_eq!(confirm, Confirm::Ack);
    }
    // Nothing calls the broker until long after both deadlines.
    now_ms.store(20_000, Ordering::SeqCst);
    broker.tick();
    assert_eq!(broker.queue_depth("q"), None);
    let dead = channel.basic_get("dead", true).unwrap().unwrap().delivery;
    assert_eq!(text(&dead.body), "before");
    assert!(channel.basic_get("dead", true).unwrap().is_none());
    broker.check_invariants().unwrap();
}

/// At-least-once dead-lettering (see `engine/dead_letters.rs`): what an exchange cannot route
/// is kept, counts toward the queue's length limit, and is routed again when the worker's
/// 180-second timer comes (RabbitMQ 3.10.8 delivered such messages 180 s after the reject);
/// the worker holds 32 at a time, and takes the rest once those are delivered.
#[test]
fn an_at_least_once_quorum_queue_keeps_dead_letters_until_its_worker_routes_them_again() {
    let (broker, now_ms) = clocked();
    let connection = broker.connect();
    let channel = connection.open_channel().unwrap();
    let arguments = FieldTable::from([
        (
            "x-queue-type".to_owned(),
            FieldValue::String("quorum".into()),
        ),
        (
            "x-dead-letter-exchange".to_owned(),
            FieldValue::String("dlx".into()),
        ),
        (
            "x-dead-letter-strategy".to_owned(),
            FieldValue::String("at-least-once".into()),
        ),
        (
            "x-overflow".to_owned(),
            FieldValue::String("reject-publish".into()),
        ),
        ("x-max-length".to_owned(), FieldValue::I64(35)),
    ]);
    let durable = durable_queue();
    channel
        .queue_declare_with("src", durable, &arguments)
        .unwrap();
    let try_publish = |body: &str| {
        let body = Bytes::copy_from_slice(body.as_bytes());
        (channel.basic_publish("", "src", Properties::default(), body)).unwrap()
    };
    let reject_one = || {
        let got = channel.basic_get("src", false).unwrap().unwrap().delivery;
        channel.basic_reject(got.delivery_tag, false).unwrap();
    };
    let kept = || {
        let queues = broker.queues();
        queues
            .iter()
            .find(|q| q.name == "src")
            .unwrap()
            .dead_lettering
    };
    for n in 0..34 {
        publish(&channel, "src", &format!("m{n}"), false);
        reject_one();
    }
    // The dead-letter exchange does not exist: all kept, and counted toward the limit.
    assert_eq!(kept(), 34);
    assert_eq!(broker.queue_depth("src"), Some(0));
    assert_eq!(try_publish("m34"), Confirm::Ack);
    reject_one();
    assert_eq!(kept(), 35);

    now_ms.store(1_000, Ordering::SeqCst);
    let fanout = ExchangeOptions {
        durable: true,
        ..ExchangeOptions::default()
    };
    channel
        .exchange_declare("dlx", ExchangeKind::Fanout, fanout)
        .unwrap();
    channel.queue_declare("dead", durable).unwrap();
    channel.queue_bind("dead", "dlx", "").unwrap();
    // Routable now, but the worker holds 32 it could not deliver and takes no more: a new
    // dead letter waits behind them.
    now_ms.store(2_000, Ordering::SeqCst);
    assert_eq!(try_publish("m35"), Confirm::Ack);
    reject_one();
    assert_eq!(kept(), 36);
    assert_eq!(broker.queue_depth("dead"), Some(0));
    // 36 count against the limit of 35.
    assert!(matches!(try_publish("refused"), Confirm::Nack { .. }));
    // The worker routes again only when its timer comes.
    now_ms.store(179_999, Ordering::SeqCst);
    assert_eq!(broker.queue_depth("dead"), Some(0));
    assert!(matches!(try_publish("refused"), Confirm::Nack { .. }));
    now_ms.store(180_000, Ordering::SeqCst);
    // The 32 it held, then the 4 it took once they were delivered, in order.
    assert_eq!(broker.queue_depth("dead"), Some(36));
    assert_eq!(kept(), 0);
    for n in 0..36 {
        let got = channel.basic_get("dead", true).unwrap().unwrap().delivery;
        assert_eq!(text(&got.body), format!("m{n}"));
    }
    // Room again; a routable dead letter goes at once.
    assert_eq!(try_publish("at-once"), Confirm::Ack);
    reject_one();
    assert_eq!(broker.queue_depth("dead"), Some(1));
    assert_eq!(kept(), 0);

    // A restart keeps what is kept; the new worker starts its own timer.
    channel
        .queue_unbind("dead", "dlx", "", &FieldTable::new())
        .unwrap();
    publish(&channel, "src", "across-a-restart", true);
    reject_one();
    assert_eq!(kept(), 1);
    now_ms.store(200_000, Ordering::SeqCst);
    broker.restart();
    assert_eq!(kept(), 1);
    let connection = broker.connect();
    let channel = connection.open_channel().unwrap();
    channel.queue_bind("dead", "dlx", "").unwrap();
    // The transient "at-once" did not survive the restart in the classic queue.
    now_ms.store(379_999, Ordering::SeqCst);
    assert_eq!(broker.queue_depth("dead"), Some(0));
    now_ms.store(380_000, Ordering::SeqCst);
    assert_eq!(broker.queue_depth("dead"), Some(1));
    assert_eq!(kept(), 0);
    // One rejected while nothing routes is kept.
    let keep_one = |channel: &Channel, body: &str, persistent: bool| {
        channel
            .queue_unbind("dead", "dlx", "", &FieldTable::new())
            .unwrap();
        publish(channel, "src", body, persistent);
        let got = channel.basic_get("src", false).unwrap().unwrap().delivery;
        channel.basic_reject(got.delivery_tag, false).unwrap();
    };
    // What routes by the time of a restart goes as the broker comes back: the new worker
    // takes it afresh (probed on 3.10.8 with `rabbitmqctl stop_app` and `start_app`).
    keep_one(&channel, "routed-by-the-restart", true);
    channel.queue_bind("dead", "dlx", "").unwrap();
    assert_eq!((broker.queue_depth("dead"), kept()), (Some(1), 1));
    broker.restart();
    assert_eq!((broker.queue_depth("dead"), kept()), (Some(2), 0));
    let connection = broker.connect();
    let channel = connection.open_channel().unwrap();
    // Deleting the queue drops what it keeps.
    keep_one(&channel, "gone", false);
    assert_eq!(kept(), 1);
    channel.queue_delete("src", false, false).unwrap();
    broker.check_invariants().unwrap();
}

/// The at-least-once worker is a publisher to a quorum `reject-publish` queue like any other
/// (probed on 3.10.8): its first message asks and gets in while the queue is not over its
/// limit; once the queue is over it, the worker is told to stop, and what it forwards stays
/// kept until a retry finds the queue back at 80 % of its limit.
#[test]
fn an_at_least_once_worker_is_refused_by_a_quorum_queue_over_its_limit_until_it_drains() {
    let (broker, now_ms) = clocked();
    let connection = broker.connect();
    let channel = connection.open_channel().unwrap();
    let durable = durable_queue();
    let string = |text: &str| FieldValue::String(text.to_owned());
    let quorum = |more: &[(&str, FieldValue)]| {
        let mut arguments = FieldTable::from([
            ("x-queue-type".to_owned(), string("quorum")),
            ("x-overflow".to_owned(), string("reject-publish")),
        ]);
        for (key, value) in more {
            arguments.insert((*key).to_owned(), value.clone());
        }
        arguments
    };
    (channel.exchange_declare("tx", ExchangeKind::Fanout, ExchangeOptions::default())).unwrap();
    let target = quorum(&[("x-max-length", FieldValue::I64(2))]);
    channel
        .queue_declare_with("target", durable, &target)
        .unwrap();
    channel.queue_bind("target", "tx", "").unwrap();
    publish(&channel, "target", "fill-0", false);
    publish(&channel, "target", "fill-1", false);
    let source = quorum(&[
        ("x-dead-letter-exchange", string("tx")),
        ("x-dead-letter-strategy", string("at-least-once")),
    ]);
    channel
        .queue_declare_with("source", durable, &source)
        .unwrap();
    let dead_letter = |body: &'static str| {
        publish(&channel, "source", body, false);
        let got = channel
            .basic_get("source", false)
            .unwrap()
            .unwrap()
            .delivery;
        channel.basic_reject(got.delivery_tag, false).unwrap();
    };
    let kept = || {
        let queues = broker.queues();
        queues
            .iter()
            .find(|q| q.name == "source")
            .unwrap()
            .dead_lettering
    };
    // At its limit, not over it: the worker's first message gets in, and takes it over.
    dead_letter("first");
    assert_eq!((broker.queue_depth("target").unwrap(), kept()), (3, 0));
    dead_letter("second");
    assert_eq!((broker.queue_depth("target").unwrap(), kept()), (3, 1));
    // Two of three left is still over 80 % of two: the retry is refused too.
    channel.basic_get("target", true).unwrap().unwrap();
    now_ms.store(180_000, Ordering::SeqCst);
    assert_eq!((broker.queue_depth("target").unwrap(), kept()), (2, 1));
    // One left is at 80 %: the next retry, 180 s after this one, gets in.
    channel.basic_get("target", true).unwrap().unwrap();
    now_ms.store(359_999, Ordering::SeqCst);
    assert_eq!((broker.queue_depth("target").unwrap(), kept()), (1, 1));
    now_ms.store(360_000, Ordering::SeqCst);
    assert_eq!((broker.queue_depth("target").unwrap(), kept()), (2, 0));
    let bodies: Vec<_> = std::iter::from_fn(|| channel.basic_get("target", true).unwrap())
        .map(|got| got.delivery.body)
        .collect();
    assert_eq!(bodies, [&b"first"[..], b"second"]);
    broker.check_invariants().unwrap();
    // The target forgets the worker when its queue goes (the invariants check that it does).
    channel.queue_delete("source", false, false).unwrap();
    broker.check_invariants().unwrap();
}

/// The at-least-once worker's retry (RabbitMQ 3.10.8, probed): it routes by the keys of the
/// newest `x-death` entry (the routing key and `CC`, not `BCC`), and delivers only to the
/// queues that have not taken the message: a full queue that refused it gets it once it has
/// room, and a queue that took it the first time does not get it twice.
#[test]
fn an_at_least_once_worker_routes_again_by_the_death_keys_to_queues_that_have_not_taken_it() {
    let (broker, now_ms) = clocked();
    let connection = broker.connect();
    let channel = connection.open_channel().unwrap();
    let durable = durable_queue();
    let string = |text: &str| FieldValue::String(text.to_owned());
    let at_least_once = |dlx: &str| {
        FieldTable::from([
            ("x-queue-type".to_owned(), string("quorum")),
            ("x-dead-letter-exchange".to_owned(), string(dlx)),
            ("x-dead-letter-strategy".to_owned(), string("at-least-once")),
            ("x-overflow".to_owned(), string("reject-publish")),
        ])
    };
    let dead_letter = |queue: &str, headers: Option<FieldTable>| {
        let properties = Properties {
            headers,
            ..Properties::default()
        };
        let body = Bytes::from_static(b"dead");
        let confirm = channel.basic_publish("", queue, properties, body).unwrap();
        assert_eq!(confirm, Confirm::Ack);
        let got = channel.basic_get(queue, false).unwrap().unwrap().delivery;
        channel.basic_reject(got.delivery_tag, false).unwrap();
    };
    let exchange = |name: &str, kind: ExchangeKind| {
        (channel.exchange_declare(name, kind, ExchangeOptions::default())).unwrap();
    };
    // The keys: a direct exchange with no bindings yet.
    exchange("dx", ExchangeKind::Direct);
    channel
        .queue_declare_with("k", durable, &at_least_once("dx"))
        .unwrap();
    let keys = |keys: &[&str]| FieldValue::Array(keys.iter().map(|k| string(k)).collect());
    let headers = FieldTable::from([
        ("CC".to_owned(), keys(&["cc"])),
        ("BCC".to_owned(), keys(&["bcc"])),
    ]);
    dead_letter("k", Some(headers));
    for (queue, key) in [("to-k", "k"), ("to-cc", "cc"), ("to-bcc", "bcc")] {
        channel.queue_declare(queue, durable).unwrap();
        channel.queue_bind(queue, "dx", key).unwrap();
    }
    // A full queue refuses: a fanout to an open queue and a full one.
    exchange("fx", ExchangeKind::Fanout);
    channel.queue_declare("open", durable).unwrap();
    let full = FieldTable::from([
        ("x-max-length".to_owned(), FieldValue::I64(1)),
        ("x-overflow".to_owned(), string("reject-publish")),
    ]);
    channel.queue_declare_with("full", durable, &full).unwrap();
    channel.queue_bind("open", "fx", "").unwrap();
    channel.queue_bind("full", "fx", "").unwrap();
    publish(&channel, "full", "filler", false);
    channel
        .queue_declare_with("f", durable, &at_least_once("fx"))
        .unwrap();
    dead_letter("f", None);
    let depths =
        || ["to-k", "to-cc", "to-bcc", "open", "full"].map(|q| broker.queue_depth(q).unwrap());
    assert_eq!(depths(), [0, 0, 0, 1, 1]);
    channel.basic_get("full", true).unwrap().unwrap();
    now_ms.store(179_999, Ordering::SeqCst);
    assert_eq!(depths(), [0, 0, 0, 1, 0]);
    now_ms.store(180_000, Ordering::SeqCst);
    assert_eq!(depths(), [1, 1, 0, 1, 1]);
    let kept: usize = broker.queues().iter().map(|q| q.dead_lettering).sum();
    assert_eq!(kept, 0);
    broker.check_invariants().unwrap();
}

#[test]
fn armed_faults_are_listed_until_they_fire() {
    let broker = Broker::new();
    let connection = broker.connect();
    let channel = connection.open_channel().unwrap();
    channel.queue_declare("q", QueueOptions::default()).unwrap();
    broker.duplicate_next_delivery("q");
    broker.nack_next_publish_to("amq.direct", false);
    // A misspelt name arms a hook that never meets its event: it stays listed.
    broker.drop_next_delivery("qq");
    assert_eq!(
        broker.armed_faults(),
        [
            ArmedFault::DuplicateDelivery { queue: "q".into() },
            ArmedFault::DropDelivery { queue: "qq".into() },
            ArmedFault::NackPublish {
                exchange: "amq.direct".into()
            },
        ]
    );
    let nacked = channel
        .basic_publish(
            "amq.direct",
            "q",
            Properties::default(),
            Bytes::from_static(b"x"),
        )
        .unwrap();
    assert!(matches!(nacked, Confirm::Nack { .. }), "{nacked:?}");
    publish(&channel, "q", "twice", false);
    let consumer = channel
        .basic_consume("q", ConsumeOptions::default())
        .unwrap();
    consumer.try_recv().unwrap();
    assert_eq!(
        broker.armed_faults(),
        [ArmedFault::DropDelivery { queue: "qq".into() }]
    );
}

#[test]
fn a_restart_disarms_delivery_hooks_but_keeps_publish_hooks() {
    // The sim's fault report relies on this: a delivery hook gone after a restart did not fire.
    let broker = Broker::new();
    let connection = broker.connect();
    let channel = connection.open_channel().unwrap();
    channel.queue_declare("q", QueueOptions::default()).unwrap();
    broker.duplicate_next_delivery("q");
    broker.delay_next_delivery("q", 10);
    broker.nack_next_publish_to("amq.direct", false);
    broker.restart();
    assert_eq!(
        broker.armed_faults(),
        [ArmedFault::NackPublish {
            exchange: "amq.direct".into()
        }]
    );
}

/// Every in-process call sees the clock's time, as every wire call does: a consumer started
/// after a TTL ran out (with no tick in between) gets nothing, and the message is gone.
#[test]
fn a_consumer_started_after_a_ttl_ran_out_finds_the_message_expired() {
    let (broker, now_ms) = clocked();
    let connection = broker.connect();
    let channel = connection.open_channel().unwrap();
    channel
        .queue_declare("ttl", QueueOptions::default())
        .unwrap();
    let properties = Properties {
        expiration: Some("100".into()),
        ..Properties::default()
    };
    channel
        .basic_publish("", "ttl", properties, Bytes::from_static(b"soon gone"))
        .unwrap();
    now_ms.store(200, Ordering::SeqCst);
    let consumer = channel
        .basic_consume("ttl", ConsumeOptions::default())
        .unwrap();
    assert!(
        consumer.try_recv().is_err(),
        "an expired message was delivered"
    );
    assert_eq!(broker.queue_depth("ttl"), Some(0));
    broker.check_invariants().unwrap();
}
