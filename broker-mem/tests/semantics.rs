//! RabbitMQ semantics broker-mem pins, one behaviour per test, through the in-process client.

use broker_mem::{
    AmqpError, Broker, Bytes, Channel, Confirm, ConsumeOptions, Consumer, Delivery, Error,
    ExchangeKind, ExchangeOptions, FieldTable, FieldValue, Limits, Properties, QueueOptions,
    ReplyCode, TryRecvError,
};

fn body(text: &str) -> Bytes {
    Bytes::copy_from_slice(text.as_bytes())
}

fn publish(channel: &Channel, exchange: &str, routing_key: &str, text: &str) {
    let confirm = channel.basic_publish(exchange, routing_key, Properties::default(), body(text));
    assert_eq!(confirm, Ok(Confirm::Ack));
}

fn declare_queue(channel: &Channel, name: &str) {
    channel
        .queue_declare(name, QueueOptions::default())
        .unwrap();
}

fn consume(channel: &Channel, queue: &str) -> Consumer {
    channel
        .basic_consume(queue, ConsumeOptions::default())
        .unwrap()
}

/// Everything buffered for the consumer now.
fn drain(consumer: &Consumer) -> Vec<Delivery> {
    std::iter::from_fn(|| consumer.try_recv().ok()).collect()
}

fn texts(deliveries: &[Delivery]) -> Vec<String> {
    deliveries
        .iter()
        .map(|d| String::from_utf8(d.body.to_vec()).unwrap())
        .collect()
}

fn code(error: &Error) -> Option<u16> {
    error.reply().map(|reply| reply.code.code())
}

fn setup() -> (Broker, broker_mem::Connection, Channel) {
    let broker = Broker::new();
    let connection = broker.connect();
    let channel = connection.open_channel().unwrap();
    (broker, connection, channel)
}

// ------------------------------------------------------------------------------ routing

#[test]
fn default_exchange_routes_by_queue_name() {
    let (broker, _connection, channel) = setup();
    declare_queue(&channel, "a");
    declare_queue(&channel, "b");
    publish(&channel, "", "a", "one");
    assert_eq!(broker.queue_depth("a"), Some(1));
    assert_eq!(broker.queue_depth("b"), Some(0));
}

#[test]
fn direct_exchange_routes_on_the_exact_key_to_every_matching_queue() {
    let (broker, _connection, channel) = setup();
    channel
        .exchange_declare("cmd", ExchangeKind::Direct, ExchangeOptions::default())
        .unwrap();
    for queue in ["a", "b", "c"] {
        declare_queue(&channel, queue);
    }
    channel.queue_bind("a", "cmd", "go").unwrap();
    channel.queue_bind("b", "cmd", "go").unwrap();
    channel.queue_bind("c", "cmd", "go.on").unwrap();
    publish(&channel, "cmd", "go", "x");
    let depths: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|q| broker.queue_depth(q))
        .collect();
    assert_eq!(depths, [Some(1), Some(1), Some(0)]);
}

#[test]
fn fanout_exchange_reaches_each_bound_queue_once_whatever_the_key() {
    let (broker, _connection, channel) = setup();
    channel
        .exchange_declare("ev", ExchangeKind::Fanout, ExchangeOptions::default())
        .unwrap();
    declare_queue(&channel, "a");
    declare_queue(&channel, "b");
    channel.queue_bind("a", "ev", "").unwrap();
    channel.queue_bind("a", "ev", "other").unwrap();
    channel.queue_bind("b", "ev", "").unwrap();
    publish(&channel, "ev", "anything", "x");
    assert_eq!(broker.queue_depth("a"), Some(1));
    assert_eq!(broker.queue_depth("b"), Some(1));
}

#[test]
fn unroutable_message_is_acked_and_dropped() {
    let (broker, _connection, channel) = setup();
    channel
        .exchange_declare("cmd", ExchangeKind::Direct, ExchangeOptions::default())
        .unwrap();
    publish(&channel, "cmd", "nobody", "x");
    publish(&channel, "", "no-such-queue", "x");
    assert_eq!(broker.usage().messages, 0);
    assert!(channel.is_open());
}

/// The engine reuses the last publish's route while the topology stands (see its
/// `RouteMemo`): every kind of change between two identical publishes must show.
#[test]
fn routing_follows_every_topology_change_between_identical_publishes() {
    let (broker, connection, channel) = setup();
    let none = FieldTable::new();
    let depths = |broker: &Broker| ["a", "b", "c", "d"].map(|q| broker.queue_depth(q));
    let direct = ExchangeOptions::default();
    channel
        .exchange_declare("x", ExchangeKind::Direct, direct)
        .unwrap();
    declare_queue(&channel, "a");
    channel.queue_bind("a", "x", "k").unwrap();
    publish(&channel, "x", "k", "1");
    assert_eq!(depths(&broker), [Some(1), None, None, None]);
    // A binding added.
    declare_queue(&channel, "b");
    channel.queue_bind("b", "x", "k").unwrap();
    publish(&channel, "x", "k", "2");
    assert_eq!(depths(&broker), [Some(2), Some(1), None, None]);
    // A binding removed.
    channel.queue_unbind("a", "x", "k", &none).unwrap();
    publish(&channel, "x", "k", "3");
    assert_eq!(depths(&broker), [Some(2), Some(2), None, None]);
    // A queue deleted, and one declared under the same name.
    channel.queue_delete("b", false, false).unwrap();
    publish(&channel, "x", "k", "4");
    declare_queue(&channel, "b");
    publish(&channel, "x", "k", "5");
    assert_eq!(depths(&broker), [Some(2), Some(0), None, None]);
    // An exchange-to-exchange binding, then a binding further down.
    let fanout = ExchangeOptions {
        auto_delete: true,
        ..ExchangeOptions::default()
    };
    channel
        .exchange_declare("y", ExchangeKind::Fanout, fanout)
        .unwrap();
    channel.exchange_bind("y", "x", "k", &none).unwrap();
    declare_queue(&channel, "c");
    publish(&channel, "x", "k", "6");
    channel.queue_bind("c", "y", "").unwrap();
    publish(&channel, "x", "k", "7");
    assert_eq!(depths(&broker), [Some(2), Some(0), Some(1), None]);
    // An exchange that loses its last binding goes (auto-delete), and its route with it.
    channel.queue_delete("c", false, false).unwrap();
    channel.exchange_unbind("y", "x", "k", &none).unwrap();
    declare_queue(&channel, "c");
    channel.queue_bind("c", "x", "k").unwrap();
    publish(&channel, "x", "k", "8");
    assert_eq!(depths(&broker), [Some(2), Some(0), Some(1), None]);
    // The default exchange: a queue declared after a publish to its name, and deleted.
    publish(&channel, "", "d", "9");
    declare_queue(&channel, "d");
    publish(&channel, "", "d", "10");
    assert_eq!(depths(&broker), [Some(2), Some(0), Some(1), Some(1)]);
    channel.queue_delete("d", false, false).unwrap();
    publish(&channel, "", "d", "10a");
    assert_eq!(broker.usage().messages, 3);
    // The exchange deleted: 404; declared again as internal: 403.
    publish(&channel, "x", "k", "10b");
    channel.exchange_delete("x", false).unwrap();
    let gone = channel.basic_publish("x", "k", Properties::default(), body("11"));
    assert_eq!(gone.as_ref().map_err(code), Err(Some(404)));
    let channel = connection.open_channel().unwrap();
    publish(&channel, "", "c", "12");
    let internal = ExchangeOptions {
        internal: true,
        ..ExchangeOptions::default()
    };
    channel
        .exchange_declare("x", ExchangeKind::Direct, internal)
        .unwrap();
    let refused = channel.basic_publish("x", "k", Properties::default(), body("13"));
    assert_eq!(refused.as_ref().map_err(code), Err(Some(403)));
}

