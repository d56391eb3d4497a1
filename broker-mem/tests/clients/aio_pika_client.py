"""aio-pika (asyncio, over aiormq and pamqp's codec) against one broker: RabbitMQ or broker-mem's
wire server.

Usage: aio_pika_client.py AMQP_URL. Runs one fixed scenario as an asyncio service uses
aio-pika (publisher confirms, typed headers, a mandatory return, `Queue.get` with a requeue, a
queue iterator with a prefetch that acks and rejects into a dead-letter queue, refusals) and
prints, as JSON, everything it observed; the caller runs it against both brokers and compares
(tests/wire_clients.rs).
"""
import asyncio
import datetime
import decimal
import sys

import aio_pika
import aiormq.exceptions

from transcript import note, plain, print_transcript, same_vhost


PROPERTY_NAMES = [
    "content_type", "content_encoding", "headers", "delivery_mode", "priority",
    "correlation_id", "reply_to", "expiration", "message_id", "timestamp", "type",
    "user_id", "app_id",
]


def seen(message):
    """What an aio-pika consumer sees of a message, minus each broker's own consumer tag."""
    if message is None:
        return None
    shown = {
        "body": message.body.decode(),
        "delivery_tag": message.delivery_tag,
        "redelivered": message.redelivered,
        "exchange": message.exchange,
        "routing_key": message.routing_key,
        "message_count": message.message_count,
    }
    for name in PROPERTY_NAMES:
        value = getattr(message, name)
        if value not in (None, {}):
            shown[name] = plain(value)
    return shown


def refusal(error):
    """aiormq names the broker's reply code by the exception's class and gives its text."""
    text = error.args[0] if error.args else str(error)
    return {"type": type(error).__name__, "text": same_vhost(text)}


async def expect_error(connection, step, act):
    channel = await connection.channel()
    try:
        await act(channel)
        note(step, refused=None)
        await channel.close()
    except aiormq.exceptions.AMQPError as error:
        note(step, refused=refusal(error))


async def count_when(channel, name, want):
    """A queue's ready count once it is `want` (RabbitMQ requeues and dead-letters in the
    background). Raises after 10 s, naming what it saw."""
    for _ in range(500):
        queue = await channel.declare_queue(name, passive=True)
        count = queue.declaration_result.message_count
        if count == want:
            return count
        await asyncio.sleep(0.02)
    raise AssertionError(f"{name} holds {count} ready messages after 10 s, not {want}")


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
    "stamp": datetime.datetime(2023, 11, 14, 22, 13, 20, tzinfo=datetime.timezone.utc),
    "decimal": decimal.Decimal("3.14"),
}


async def main(url):
    connection = await aio_pika.connect(url)
    channel = await connection.channel(publisher_confirms=True)
    tasks = await channel.declare_exchange("ap.x", aio_pika.ExchangeType.TOPIC)
    dlx = await channel.declare_exchange("ap.dlx", aio_pika.ExchangeType.FANOUT)
    work = await channel.declare_queue("ap.work", arguments={"x-dead-letter-exchange": "ap.dlx"})
    dead = await channel.declare_queue("ap.dead")
    await work.bind(tasks, "job.*")
    await dead.bind(dlx)

    message = aio_pika.Message(
        b"one",
        headers=HEADERS,
        content_type="application/json",
        content_encoding="utf-8",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        priority=3,
        correlation_id="corr-1",
        reply_to="somewhere",
        expiration=3600,
        message_id="m-1",
        timestamp=datetime.datetime(2023, 11, 14, 22, 13, 21, tzinfo=datetime.timezone.utc),
        type="job",
        user_id="guest",
        app_id="aio-pika-test",
    )
    confirms = [type(await tasks.publish(message, "job.a")).__name__]
    for n, body in [(2, b"two"), (3, b"three")]:
        confirmed = await tasks.publish(aio_pika.Message(body, message_id=f"m-{n}"), f"job.{body.decode()}")
        confirms.append(type(confirmed).__name__)
    # Unroutable and mandatory: aio-pika hands back the basic.return in place of the confirm.
    try:
        answer = await tasks.publish(aio_pika.Message(b"lost", message_id="m-4"), "nobody.home", mandatory=True)
        back = answer.delivery
        returned = {
            "answer": type(answer).__name__,
            "method": type(back).__name__,
            "reply_code": back.reply_code,
            "reply_text": back.reply_text,
            "exchange": back.exchange,
            "routing_key": back.routing_key,
            "body": answer.body.decode(),
            "message_id": answer.header.properties.message_id,
        }
    except aio_pika.exceptions.DeliveryError as error:
        returned = {"raised": type(error).__name__, "message": seen(error.message)}
    note("published", confirms=confirms, returned=returned)

    # Queue.get, nack with requeue: back at its place, redelivered.
    first = await work.get(no_ack=False)
    note("get", message=seen(first))
    await first.nack(requeue=True)
    await count_when(channel, "ap.work", 3)
    again = await work.get(no_ack=False)
    note("get again", message=seen(again))
    await again.nack(requeue=True)
    await count_when(channel, "ap.work", 3)

    # A queue iterator with a prefetch of 2: acks, rejects one (dead-lettered).
    await channel.set_qos(prefetch_count=2)
    delivered = []
    async with work.iterator() as messages:
        async for incoming in messages:
            delivered.append(seen(incoming))
            if incoming.body == b"two":
                await incoming.reject(requeue=False)
            else:
                await incoming.ack()
            if len(delivered) == 3:
                break
    note("consumed", delivered=delivered)
    await count_when(channel, "ap.dead", 1)
    note("dead-lettered", message=seen(await dead.get(no_ack=True)))

    # Refusals, as aiormq raises them.
    await expect_error(connection, "inequivalent redeclare", lambda c: c.declare_queue("ap.work", durable=True))
    await expect_error(connection, "passive declare of a missing queue", lambda c: c.declare_queue("ap.absent", passive=True))
    await expect_error(
        connection,
        "bad x-message-ttl",
        lambda c: c.declare_queue("ap.bad", arguments={"x-message-ttl": "soon"}),
    )

    for queue in (work, dead):
        await queue.delete()
    for exchange in (tasks, dlx):
        await exchange.delete()
    await connection.close()
    print_transcript()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
