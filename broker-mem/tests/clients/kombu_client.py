"""kombu (Celery's messaging library, over py-amqp) against one broker: RabbitMQ or broker-mem's
wire server.

Usage: kombu_client.py AMQP_URL. Runs one fixed scenario the way a Celery-style service uses
kombu (declared entities, a JSON producer with confirms, a consumer with a prefetch that acks,
requeues and rejects, `Queue.get`, a SimpleQueue) and prints, as JSON, everything it observed;
the caller runs it against both brokers and compares (tests/wire_clients.rs).
"""
import datetime
import decimal
import sys
import time

import amqp.exceptions
from kombu import Connection, Consumer, Exchange, Producer, Queue

from transcript import count_when as waited_count
from transcript import note, plain, print_transcript, same_vhost


def seen(message):
    """What a kombu consumer sees of a message, minus each broker's own consumer tag."""
    if message is None:
        return None
    info = {k: v for k, v in message.delivery_info.items() if k not in ("consumer_tag", "channel")}
    return {
        "payload": message.payload,
        "content_type": message.content_type,
        "headers": plain(message.headers),
        "properties": plain({k: v for k, v in message.properties.items() if k != "application_headers"}),
        "delivery_info": plain(info),
    }


def failure(error):
    return {"type": type(error).__name__, "code": error.reply_code, "text": same_vhost(error.reply_text)}


def expect_error(connection, step, act):
    """Runs `act` on a fresh channel; notes the broker's refusal (or its absence)."""
    channel = connection.channel()
    try:
        act(channel)
        note(step, refused=None)
        channel.close()
    except amqp.exceptions.AMQPError as error:
        note(step, refused=failure(error))


def count_when(channel, queue, want):
    """[`transcript.count_when`] through kombu's channel."""
    read = lambda: channel.queue_declare(queue, passive=True).message_count
    return waited_count(read, time.sleep, queue, want)


HEADERS = {
    "small": 7,
    "big": 2**40,
    "negative": -5,
    "double": 1.5,
    "text": "héllo",
    "yes": True,
    "nothing": None,
    "list": [1, "a", False, [2]],
    "table": {"z": 1, "a": "x"},
    "stamp": datetime.datetime(2023, 11, 14, 22, 13, 20),
    "decimal": decimal.Decimal("3.14"),
}


def main(url):
    connection = Connection(url, transport_options={"confirm_publish": True})
    channel = connection.channel()
    tasks = Exchange("kb.tasks", type="topic", durable=False)
    dlx = Exchange("kb.dlx", type="fanout", durable=False)
    work = Queue(
        "kb.work",
        exchange=tasks,
        routing_key="task.*",
        durable=False,
        queue_arguments={"x-dead-letter-exchange": "kb.dlx"},
    )
    dead = Queue("kb.dead", exchange=dlx, durable=False)
    for entity in (work, dead):
        entity(channel).declare()

    returned = []

    def on_return(error, exchange, routing_key, message):
        returned.append({"error": failure(error), "exchange": exchange, "routing_key": routing_key})

    producer = Producer(channel, exchange=tasks, serializer="json", on_return=on_return)
    producer.publish(
        {"task": "one", "args": [1, 2]},
        routing_key="task.a",
        headers=HEADERS,
        priority=3,
        correlation_id="corr-1",
        reply_to="replies",
        message_id="m-1",
        expiration=3600,
        delivery_mode=2,
    )
    for n, name in enumerate(["two", "three"], start=2):
        producer.publish({"task": name}, routing_key=f"task.{name}", message_id=f"m-{n}")
    producer.publish({"task": "lost"}, routing_key="nobody.home", mandatory=True, message_id="m-4")
    count_when(channel, "kb.work", 3)
    note("published", returned=returned)

    # Queue.get (basic.get), then requeue: back at its place, redelivered.
    bound = work(channel)
    first = bound.get()
    note("get", message=seen(first))
    first.requeue()
    count_when(channel, "kb.work", 3)

    # A consumer with a prefetch of 2: acks, requeues once, rejects one (dead-lettered).
    delivered = []

    def on_message(body, message):
        delivered.append(seen(message))
        task = body["task"]
        if task == "two" and not message.delivery_info["redelivered"]:
            message.requeue()
        elif task == "three":
            message.reject()
        else:
            message.ack()

    with Consumer(channel, queues=[work], callbacks=[on_message], prefetch_count=2, accept=["json"]):
        for _ in range(500):
            if len(delivered) >= 4:
                break
            try:
                connection.drain_events(timeout=0.02)
            except TimeoutError:
                pass
    note("consumed", delivered=delivered)

    count_when(channel, "kb.dead", 1)
    note("dead-lettered", message=seen(dead(channel).get(no_ack=True)))

    # A SimpleQueue, as small services use it.
    simple = connection.SimpleQueue("kb.simple", queue_opts={"durable": False}, exchange_opts={"durable": False})
    simple.put({"hello": "world"}, headers={"b": 1, "a": 2})
    message = simple.get(block=True, timeout=10)
    note("simple queue", message=seen(message))
    message.ack()
    simple.close()

    # Refusals, as kombu raises them.
    other = Queue("kb.work", exchange=tasks, routing_key="task.*", durable=True)
    expect_error(connection, "inequivalent redeclare", lambda c: other(c).declare())
    expect_error(connection, "passive declare of a missing queue", lambda c: c.queue_declare("kb.absent", passive=True))
    expect_error(
        connection,
        "bad x-max-length",
        lambda c: Queue("kb.bad", queue_arguments={"x-max-length": "ten"})(c).declare(),
    )

    for name in ["kb.work", "kb.dead", "kb.simple"]:
        channel.queue_delete(name)
    for name in ["kb.tasks", "kb.dlx", "kb.simple"]:
        channel.exchange_delete(name)
    connection.release()
    print_transcript()


if __name__ == "__main__":
    main(sys.argv[1])