#[test]
fn topology_is_listed_sorted() {
    let (broker, _connection, channel) = setup();
    channel
        .exchange_declare("z", ExchangeKind::Fanout, ExchangeOptions::default())
        .unwrap();
    channel
        .exchange_declare("m", ExchangeKind::Direct, ExchangeOptions::default())
        .unwrap();
    declare_queue(&channel, "q2");
    declare_queue(&channel, "q1");
    channel.queue_bind("q2", "m", "k").unwrap();
    channel.queue_bind("q1", "m", "k").unwrap();
    channel.queue_bind("q1", "m", "k").unwrap(); // idempotent
    let exchanges: Vec<_> = broker.exchanges().into_iter().map(|e| e.name).collect();
    let predeclared = [
        "",
        "amq.direct",
        "amq.fanout",
        "amq.headers",
        "amq.match",
        "amq.rabbitmq.trace",
        "amq.topic",
    ];
    assert_eq!(exchanges[..7], predeclared);
    assert_eq!(exchanges[7..], ["m", "z"]);
    let queues: Vec<_> = broker.queues().into_iter().map(|q| q.name).collect();
    assert_eq!(queues, ["q1", "q2"]);
    let bindings: Vec<_> = broker
        .bindings()
        .into_iter()
        .map(|b| (b.exchange, b.queue))
        .collect();
    assert_eq!(
        bindings,
        [("m".into(), "q1".into()), ("m".into(), "q2".into())]
    );
}

#[test]
fn properties_and_body_arrive_intact() {
    let (_broker, _connection, channel) = setup();
    declare_queue(&channel, "q");
    let mut nested = FieldTable::new();
    nested.insert("depth".into(), FieldValue::I64(2));
    let mut headers = FieldTable::new();
    headers.insert("s".into(), FieldValue::String("text".into()));
    headers.insert("i".into(), FieldValue::I64(-7));
    headers.insert("b".into(), FieldValue::Bool(true));
    headers.insert("f".into(), FieldValue::F64(1.5));
    headers.insert("x".into(), FieldValue::Bytes(Bytes::from_static(&[0, 255])));
    headers.insert("t".into(), FieldValue::Timestamp(1_700_000_000));
    headers.insert(
        "a".into(),
        FieldValue::Array(vec![FieldValue::Void, FieldValue::I64(1)]),
    );
    headers.insert("n".into(), FieldValue::Table(nested));
    let properties = Properties {
        content_type: Some("application/json".into()),
        content_encoding: Some("identity".into()),
        headers: Some(headers),
        delivery_mode: Some(2),
        priority: Some(5),
        correlation_id: Some("corr".into()),
        reply_to: Some("replies".into()),
        expiration: Some("60000".into()),
        message_id: Some("m-1".into()),
        timestamp: Some(1_700_000_001),
        kind: Some("RequestAnalysis".into()),
        user_id: Some("guest".into()),
        app_id: Some("tests".into()),
        cluster_id: Some("deprecated".into()),
    };
    let payload = Bytes::from_static(b"{\"analysisId\":1}");
    channel
        .basic_publish("", "q", properties.clone(), payload.clone())
        .unwrap();
    let consumer = consume(&channel, "q");
    let delivery = consumer.try_recv().unwrap();
    assert_eq!(*delivery.properties, properties);
    assert_eq!(delivery.body, payload);
    assert_eq!(
        (delivery.exchange.as_str(), delivery.routing_key.as_str()),
        ("", "q")
    );
    assert!(!delivery.redelivered);
    assert_eq!(delivery.consumer_tag, consumer.tag());
}

// ------------------------------------------------------------------------------ dispatch

#[test]
fn competing_consumers_get_messages_round_robin() {
    let (_broker, _connection, channel) = setup();
    declare_queue(&channel, "q");
    let first = consume(&channel, "q");
    let second = consume(&channel, "q");
    let third = consume(&channel, "q");
    for n in 0..6 {
        publish(&channel, "", "q", &n.to_string());
    }
    assert_eq!(texts(&drain(&first)), ["0", "3"]);
    assert_eq!(texts(&drain(&second)), ["1", "4"]);
    assert_eq!(texts(&drain(&third)), ["2", "5"]);
}

#[test]
fn prefetch_blocks_the_next_delivery_until_an_ack() {
    let (broker, _connection, channel) = setup();
    declare_queue(&channel, "q");
    for n in 0..3 {
        publish(&channel, "", "q", &n.to_string());
    }
    channel.basic_qos(2).unwrap();
    let consumer = consume(&channel, "q");
    let first = drain(&consumer);
    assert_eq!(texts(&first), ["0", "1"]);
    assert_eq!(consumer.try_recv(), Err(TryRecvError::Empty));
    assert_eq!(
        (broker.queue_depth("q"), broker.unacked_count("q")),
        (Some(1), Some(2))
    );

    channel.basic_ack(first[0].delivery_tag, false).unwrap();
    assert_eq!(texts(&drain(&consumer)), ["2"]);
    assert_eq!(
        (broker.queue_depth("q"), broker.unacked_count("q")),
        (Some(0), Some(2))
    );
}

