"""pika (Python's most used AMQP 0-9-1 client) against one broker: RabbitMQ or broker-mem's wire
server.

Usage: pika_client.py AMQP_URL. Runs one fixed scenario and prints, as JSON, everything the
client observed; the caller runs it against both brokers and compares (tests/wire_clients.rs).
Deliberate differences between the brokers (broker-mem/README.md) are left out: the scenario
never depends on the order in which several queues deliver, or on timers.
"""
import datetime
import decimal
import sys

import pika

from transcript import count_when as waited_count
from transcript import note, plain, print_transcript, same_vhost


def seen(method, properties, body):
    """What a delivery, get or return shows a subscriber: the method's fields (minus each
    broker's own consumer tag), the properties set, the body."""
    return {
        "method": type(method).__name__,
        **{name: plain(value) for name, value in sorted(vars(method).items()) if name != "consumer_tag"},
        "body": body.decode("utf-8"),
        "properties": {
            name: plain(value) for name, value in sorted(vars(properties).items()) if value is not None
        },
    }


def closed(error):
    return {"code": error.reply_code, "text": same_vhost(error.reply_text)}


def count_when(channel, queue, want):
    """[`transcript.count_when`] through pika."""
    read = lambda: channel.queue_declare(queue, passive=True).method.message_count
    return waited_count(read, channel.connection.sleep, queue, want)


def expect_channel_error(connection, step, act):
    channel = connection.channel()
    try:
        act(channel)
        note(step, closed=None)
    except pika.exceptions.ChannelClosedByBroker as error:
        note(step, closed=closed(error))


def expect_connection_error(params, step, act):
    connection = pika.BlockingConnection(params)
    try:
        act(connection.channel())
        note(step, closed=None)
        connection.close()
    except pika.exceptions.ConnectionClosedByBroker as error:
        note(step, closed=closed(error))


HEADERS = {
    "small": 7,
    "big": 2**40,
    "negative": -5,
    "text": "héllo",
    "yes": True,
    "nothing": None,
    "list": [1, "a", False, [2]],
    "table": {"a": 1, "b": "x"},
    "bytes": b"\x00\xff\n",
    "stamp": datetime.datetime(2023, 11, 14, 22, 13, 20),
    "decimal": decimal.Decimal("3.14"),
}

PROPERTIES = pika.BasicProperties(
    content_type="application/json",
    content_encoding="utf-8",
    headers=HEADERS,
    delivery_mode=2,
    priority=3,
    correlation_id="corr-1",
    reply_to="somewhere",
    expiration="60000",
    message_id="m-1",
    timestamp=1700000001,
    type="job",
    user_id="guest",
    app_id="pika-test",
)


