//! lapin, unmodified, against broker-mem's wire server on loopback TCP: the protocol a real
//! client library expects, RabbitMQ's reply codes, and the broker state shared with in-process
//! clients.
#![cfg(feature = "wire")]

use std::time::Duration;

use broker_mem::Broker;
use broker_mem::wire::{WireConfig, WireServer};
use futures::StreamExt as _;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    BasicRecoverOptions, BasicRejectOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};

const WAIT: Duration = Duration::from_secs(10);

/// A wire server for `broker` on an ephemeral loopback port; returns its AMQP URL.
async fn serve(broker: Broker, config: WireConfig) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(WireServer::new(broker, config).serve_tcp(listener));
    format!("amqp://guest:guest@127.0.0.1:{port}/%2f")
}

async fn connect(url: &str) -> Connection {
    tokio::time::timeout(
        WAIT,
        Connection::connect(url, ConnectionProperties::default()),
    )
    .await
    .expect("connect in time")
    .expect("connect")
}

#[tokio::test]
async fn lapin_publishes_with_confirms_consumes_and_acks() {
    let broker = Broker::new();
    let url = serve(broker.clone(), WireConfig::default()).await;
    let connection = connect(&url).await;
    let channel = connection.create_channel().await.unwrap();
    channel
        .exchange_declare(
            "events".into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let declared = channel
        .queue_declare(
            "audit".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(declared.message_count(), 0);
    channel
        .queue_bind(
            "audit".into(),
            "events".into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    // A body bigger than one frame travels in several body frames, both ways.
    let big = vec![7u8; 300_000];
    for body in [b"one".to_vec(), big.clone(), Vec::new()] {
        let confirm = channel
            .basic_publish(
                "events".into(),
                "".into(),
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_message_id("m".into()),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(confirm.is_ack());
    }
    // Shared state: the in-process view sees what the wire client published.
    assert_eq!(broker.queue_depth("audit"), Some(3));

    channel
        .basic_qos(2, BasicQosOptions::default())
        .await
        .unwrap();
    let mut consumer = channel
        .basic_consume(
            "audit".into(),
            "c1".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let first = consumer.next().await.unwrap().unwrap();
    assert_eq!(first.data, b"one");
    assert_eq!(first.properties.delivery_mode(), &Some(2));
    assert_eq!(
        first.properties.message_id().as_ref().map(|s| s.as_str()),
        Some("m")
    );
    let second = consumer.next().await.unwrap().unwrap();
    assert_eq!(second.data, big);
    assert_eq!(broker.unacked_count("audit"), Some(2), "prefetch 2");
    first.acker.ack(BasicAckOptions::default()).await.unwrap();
    second
        .acker
        .nack(BasicNackOptions {
            requeue: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let third = consumer.next().await.unwrap().unwrap();
    assert!(third.data.is_empty());
    third.acker.ack(BasicAckOptions::default()).await.unwrap();
    let again = consumer.next().await.unwrap().unwrap();
    assert_eq!(again.data, big);
    assert!(again.redelivered);
    again
        .acker
        .reject(BasicRejectOptions { requeue: false })
        .await
        .unwrap();
    // Settling is one-way; a round trip proves the server has processed it.
    channel
        .queue_declare(
            "audit".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(broker.queue_depth("audit"), Some(0));
    assert_eq!(broker.unacked_count("audit"), Some(0));
    broker.check_invariants().unwrap();
    connection.close(200, "bye".into()).await.unwrap();
}

#[tokio::test]
async fn unacked_messages_are_requeued_when_a_connection_closes() {
    let broker = Broker::new();
    let url = serve(broker.clone(), WireConfig::default()).await;
    let local = broker.connect();
    let in_process = local.open_channel().unwrap();
    in_process
        .queue_declare("work", broker_mem::QueueOptions::default())
        .unwrap();
    in_process
        .basic_publish(
            "",
            "work",
            broker_mem::Properties::default(),
            broker_mem::Bytes::from_static(b"job"),
        )
        .unwrap();

    let connection = connect(&url).await;
    let channel = connection.create_channel().await.unwrap();
    let mut consumer = channel
        .basic_consume(
            "work".into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let delivery = consumer.next().await.unwrap().unwrap();
    assert!(!delivery.redelivered);
    assert_eq!(broker.unacked_count("work"), Some(1));
    connection.close(200, "bye".into()).await.unwrap();
    // The close handshake has finished; the server requeued before answering.
    assert_eq!(broker.queue_depth("work"), Some(1));
    let inproc = in_process
        .basic_consume("work", broker_mem::ConsumeOptions::default())
        .unwrap();
    let again = inproc.try_recv().unwrap();
    assert!(again.redelivered);
}

#[tokio::test]
async fn recover_redelivers_over_the_wire_and_requeue_false_is_540() {
    let broker = Broker::new();
    let url = serve(broker.clone(), WireConfig::default()).await;
    let connection = connect(&url).await;
    let channel = connection.create_channel().await.unwrap();
    channel
        .queue_declare(
            "work".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    for body in [b"a", b"b"] {
        channel
            .basic_publish(
                "".into(),
                "work".into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default(),
            )
            .await
            .unwrap();
    }
    let mut consumer = channel
        .basic_consume(
            "work".into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut next = async || {
        tokio::time::timeout(WAIT, consumer.next())
            .await
            .expect("a delivery in time")
            .expect("consumer open")
            .expect("delivery")
    };
    let (a, b) = (next().await, next().await);
    assert!(!a.redelivered && !b.redelivered);
    // Synchronous recover: by recover-ok both are back in the queue and on their way again.
    channel
        .basic_recover(BasicRecoverOptions { requeue: true })
        .await
        .unwrap();
    let (a2, b2) = (next().await, next().await);
    assert_eq!((&a2.data[..], &b2.data[..]), (&b"a"[..], &b"b"[..]));
    assert!(a2.redelivered && b2.redelivered);
    assert!(a2.delivery_tag > b.delivery_tag);
    channel
        .basic_ack(b2.delivery_tag, BasicAckOptions { multiple: true })
        .await
        .unwrap();
    let error = channel
        .basic_recover(BasicRecoverOptions { requeue: false })
        .await
        .unwrap_err();
    let lapin::ErrorKind::ProtocolError(reply) = error.kind() else {
        panic!("expected a protocol error, got {error}");
    };
    assert_eq!(
        (reply.get_id(), reply.get_message().as_str()),
        (540, "NOT_IMPLEMENTED - requeue=false")
    );
    assert_eq!(broker.unacked_count("work"), Some(0));
    assert_eq!(broker.queue_depth("work"), Some(0));
}

#[tokio::test]
async fn a_missing_exchange_closes_the_channel_with_404_and_the_connection_lives_on() {
    let url = serve(Broker::new(), WireConfig::default()).await;
    let connection = connect(&url).await;
    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let published = channel
        .basic_publish(
            "nowhere".into(),
            "".into(),
            BasicPublishOptions::default(),
            b"x",
            BasicProperties::default(),
        )
        .await
        .unwrap()
        .await;
    let error = published.expect_err("the channel closed");
    let text = error.to_string();
    assert!(
        text.contains("NOT_FOUND - no exchange 'nowhere' in vhost '/'"),
        "{text}"
    );
    assert!(!channel.status().connected());

    let fresh = connection.create_channel().await.unwrap();
    let missing = fresh
        .queue_declare(
            "absent".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect_err("404");
    assert!(missing.to_string().contains("NOT_FOUND"), "{missing}");
    let other = connection.create_channel().await.unwrap();
    other
        .exchange_declare(
            "e".into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let inequivalent = other
        .exchange_declare(
            "e".into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect_err("406");
    assert!(
        inequivalent.to_string().contains("PRECONDITION_FAILED"),
        "{inequivalent}"
    );
    assert!(connection.status().connected());
    connection.close(200, "bye".into()).await.unwrap();
}

#[tokio::test]
async fn a_wrong_password_is_refused_with_403() {
    let url = serve(Broker::new(), WireConfig::default()).await;
    let bad = url.replace("guest:guest", "guest:wrong");
    let refused = tokio::time::timeout(
        WAIT,
        Connection::connect(&bad, ConnectionProperties::default()),
    )
    .await
    .expect("answer in time")
    .expect_err("refused");
    let text = refused.to_string();
    assert!(
        text.contains("ACCESS_REFUSED") || text.contains("403"),
        "{text}"
    );

    let config = WireConfig {
        users: vec![("svc".into(), "s3cret".into())],
        ..WireConfig::default()
    };
    let url = serve(Broker::new(), config).await;
    let custom = url.replace("guest:guest", "svc:s3cret");
    connect(&custom)
        .await
        .close(200, "bye".into())
        .await
        .unwrap();
    assert!(
        Connection::connect(&url, ConnectionProperties::default())
            .await
            .is_err(),
        "guest is not configured"
    );
}

#[tokio::test]
async fn topic_routing_mandatory_returns_get_purge_and_deletes_work_over_the_wire() {
    use lapin::options::{
        BasicGetOptions, ExchangeDeleteOptions, QueueDeleteOptions, QueuePurgeOptions,
    };
    let broker = Broker::new();
    let url = serve(broker.clone(), WireConfig::default()).await;
    let connection = connect(&url).await;
    let channel = connection.create_channel().await.unwrap();
    channel
        .exchange_declare(
            "logs".into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_declare(
            "errors".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            "errors".into(),
            "logs".into(),
            "*.error".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let publish = |key: &'static str, mandatory: bool| {
        let channel = channel.clone();
        async move {
            channel
                .basic_publish(
                    "logs".into(),
                    key.into(),
                    BasicPublishOptions {
                        mandatory,
                        ..Default::default()
                    },
                    key.as_bytes(),
                    BasicProperties::default(),
                )
                .await
                .unwrap()
                .await
                .unwrap()
        }
    };
    assert!(publish("db.error", true).await.is_ack());
    // Unroutable and mandatory: returned to the publisher, then confirmed.
    let returned = publish("db.info", true).await;
    let message = returned.take_message().expect("basic.return");
    assert_eq!(message.data, b"db.info");
    assert_eq!(message.reply_code, 312);
    assert!(publish("web.error", false).await.is_ack());

    let got = channel
        .basic_get("errors".into(), BasicGetOptions { no_ack: false })
        .await
        .unwrap()
        .expect("a message");
    assert_eq!(got.delivery.data, b"db.error");
    assert_eq!(got.message_count, 1);
    got.delivery
        .acker
        .ack(BasicAckOptions::default())
        .await
        .unwrap();
    let purged = channel
        .queue_purge("errors".into(), QueuePurgeOptions::default())
        .await
        .unwrap();
    assert_eq!(purged, 1);
    assert!(
        channel
            .basic_get("errors".into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
            .is_none()
    );
    let deleted = channel
        .queue_delete("errors".into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    assert_eq!(deleted, 0);
    channel
        .exchange_delete("logs".into(), ExchangeDeleteOptions::default())
        .await
        .unwrap();
    assert_eq!(broker.queue_depth("errors"), None);
    assert!(broker.exchanges().iter().all(|e| e.name != "logs"));
    connection.close(200, "bye".into()).await.unwrap();
}

/// `channel.flow` from the client: `active=true` is answered, `active=false` is 540 and closes
/// the connection. Run against RabbitMQ too, when it is reachable, with the same expectations.
#[tokio::test]
async fn channel_flow_active_false_is_540_as_on_rabbitmq() {
    let mem = serve(Broker::new(), WireConfig::default()).await;
    let rabbit = ports::testing::RabbitVhost::create("wire-channel-flow")
        .await
        .expect("create a vhost");
    let mut urls = vec![mem];
    urls.extend(rabbit.as_ref().map(|vhost| vhost.amqp_url().to_owned()));
    for url in urls {
        let connection = connect(&url).await;
        let channel = connection.create_channel().await.unwrap();
        let active = channel
            .channel_flow(lapin::options::ChannelFlowOptions { active: true })
            .await
            .unwrap();
        assert!(active, "{url}");
        let error = channel
            .channel_flow(lapin::options::ChannelFlowOptions { active: false })
            .await
            .unwrap_err();
        let lapin::ErrorKind::ProtocolError(reply) = error.kind() else {
            panic!("{url}: expected a protocol error, got {error}");
        };
        assert_eq!(
            (reply.get_id(), reply.get_message().as_str()),
            (540, "NOT_IMPLEMENTED - active=false"),
            "{url}"
        );
    }
    if let Some(vhost) = rabbit {
        vhost.delete().await.expect("delete the vhost");
    }
}

#[tokio::test]
async fn queue_and_consumer_arguments_reach_the_broker_over_the_wire() {
    use lapin::options::BasicGetOptions;
    use lapin::types::AMQPValue;

    let broker = Broker::new();
    let url = serve(broker.clone(), WireConfig::default()).await;
    let connection = connect(&url).await;
    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut arguments = FieldTable::default();
    arguments.insert("x-max-priority".into(), AMQPValue::ShortShortUInt(5));
    arguments.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
    channel
        .queue_declare("q".into(), QueueDeclareOptions::default(), arguments)
        .await
        .unwrap();
    let parsed = broker.queue_arguments("q").expect("declared");
    assert_eq!(parsed.max_priority, Some(5));
    assert!(parsed.single_active_consumer);
    // A priority queue over the wire: the higher priority comes out first.
    for (body, priority) in [(&b"low"[..], 1), (&b"high"[..], 5)] {
        let properties = BasicProperties::default().with_priority(priority);
        channel
            .basic_publish(
                "".into(),
                "q".into(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let first = channel
        .basic_get("q".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("a message");
    assert_eq!(first.delivery.data, b"high");
    // Consumer arguments are checked by the broker: x-priority must be an integer.
    let mut bad = FieldTable::default();
    bad.insert("x-priority".into(), AMQPValue::LongString("high".into()));
    let refused = channel
        .basic_consume("q".into(), "c".into(), BasicConsumeOptions::default(), bad)
        .await
        .expect_err("406");
    assert!(
        refused
            .to_string()
            .contains("invalid arg 'x-priority' for queue 'q'"),
        "{refused}"
    );
    assert!(connection.status().connected());
    connection.close(200, "bye".into()).await.unwrap();
}

#[tokio::test]
async fn transactions_run_over_the_wire_and_exclude_confirm_mode() {
    let broker = Broker::new();
    let url = serve(broker.clone(), WireConfig::default()).await;
    let connection = connect(&url).await;
    let channel = connection.create_channel().await.unwrap();
    channel
        .queue_declare(
            "q".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel.tx_select().await.unwrap();
    channel
        .basic_publish(
            "".into(),
            "q".into(),
            BasicPublishOptions::default(),
            b"held",
            BasicProperties::default(),
        )
        .await
        .unwrap();
    // A round trip on the channel, so the publish has surely arrived: still held.
    channel
        .queue_declare(
            "q".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(broker.queue_depth("q"), Some(0));
    channel.tx_commit().await.unwrap();
    assert_eq!(broker.queue_depth("q"), Some(1));
    // A transactional channel cannot turn to confirms.
    let refused = channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect_err("406");
    assert!(
        refused
            .to_string()
            .contains("cannot switch from tx to confirm mode"),
        "{refused}"
    );
    // Nor a confirming channel to transactions.
    let confirming = connection.create_channel().await.unwrap();
    confirming
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let refused = confirming.tx_select().await.expect_err("406");
    assert!(
        refused
            .to_string()
            .contains("cannot switch from confirm to tx mode"),
        "{refused}"
    );
    assert!(connection.status().connected());
    connection.close(200, "bye".into()).await.unwrap();
}

#[tokio::test]
async fn a_channel_the_broker_closes_is_closed_at_the_client_too() {
    let broker = Broker::new();
    let url = serve(broker.clone(), WireConfig::default()).await;
    let connection = connect(&url).await;
    let channel = connection.create_channel().await.unwrap();
    channel
        .queue_declare(
            "q".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut consumer = channel
        .basic_consume(
            "q".into(),
            "c".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    broker.force_close_consumer_channels(
        "q",
        broker_mem::ReplyCode::PreconditionFailed,
        "closed by the test",
    );
    // The client hears `channel.close` without calling anything: its consumer ends.
    let ended = tokio::time::timeout(WAIT, consumer.next()).await;
    assert!(
        matches!(ended, Ok(None) | Ok(Some(Err(_)))),
        "the consumer ended: {ended:?}"
    );
    assert!(!channel.status().connected());
    assert!(connection.status().connected());
    // The connection carries on.
    let other = connection.create_channel().await.unwrap();
    let declared = other
        .queue_declare(
            "q".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(declared.consumer_count(), 0);
    connection.close(200, "bye".into()).await.unwrap();
}

#[tokio::test]
async fn a_consumer_timeout_met_by_a_late_ack_closes_the_channel_not_the_connection() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    let now_ms = Arc::new(AtomicU64::new(0));
    let reading = Arc::clone(&now_ms);
    let limits = broker_mem::Limits {
        consumer_timeout_ms: Some(1_000),
        ..broker_mem::Limits::default()
    };
    let broker = Broker::with_clock(limits, Arc::new(move || reading.load(Ordering::SeqCst)));
    let url = serve(broker.clone(), WireConfig::default()).await;
    let connection = connect(&url).await;
    let channel = connection.create_channel().await.unwrap();
    channel
        .queue_declare(
            "q".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .basic_publish(
            "".into(),
            "q".into(),
            BasicPublishOptions::default(),
            b"slow",
            BasicProperties::default(),
        )
        .await
        .unwrap();
    let mut consumer = channel
        .basic_consume(
            "q".into(),
            "c".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let delivery = tokio::time::timeout(WAIT, consumer.next())
        .await
        .expect("a delivery in time")
        .expect("a delivery")
        .expect("no error");
    // Past the timeout; the late ack is the first call the broker sees.
    now_ms.store(5_000, Ordering::SeqCst);
    let _ = delivery.ack(BasicAckOptions::default()).await;
    let ended = tokio::time::timeout(WAIT, consumer.next()).await;
    assert!(
        matches!(ended, Ok(None) | Ok(Some(Err(_)))),
        "the consumer ended: {ended:?}"
    );
    assert!(!channel.status().connected());
    assert!(connection.status().connected(), "only the channel closes");
    assert_eq!(broker.queue_depth("q"), Some(1), "the message is back");
    connection.close(200, "bye".into()).await.unwrap();
}

/// The server keeps the broker's time: messages expire into the dead-letter exchange when
/// their TTL runs out though no client calls, and a publish with an earlier deadline than the
/// one the server sleeps until wakes it (the second message, with the shorter TTL, is
/// dead-lettered first; were the server to sleep on until the first's expiry, both would go
/// then, the first queue's first).
#[tokio::test]
async fn ttls_run_out_on_time_with_no_client_calling() {
    let broker = Broker::new();
    let url = serve(broker.clone(), WireConfig::default()).await;
    let connection = connect(&url).await;
    let channel = connection.create_channel().await.unwrap();
    channel
        .exchange_declare(
            "dlx".into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut dead_letters = FieldTable::default();
    dead_letters.insert(
        "x-dead-letter-exchange".into(),
        lapin::types::AMQPValue::LongString("dlx".into()),
    );
    for (queue, arguments) in [
        ("dead", FieldTable::default()),
        ("a-slow", dead_letters.clone()),
        ("b-fast", dead_letters),
    ] {
        channel
            .queue_declare(queue.into(), QueueDeclareOptions::default(), arguments)
            .await
            .unwrap();
    }
    channel
        .queue_bind(
            "dead".into(),
            "dlx".into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut dead = channel
        .basic_consume(
            "dead".into(),
            "c".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let publish = |queue: &'static str, expiration: &'static str| {
        let channel = channel.clone();
        async move {
            channel
                .basic_publish(
                    "".into(),
                    queue.into(),
                    BasicPublishOptions::default(),
                    queue.as_bytes(),
                    BasicProperties::default().with_expiration(expiration.into()),
                )
                .await
                .unwrap();
        }
    };
    publish("a-slow", "1500").await;
    // Time for the server to take the first deadline as the next one and go to sleep.
    tokio::time::sleep(Duration::from_millis(200)).await;
    publish("b-fast", "100").await;
    let mut got = Vec::new();
    for _ in 0..2 {
        let delivery = tokio::time::timeout(WAIT, dead.next())
            .await
            .expect("a dead letter in time")
            .expect("a delivery")
            .expect("no error");
        got.push(String::from_utf8(delivery.data).unwrap());
    }
    assert_eq!(got, ["b-fast", "a-slow"]);
    let expired = broker
        .dead_lettered()
        .iter()
        .map(|d| d.reason.as_str())
        .collect::<Vec<_>>();
    assert_eq!(expired, ["expired", "expired"]);
    connection.close(200, "bye".into()).await.unwrap();
}

/// Likewise the consumer timeout: a channel sitting on an unacked delivery past it is closed
/// with nothing else happening.
#[tokio::test]
async fn the_consumer_timeout_closes_an_idle_channel_on_time() {
    let limits = broker_mem::Limits {
        consumer_timeout_ms: Some(300),
        ..broker_mem::Limits::default()
    };
    let broker = Broker::with_limits(limits);
    let url = serve(broker.clone(), WireConfig::default()).await;
    let connection = connect(&url).await;
    let channel = connection.create_channel().await.unwrap();
    channel
        .queue_declare(
            "q".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .basic_publish(
            "".into(),
            "q".into(),
            BasicPublishOptions::default(),
            b"held",
            BasicProperties::default(),
        )
        .await
        .unwrap();
    let mut consumer = channel
        .basic_consume(
            "q".into(),
            "c".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let _held = tokio::time::timeout(WAIT, consumer.next())
        .await
        .expect("a delivery in time")
        .expect("a delivery")
        .expect("no error");
    let ended = tokio::time::timeout(WAIT, consumer.next()).await;
    assert!(
        matches!(ended, Ok(None) | Ok(Some(Err(_)))),
        "the consumer ended: {ended:?}"
    );
    assert!(!channel.status().connected());
    assert!(connection.status().connected(), "only the channel closes");
    assert_eq!(broker.queue_depth("q"), Some(1), "the message is back");
    connection.close(200, "bye".into()).await.unwrap();
}