#[test]
fn a_blocked_consumer_is_skipped_for_one_with_credit() {
    let (_broker, _connection, channel) = setup();
    declare_queue(&channel, "q");
    channel.basic_qos(1).unwrap();
    let slow = consume(&channel, "q");
    channel.basic_qos(0).unwrap();
    let fast = consume(&channel, "q");
    for n in 0..4 {
        publish(&channel, "", "q", &n.to_string());
    }
    assert_eq!(texts(&drain(&slow)), ["0"]);
    assert_eq!(texts(&drain(&fast)), ["1", "2", "3"]);
}

#[test]
fn delivery_tags_start_at_one_and_increase_per_channel() {
    let (_broker, connection, channel) = setup();
    let other = connection.open_channel().unwrap();
    declare_queue(&channel, "a");
    declare_queue(&channel, "b");
    for n in 0..2 {
        publish(&channel, "", "a", &n.to_string());
        publish(&channel, "", "b", &n.to_string());
    }
    let on_channel = consume(&channel, "a");
    let on_other = consume(&other, "b");
    let tags = |c: &Consumer| drain(c).iter().map(|d| d.delivery_tag).collect::<Vec<_>>();
    assert_eq!(tags(&on_channel), [1, 2]);
    assert_eq!(tags(&on_other), [1, 2]);
}

// ------------------------------------------------------------------------------ settling

#[test]
fn ack_multiple_settles_every_tag_up_to_it() {
    let (broker, _connection, channel) = setup();
    declare_queue(&channel, "q");
    for n in 0..4 {
        publish(&channel, "", "q", &n.to_string());
    }
    let consumer = consume(&channel, "q");
    let deliveries = drain(&consumer);
    channel.basic_ack(deliveries[2].delivery_tag, true).unwrap();
    assert_eq!(broker.unacked_count("q"), Some(1));
    channel.basic_ack(0, true).unwrap(); // 0 with multiple: everything outstanding
    assert_eq!(broker.unacked_count("q"), Some(0));
    assert_eq!(broker.usage().messages, 0);
}

#[test]
fn requeued_message_keeps_its_position() {
    let (broker, _connection, channel) = setup();
    declare_queue(&channel, "q");
    for n in 0..4 {
        publish(&channel, "", "q", &n.to_string());
    }
    channel.basic_qos(2).unwrap();
    let consumer = consume(&channel, "q");
    let taken = drain(&consumer);
    assert_eq!(texts(&taken), ["0", "1"]);
    drop(consumer); // cancel: nothing more is delivered, the two stay unacked

    channel
        .basic_nack(taken[1].delivery_tag, false, true)
        .unwrap();
    channel
        .basic_nack(taken[0].delivery_tag, false, true)
        .unwrap();
    assert_eq!(broker.queue_depth("q"), Some(4));

    let again = consume(&channel, "q");
    let redelivered = drain(&again);
    assert_eq!(texts(&redelivered), ["0", "1"]);
    assert!(redelivered.iter().all(|d| d.redelivered));
    channel.basic_ack(0, true).unwrap();
    let rest = drain(&again);
    assert_eq!(texts(&rest), ["2", "3"]);
    assert!(rest.iter().all(|d| !d.redelivered));
}

#[test]
fn nack_multiple_with_requeue_returns_them_in_order() {
    let (broker, _connection, channel) = setup();
    declare_queue(&channel, "q");
    for n in 0..3 {
        publish(&channel, "", "q", &n.to_string());
    }
    let consumer = consume(&channel, "q");
    let taken = drain(&consumer);
    drop(consumer);
    channel
        .basic_nack(taken[2].delivery_tag, true, true)
        .unwrap();
    assert_eq!(
        (broker.queue_depth("q"), broker.unacked_count("q")),
        (Some(3), Some(0))
    );
    let again = consume(&channel, "q");
    assert_eq!(texts(&drain(&again)), ["0", "1", "2"]);
}

#[test]
fn reject_without_requeue_drops_the_message() {
    let (broker, _connection, channel) = setup();
    declare_queue(&channel, "q");
    publish(&channel, "", "q", "poison");
    let consumer = consume(&channel, "q");
    let delivery = consumer.try_recv().unwrap();
    channel.basic_reject(delivery.delivery_tag, false).unwrap();
    assert_eq!(
        (broker.queue_depth("q"), broker.unacked_count("q")),
        (Some(0), Some(0))
    );
    assert_eq!(broker.usage().messages, 0);
    assert_eq!(consumer.try_recv(), Err(TryRecvError::Empty));
}

#[test]
fn double_ack_is_406_and_closes_the_channel_without_losing_messages() {
    let (broker, connection, channel) = setup();
    declare_queue(&channel, "q");
    publish(&channel, "", "q", "a");
    publish(&channel, "", "q", "b");
    let consumer = consume(&channel, "q");
    let deliveries = drain(&consumer);
    channel
        .basic_ack(deliveries[0].delivery_tag, false)
        .unwrap();

    let error = channel
        .basic_ack(deliveries[0].delivery_tag, false)
        .unwrap_err();
    let reply = AmqpError::new(ReplyCode::PreconditionFailed, "unknown delivery tag 1");
    assert_eq!(error, Error::Channel(reply.clone()));
    assert_eq!(
        reply.reply_text(),
        "PRECONDITION_FAILED - unknown delivery tag 1"
    );
    // Later calls say why the channel is closed; the unacked "b" went back to the queue.
    assert_eq!(channel.basic_qos(1), Err(Error::ChannelClosed(reply)));
    assert_eq!(consumer.try_recv(), Err(TryRecvError::Ended));
    assert_eq!(
        (broker.queue_depth("q"), broker.unacked_count("q")),
        (Some(1), Some(0))
    );
    // Other channels are unaffected.
    let other = connection.open_channel().unwrap();
    let again = consume(&other, "q");
    let redelivered = drain(&again);
    assert_eq!(texts(&redelivered), ["b"]);
    assert!(redelivered[0].redelivered);
    broker.check_invariants().unwrap();
}

#[test]
fn unknown_delivery_tag_with_multiple_is_406() {
    let (_broker, _connection, channel) = setup();
    let error = channel.basic_nack(7, true, true).unwrap_err();
    assert_eq!(code(&error), Some(406));
    assert!(!channel.is_open());
}

#[test]
fn closing_a_channel_requeues_its_unacked_messages() {
    let (broker, connection, channel) = setup();
    declare_queue(&channel, "q");
    publish(&channel, "", "q", "a");
    let consumer = consume(&channel, "q");
    assert!(consumer.try_recv().is_ok());
    assert_eq!(broker.unacked_count("q"), Some(1));
    channel.close().unwrap();
    assert_eq!(consumer.try_recv(), Err(TryRecvError::Ended));
    assert_eq!(
        (broker.queue_depth("q"), broker.unacked_count("q")),
        (Some(1), Some(0))
    );
    assert_eq!(broker.consumer_count("q"), Some(0));
    assert_eq!(channel.basic_qos(1), Err(Error::Closed));

    let other = connection.open_channel().unwrap();
    let again = consume(&other, "q");
    assert!(again.try_recv().unwrap().redelivered);
}

