// @requires @siblite/bus SqliteBus PermanentError
//
// The bus: a durable command queue and event log in the application's own database.
// An order is written together with a command and an event in one transaction (the
// transactional outbox); competing workers handle the command, writing their effects in the
// same transaction as the acknowledgement; two consumer groups each read every event; a
// failing handler is retried with backoff; a PermanentError dead-letters at once.
//   pnpm run build && node examples/bus-worker.mjs
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { open } from '@siblite/core';
import { SqliteBus, PermanentError } from '@siblite/bus';

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
async function until(what, check, timeoutMs = 20_000) {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

const dir = mkdtempSync(join(tmpdir(), 'siblite-bus-'));
const db = open(join(dir, 'app.db'));
const bus = await SqliteBus.open(db);
const workers = [];
try {
  db.exec(`CREATE TABLE orders (id INTEGER PRIMARY KEY, item TEXT NOT NULL, shipped INTEGER NOT NULL DEFAULT 0,
                                shipments INTEGER NOT NULL DEFAULT 0)`);

  // Producing: the order row, its command and its event commit together, or not at all.
  async function placeOrder(id, item) {
    const h = db.connect();
    try {
      await h.transaction(
        async (tx) => {
          tx.run('INSERT INTO orders (id, item) VALUES (?, ?)', [id, item]);
          await bus.send('order.ship', { order: id }, { conn: tx, headers: { 'correlation-id': `order-${id}` } });
          await bus.publish('order.placed', { order: id, item }, { conn: tx });
          if (item === 'nothing') throw new Error('invalid order'); // rolls back all three
        },
        { mode: 'concurrent' },
      );
      return true;
    } catch {
      return false;
    } finally {
      h.close();
    }
  }
  const ORDERS = 20;
  for (let id = 1; id <= ORDERS; id++) assert.equal(await placeOrder(id, `item-${id}`), true);
  assert.equal(await placeOrder(999, 'nothing'), false);
  console.log(`placed ${ORDERS} orders; the invalid one left no row, command or event`);

  // A command for a failure path, sent without a transaction.
  await bus.send('order.refund', { order: 7 });

  // Competing consumers: two workers share the queue. Each command is handled by exactly one
  // worker at a time; context.conn is a concurrent transaction committed with the ack.
  let flaky = 0;
  const shipHandlers = {
    'order.ship': async (message, { conn }) => {
      const { order } = message.payload;
      if (order === 3 && flaky++ === 0) throw new Error('carrier timeout'); // retried
      await sleep(2); // call the carrier
      conn.run('UPDATE orders SET shipped = 1, shipments = shipments + 1 WHERE id = ?', [order]);
    },
    'order.refund': async () => {
      throw new PermanentError('refunds are handled by a person');
    },
  };
  const options = { concurrency: 4, backoff: 20, maxAttempts: 3, pollInterval: 50 };
  workers.push(bus.listen(shipHandlers, options), bus.listen(shipHandlers, options));

  // Fan-out: every group sees every event, in log order.
  const seen = { email: [], analytics: [] };
  for (const group of Object.keys(seen)) {
    workers.push(
      bus.subscribe(group, { 'order.placed': async (m) => void seen[group].push(m.payload.order) }, { pollInterval: 50 }),
    );
  }

  await until('every order shipped and every event seen', async () => {
    const { n } = db.get('SELECT count(*) AS n FROM orders WHERE shipped = 1');
    return n === ORDERS && seen.email.length === ORDERS && seen.analytics.length === ORDERS;
  });
  await until('the refund to be dead-lettered', async () => (await bus.deadLetters()).length === 1);

  const shipments = db.get('SELECT sum(shipments) AS s FROM orders').s;
  console.log(`shipped ${ORDERS} orders with ${shipments} shipment writes (exactly once each, order 3 after one retry)`);
  assert.equal(shipments, ORDERS);
  assert.equal(flaky, 2);
  console.log(`group "email" saw ${seen.email.length} events, group "analytics" saw ${seen.analytics.length}`);
  // Orders were placed one after another, so log order (commit order) is 1..20, and each group,
  // with one worker handling one event at a time, saw them in that order.
  const inOrder = Array.from({ length: ORDERS }, (_, i) => i + 1);
  assert.deepEqual(seen.email, inOrder);
  assert.deepEqual(seen.analytics, inOrder);

  const [dead] = await bus.deadLetters();
  console.log(`dead letter: ${dead.message.name} ${JSON.stringify(dead.message.payload)}: ${dead.reason}`);
  assert.equal(dead.message.name, 'order.refund');

  const stats = await bus.stats();
  console.log('stats:', JSON.stringify(stats));
  const handled = workers.slice(0, 2).map((w) => w.counters.handled);
  console.log(`the two queue workers handled ${handled.join(' + ')} commands`);
  assert.equal(handled[0] + handled[1], ORDERS);
} finally {
  await Promise.all(workers.map((w) => w.stop()));
  await bus.close();
  db.close();
  rmSync(dir, { recursive: true, force: true });
}
