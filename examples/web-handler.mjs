// Request handlers that await inside transactions. Each simulated request gets its own
// sibling handle and runs a BEGIN CONCURRENT transaction that awaits a (fake) remote service
// in the middle. Requests run side by side; conflicting ones are retried by
// conn.transaction(); nothing is oversold and no update is lost.
//   pnpm run build && node examples/web-handler.mjs
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { open } from '@siblite/core';

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** A remote service: a shipping quote that takes a few milliseconds. Safe to call twice. */
async function shippingQuote(productId) {
  await sleep(2 + (productId % 4));
  return 5 + (productId % 3);
}

class OutOfStock extends Error {}

const dir = mkdtempSync(join(tmpdir(), 'siblite-web-'));
const db = open(join(dir, 'shop.db'));
try {
  db.exec(`
    CREATE TABLE product (id INTEGER PRIMARY KEY, name TEXT NOT NULL, price INTEGER NOT NULL,
                          stock INTEGER NOT NULL CHECK (stock >= 0));
    CREATE TABLE purchase (id INTEGER PRIMARY KEY, product INTEGER NOT NULL REFERENCES product,
                           customer TEXT NOT NULL, total INTEGER NOT NULL);
  `);
  const PRODUCTS = 5;
  const STOCK = 20;
  for (let id = 1; id <= PRODUCTS; id++) db.run('INSERT INTO product VALUES (?, ?, ?, ?)', [id, `product-${id}`, 10 * id, STOCK]);

  let retries = 0;

  /** POST /checkout: the handler of one request. */
  async function checkout({ customer, productId }) {
    const conn = db.connect(); // one handle per request: its own transaction state
    try {
      const purchase = await conn.transaction(
        async (tx) => {
          const product = tx.get('SELECT price, stock FROM product WHERE id = ?', [productId]);
          if (product.stock === 0) throw new OutOfStock(`product ${productId} is sold out`);
          const shipping = await shippingQuote(productId); // other requests run meanwhile
          tx.run('UPDATE product SET stock = stock - 1 WHERE id = ?', [productId]);
          const total = product.price + shipping;
          const { lastInsertRowid } = tx.run('INSERT INTO purchase (product, customer, total) VALUES (?, ?, ?)', [productId, customer, total]);
          return { id: Number(lastInsertRowid), total };
        },
        { mode: 'concurrent', retry: { retries: 1000, maxTimeout: 20, onRetry: () => retries++ } },
      );
      return { status: 201, body: purchase };
    } catch (e) {
      if (e instanceof OutOfStock) return { status: 409, body: { error: e.message } };
      return { status: 500, body: { error: String(e) } };
    } finally {
      conn.close();
    }
  }

  /** GET /products: a read-only handler, no transaction needed. */
  function listProducts() {
    const conn = db.connect();
    try {
      return { status: 200, body: conn.all('SELECT id, name, stock FROM product ORDER BY id') };
    } finally {
      conn.close();
    }
  }

  // 150 checkouts (more than the 100 items in stock) and some reads, all in flight at once.
  const REQUESTS = 150;
  const t0 = performance.now();
  const responses = await Promise.all([
    ...Array.from({ length: REQUESTS }, (_, i) => checkout({ customer: `c${i}`, productId: 1 + (i % PRODUCTS) })),
    ...Array.from({ length: 10 }, async (_, i) => {
      await sleep(i);
      return listProducts();
    }),
  ]);
  const ms = performance.now() - t0;
  const count = (status) => responses.filter((r) => r.status === status).length;
  console.log(`${REQUESTS} checkouts + 10 listings in ${ms.toFixed(0)} ms: ${count(201)} created, ${count(409)} sold out, ${count(500)} errors, ${retries} retried transactions`);

  const errors = responses.filter((r) => r.status === 500);
  assert.equal(errors.length, 0, errors.map((r) => r.body.error).join('\n'));
  assert.equal(count(201), PRODUCTS * STOCK, 'every item in stock was sold exactly once');
  assert.equal(count(409), REQUESTS - PRODUCTS * STOCK);
  assert.equal(db.get('SELECT sum(stock) AS s FROM product').s, 0, 'nothing oversold');
  assert.equal(db.get('SELECT count(*) AS n FROM purchase').n, PRODUCTS * STOCK);
  const ids = responses.filter((r) => r.status === 201).map((r) => r.body.id);
  assert.equal(new Set(ids).size, ids.length, 'each purchase kept the id it was told');
  const stored = db.all('SELECT id FROM purchase ORDER BY id').map((r) => r.id);
  assert.deepEqual([...ids].sort((x, y) => x - y), stored);
  console.log('stock after the rush:', db.all('SELECT name, stock FROM product ORDER BY id').map((p) => `${p.name}=${p.stock}`).join(', '));
} finally {
  db.close();
  rmSync(dir, { recursive: true, force: true });
}