#[test]
fn dropping_a_connection_requeues_and_deletes_its_exclusive_queues() {
    let broker = Broker::new();
    let connection = broker.connect();
    let channel = connection.open_channel().unwrap();
    declare_queue(&channel, "shared");
    let exclusive = QueueOptions {
        exclusive: true,
        ..QueueOptions::default()
    };
    channel.queue_declare("mine", exclusive).unwrap();
    publish(&channel, "", "shared", "a");
    let consumer = consume(&channel, "shared");
    assert!(consumer.try_recv().is_ok());
    drop(connection);
    assert_eq!(channel.basic_qos(1), Err(Error::Closed));
    assert_eq!(broker.queue_depth("shared"), Some(1));
    assert_eq!(broker.queue_depth("mine"), None);
    broker.check_invariants().unwrap();
}

#[test]
fn cancel_does_not_requeue_unacked_messages() {
    let (broker, _connection, channel) = setup();
    declare_queue(&channel, "q");
    publish(&channel, "", "q", "a");
    publish(&channel, "", "q", "b");
    channel.basic_qos(1).unwrap();
    let consumer = consume(&channel, "q");
    let delivery = consumer.try_recv().unwrap();
    channel.basic_cancel(consumer.tag()).unwrap();
    assert_eq!(consumer.try_recv(), Err(TryRecvError::Ended));
    assert_eq!(
        (broker.queue_depth("q"), broker.unacked_count("q")),
        (Some(1), Some(1))
    );
    assert_eq!(broker.consumer_count("q"), Some(0));
    // Still ackable after the cancel.
    channel.basic_ack(delivery.delivery_tag, false).unwrap();
    assert_eq!(broker.unacked_count("q"), Some(0));
    assert_eq!(broker.queue_depth("q"), Some(1));
}

#[tokio::test]
async fn recv_ends_after_the_buffer_once_the_consumer_is_cancelled() {
    let (_broker, _connection, channel) = setup();
    declare_queue(&channel, "q");
    let consumer = consume(&channel, "q");
    publish(&channel, "", "q", "a");
    channel.basic_cancel(consumer.tag()).unwrap();
    assert_eq!(consumer.recv().await.map(|d| d.body), Some(body("a")));
    assert_eq!(consumer.recv().await, None);
}

#[tokio::test]
async fn recv_waits_for_a_publish_from_another_task() {
    let broker = Broker::new();
    let connection = broker.connect();
    let channel = std::sync::Arc::new(connection.open_channel().unwrap());
    declare_queue(&channel, "q");
    let consumer = consume(&channel, "q");
    let publisher = std::sync::Arc::clone(&channel);
    let task = tokio::spawn(async move { publish(&publisher, "", "q", "late") });
    let delivery = consumer.recv().await.unwrap();
    assert_eq!(delivery.body, body("late"));
    task.await.unwrap();
}

#[test]
fn no_ack_consumers_take_messages_off_the_books_at_delivery() {
    let (broker, _connection, channel) = setup();
    declare_queue(&channel, "q");
    for n in 0..(broker_mem::NO_ACK_BUFFER_MAX + 1) {
        publish(&channel, "", "q", &n.to_string());
    }
    let options = ConsumeOptions {
        no_ack: true,
        ..ConsumeOptions::default()
    };
    let consumer = channel.basic_consume("q", options).unwrap();
    // The buffer window holds back the last one until the consumer reads.
    assert_eq!(consumer.buffered(), broker_mem::NO_ACK_BUFFER_MAX);
    assert_eq!(
        (broker.queue_depth("q"), broker.unacked_count("q")),
        (Some(1), Some(0))
    );
    assert!(consumer.try_recv().is_ok());
    assert_eq!(broker.queue_depth("q"), Some(0));
    assert_eq!(broker.usage().messages, 0);
}

// ------------------------------------------------------------------------------ errors

#[test]
fn publishing_to_a_missing_exchange_is_404_and_closes_the_channel() {
    let (broker, connection, channel) = setup();
    let error = channel
        .basic_publish("nope", "", Properties::default(), body("x"))
        .unwrap_err();
    let reply = AmqpError::new(ReplyCode::NotFound, "no exchange 'nope' in vhost '/'");
    assert_eq!(error, Error::Channel(reply.clone()));
    assert_eq!(
        channel.basic_publish("", "", Properties::default(), body("x")),
        Err(Error::ChannelClosed(reply.clone()))
    );
    // Closing it reports the cause once, then the number is free again.
    assert_eq!(channel.close(), Err(Error::ChannelClosed(reply)));
    assert!(connection.open_channel().is_ok());
    broker.check_invariants().unwrap();
}

#[test]
fn missing_queues_and_exchanges_are_404() {
    let (_broker, connection, channel) = setup();
    channel
        .exchange_declare("ex", ExchangeKind::Direct, ExchangeOptions::default())
        .unwrap();
    declare_queue(&channel, "q");
    type Attempt = fn(&Channel) -> Result<(), Error>;
    let attempts: [(Attempt, &str); 6] = [
        (
            |c| c.queue_bind("missing", "ex", "k"),
            "no queue 'missing' in vhost '/'",
        ),
        (
            |c| c.queue_bind("q", "missing", "k"),
            "no exchange 'missing' in vhost '/'",
        ),
        (
            |c| {
                c.queue_declare(
                    "missing",
                    QueueOptions {
                        passive: true,
                        ..Default::default()
                    },
                )
                .map(drop)
            },
            "no queue 'missing' in vhost '/'",
        ),
        (
            |c| {
                let passive = ExchangeOptions {
                    passive: true,
                    ..Default::default()
                };
                c.exchange_declare("missing", ExchangeKind::Direct, passive)
            },
            "no exchange 'missing' in vhost '/'",
        ),
        (
            |c| {
                c.basic_consume("missing", ConsumeOptions::default())
                    .map(drop)
            },
            "no queue 'missing' in vhost '/'",
        ),
        (
            |c| {
                c.basic_publish("missing", "", Properties::default(), Bytes::new())
                    .map(drop)
            },
            "no exchange 'missing' in vhost '/'",
        ),
    ];
    for (attempt, text) in attempts {
        let channel = connection.open_channel().unwrap();
        let error = attempt(&channel).unwrap_err();
        assert_eq!(
            error,
            Error::Channel(AmqpError::new(ReplyCode::NotFound, text))
        );
        assert!(!channel.is_open());
    }
    // Passive declares of what exists succeed and change nothing.
    let passive = QueueOptions {
        passive: true,
        ..QueueOptions::default()
    };
    assert_eq!(
        channel.queue_declare("q", passive).unwrap().message_count,
        0
    );
}

