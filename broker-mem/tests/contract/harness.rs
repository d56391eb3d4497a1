//! The AMQP surface the contract suite speaks, and its two implementations: broker-mem's
//! in-process client ([`Mem`]) and lapin on a real RabbitMQ vhost of the test's own
//! ([`Rabbit`]). Every method is synchronous in effect: when it returns, the broker has done
//! what it was asked (lapin's fire-and-forget methods are followed by a round trip on the same
//! channel, so a channel error they cause is reported by the call that caused it).
//!
//! Time: [`Amqp::sleep_ms`] sleeps for real on RabbitMQ and advances broker-mem's injected
//! clock, so TTL tests take real time only against the real broker.

#![allow(dead_code)] // Not every test binary uses every method.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use broker_mem::wire::convert::{properties_in, properties_out, table_out};
use broker_mem::wire::{WireConfig, WireServer};
use broker_mem::{
    Broker, ConsumeOptions, ExchangeKind, ExchangeOptions, FieldTable, FieldValue, Limits,
    Properties, PublishOptions, QueueOptions,
};
use futures::{FutureExt as _, Stream, StreamExt as _};
use lapin::Confirmation;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, BasicRecoverOptions, BasicRejectOptions,
    ConfirmSelectOptions, ExchangeBindOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
    ExchangeUnbindOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
    QueuePurgeOptions,
};
use lapin::types::FieldTable as LapinTable;
use ports::testing::RabbitVhost;

/// A delivery RabbitMQ owes us arrives well within this.
const DELIVERY_WAIT_MS: u64 = 5_000;
/// Long enough for a delivery that is (wrongly) on its way to arrive on localhost.
const SILENCE_MS: u64 = 300;

/// A broker's refusal: AMQP reply code and RabbitMQ's text (`NOT_FOUND - no exchange ...`).
/// Code 0: the client refused (for example, the channel was already closed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub text: String,
}

pub type R<T> = Result<T, Reply>;

/// A delivered (or got) message, as both brokers report it.
#[derive(Debug, Clone, PartialEq)]
pub struct Msg {
    pub tag: u64,
    pub redelivered: bool,
    pub exchange: String,
    pub routing_key: String,
    pub properties: Properties,
    pub body: Vec<u8>,
}

impl Msg {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, key: &str) -> Option<&FieldValue> {
        self.properties.headers.as_ref()?.get(key)
    }
}

/// The answers to a publish: a `basic.return` (code, text), then the confirm (true = ack).
#[derive(Debug, Clone, PartialEq)]
pub struct Pub {
    pub returned: Option<(u16, String)>,
    pub acked: bool,
}

#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // A test value, moved once per delivery.
pub enum Next {
    Msg(Msg),
    /// Nothing arrived (within [`SILENCE_MS`] / [`DELIVERY_WAIT_MS`] on RabbitMQ).
    Empty,
    /// The consumer ended: cancelled by the broker or its channel closed.
    Ended,
}