def main(url):
    params = pika.URLParameters(url)
    connection = pika.BlockingConnection(params)
    channel = connection.channel()
    channel.exchange_declare("py.x", exchange_type="topic")
    channel.exchange_declare("py.dlx", exchange_type="fanout")
    declared = channel.queue_declare("py.work", arguments={"x-dead-letter-exchange": "py.dlx"})
    note("declare work", message_count=declared.method.message_count, consumer_count=declared.method.consumer_count)
    channel.queue_declare("py.dead")
    channel.queue_bind("py.work", "py.x", "job.*")
    channel.queue_bind("py.dead", "py.dlx")
    channel.confirm_delivery()

    # Publishes with every property and header type, confirmed; one unroutable and mandatory.
    channel.basic_publish("py.x", "job.a", b"one", PROPERTIES)
    channel.basic_publish("py.x", "job.b", b"two", pika.BasicProperties(message_id="m-2"))
    channel.basic_publish("py.x", "job.c", b"three", pika.BasicProperties(message_id="m-3", headers={"n": 3}))
    try:
        channel.basic_publish("py.x", "nobody.home", b"lost", pika.BasicProperties(message_id="m-4"), mandatory=True)
        note("mandatory", returned=None)
    except pika.exceptions.UnroutableError as error:
        returned = error.messages[0]
        note("mandatory", returned=seen(returned.method, returned.properties, returned.body))
    note("check work", message_count=channel.queue_declare("py.work", passive=True).method.message_count)

    # basic.get, nack with requeue: back at its place, redelivered.
    method, properties, body = channel.basic_get("py.work")
    note("get", message=seen(method, properties, body))
    channel.basic_nack(method.delivery_tag, requeue=True)
    count_when(channel, "py.work", 3)
    method, properties, body = channel.basic_get("py.work")
    note("get again", message=seen(method, properties, body))
    channel.basic_nack(method.delivery_tag, requeue=True)
    count_when(channel, "py.work", 3)

    # A consumer with a prefetch of 2: acks, rejects one (dead-lettered), acks.
    channel.basic_qos(prefetch_count=2)
    delivered = []

    def on_message(ch, method, properties, body):
        delivered.append(seen(method, properties, body))
        if body == b"two":
            ch.basic_reject(method.delivery_tag, requeue=False)
        else:
            ch.basic_ack(method.delivery_tag)
        if len(delivered) == 3:
            ch.stop_consuming()

    tag = channel.basic_consume("py.work", on_message)
    connection.call_later(10, channel.stop_consuming)
    channel.start_consuming()
    channel.basic_cancel(tag)
    note("consumed", delivered=delivered)

    count_when(channel, "py.dead", 1)
    note("dead-lettered", message=seen(*channel.basic_get("py.dead", auto_ack=True)))

    # Overflow: a queue of one that refuses the rest (a confirm nack).
    channel.queue_declare("py.full", arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    channel.basic_publish("", "py.full", b"fits")
    try:
        channel.basic_publish("", "py.full", b"overflows")
        note("overflow", nacked=False)
    except pika.exceptions.NackError:
        note("overflow", nacked=True)

    # Headers exchange: a binding's typed arguments against typed headers.
    channel.exchange_declare("py.h", exchange_type="headers")
    channel.queue_declare("py.hq")
    channel.queue_bind("py.hq", "py.h", arguments={"x-match": "any", "n": 1, "kind": "a"})
    for body, headers in [(b"n", {"n": 1}), (b"kind", {"kind": "a"}), (b"neither", {"n": 2}), (b"long", {"n": 2**40})]:
        channel.basic_publish("py.h", "", body, pika.BasicProperties(headers=headers))
    note("headers routed", message_count=channel.queue_purge("py.hq").method.message_count)

    # Channel errors: each closes its channel with the broker's code and text.
    expect_channel_error(connection, "inequivalent redeclare", lambda c: c.queue_declare("py.work", durable=True))
    expect_channel_error(connection, "passive declare of a missing queue", lambda c: c.queue_declare("py.absent", passive=True))
    expect_channel_error(connection, "inequivalent exchange", lambda c: c.exchange_declare("py.x", exchange_type="direct"))
    expect_channel_error(connection, "delete a non-empty queue if empty", lambda c: c.queue_delete("py.full", if_empty=True))
    expect_channel_error(
        connection, "bad max length", lambda c: c.queue_declare("py.bad", arguments={"x-max-length": "ten"})
    )
    # Two arguments of the other queue type: RabbitMQ names the first on the wire.
    expect_channel_error(
        connection,
        "quorum arguments on a classic queue",
        lambda c: c.queue_declare("py.classic", arguments={"x-quorum-initial-group-size": 3, "x-delivery-limit": 5}),
    )
    expect_channel_error(connection, "double ack", double_ack)
    other = pika.BlockingConnection(params)
    channel.queue_declare("py.mine", exclusive=True)
    expect_channel_error(other, "exclusive queue of another connection", lambda c: c.queue_declare("py.mine", passive=True))

    # Connection errors: each closes the whole connection.
    expect_connection_error(params, "prefetch size", lambda c: c.basic_qos(prefetch_size=10, prefetch_count=1))
    expect_connection_error(params, "unknown exchange type", lambda c: c.exchange_declare("py.bad", exchange_type="nonsense"))

    routing_and_queues(params)

    deleted = {name: channel.queue_delete(name).method.message_count for name in ["py.work", "py.dead", "py.full", "py.hq"]}
    note("deleted", message_counts=deleted)
    for name in ["py.x", "py.dlx", "py.h"]:
        channel.exchange_delete(name)
    other.close()
    connection.close()
    print_transcript()


def get(channel, queue, **kw):
    """A basic.get as the transcript shows it; None for get-empty."""
    method, properties, body = channel.basic_get(queue, **kw)
    return None if method is None else seen(method, properties, body)


def drain(channel, queue):
    """The bodies left in a queue, taken in order."""
    out = []
    while True:
        m = get(channel, queue, auto_ack=True)
        if m is None:
            return out
        out.append(m["body"])


def consume_each(channel, consumers):
    """Starts a consumer for each (queue, arguments); returns the list each delivery is noted
    in, as [consumer index, body], and the consumer tags."""
    got = []
    tags = []
    for index, (queue, arguments) in enumerate(consumers):
        def on_message(ch, method, properties, body, index=index):
            got.append([index, body.decode()])
            ch.basic_ack(method.delivery_tag)
        tags.append(channel.basic_consume(queue, on_message, arguments=arguments))
    return got, tags


def routing_and_queues(params):
    """Alternate and exchange-to-exchange routing, CC and BCC, priorities, expiry and length
    limits dead-lettered, recover, nack multiple, transactions, single active consumer,
    consumer priorities, more refusals, direct reply-to."""
    connection = pika.BlockingConnection(params)
    ch = connection.channel()

    # A server-named queue, and a get from an empty queue.
    named = ch.queue_declare("", exclusive=True).method.queue
    note("server-named queue", prefix=named.startswith("amq.gen-"))
    note("get empty", message=get(ch, named))

    # An alternate exchange takes what its exchange cannot route (mandatory: not returned).
    ch.exchange_declare("py.ae", exchange_type="fanout")
    ch.exchange_declare("py.main", exchange_type="direct", arguments={"alternate-exchange": "py.ae"})
    ch.queue_declare("py.aeq")
    ch.queue_bind("py.aeq", "py.ae")
    ch.confirm_delivery()
    ch.basic_publish("py.main", "nowhere", b"to the alternate", mandatory=True)
    note("alternate exchange", message=get(ch, "py.aeq", auto_ack=True))

    # An exchange-to-exchange binding, and sender-selected distribution (CC, BCC).
    ch.exchange_declare("py.src", exchange_type="topic")
    ch.exchange_declare("py.dest", exchange_type="direct")
    ch.exchange_bind("py.dest", "py.src", "k")
    for q in ["py.e2e", "py.cc1", "py.cc2", "py.cc3"]:
        ch.queue_declare(q)
    ch.queue_bind("py.e2e", "py.dest", "k")
    ch.basic_publish("py.src", "k", b"through two exchanges")
    note("exchange to exchange", message=get(ch, "py.e2e", auto_ack=True))
    headers = {"keep": 1, "CC": ["py.cc2"], "BCC": ["py.cc3"]}
    ch.basic_publish("", "py.cc1", b"cc", pika.BasicProperties(headers=headers))
    note("CC and BCC", copies=[get(ch, q, auto_ack=True) for q in ["py.cc1", "py.cc2", "py.cc3"]])

    # A priority queue.
    ch.queue_declare("py.prio", arguments={"x-max-priority": 5})
    for priority in [1, 5, 3, 9]:
        ch.basic_publish("", "py.prio", f"p{priority}".encode(), pika.BasicProperties(priority=priority))
    ch.basic_publish("", "py.prio", b"none")
    note("priority order", bodies=drain(ch, "py.prio"))

    # Expiry at once, dead-lettered; drop-head past a length limit, dead-lettered.
    ch.exchange_declare("py.dlx2", exchange_type="fanout")
    ch.queue_declare("py.dlq2")
    ch.queue_bind("py.dlq2", "py.dlx2")
    ch.queue_declare("py.ttl", arguments={"x-dead-letter-exchange": "py.dlx2"})
    ch.basic_publish("", "py.ttl", b"expires", pika.BasicProperties(expiration="0", headers={"b": 1, "a": 2}))
    ch.queue_declare("py.short", arguments={"x-max-length": 2, "x-dead-letter-exchange": "py.dlx2"})
    for n in range(3):
        ch.basic_publish("", "py.short", f"s{n}".encode())
    # Both dead-lettered (in the background in RabbitMQ) before either is taken.
    count_when(ch, "py.dlq2", 2)
    dead = [get(ch, "py.dlq2", auto_ack=True) for _ in range(2)]
    note("expired and dropped", dead=dead, left=drain(ch, "py.ttl"), short=drain(ch, "py.short"))

    # basic.recover: what a channel holds unacked comes back, redelivered.
    ch.queue_declare("py.rec")
    for n in range(2):
        ch.basic_publish("", "py.rec", f"r{n}".encode())
    held = [get(ch, "py.rec") for _ in range(2)]
    ch.basic_recover(requeue=True)
    count_when(ch, "py.rec", 2)
    note("recover", held=held, back=[get(ch, "py.rec", auto_ack=True) for _ in range(2)])

    # nack with multiple; purge; delete if unused.
    for n in range(3):
        ch.basic_publish("", "py.rec", f"n{n}".encode())
    tags = [ch.basic_get("py.rec")[0].delivery_tag for _ in range(3)]
    ch.basic_nack(tags[-1], multiple=True, requeue=True)
    note("nack multiple", message_count=count_when(ch, "py.rec", 3))
    note("purge", message_count=ch.queue_purge("py.rec").method.message_count)

    # Transactions: a publish shows at the commit; a rolled-back ack leaves the message unacked.
    tx = connection.channel()
    tx.tx_select()
    tx.basic_publish("", "py.rec", b"in tx")
    before = ch.queue_declare("py.rec", passive=True).method.message_count
    tx.tx_commit()
    after = count_when(ch, "py.rec", 1)
    method, _, _ = tx.basic_get("py.rec")
    tx.basic_ack(method.delivery_tag)
    tx.tx_rollback()
    tx.close()
    note("transaction", before_commit=before, after_commit=after,
         after_rollback_and_close=count_when(ch, "py.rec", 1))

    # Single active consumer: the first consumer gets everything; consumer priorities.
    ch.basic_qos(prefetch_count=10)
    ch.queue_declare("py.sac", arguments={"x-single-active-consumer": True})
    ch.queue_declare("py.cp")
    consumers = [("py.sac", None), ("py.sac", None), ("py.cp", None), ("py.cp", {"x-priority": 5})]
    got, tags = consume_each(ch, consumers)
    for n in range(3):
        ch.basic_publish("", "py.sac", f"sac{n}".encode())
        ch.basic_publish("", "py.cp", f"cp{n}".encode())
    for _ in range(500):
        if len(got) >= 6:
            break
        connection.process_data_events(time_limit=0.02)
    note("single active consumer and priorities", got=sorted(got, key=lambda g: g[1]))
    for tag in tags:
        ch.basic_cancel(tag)

    # Refusals: an exclusive consumer, a delete if unused, an exchange delete if unused.
    ch.basic_consume("py.cp", lambda *a: None, exclusive=True)
    expect_channel_error(connection, "consume beside an exclusive consumer", lambda c: c.basic_consume("py.cp", lambda *a: None))
    expect_channel_error(connection, "delete a queue in use if unused", lambda c: c.queue_delete("py.cp", if_unused=True))
    expect_channel_error(connection, "delete a bound exchange if unused", lambda c: c.exchange_delete("py.ae", if_unused=True))
    expect_channel_error(connection, "publish to an internal exchange", lambda c: (c.exchange_declare("py.int", exchange_type="fanout", internal=True), c.confirm_delivery(), c.basic_publish("py.int", "", b"x")))
    expect_channel_error(connection, "redeclare with other arguments", lambda c: c.queue_declare("py.prio", arguments={"x-max-priority": 6}))

    # Direct reply-to: the request carries the channel's reply name; the reply comes straight back.
    replies = []
    ch.basic_consume("amq.rabbitmq.reply-to", lambda c, m, p, b: replies.append(b.decode()), auto_ack=True)
    ch.queue_declare("py.req")
    ch.basic_publish("", "py.req", b"request", pika.BasicProperties(reply_to="amq.rabbitmq.reply-to"))
    method, properties, body = ch.basic_get("py.req", auto_ack=True)
    reply_to = properties.reply_to
    ch.basic_publish("", reply_to, b"reply")
    for _ in range(500):
        if replies:
            break
        connection.process_data_events(time_limit=0.02)
    note("direct reply-to", rewritten=reply_to.startswith("amq.rabbitmq.reply-to."), replies=replies)

    for q in ["py.aeq", "py.e2e", "py.cc1", "py.cc2", "py.cc3", "py.prio", "py.dlq2", "py.ttl", "py.short", "py.rec", "py.sac", "py.cp", "py.req"]:
        ch.queue_delete(q)
    for x in ["py.ae", "py.main", "py.src", "py.dest", "py.dlx2", "py.int"]:
        ch.exchange_delete(x)
    connection.close()


def double_ack(channel):
    channel.queue_declare("py.once")
    channel.basic_publish("", "py.once", b"x")
    method, _, _ = channel.basic_get("py.once")
    channel.basic_ack(method.delivery_tag)
    channel.basic_ack(method.delivery_tag)
    # The close comes back as the answer to the next synchronous call.
    channel.queue_declare("py.once", passive=True)


if __name__ == "__main__":
    main(sys.argv[1])