#[test]
fn redeclaring_with_different_arguments_is_406() {
    let (_broker, connection, channel) = setup();
    let durable = ExchangeOptions {
        durable: true,
        ..ExchangeOptions::default()
    };
    channel
        .exchange_declare("ex", ExchangeKind::Direct, durable)
        .unwrap();
    channel
        .exchange_declare("ex", ExchangeKind::Direct, durable)
        .unwrap(); // idempotent
    let error = channel
        .exchange_declare("ex", ExchangeKind::Fanout, durable)
        .unwrap_err();
    let text = "inequivalent arg 'type' for exchange 'ex' in vhost '/': received 'fanout' but current is 'direct'";
    assert_eq!(
        error,
        Error::Channel(AmqpError::new(ReplyCode::PreconditionFailed, text))
    );

    let channel = connection.open_channel().unwrap();
    let error = channel.exchange_declare("ex", ExchangeKind::Direct, ExchangeOptions::default());
    let text = "inequivalent arg 'durable' for exchange 'ex' in vhost '/': received 'false' but current is 'true'";
    assert_eq!(
        error,
        Err(Error::Channel(AmqpError::new(
            ReplyCode::PreconditionFailed,
            text
        )))
    );

    let channel = connection.open_channel().unwrap();
    channel
        .queue_declare(
            "q",
            QueueOptions {
                durable: true,
                ..QueueOptions::default()
            },
        )
        .unwrap();
    let error = channel
        .queue_declare("q", QueueOptions::default())
        .unwrap_err();
    let text = "inequivalent arg 'durable' for queue 'q' in vhost '/': received 'false' but current is 'true'";
    assert_eq!(
        error,
        Error::Channel(AmqpError::new(ReplyCode::PreconditionFailed, text))
    );
}

#[test]
fn reserved_names_and_the_default_exchange_are_403() {
    let (_broker, connection, channel) = setup();
    let error =
        channel.exchange_declare("amq.mine", ExchangeKind::Direct, ExchangeOptions::default());
    assert_eq!(error.map_err(|e| code(&e)), Err(Some(403)));
    let channel = connection.open_channel().unwrap();
    let error = channel.queue_declare("amq.mine", QueueOptions::default());
    assert_eq!(error.map_err(|e| code(&e)), Err(Some(403)));
    let channel = connection.open_channel().unwrap();
    let error = channel.exchange_declare("", ExchangeKind::Direct, ExchangeOptions::default());
    assert_eq!(error.map_err(|e| code(&e)), Err(Some(403)));
    let channel = connection.open_channel().unwrap();
    declare_queue(&channel, "q");
    assert_eq!(
        channel.queue_bind("q", "", "q").map_err(|e| code(&e)),
        Err(Some(403))
    );
}

#[test]
fn exclusive_queues_are_locked_to_their_connection() {
    let broker = Broker::new();
    let owner = broker.connect();
    let owner_channel = owner.open_channel().unwrap();
    let exclusive = QueueOptions {
        exclusive: true,
        ..QueueOptions::default()
    };
    owner_channel.queue_declare("mine", exclusive).unwrap();
    let stranger_connection = broker.connect();
    let stranger = stranger_connection.open_channel().unwrap();
    let error = stranger
        .basic_consume("mine", ConsumeOptions::default())
        .unwrap_err();
    assert_eq!(code(&error), Some(405));
    // Anyone may still publish to it.
    let publisher = broker.connect();
    publish(&publisher.open_channel().unwrap(), "", "mine", "x");
    assert_eq!(broker.queue_depth("mine"), Some(1));
}

#[test]
fn server_names_queues_and_consumer_tags_when_asked() {
    let (broker, _connection, channel) = setup();
    let first = channel.queue_declare("", QueueOptions::default()).unwrap();
    let second = channel.queue_declare("", QueueOptions::default()).unwrap();
    assert_eq!(
        (first.name.as_str(), second.name.as_str()),
        ("amq.gen-1", "amq.gen-2")
    );
    let consumer = consume(&channel, &first.name);
    assert_eq!(consumer.tag(), "amq.ctag-1");
    assert_eq!(broker.consumer_count("amq.gen-1"), Some(1));
}

#[test]
fn reusing_a_consumer_tag_on_a_channel_is_a_530_connection_error() {
    let (broker, connection, channel) = setup();
    declare_queue(&channel, "q");
    publish(&channel, "", "q", "a");
    let options = ConsumeOptions {
        consumer_tag: "me".into(),
        ..ConsumeOptions::default()
    };
    let first = channel.basic_consume("q", options.clone()).unwrap();
    assert!(first.try_recv().is_ok());
    let error = channel.basic_consume("q", options).unwrap_err();
    assert!(matches!(&error, Error::Connection(reply) if reply.code == ReplyCode::NotAllowed));
    assert!(matches!(
        connection.open_channel(),
        Err(Error::ConnectionClosed(_))
    ));
    assert_eq!(
        (broker.queue_depth("q"), broker.unacked_count("q")),
        (Some(1), Some(0))
    );
    broker.check_invariants().unwrap();
}

#[test]
fn an_exclusive_consumer_keeps_others_out() {
    let (_broker, connection, channel) = setup();
    declare_queue(&channel, "q");
    let options = ConsumeOptions {
        exclusive: true,
        ..ConsumeOptions::default()
    };
    let _only = channel.basic_consume("q", options).unwrap();
    let other = connection.open_channel().unwrap();
    let error = other
        .basic_consume("q", ConsumeOptions::default())
        .unwrap_err();
    assert_eq!(code(&error), Some(403));
}

#[test]
fn auto_delete_queue_goes_with_its_last_consumer() {
    let (broker, _connection, channel) = setup();
    channel
        .exchange_declare("ev", ExchangeKind::Fanout, ExchangeOptions::default())
        .unwrap();
    channel
        .queue_declare(
            "temp",
            QueueOptions {
                auto_delete: true,
                ..QueueOptions::default()
            },
        )
        .unwrap();
    channel.queue_bind("temp", "ev", "").unwrap();
    publish(&channel, "ev", "", "a");
    let consumer = consume(&channel, "temp");
    let delivery = consumer.try_recv().unwrap();
    drop(consumer);
    assert_eq!(broker.queue_depth("temp"), None);
    assert!(broker.bindings().is_empty());
    // Its unacked delivery can still be settled; the message is simply gone.
    channel
        .basic_nack(delivery.delivery_tag, false, true)
        .unwrap();
    assert_eq!(broker.usage().messages, 0);
    broker.check_invariants().unwrap();
}

