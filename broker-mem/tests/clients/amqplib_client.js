// amqplib (Node.js's most used AMQP 0-9-1 client) against one broker: RabbitMQ or broker-mem's
// wire server. Usage: node amqplib_client.js AMQP_URL. Runs one fixed scenario and prints, as
// JSON, everything the client observed: the caller runs it against both brokers and compares.
'use strict';

const amqp = require('amqplib');
// The method definitions, for the one call the channel API does not offer (a prefetch size).
const defs = require(require('node:path').join(require('node:path').dirname(require.resolve('amqplib')), 'lib', 'defs'));

const transcript = [];
const note = (step, what) => transcript.push({ step, ...what });

// A broker names the vhost in its texts; the two runs use different ones.
const sameVhost = (text) => String(text).replace(/in vhost '[^']*'/g, "in vhost 'V'");

// What a delivery or get shows a subscriber, minus what differs by design between brokers
// (consumer tags and server-made names are each broker's own; x-death `time` is its clock).
function seen(message) {
  if (!message) return null;
  const { fields, properties, content } = message;
  const headers = properties.headers && JSON.parse(JSON.stringify(properties.headers, (key, value) =>
    (key === 'time' ? typeof value : value)));
  return {
    deliveryTag: fields.deliveryTag,
    redelivered: fields.redelivered,
    exchange: fields.exchange,
    routingKey: fields.routingKey,
    messageCount: fields.messageCount,
    content: content.toString('utf8'),
    properties: { ...properties, headers },
  };
}

function failure(error) {
  return { code: error.code, classId: error.classId, methodId: error.methodId, message: sameVhost(error.message) };
}

// Resolves with the channel's close error (or its 'close' without one).
function closed(channel) {
  return new Promise((resolve) => {
    let error = null;
    channel.on('error', (e) => { error = e; });
    channel.on('close', () => resolve(error && failure(error)));
  });
}

// The queue's ready count once it is `want`: RabbitMQ requeues a nacked or recovered message,
// and enqueues an unconfirmed publish, asynchronously (through its delegates), so a count or a
// get just after may not see it yet. Throws after 10 s, naming what it saw.
async function countWhen(channel, queue, want) {
  let count;
  for (let tries = 0; tries < 500; tries += 1) {
    ({ messageCount: count } = await channel.checkQueue(queue));
    if (count === want) return count;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`${queue} holds ${count} ready messages after 10 s, not ${want}`);
}

async function expectChannelError(connection, step, act) {
  const channel = await connection.createChannel();
  const closing = closed(channel);
  let rejected = null;
  try {
    await act(channel);
  } catch (e) {
    rejected = failure(e);
  }
  note(step, { rejected, closedWith: await closing });
}

async function expectConnectionError(url, step, act) {
  const connection = await amqp.connect(url);
  const closing = new Promise((resolve) => {
    let error = null;
    connection.on('error', (e) => { error = e; });
    connection.on('close', () => resolve(error && failure(error)));
  });
  const channel = await connection.createChannel();
  channel.on('error', () => {});
  let rejected = null;
  try {
    await act(channel);
  } catch (e) {
    rejected = failure(e);
  }
  note(step, { rejected, connectionClosedWith: await closing });
}

const PROPERTIES = {
  contentType: 'application/json',
  contentEncoding: 'utf-8',
  headers: {
    small: 7, short: 300, int: 70000, long: 2 ** 40, negative: -5, double: 1.5,
    text: 'héllo', yes: true, nothing: null, list: [1, 'a', false, [2]], table: { a: 1, b: 'x' },
    bytes: Buffer.from([0, 255, 10]),
    stamp: { '!': 'timestamp', value: 1700000000 },
    decimal: { '!': 'decimal', value: { places: 2, digits: 314 } },
    float: { '!': 'float', value: 0.5 },
  },
  deliveryMode: 2,
  priority: 3,
  correlationId: 'corr-1',
  replyTo: 'somewhere',
  expiration: '60000',
  messageId: 'm-1',
  timestamp: 1700000001,
  type: 'job',
  userId: 'guest',
  appId: 'amqplib-test',
};

