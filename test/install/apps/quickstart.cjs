// The README's quickstart, as an installed app (CommonJS: require() of the ESM packages).
const { open, SqliteError } = require('@siblite/core');

async function main() {
  const db = open(':memory:');
  db.exec('CREATE TABLE IF NOT EXISTS stock (item TEXT PRIMARY KEY, qty INT NOT NULL)');
  db.run("INSERT OR IGNORE INTO stock VALUES ('apple', 10)");
  const buy = async (item) => {
    const h = db.connect();
    try {
      return await h.transaction(async (tx) => {
        const { qty } = tx.get('SELECT qty FROM stock WHERE item = ?', [item]);
        await new Promise((r) => setTimeout(r, 5));
        tx.run('UPDATE stock SET qty = ? WHERE item = ?', [qty - 1, item]);
      });
    } finally {
      h.close();
    }
  };
  await Promise.all([buy('apple'), buy('apple'), buy('apple')]);
  const { qty } = db.get("SELECT qty FROM stock WHERE item = 'apple'");
  let typed = false;
  try {
    db.run("INSERT INTO stock VALUES ('apple', 1)");
  } catch (e) {
    typed = e instanceof SqliteError && e.code === 'SQLITE_CONSTRAINT_PRIMARYKEY' || e.code === 'SQLITE_CONSTRAINT_UNIQUE';
  }
  db.close();
  if (qty !== 7 || !typed) throw new Error(`expected 7 apples and a typed error, got ${qty}, ${typed}`);
  console.log(`cjs ok qty=${qty}`);
}
main().catch((e) => {
  console.error(e);
  process.exit(1);
});