#[test]
fn an_oversized_body_is_406() {
    let limits = Limits {
        body_bytes_max: 4,
        ..Limits::default()
    };
    let broker = Broker::with_limits(limits);
    let connection = broker.connect();
    let channel = connection.open_channel().unwrap();
    declare_queue(&channel, "q");
    publish(&channel, "", "q", "four");
    let error = channel
        .basic_publish("", "q", Properties::default(), body("fives"))
        .unwrap_err();
    let text = "message size 5 is larger than configured max size 4";
    assert_eq!(
        error,
        Error::Channel(AmqpError::new(ReplyCode::PreconditionFailed, text))
    );
    assert_eq!(broker.queue_depth("q"), Some(1));
}

#[test]
fn a_publish_past_the_held_ceiling_is_nacked_and_enqueued_nowhere() {
    let limits = Limits {
        held_messages_max: 3,
        ..Limits::default()
    };
    let broker = Broker::with_limits(limits);
    let connection = broker.connect();
    let channel = connection.open_channel().unwrap();
    channel
        .exchange_declare("ev", ExchangeKind::Fanout, ExchangeOptions::default())
        .unwrap();
    for queue in ["a", "b"] {
        declare_queue(&channel, queue);
        channel.queue_bind(queue, "ev", "").unwrap();
    }
    publish(&channel, "ev", "", "first"); // 2 held
    let confirm = channel
        .basic_publish("ev", "", Properties::default(), body("second"))
        .unwrap();
    assert!(matches!(confirm, Confirm::Nack { .. }));
    assert_eq!(
        (broker.queue_depth("a"), broker.queue_depth("b")),
        (Some(1), Some(1))
    );
    assert!(channel.is_open());
    publish(&channel, "", "a", "third"); // one copy still fits
}

#[test]
fn a_user_id_that_is_not_the_connections_user_is_406() {
    let (_broker, _connection, channel) = setup();
    declare_queue(&channel, "q");
    let properties = Properties {
        user_id: Some("mallory".into()),
        ..Properties::default()
    };
    let error = channel
        .basic_publish("", "q", properties, body("x"))
        .unwrap_err();
    let text = "user_id property set to 'mallory' but authenticated user was 'guest'";
    assert_eq!(
        error,
        Error::Channel(AmqpError::new(ReplyCode::PreconditionFailed, text))
    );
}

#[test]
fn channel_numbers_are_limited_and_reused() {
    let limits = Limits {
        channels_per_connection_max: 2,
        ..Limits::default()
    };
    let broker = Broker::with_limits(limits);
    let connection = broker.connect();
    let first = connection.open_channel().unwrap();
    let _second = connection.open_channel().unwrap();
    assert!(matches!(connection.open_channel(), Err(Error::Invalid(_))));
    drop(first);
    assert!(connection.open_channel().is_ok());
}

#[test]
fn a_name_longer_than_a_short_string_is_refused_before_the_broker() {
    let (_broker, _connection, channel) = setup();
    let long = "q".repeat(256);
    assert!(matches!(
        channel.queue_declare(&long, QueueOptions::default()),
        Err(Error::Invalid(_))
    ));
    assert!(channel.is_open());
}

#[test]
fn handles_can_be_shared_between_tasks() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Broker>();
    send_sync::<broker_mem::Connection>();
    send_sync::<Channel>();
    send_sync::<Consumer>();
}

// ------------------------------------------------------------------------------ queue arguments

fn declare_with(channel: &Channel, name: &str, argument: (&str, FieldValue)) {
    let arguments = FieldTable::from([(argument.0.to_owned(), argument.1)]);
    channel
        .queue_declare_with(name, QueueOptions::default(), &arguments)
        .unwrap();
}

#[test]
fn a_single_active_consumer_keeps_its_turn_while_blocked_and_hands_over_on_cancel() {
    let (broker, _connection, channel) = setup();
    declare_with(
        &channel,
        "q",
        ("x-single-active-consumer", FieldValue::Bool(true)),
    );
    channel.basic_qos(1).unwrap();
    let active = consume(&channel, "q");
    let waiting = consume(&channel, "q");
    for text in ["a", "b", "c"] {
        publish(&channel, "", "q", text);
    }
    // The active consumer's prefetch is full: the others still get nothing.
    let first = drain(&active);
    assert_eq!(texts(&first), ["a"]);
    assert!(drain(&waiting).is_empty());
    assert_eq!(broker.queue_depth("q"), Some(2));
    // A cancel hands over at once; the cancelled consumer's delivery stays unacked on the
    // channel, as for any cancel.
    channel.basic_cancel(active.tag()).unwrap();
    assert_eq!(texts(&drain(&waiting)), ["b"]);
    assert_eq!(broker.unacked_count("q"), Some(2));
    channel.basic_ack(first[0].delivery_tag, false).unwrap();
    assert!(drain(&waiting).is_empty());
    broker.check_invariants().unwrap();
}

#[test]
fn a_priority_queue_feeds_a_consumer_the_highest_priority_waiting() {
    let (broker, _connection, channel) = setup();
    declare_with(&channel, "q", ("x-max-priority", FieldValue::I64(10)));
    channel.basic_qos(1).unwrap();
    let consumer = consume(&channel, "q");
    let with_priority = |text: &str, priority: u8| {
        let properties = Properties {
            priority: Some(priority),
            ..Properties::default()
        };
        let confirm = channel.basic_publish("", "q", properties, body(text));
        assert_eq!(confirm, Ok(Confirm::Ack));
    };
    // The first goes straight out; the rest wait behind the prefetch of 1 and are then
    // delivered by priority.
    with_priority("first", 1);
    with_priority("two", 2);
    with_priority("nine", 9);
    with_priority("five", 5);
    let mut got = Vec::new();
    for _ in 0..4 {
        let delivery = consumer.try_recv().unwrap();
        got.push(texts(std::slice::from_ref(&delivery)).remove(0));
        channel.basic_ack(delivery.delivery_tag, false).unwrap();
    }
    assert_eq!(got, ["first", "nine", "five", "two"]);
    broker.check_invariants().unwrap();
}

// ------------------------------------------------------------------------------ transactions