impl Next {
    #[track_caller]
    pub fn msg(self) -> Msg {
        match self {
            Next::Msg(m) => m,
            other => panic!("expected a delivery, got {other:?}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conn(usize);
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ch(usize);
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sub(usize);

#[derive(Debug, Clone, Copy, Default)]
pub struct QFlags {
    pub durable: bool,
    pub exclusive: bool,
    pub auto_delete: bool,
    pub passive: bool,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct XFlags {
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    pub passive: bool,
}

/// A table from pairs; integers as `I64`, strings as `String`.
pub fn table(pairs: &[(&str, FieldValue)]) -> FieldTable {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

pub fn s(text: &str) -> FieldValue {
    FieldValue::String(text.to_owned())
}

pub fn i(n: i64) -> FieldValue {
    FieldValue::I64(n)
}

/// RabbitMQ names the test's vhost in reply texts, broker-mem always `/`: compare texts with
/// the vhost taken from the text itself.
pub fn vhost_of(text: &str) -> String {
    text.rsplit_once("in vhost '")
        .map(|(_, rest)| format!("'{}'", rest.split('\'').next().unwrap_or_default()))
        .unwrap_or_default()
}

/// A reply text with its vhost replaced by `/`.
pub fn norm(text: &str) -> String {
    let vhost = vhost_of(text);
    if vhost.is_empty() {
        text.to_owned()
    } else {
        text.replace(&format!("in vhost {vhost}"), "in vhost '/'")
    }
}

/// What the contract suite needs from a broker.
#[allow(async_fn_in_trait)]
pub trait Amqp {
    async fn connection(&mut self) -> Conn;
    async fn channel(&mut self, c: Conn) -> Ch;
    async fn exchange_declare(
        &mut self,
        ch: Ch,
        name: &str,
        kind: &str,
        f: XFlags,
        args: FieldTable,
    ) -> R<()>;
    async fn exchange_delete(&mut self, ch: Ch, name: &str, if_unused: bool) -> R<()>;
    async fn exchange_bind(
        &mut self,
        ch: Ch,
        destination: &str,
        source: &str,
        key: &str,
        args: FieldTable,
    ) -> R<()>;
    async fn exchange_unbind(
        &mut self,
        ch: Ch,
        destination: &str,
        source: &str,
        key: &str,
        args: FieldTable,
    ) -> R<()>;
    /// (name, message count, consumer count)
    async fn queue_declare(
        &mut self,
        ch: Ch,
        name: &str,
        f: QFlags,
        args: FieldTable,
    ) -> R<(String, u32, u32)>;
    async fn queue_bind(
        &mut self,
        ch: Ch,
        queue: &str,
        exchange: &str,
        key: &str,
        args: FieldTable,
    ) -> R<()>;
    async fn queue_unbind(
        &mut self,
        ch: Ch,
        queue: &str,
        exchange: &str,
        key: &str,
        args: FieldTable,
    ) -> R<()>;
    async fn queue_purge(&mut self, ch: Ch, queue: &str) -> R<u32>;
    async fn queue_delete(
        &mut self,
        ch: Ch,
        queue: &str,
        if_unused: bool,
        if_empty: bool,
    ) -> R<u32>;
    async fn qos(&mut self, ch: Ch, prefetch: u16, global: bool) -> R<()>;
    async fn publish(
        &mut self,
        ch: Ch,
        exchange: &str,
        key: &str,
        mandatory: bool,
        properties: Properties,
        body: &str,
    ) -> R<Pub>;
    /// `basic.consume` with its arguments (`x-priority`).
    async fn consume_with(
        &mut self,
        ch: Ch,
        queue: &str,
        tag: &str,
        no_ack: bool,
        exclusive: bool,
        args: FieldTable,
    ) -> R<Sub>;
    /// The next delivery, waiting for it on RabbitMQ.
    async fn next(&mut self, sub: Sub) -> Next;
    /// The next delivery if one comes soon; used to assert that none does.
    async fn quiet(&mut self, sub: Sub) -> Next;
    /// The next delivery if one comes within `wait_ms` on RabbitMQ (broker-mem's is there or
    /// not: it delivered before the call that made the delivery returned).
    async fn poll(&mut self, sub: Sub, wait_ms: u64) -> Next;
    async fn get(&mut self, ch: Ch, queue: &str, no_ack: bool) -> R<Option<(Msg, u32)>>;
    async fn ack(&mut self, ch: Ch, tag: u64, multiple: bool) -> R<()>;
    async fn nack(&mut self, ch: Ch, tag: u64, multiple: bool, requeue: bool) -> R<()>;
    async fn reject(&mut self, ch: Ch, tag: u64, requeue: bool) -> R<()>;
    async fn recover(&mut self, ch: Ch, requeue: bool) -> R<()>;
    async fn cancel(&mut self, ch: Ch, sub: Sub) -> R<()>;
    async fn close_channel(&mut self, ch: Ch);
    async fn close_connection(&mut self, c: Conn);
    async fn channel_open(&mut self, ch: Ch) -> bool;
    /// A channel in transaction mode (`tx.select`, no confirms): its publishes answer with
    /// `acked: false` and take effect at [`Amqp::tx_commit`].
    async fn tx_channel(&mut self, c: Conn) -> Ch;
    async fn tx_commit(&mut self, ch: Ch) -> R<()>;
    async fn tx_rollback(&mut self, ch: Ch) -> R<()>;
    /// Real time on RabbitMQ, the injected clock on broker-mem.
    async fn sleep_ms(&mut self, ms: u64);
    /// Ready messages of a queue (a passive declare on a connection of its own); None if the
    /// queue does not exist.
    async fn depth(&mut self, queue: &str) -> Option<u32>;

    /// The depth once the broker has caught up: RabbitMQ requeues on a close asynchronously,
    /// so this polls (for at most [`DELIVERY_WAIT_MS`]) until the depth is `expected`.
    async fn depth_becomes(&mut self, queue: &str, expected: Option<u32>) -> Option<u32> {
        let mut depth = self.depth(queue).await;
        for _ in 0..DELIVERY_WAIT_MS / 50 {
            if depth == expected {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            depth = self.depth(queue).await;
        }
        depth
    }

    /// `basic.consume` without arguments.
    async fn consume(
        &mut self,
        ch: Ch,
        queue: &str,
        tag: &str,
        no_ack: bool,
        exclusive: bool,
    ) -> R<Sub> {
        self.consume_with(ch, queue, tag, no_ack, exclusive, FieldTable::new())
            .await
    }

    /// Convenience: publish a plain text body, not mandatory, expecting an ack.
    async fn send(&mut self, ch: Ch, exchange: &str, key: &str, body: &str) {
        let published = self
            .publish(ch, exchange, key, false, Properties::default(), body)
            .await
            .expect("publish");
        assert!(published.acked, "publish of {body:?} was nacked");
    }

    /// Convenience: a plain queue.
    async fn queue(&mut self, ch: Ch, name: &str) {
        self.queue_declare(ch, name, QFlags::default(), FieldTable::new())
            .await
            .expect("queue.declare");
    }

    /// Convenience: a plain exchange.
    async fn exchange(&mut self, ch: Ch, name: &str, kind: &str) {
        self.exchange_declare(ch, name, kind, XFlags::default(), FieldTable::new())
            .await
            .expect("exchange.declare");
    }

    /// Convenience: a binding without arguments.
    async fn bind(&mut self, ch: Ch, queue: &str, exchange: &str, key: &str) {
        self.queue_bind(ch, queue, exchange, key, FieldTable::new())
            .await
            .expect("queue.bind");
    }

    /// Convenience: the bodies `basic.get` finds, with auto-ack, until the queue is empty.
    async fn drain(&mut self, ch: Ch, queue: &str) -> Vec<String> {
        let mut bodies = Vec::new();
        while let Some((msg, _)) = self.get(ch, queue, true).await.expect("basic.get") {
            bodies.push(msg.text());
            assert!(bodies.len() < 1_000, "queue {queue} does not drain");
        }
        bodies
    }
}

// ------------------------------------------------------------------------------ broker-mem

/// broker-mem in process, on a clock the test moves.
pub struct Mem {
    pub broker: Broker,
    clock_ms: Arc<AtomicU64>,
    connections: Vec<broker_mem::Connection>,
    channels: Vec<broker_mem::Channel>,
    consumers: Vec<broker_mem::Consumer>,
}

impl Mem {
    pub fn new() -> Mem {
        let clock_ms = Arc::new(AtomicU64::new(1_764_000_000_000));
        let reading = Arc::clone(&clock_ms);
        let broker = Broker::with_clock(
            Limits::default(),
            Arc::new(move || reading.load(Ordering::SeqCst)),
        );
        Mem {
            broker,
            clock_ms,
            connections: Vec::new(),
            channels: Vec::new(),
            consumers: Vec::new(),
        }
    }

    fn ch(&self, ch: Ch) -> &broker_mem::Channel {
        &self.channels[ch.0]
    }
}

fn mem_reply(error: broker_mem::Error) -> Reply {
    match error {
        broker_mem::Error::Channel(reply) | broker_mem::Error::Connection(reply) => Reply {
            code: reply.code.code(),
            text: reply.reply_text(),
        },
        other => Reply {
            code: 0,
            text: other.to_string(),
        },
    }
}

impl Amqp for Mem {
    async fn connection(&mut self) -> Conn {
        self.connections.push(self.broker.connect());
        Conn(self.connections.len() - 1)
    }

    async fn channel(&mut self, c: Conn) -> Ch {
        let channel = self.connections[c.0].open_channel().expect("channel.open");
        self.channels.push(channel);
        Ch(self.channels.len() - 1)
    }

    async fn exchange_declare(
        &mut self,
        ch: Ch,
        name: &str,
        kind: &str,
        f: XFlags,
        args: FieldTable,
    ) -> R<()> {
        let kind = ExchangeKind::from_name(kind).expect("a kind broker-mem has");
        let options = ExchangeOptions {
            durable: f.durable,
            auto_delete: f.auto_delete,
            internal: f.internal,
            passive: f.passive,
        };
        self.ch(ch)
            .exchange_declare_with(name, kind, options, &args)
            .map_err(mem_reply)
    }

    async fn exchange_delete(&mut self, ch: Ch, name: &str, if_unused: bool) -> R<()> {
        self.ch(ch)
            .exchange_delete(name, if_unused)
            .map_err(mem_reply)
    }

    async fn exchange_bind(
        &mut self,
        ch: Ch,
        destination: &str,
        source: &str,
        key: &str,
        args: FieldTable,
    ) -> R<()> {
        self.ch(ch)
            .exchange_bind(destination, source, key, &args)
            .map_err(mem_reply)
    }

    async fn exchange_unbind(
        &mut self,
        ch: Ch,
        destination: &str,
        source: &str,
        key: &str,
        args: FieldTable,
    ) -> R<()> {
        self.ch(ch)
            .exchange_unbind(destination, source, key, &args)
            .map_err(mem_reply)
    }

    async fn queue_declare(
        &mut self,
        ch: Ch,
        name: &str,
        f: QFlags,
        args: FieldTable,
    ) -> R<(String, u32, u32)> {
        let options = QueueOptions {
            durable: f.durable,
            exclusive: f.exclusive,
            auto_delete: f.auto_delete,
            passive: f.passive,
        };
        self.ch(ch)
            .queue_declare_with(name, options, &args)
            .map(|ok| (ok.name, ok.message_count, ok.consumer_count))
            .map_err(mem_reply)
    }

    async fn queue_bind(
        &mut self,
        ch: Ch,
        queue: &str,
        exchange: &str,
        key: &str,
        args: FieldTable,
    ) -> R<()> {
        self.ch(ch)
            .queue_bind_with(queue, exchange, key, &args)
            .map_err(mem_reply)
    }

    async fn queue_unbind(
        &mut self,
        ch: Ch,
        queue: &str,
        exchange: &str,
        key: &str,
        args: FieldTable,
    ) -> R<()> {
        self.ch(ch)
            .queue_unbind(queue, exchange, key, &args)
            .map_err(mem_reply)
    }

    async fn queue_purge(&mut self, ch: Ch, queue: &str) -> R<u32> {
        self.ch(ch).queue_purge(queue).map_err(mem_reply)
    }

    async fn queue_delete(
        &mut self,
        ch: Ch,
        queue: &str,
        if_unused: bool,
        if_empty: bool,
    ) -> R<u32> {
        self.ch(ch)
            .queue_delete(queue, if_unused, if_empty)
            .map_err(mem_reply)
    }

    async fn qos(&mut self, ch: Ch, prefetch: u16, global: bool) -> R<()> {
        self.ch(ch)
            .basic_qos_with(prefetch, global)
            .map_err(mem_reply)
    }

    async fn publish(
        &mut self,
        ch: Ch,
        exchange: &str,
        key: &str,
        mandatory: bool,
        properties: Properties,
        body: &str,
    ) -> R<Pub> {
        let options = PublishOptions { mandatory };
        let body = broker_mem::Bytes::copy_from_slice(body.as_bytes());
        let published = self
            .ch(ch)
            .basic_publish_with(exchange, key, options, properties, body)
            .map_err(mem_reply)?;
        Ok(Pub {
            returned: published.returned.map(|r| (r.reply_code, r.reply_text)),
            acked: published.confirm == broker_mem::Confirm::Ack,
        })
    }

    async fn consume_with(
        &mut self,
        ch: Ch,
        queue: &str,
        tag: &str,
        no_ack: bool,
        exclusive: bool,
        args: FieldTable,
    ) -> R<Sub> {
        let options = ConsumeOptions {
            consumer_tag: tag.to_owned(),
            no_ack,
            exclusive,
            arguments: args,
        };
        let consumer = self
            .ch(ch)
            .basic_consume(queue, options)
            .map_err(mem_reply)?;
        self.consumers.push(consumer);
        Ok(Sub(self.consumers.len() - 1))
    }

    async fn next(&mut self, sub: Sub) -> Next {
        match self.consumers[sub.0].try_recv() {
            Ok(delivery) => Next::Msg(Msg {
                tag: delivery.delivery_tag,
                redelivered: delivery.redelivered,
                exchange: delivery.exchange.to_string(),
                routing_key: delivery.routing_key.to_string(),
                properties: broker_mem::Properties::clone(&delivery.properties),
                body: delivery.body.to_vec(),
            }),
            Err(broker_mem::TryRecvError::Empty) => Next::Empty,
            Err(broker_mem::TryRecvError::Ended) => Next::Ended,
        }
    }

    async fn quiet(&mut self, sub: Sub) -> Next {
        self.next(sub).await
    }

    async fn poll(&mut self, sub: Sub, _wait_ms: u64) -> Next {
        self.next(sub).await
    }

    async fn get(&mut self, ch: Ch, queue: &str, no_ack: bool) -> R<Option<(Msg, u32)>> {
        let got = self.ch(ch).basic_get(queue, no_ack).map_err(mem_reply)?;
        Ok(got.map(|ok| {
            let d = ok.delivery;
            let msg = Msg {
                tag: d.delivery_tag,
                redelivered: d.redelivered,
                exchange: d.exchange.to_string(),
                routing_key: d.routing_key.to_string(),
                properties: broker_mem::Properties::clone(&d.properties),
                body: d.body.to_vec(),
            };
            (msg, ok.message_count)
        }))
    }

    async fn ack(&mut self, ch: Ch, tag: u64, multiple: bool) -> R<()> {
        self.ch(ch).basic_ack(tag, multiple).map_err(mem_reply)
    }

    async fn nack(&mut self, ch: Ch, tag: u64, multiple: bool, requeue: bool) -> R<()> {
        self.ch(ch)
            .basic_nack(tag, multiple, requeue)
            .map_err(mem_reply)
    }

    async fn reject(&mut self, ch: Ch, tag: u64, requeue: bool) -> R<()> {
        self.ch(ch).basic_reject(tag, requeue).map_err(mem_reply)
    }

    async fn recover(&mut self, ch: Ch, requeue: bool) -> R<()> {
        self.ch(ch).basic_recover(requeue).map_err(mem_reply)
    }

    async fn cancel(&mut self, ch: Ch, sub: Sub) -> R<()> {
        let tag = self.consumers[sub.0].tag().to_owned();
        self.ch(ch).basic_cancel(&tag).map_err(mem_reply)
    }

    async fn close_channel(&mut self, ch: Ch) {
        let _ = self.ch(ch).close();
    }

    async fn close_connection(&mut self, c: Conn) {
        self.connections[c.0].close();
    }

    async fn channel_open(&mut self, ch: Ch) -> bool {
        self.ch(ch).is_open()
    }

    async fn tx_channel(&mut self, c: Conn) -> Ch {
        let ch = self.channel(c).await;
        self.ch(ch).tx_select().expect("tx.select");
        ch
    }

    async fn tx_commit(&mut self, ch: Ch) -> R<()> {
        self.ch(ch).tx_commit().map(drop).map_err(mem_reply)
    }

    async fn tx_rollback(&mut self, ch: Ch) -> R<()> {
        self.ch(ch).tx_rollback().map_err(mem_reply)
    }

    async fn sleep_ms(&mut self, ms: u64) {
        self.clock_ms.fetch_add(ms, Ordering::SeqCst);
        self.broker.tick();
    }

    async fn depth(&mut self, queue: &str) -> Option<u32> {
        self.broker
            .queue_depth(queue)
            .map(|d| u32::try_from(d).unwrap_or(u32::MAX))
    }
}

// ------------------------------------------------------------------------------ RabbitMQ

/// lapin on a RabbitMQ vhost of the test's own, or ([`Rabbit::wire`]) on broker-mem's wire
/// server.
pub struct Rabbit {
    /// Where lapin connects.
    url: String,
    vhost: Option<RabbitVhost>,
    /// On broker-mem's wire server: its broker, and the clock `sleep_ms` moves.
    wired: Option<(Broker, Arc<AtomicU64>)>,
    connections: Vec<lapin::Connection>,
    /// Each connection's event stream: where lapin reports the reply a broker closed one of
    /// its channels with (see `Rabbit::close_reason`).
    events: Vec<Pin<Box<dyn Stream<Item = lapin::Event> + Send>>>,
    channels: Vec<lapin::Channel>,
    /// The connection each channel is on.
    channel_connections: Vec<usize>,
    consumers: Vec<lapin::Consumer>,
    /// For `depth`: a connection and channel no test closes (reopened after a 404).
    admin: Option<(lapin::Connection, lapin::Channel)>,
}

impl Rabbit {
    /// None when RabbitMQ is not reachable (the skip rule of `RabbitVhost::create`).
    pub async fn create(test: &str) -> Option<Rabbit> {
        let vhost = RabbitVhost::create(&format!("broker-mem-contract-{test}"))
            .await
            .expect("create the test's vhost")?;
        Some(Rabbit {
            url: vhost.amqp_url().to_owned(),
            vhost: Some(vhost),
            wired: None,
            connections: Vec::new(),
            events: Vec::new(),
            channels: Vec::new(),
            channel_connections: Vec::new(),
            consumers: Vec::new(),
            admin: None,
        })
    }

    /// lapin, the same client code, on broker-mem's wire server (an ephemeral loopback port)
    /// over a broker with an injected clock, as [`Mem`] has: the suite's third run, which
    /// checks the AMQP mapping of everything the in-process run checks.
    pub async fn wire() -> Rabbit {
        let mem = Mem::new();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let port = listener.local_addr().expect("local address").port();
        let server = WireServer::new(mem.broker.clone(), WireConfig::default());
        tokio::spawn(server.serve_tcp(listener));
        Rabbit {
            url: format!("amqp://guest:guest@127.0.0.1:{port}/%2f"),
            vhost: None,
            wired: Some((mem.broker, mem.clock_ms)),
            connections: Vec::new(),
            events: Vec::new(),
            channels: Vec::new(),
            channel_connections: Vec::new(),
            consumers: Vec::new(),
            admin: None,
        }
    }

    /// The broker behind the wire server, for [`Rabbit::wire`].
    pub fn wired_broker(&self) -> Option<&Broker> {
        self.wired.as_ref().map(|(broker, _)| broker)
    }

    /// Closes every connection and deletes the vhost.
    pub async fn finish(mut self) {
        for connection in &self.connections {
            let _ = connection.close(200, "bye".into()).await;
        }
        if let Some((connection, _)) = self.admin.take() {
            let _ = connection.close(200, "bye".into()).await;
        }
        if let Some(vhost) = self.vhost.take() {
            vhost.delete().await.expect("delete the test's vhost");
        }
    }

    async fn connect(&self) -> lapin::Connection {
        lapin::Connection::connect(&self.url, lapin::ConnectionProperties::default())
            .await
            .expect("connect to RabbitMQ")
    }

    fn ch(&self, ch: Ch) -> &lapin::Channel {
        &self.channels[ch.0]
    }

    /// The reply the broker closed `ch` with, from its connection's events (drained of older
    /// ones before the call that caused it): the newest that has arrived once one has, within
    /// [`SILENCE_MS`].
    async fn close_reason(&mut self, ch: Ch) -> Option<Reply> {
        let events = &mut self.events[self.channel_connections[ch.0]];
        let mut reason = None;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(SILENCE_MS);
        while let Ok(Some(event)) = tokio::time::timeout_at(deadline, events.next()).await {
            if let lapin::Event::Error(error) = event
                && let lapin::ErrorKind::ProtocolError(_) = error.kind()
            {
                reason = Some(rabbit_reply(error));
                // Anything newer is already queued: take it without waiting.
                while let Some(Some(event)) = events.next().now_or_never() {
                    if let lapin::Event::Error(error) = event
                        && let lapin::ErrorKind::ProtocolError(_) = error.kind()
                    {
                        reason = Some(rabbit_reply(error));
                    }
                }
                break;
            }
        }
        reason
    }

    /// A round trip on the channel, so that an error caused by an earlier asynchronous method
    /// (ack, nack, reject) is reported now.
    async fn sync(&self, ch: Ch) -> R<()> {
        let options = ExchangeDeclareOptions {
            passive: true,
            ..Default::default()
        };
        self.ch(ch)
            .exchange_declare(
                "amq.direct".into(),
                lapin::ExchangeKind::Direct,
                options,
                LapinTable::default(),
            )
            .await
            .map_err(rabbit_reply)
    }
}

fn rabbit_reply(error: lapin::Error) -> Reply {
    match error.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => Reply {
            code: amqp.get_id(),
            text: amqp.get_message().as_str().to_owned(),
        },
        _ => Reply {
            code: 0,
            text: error.to_string(),
        },
    }
}

impl Amqp for Rabbit {
    async fn connection(&mut self) -> Conn {
        let connection = self.connect().await;
        self.events.push(Box::pin(connection.events_listener()));
        self.connections.push(connection);
        Conn(self.connections.len() - 1)
    }

    async fn channel(&mut self, c: Conn) -> Ch {
        let channel = self.connections[c.0]
            .create_channel()
            .await
            .expect("channel.open");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm.select");
        self.channels.push(channel);
        self.channel_connections.push(c.0);
        Ch(self.channels.len() - 1)
    }

    async fn exchange_declare(
        &mut self,
        ch: Ch,
        name: &str,
        kind: &str,
        f: XFlags,
        args: FieldTable,
    ) -> R<()> {
        let kind = match kind {
            "direct" => lapin::ExchangeKind::Direct,
            "fanout" => lapin::ExchangeKind::Fanout,
            "topic" => lapin::ExchangeKind::Topic,
            "headers" => lapin::ExchangeKind::Headers,
            other => lapin::ExchangeKind::Custom(other.into()),
        };
        let options = ExchangeDeclareOptions {
            passive: f.passive,
            durable: f.durable,
            auto_delete: f.auto_delete,
            internal: f.internal,
            nowait: false,
        };
        self.ch(ch)
            .exchange_declare(name.into(), kind, options, table_out(&args))
            .await
            .map_err(rabbit_reply)
    }

    async fn exchange_delete(&mut self, ch: Ch, name: &str, if_unused: bool) -> R<()> {
        let options = ExchangeDeleteOptions {
            if_unused,
            ..Default::default()
        };
        self.ch(ch)
            .exchange_delete(name.into(), options)
            .await
            .map_err(rabbit_reply)
    }

    async fn exchange_bind(
        &mut self,
        ch: Ch,
        destination: &str,
        source: &str,
        key: &str,
        args: FieldTable,
    ) -> R<()> {
        self.ch(ch)
            .exchange_bind(
                destination.into(),
                source.into(),
                key.into(),
                ExchangeBindOptions::default(),
                table_out(&args),
            )
            .await
            .map_err(rabbit_reply)
    }

    async fn exchange_unbind(
        &mut self,
        ch: Ch,
        destination: &str,
        source: &str,
        key: &str,
        args: FieldTable,
    ) -> R<()> {
        self.ch(ch)
            .exchange_unbind(
                destination.into(),
                source.into(),
                key.into(),
                ExchangeUnbindOptions::default(),
                table_out(&args),
            )
            .await
            .map_err(rabbit_reply)
    }

    async fn queue_declare(
        &mut self,
        ch: Ch,
        name: &str,
        f: QFlags,
        args: FieldTable,
    ) -> R<(String, u32, u32)> {
        let options = QueueDeclareOptions {
            passive: f.passive,
            durable: f.durable,
            exclusive: f.exclusive,
            auto_delete: f.auto_delete,
            nowait: false,
        };
        let queue = self
            .ch(ch)
            .queue_declare(name.into(), options, table_out(&args))
            .await
            .map_err(rabbit_reply)?;
        Ok((
            queue.name().as_str().to_owned(),
            queue.message_count(),
            queue.consumer_count(),
        ))
    }

    async fn queue_bind(
        &mut self,
        ch: Ch,
        queue: &str,
        exchange: &str,
        key: &str,
        args: FieldTable,
    ) -> R<()> {
        self.ch(ch)
            .queue_bind(
                queue.into(),
                exchange.into(),
                key.into(),
                QueueBindOptions::default(),
                table_out(&args),
            )
            .await
            .map_err(rabbit_reply)
    }

    async fn queue_unbind(
        &mut self,
        ch: Ch,
        queue: &str,
        exchange: &str,
        key: &str,
        args: FieldTable,
    ) -> R<()> {
        self.ch(ch)
            .queue_unbind(queue.into(), exchange.into(), key.into(), table_out(&args))
            .await
            .map_err(rabbit_reply)
    }

    async fn queue_purge(&mut self, ch: Ch, queue: &str) -> R<u32> {
        self.ch(ch)
            .queue_purge(queue.into(), QueuePurgeOptions::default())
            .await
            .map_err(rabbit_reply)
    }

    async fn queue_delete(
        &mut self,
        ch: Ch,
        queue: &str,
        if_unused: bool,
        if_empty: bool,
    ) -> R<u32> {
        let options = QueueDeleteOptions {
            if_unused,
            if_empty,
            nowait: false,
        };
        self.ch(ch)
            .queue_delete(queue.into(), options)
            .await
            .map_err(rabbit_reply)
    }

    async fn qos(&mut self, ch: Ch, prefetch: u16, global: bool) -> R<()> {
        self.ch(ch)
            .basic_qos(prefetch, BasicQosOptions { global })
            .await
            .map_err(rabbit_reply)
    }

    async fn publish(
        &mut self,
        ch: Ch,
        exchange: &str,
        key: &str,
        mandatory: bool,
        properties: Properties,
        body: &str,
    ) -> R<Pub> {
        // Events of channels closed before are no answer to this publish.
        let events = &mut self.events[self.channel_connections[ch.0]];
        while events.next().now_or_never().flatten().is_some() {}
        let options = BasicPublishOptions {
            mandatory,
            ..Default::default()
        };
        let confirm = self
            .ch(ch)
            .basic_publish(
                exchange.into(),
                key.into(),
                options,
                body.as_bytes(),
                properties_out(&properties),
            )
            .await
            .map_err(rabbit_reply)?
            .await
            .map_err(rabbit_reply)?;
        let returned = |r: Option<lapin::message::BasicReturnMessage>| {
            r.map(|r| (r.reply_code, r.reply_text.as_str().to_owned()))
        };
        match confirm {
            Confirmation::Ack(r) => Ok(Pub {
                returned: returned(r),
                acked: true,
            }),
            Confirmation::Nack(r) => Ok(Pub {
                returned: returned(r),
                acked: false,
            }),
            // A transactional channel (`tx_channel`): no confirms, so a round trip reports a
            // channel error the publish caused (a missing exchange). If the broker's close
            // overtook the round trip, lapin refuses it (code 0) and the reply is in the
            // connection's events.
            Confirmation::NotRequested => {
                if let Err(refused) = self.sync(ch).await {
                    return Err(match refused.code {
                        0 => self.close_reason(ch).await.unwrap_or(refused),
                        _ => refused,
                    });
                }
                Ok(Pub {
                    returned: None,
                    acked: false,
                })
            }
        }
    }

    async fn consume_with(
        &mut self,
        ch: Ch,
        queue: &str,
        tag: &str,
        no_ack: bool,
        exclusive: bool,
        args: FieldTable,
    ) -> R<Sub> {
        let options = BasicConsumeOptions {
            no_ack,
            exclusive,
            ..Default::default()
        };
        let consumer = self
            .ch(ch)
            .basic_consume(queue.into(), tag.into(), options, table_out(&args))
            .await
            .map_err(rabbit_reply)?;
        self.consumers.push(consumer);
        Ok(Sub(self.consumers.len() - 1))
    }

    async fn next(&mut self, sub: Sub) -> Next {
        receive(&mut self.consumers[sub.0], DELIVERY_WAIT_MS).await
    }

    async fn quiet(&mut self, sub: Sub) -> Next {
        receive(&mut self.consumers[sub.0], SILENCE_MS).await
    }

    async fn poll(&mut self, sub: Sub, wait_ms: u64) -> Next {
        receive(&mut self.consumers[sub.0], wait_ms).await
    }

    async fn get(&mut self, ch: Ch, queue: &str, no_ack: bool) -> R<Option<(Msg, u32)>> {
        let got = self
            .ch(ch)
            .basic_get(queue.into(), BasicGetOptions { no_ack })
            .await
            .map_err(rabbit_reply)?;
        Ok(got.map(|g| (msg_in(&g.delivery), g.message_count)))
    }

    // Each settle is followed by a round trip that fails with the channel's close reason if
    // the settle broke a rule. Both are started together, so the round trip is on the wire
    // before RabbitMQ's `channel.close` can come back: once the close has arrived, lapin
    // refuses new calls with a generic "invalid channel state" instead of the reply.
    async fn ack(&mut self, ch: Ch, tag: u64, multiple: bool) -> R<()> {
        let settle = self.ch(ch).basic_ack(tag, BasicAckOptions { multiple });
        let (settled, synced) = tokio::join!(settle, self.sync(ch));
        settled.map_err(rabbit_reply)?;
        synced
    }

    async fn nack(&mut self, ch: Ch, tag: u64, multiple: bool, requeue: bool) -> R<()> {
        let settle = self
            .ch(ch)
            .basic_nack(tag, BasicNackOptions { multiple, requeue });
        let (settled, synced) = tokio::join!(settle, self.sync(ch));
        settled.map_err(rabbit_reply)?;
        synced
    }

    async fn reject(&mut self, ch: Ch, tag: u64, requeue: bool) -> R<()> {
        let settle = self
            .ch(ch)
            .basic_reject(tag, BasicRejectOptions { requeue });
        let (settled, synced) = tokio::join!(settle, self.sync(ch));
        settled.map_err(rabbit_reply)?;
        synced
    }

    async fn recover(&mut self, ch: Ch, requeue: bool) -> R<()> {
        self.ch(ch)
            .basic_recover(BasicRecoverOptions { requeue })
            .await
            .map_err(rabbit_reply)
    }

    async fn cancel(&mut self, ch: Ch, sub: Sub) -> R<()> {
        let tag = self.consumers[sub.0].tag();
        self.ch(ch)
            .basic_cancel(tag, BasicCancelOptions::default())
            .await
            .map_err(rabbit_reply)
    }

    async fn close_channel(&mut self, ch: Ch) {
        let _ = self.ch(ch).close(200, "bye".into()).await;
    }

    async fn close_connection(&mut self, c: Conn) {
        let _ = self.connections[c.0].close(200, "bye".into()).await;
    }

    async fn channel_open(&mut self, ch: Ch) -> bool {
        self.ch(ch).status().connected()
    }

    async fn tx_channel(&mut self, c: Conn) -> Ch {
        let channel = self.connections[c.0]
            .create_channel()
            .await
            .expect("channel.open");
        channel.tx_select().await.expect("tx.select");
        self.channels.push(channel);
        self.channel_connections.push(c.0);
        Ch(self.channels.len() - 1)
    }

    async fn tx_commit(&mut self, ch: Ch) -> R<()> {
        self.ch(ch).tx_commit().await.map_err(rabbit_reply)
    }

    async fn tx_rollback(&mut self, ch: Ch) -> R<()> {
        self.ch(ch).tx_rollback().await.map_err(rabbit_reply)
    }

    async fn sleep_ms(&mut self, ms: u64) {
        match &self.wired {
            Some((broker, clock_ms)) => {
                clock_ms.fetch_add(ms, Ordering::SeqCst);
                broker.tick();
            }
            None => tokio::time::sleep(Duration::from_millis(ms)).await,
        }
    }

    async fn depth(&mut self, queue: &str) -> Option<u32> {
        if self
            .admin
            .as_ref()
            .is_none_or(|(_, ch)| !ch.status().connected())
        {
            let connection = self.connect().await;
            let channel = connection.create_channel().await.expect("channel.open");
            self.admin = Some((connection, channel));
        }
        let (_, channel) = self.admin.as_ref()?;
        let options = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        channel
            .queue_declare(queue.into(), options, LapinTable::default())
            .await
            .ok()
            .map(|q| q.message_count())
    }
}

async fn receive(consumer: &mut lapin::Consumer, wait_ms: u64) -> Next {
    match tokio::time::timeout(Duration::from_millis(wait_ms), consumer.next()).await {
        Ok(Some(Ok(delivery))) => Next::Msg(msg_in(&delivery)),
        Ok(Some(Err(_)) | None) => Next::Ended,
        Err(_) => Next::Empty,
    }
}

fn msg_in(delivery: &lapin::message::Delivery) -> Msg {
    Msg {
        tag: delivery.delivery_tag,
        redelivered: delivery.redelivered,
        exchange: delivery.exchange.as_str().to_owned(),
        routing_key: delivery.routing_key.as_str().to_owned(),
        properties: properties_in(&delivery.properties),
        body: delivery.data.clone(),
    }
}