async function main(url) {
  const connection = await amqp.connect(url);
  const ch = await connection.createConfirmChannel();

  // Topology: a topic exchange, a work queue that dead-letters to a fanout, a full-up queue.
  await ch.assertExchange('js.x', 'topic', { durable: false });
  await ch.assertExchange('js.dlx', 'fanout', { durable: false });
  note('declare work', await ch.assertQueue('js.work', { durable: false, deadLetterExchange: 'js.dlx' }));
  await ch.assertQueue('js.dead', { durable: false });
  await ch.bindQueue('js.work', 'js.x', 'job.*');
  await ch.bindQueue('js.dead', 'js.dlx', '');
  const returns = [];
  ch.on('return', (message) => returns.push(seen(message)));

  // Publishes with every property and header type, confirmed; one unroutable and mandatory.
  const confirms = [];
  const publish = (exchange, key, body, options) => new Promise((resolve) => {
    ch.publish(exchange, key, Buffer.from(body), options, (error) => {
      confirms.push({ body, nacked: Boolean(error) });
      resolve();
    });
  });
  await publish('js.x', 'job.a', 'one', PROPERTIES);
  await publish('js.x', 'job.b', 'two', { messageId: 'm-2' });
  await publish('js.x', 'job.c', 'three', { messageId: 'm-3', headers: { n: 3 } });
  await publish('js.x', 'nobody.home', 'lost', { mandatory: true, messageId: 'm-4' });
  await ch.waitForConfirms();
  note('confirms', { confirms: [...confirms], returns: [...returns] });
  note('check work', await ch.checkQueue('js.work'));

  // basic.get, nack with requeue: back at its place, redelivered.
  const first = await ch.get('js.work');
  note('get', { message: seen(first) });
  ch.nack(first, false, true);
  await countWhen(ch, 'js.work', 3);
  const again = await ch.get('js.work');
  note('get again', { message: seen(again) });
  ch.nack(again, false, true);
  await countWhen(ch, 'js.work', 3);

  // A consumer with a prefetch of 2: acks one, rejects one (dead-lettered), acks the last.
  await ch.prefetch(2);
  const delivered = [];
  await new Promise((resolve, reject) => {
    ch.consume('js.work', (message) => {
      if (message === null) return; // cancelled when the queue is deleted at the end
      delivered.push(seen(message));
      if (message.content.toString() === 'two') ch.reject(message, false);
      else ch.ack(message);
      if (delivered.length === 3) resolve();
    }).catch(reject);
  });
  note('consumed', { delivered });

  // The dead-lettered one, with its x-death.
  await countWhen(ch, 'js.dead', 1);
  note('dead-lettered', { message: seen(await ch.get('js.dead', { noAck: true })) });

  // Bodies: empty (no body frame), and larger than a frame (split, and joined again), with
  // routing keys and names outside ASCII.
  await ch.assertQueue('js.größe', { durable: false });
  const large = Buffer.alloc(300000, 'abcdefghij');
  await publish('', 'js.größe', '', {});
  await new Promise((resolve) => { ch.publish('', 'js.größe', large, {}, resolve); });
  const empty = await ch.get('js.größe', { noAck: true });
  const big = await ch.get('js.größe', { noAck: true });
  note('bodies', {
    empty: { length: empty.content.length, routingKey: empty.fields.routingKey },
    large: { length: big.content.length, same: big.content.equals(large), messageCount: big.fields.messageCount },
  });
  await ch.deleteQueue('js.größe');

  // Overflow: a queue of one that refuses the rest (a confirm nack).
  await ch.assertQueue('js.full', { durable: false, maxLength: 1, arguments: { 'x-overflow': 'reject-publish' } });
  confirms.length = 0;
  await publish('', 'js.full', 'fits', {});
  await publish('', 'js.full', 'overflows', {});
  note('overflow confirms', { confirms: [...confirms] });

  // Headers exchange: a binding's typed arguments against typed headers.
  await ch.assertExchange('js.h', 'headers', { durable: false });
  await ch.assertQueue('js.hq', { durable: false });
  await ch.bindQueue('js.hq', 'js.h', '', { 'x-match': 'all', n: 1, kind: 'a' });
  await publish('js.h', '', 'matches', { headers: { n: 1, kind: 'a', extra: true } });
  await publish('js.h', '', 'misses', { headers: { n: 2, kind: 'a' } });
  await publish('js.h', '', 'float matches', { headers: { n: 1.0, kind: 'a' } });
  note('headers routed', await ch.checkQueue('js.hq'));
  note('purge', await ch.purgeQueue('js.hq'));

  // Channel errors: each closes its channel with the broker's code and text.
  await expectChannelError(connection, 'inequivalent redeclare', (c) => c.assertQueue('js.work', { durable: true }));
  await expectChannelError(connection, 'passive declare of a missing queue', (c) => c.checkQueue('js.absent'));
  await expectChannelError(connection, 'bind to a missing exchange', (c) => c.bindQueue('js.work', 'js.absent', ''));
  await expectChannelError(connection, 'bind to the default exchange', (c) => c.bindQueue('js.work', '', 'k'));
  await expectChannelError(connection, 'reserved name', (c) => c.assertExchange('amq.mine', 'direct'));
  await expectChannelError(connection, 'bad x-match', (c) =>
    c.bindQueue('js.hq', 'js.h', '', { 'x-match': 'some' }));
  await expectChannelError(connection, 'bad message ttl', (c) =>
    c.assertQueue('js.ttl', { arguments: { 'x-message-ttl': -1 } }));
  await expectChannelError(connection, 'publish to a missing exchange', async (c) => {
    c.publish('js.absent', 'k', Buffer.from('x'));
    await c.checkQueue('js.work');
  });
  await expectChannelError(connection, 'unknown delivery tag', async (c) => {
    c.ack({ fields: { deliveryTag: 99 } });
    await c.checkQueue('js.work');
  });
  await expectChannelError(connection, 'wrong user id', async (c) => {
    c.publish('js.x', 'job.z', Buffer.from('x'), { userId: 'mallory' });
    await c.checkQueue('js.work');
  });
  await expectChannelError(connection, 'bad expiration', async (c) => {
    c.publish('js.x', 'job.z', Buffer.from('x'), { expiration: 'soon' });
    await c.checkQueue('js.work');
  });

  // Another connection's exclusive queue: 405.
  const owner = await connection.createChannel();
  await owner.assertQueue('js.mine', { exclusive: true });
  const other = await amqp.connect(url);
  await expectChannelError(other, 'exclusive queue of another connection', (c) => c.assertQueue('js.mine', { exclusive: true }));

  // Consumer cancel notification: the queue is deleted under its consumer.
  const watcher = await other.createChannel();
  await watcher.assertQueue('js.temp', { durable: false });
  let told;
  const cancelled = new Promise((resolve) => { told = resolve; });
  // Registered (consume-ok) before the delete, which comes on another connection.
  await watcher.consume('js.temp', (message) => { if (message === null) told('cancelled by the broker'); });
  note('delete in use', await ch.deleteQueue('js.temp'));
  note('consumer', { told: await cancelled });

  // Delete with if-empty refused, then counts of what a delete drops.
  await expectChannelError(connection, 'delete a non-empty queue if empty', (c) => c.deleteQueue('js.full', { ifEmpty: true }));
  note('delete full', await ch.deleteQueue('js.full'));

  // Queue options amqplib turns into arguments (as small integer types: a byte, an int), a
  // redeclare with the same, and one with another value.
  const options = { durable: false, messageTtl: 100, expires: 600000, maxLength: 5, maxPriority: 3 };
  note('declare with options', await ch.assertQueue('js.opts', options));
  note('redeclare the same', await ch.assertQueue('js.opts', options));
  await expectChannelError(connection, 'redeclare another ttl', (c) =>
    c.assertQueue('js.opts', { ...options, messageTtl: 200 }));
  note('delete with options', await ch.deleteQueue('js.opts'));

  // recover and nackAll: what the channel holds unacked comes back, redelivered.
  const plain = await connection.createChannel();
  await plain.assertQueue('js.back', { durable: false });
  for (const body of ['b1', 'b2', 'b3']) plain.sendToQueue('js.back', Buffer.from(body));
  await countWhen(plain, 'js.back', 3);
  const held = [await plain.get('js.back'), await plain.get('js.back')];
  note('held', { messages: held.map(seen) });
  await plain.recover();
  await countWhen(plain, 'js.back', 3);
  const recovered = [await plain.get('js.back'), await plain.get('js.back'), await plain.get('js.back')];
  note('recovered', { messages: recovered.map(seen) });
  plain.nackAll(true);
  note('after nackAll', { messageCount: await countWhen(plain, 'js.back', 3) });
  // An exchange-to-exchange binding, unbound again.
  await plain.assertExchange('js.from', 'fanout', { durable: false });
  await plain.bindExchange('amq.direct', 'js.from', '');
  await plain.bindQueue('js.back', 'amq.direct', 'b');
  await publish('js.from', 'b', 'b4', {});
  note('through amq.direct', await plain.checkQueue('js.back'));
  await plain.unbindExchange('amq.direct', 'js.from', '');
  await publish('js.from', 'b', 'b5', {});
  note('unbound', await plain.checkQueue('js.back'));
  await plain.deleteQueue('js.back');
  await plain.deleteExchange('js.from');
  await plain.close();

  // Connection errors: each closes the whole connection with the broker's code and text.
  await expectConnectionError(url, 'prefetch size', (c) =>
    c.rpc(defs.BasicQos, { prefetchSize: 10, prefetchCount: 5, global: false }, defs.BasicQosOk));
  await expectConnectionError(url, 'unknown exchange type', (c) => c.assertExchange('js.bad', 'nonsense'));
  await expectConnectionError(url, 'recover without requeue', (c) =>
    c.rpc(defs.BasicRecover, { requeue: false }, defs.BasicRecoverOk));

  for (const queue of ['js.work', 'js.dead', 'js.hq']) await ch.deleteQueue(queue);
  for (const exchange of ['js.x', 'js.dlx', 'js.h']) await ch.deleteExchange(exchange);
  await other.close();
  await connection.close();
  process.stdout.write(`${JSON.stringify(transcript, null, 1)}\n`);
}

main(process.argv[2]).catch((error) => {
  process.stderr.write(`${error.stack}\n`);
  process.exit(1);
});