#[test]
fn a_commit_returns_the_mandatory_messages_no_queue_took() {
    let (broker, _connection, channel) = setup();
    declare_queue(&channel, "q");
    channel.tx_select().unwrap();
    let mandatory = broker_mem::PublishOptions { mandatory: true };
    for key in ["q", "nowhere"] {
        let published = channel
            .basic_publish_with("", key, mandatory, Properties::default(), body(key))
            .unwrap();
        assert_eq!(published.confirm, Confirm::Pending);
        assert!(published.returned.is_none(), "returned at the commit");
    }
    let returned = channel.tx_commit().unwrap();
    assert_eq!(returned.len(), 1);
    assert_eq!(
        (returned[0].reply_code, returned[0].routing_key.as_str()),
        (312, "nowhere")
    );
    assert_eq!(broker.queue_depth("q"), Some(1));
    broker.check_invariants().unwrap();
}

#[test]
fn a_transaction_counts_against_the_held_ceilings_at_publish_and_at_commit() {
    let limits = Limits {
        held_messages_max: 2,
        ..Limits::default()
    };
    let broker = Broker::with_limits(limits);
    let connection = broker.connect();
    let other = connection.open_channel().unwrap();
    declare_queue(&other, "q");
    // More than the broker can hold is refused at the publish: 406, rolled back.
    let channel = connection.open_channel().unwrap();
    channel.tx_select().unwrap();
    for text in ["a", "b"] {
        let confirm = channel.basic_publish("", "q", Properties::default(), body(text));
        assert_eq!(confirm, Ok(Confirm::Pending));
    }
    let refused = channel
        .basic_publish("", "q", Properties::default(), body("c"))
        .unwrap_err();
    assert_eq!(code(&refused), Some(406));
    assert_eq!(broker.queue_depth("q"), Some(0));
    // What fitted when published but not when committed, because the broker filled up in
    // the meantime, is refused whole at the commit.
    let channel = connection.open_channel().unwrap();
    channel.tx_select().unwrap();
    for text in ["a", "b"] {
        let confirm = channel.basic_publish("", "q", Properties::default(), body(text));
        assert_eq!(confirm, Ok(Confirm::Pending));
    }
    publish(&other, "", "q", "meanwhile");
    let refused = channel.tx_commit().unwrap_err();
    assert_eq!(code(&refused), Some(406));
    assert!(!channel.is_open());
    assert_eq!(broker.queue_depth("q"), Some(1));
    broker.check_invariants().unwrap();
}

#[test]
fn a_commit_that_fails_part_way_hands_back_its_returns_beside_the_error() {
    let (broker, _connection, channel) = setup();
    let refusing = FieldTable::from([
        ("x-max-length".to_owned(), FieldValue::I64(0)),
        (
            "x-overflow".to_owned(),
            FieldValue::String("reject-publish".to_owned()),
        ),
    ]);
    channel
        .queue_declare_with("full", QueueOptions::default(), &refusing)
        .unwrap();
    declare_queue(&channel, "q");
    channel.tx_select().unwrap();
    let mandatory = broker_mem::PublishOptions { mandatory: true };
    for key in ["q", "nowhere", "full"] {
        channel
            .basic_publish_with("", key, mandatory, Properties::default(), body(key))
            .unwrap();
    }
    let (returned, outcome) = channel.tx_commit_with_returns();
    assert_eq!(outcome.map_err(|e| code(&e)), Err(Some(406)));
    let keys: Vec<&str> = returned.iter().map(|r| r.routing_key.as_str()).collect();
    assert_eq!(keys, ["nowhere"]);
    assert_eq!(broker.queue_depth("q"), Some(1), "the rest was done");
    assert!(!channel.is_open());
    broker.check_invariants().unwrap();
}

#[test]
fn a_transaction_holds_at_most_tx_pending_max() {
    let (broker, _connection, channel) = setup();
    declare_queue(&channel, "q");
    channel.tx_select().unwrap();
    for _ in 0..broker_mem::TX_PENDING_MAX {
        let confirm = channel.basic_publish("", "q", Properties::default(), Bytes::new());
        assert_eq!(confirm, Ok(Confirm::Pending));
    }
    let refused = channel
        .basic_publish("", "q", Properties::default(), Bytes::new())
        .unwrap_err();
    assert_eq!(code(&refused), Some(406));
    // The close rolled it back: nothing was enqueued.
    assert_eq!(broker.queue_depth("q"), Some(0));
    broker.check_invariants().unwrap();
}

#[test]
fn a_mandatory_publish_whose_queue_went_before_the_commit_comes_back() {
    let (_broker, _connection, channel) = setup();
    declare_queue(&channel, "q");
    channel.tx_select().unwrap();
    let mandatory = broker_mem::PublishOptions { mandatory: true };
    channel
        .basic_publish_with("", "q", mandatory, Properties::default(), body("m"))
        .unwrap();
    channel.queue_delete("q", false, false).unwrap();
    let returned = channel.tx_commit().unwrap();
    assert_eq!(returned.len(), 1);
    assert_eq!(returned[0].reply_text, "NO_ROUTE");
}

#[test]
fn channels_open_under_the_clients_number_or_the_lowest_free_one() {
    let mut engine = broker_mem::Engine::new(Limits::default());
    let connection = engine.open_connection("guest");
    let seven = engine.open_channel_numbered(connection, 7).unwrap();
    assert!(matches!(
        engine.open_channel_numbered(connection, 7),
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        engine.open_channel_numbered(connection, 0),
        Err(Error::Invalid(_))
    ));

    assert_eq!(engine.channel_number(seven), Some(7));
    let first = engine.open_channel(connection).unwrap();
    assert_eq!(
        engine.channel_number(first),
        Some(1),
        "the lowest free number"
    );
    let second = engine.open_channel(connection).unwrap();
    assert_eq!(engine.channel_number(second), Some(2));
    engine.close_channel(seven).unwrap();
    assert_eq!(engine.channel_number(seven), None);
    // 7 is free again once closed; 1 is taken by `first`.
    engine.open_channel_numbered(connection, 7).unwrap();
    assert!(matches!(
        engine.open_channel_numbered(connection, 1),
        Err(Error::Invalid(_))
    ));
    engine.close_channel(first).unwrap();
    engine.close_connection(connection);
    // The limit counts open channels, whatever their numbers.
    let limits = Limits {
        channels_per_connection_max: 2,
        ..Limits::default()
    };
    let mut small = broker_mem::Engine::new(limits);
    let tight = small.open_connection("guest");
    small.open_channel_numbered(tight, 900).unwrap();
    small.open_channel(tight).unwrap();
    assert!(matches!(
        small.open_channel_numbered(tight, 901),
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        engine.open_channel_numbered(connection, 3),
        Err(Error::Closed)
    ));
}

// ------------------------------------------------------------ settling what is still buffered

/// A client may settle deliveries its consumer has not taken from its buffer yet (a nack or
/// ack of tag 0, "all outstanding"): they are settled, the consumer gets the credit back and
/// more deliveries follow, behind the ones still waiting, as a RabbitMQ client sees them.
/// Nothing is lost, and a later ack of a stale tag is the usual 406.
#[test]
fn settling_deliveries_still_buffered_gives_credit_back_and_loses_nothing() {
    let (broker, _connection, channel) = setup();
    declare_queue(&channel, "q");
    channel.basic_qos(1).unwrap();
    let consumer = consume(&channel, "q");
    publish(&channel, "", "q", "m1");
    assert_eq!(consumer.buffered(), 1);
    // Tag 1 is still in the buffer: requeued, and redelivered at once as tag 2.
    channel.basic_nack(0, true, true).unwrap();
    let deliveries = drain(&consumer);
    let seen: Vec<(u64, bool)> = (deliveries.iter())
        .map(|d| (d.delivery_tag, d.redelivered))
        .collect();
    assert_eq!(seen, [(1, false), (2, true)]);
    assert_eq!(texts(&deliveries), ["m1", "m1"]);
    channel.basic_ack(2, false).unwrap();
    assert_eq!(broker.queue_depth("q"), Some(0));
    assert_eq!(broker.unacked_count("q"), Some(0));
    broker.check_invariants().unwrap();
    assert_eq!(code(&channel.basic_ack(1, false).unwrap_err()), Some(406));
}

/// The same through another consumer: a multiple ack on a channel settles every consumer's
/// deliveries up to the tag, taken or not.
#[test]
fn a_multiple_ack_through_one_consumer_frees_anothers_buffered_credit() {
    let (broker, _connection, channel) = setup();
    declare_queue(&channel, "a");
    declare_queue(&channel, "b");
    channel.basic_qos(1).unwrap();
    let on_a = consume(&channel, "a");
    let on_b = consume(&channel, "b");
    publish(&channel, "", "b", "b1");
    publish(&channel, "", "a", "a1");
    let taken = on_a.try_recv().unwrap();
    channel.basic_ack(taken.delivery_tag, true).unwrap();
    publish(&channel, "", "b", "b2");
    publish(&channel, "", "b", "b3");
    assert_eq!(texts(&drain(&on_b)), ["b1", "b2"]);
    assert_eq!(broker.queue_depth("b"), Some(1));
    assert_eq!(broker.unacked_count("b"), Some(1));
    broker.check_invariants().unwrap();
}

/// However a client settles, a consumer's buffer holds at most `CONSUMER_BUFFER_MAX`
/// deliveries (here a prefetch-0 consumer, which credit does not limit at all): the rest wait
/// in the queue, and go on as soon as the consumer takes from its buffer, with no other call.
#[test]
fn a_full_consumer_buffer_holds_deliveries_back_until_the_consumer_takes_one() {
    let max = broker_mem::CONSUMER_BUFFER_MAX;
    let (broker, _connection, channel) = setup();
    declare_queue(&channel, "q");
    let consumer = consume(&channel, "q");
    for n in 0..max + 2 {
        publish(&channel, "", "q", &n.to_string());
    }
    assert_eq!(consumer.buffered(), max);
    assert_eq!(broker.queue_depth("q"), Some(2));
    let first = consumer.try_recv().unwrap();
    assert_eq!(texts(&[first]), ["0"]);
    assert_eq!(consumer.buffered(), max);
    assert_eq!(broker.queue_depth("q"), Some(1));
    assert_eq!(broker.unacked_count("q"), Some(max + 1));
    broker.check_invariants().unwrap();
}

/// A header table keeps its publisher's key order through the broker, nested tables too; the
/// `x-delivery-count` a quorum queue adds sorts the headers, as RabbitMQ's `add_header` does
/// (probed on 3.10.8 with pika, which keeps a table's order: `alpha`, `x-delivery-count`,
/// `zeta` for headers published as `zeta`, `alpha`).
#[test]
fn header_keys_keep_the_publishers_order() {
    let broker = Broker::new();
    let connection = broker.connect();
    let channel = connection.open_channel().unwrap();
    let nested = FieldTable::from([
        ("z".to_owned(), FieldValue::I8(1)),
        ("a".to_owned(), FieldValue::Void),
    ]);
    let headers = FieldTable::from([
        ("zeta".to_owned(), FieldValue::I32(1)),
        ("alpha".to_owned(), FieldValue::I32(2)),
        ("nested".to_owned(), FieldValue::Table(nested)),
    ]);
    let properties = Properties {
        headers: Some(headers),
        ..Properties::default()
    };
    let keys = |delivery: &Delivery| -> Vec<String> {
        let headers = delivery.properties.headers.as_ref().unwrap();
        headers.keys().cloned().collect()
    };
    declare_queue(&channel, "classic");
    let durable = QueueOptions {
        durable: true,
        ..QueueOptions::default()
    };
    let quorum = FieldTable::from([(
        "x-queue-type".to_owned(),
        FieldValue::String("quorum".to_owned()),
    )]);
    channel
        .queue_declare_with("quorum", durable, &quorum)
        .unwrap();
    for queue in ["classic", "quorum"] {
        let published = channel.basic_publish("", queue, properties.clone(), body("m"));
        assert_eq!(published, Ok(Confirm::Ack));
    }

    let classic = channel
        .basic_get("classic", true)
        .unwrap()
        .unwrap()
        .delivery;
    assert_eq!(keys(&classic), ["zeta", "alpha", "nested"]);
    let Some(FieldValue::Table(nested)) =
        classic.properties.headers.as_ref().unwrap().get("nested")
    else {
        panic!("nested is a table");
    };
    assert_eq!(nested.keys().collect::<Vec<_>>(), ["z", "a"]);

    let first = channel
        .basic_get("quorum", false)
        .unwrap()
        .unwrap()
        .delivery;
    assert_eq!(
        keys(&first),
        ["alpha", "nested", "x-delivery-count", "zeta"]
    );
    channel.basic_nack(first.delivery_tag, false, true).unwrap();
    let again = channel.basic_get("quorum", true).unwrap().unwrap().delivery;
    assert_eq!(
        keys(&again),
        ["alpha", "nested", "x-delivery-count", "zeta"]
    );
}
