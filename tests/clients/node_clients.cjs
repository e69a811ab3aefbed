// Smoke test of node-redis and ioredis with their default settings against chordkv RESP ports.
//
// Usage: node tests/clients/node_clients.cjs NODE_MODULES_DIR HOST:PORT [HOST:PORT ...]
//
// NODE_MODULES_DIR holds `redis` (node-redis) and `ioredis`: tests/run-all.sh installs them into
// target/clients/node/node_modules; tests/tests/resp_clients.rs runs this. Prints one line per
// client and "ok" at the end; any failure exits 1.
"use strict";
const path = require("path");
const assert = require("assert");

async function nodeRedis(modules, addrs) {
  const { createClient } = require(path.join(modules, "redis"));
  const version = require(path.join(modules, "redis", "package.json")).version;
  const clients = [];
  for (const addr of addrs) {
    const c = createClient({ url: `redis://${addr}` });
    c.on("error", (e) => console.error("node-redis", addr, e.message));
    await c.connect();
    clients.push(c);
  }
  console.log("node-redis", version);
  for (const c of clients) assert.strictEqual(await c.ping(), "PONG");
  for (let i = 0; i < 30; i++) {
    assert.strictEqual(await clients[i % clients.length].set(`nr-${i}`, `v${i}`), "OK");
  }
  for (const c of clients) {
    for (let i = 0; i < 30; i++) assert.strictEqual(await c.get(`nr-${i}`), `v${i}`);
    assert.strictEqual(await c.get("nr-missing"), null);
    assert.deepStrictEqual(await c.mGet(["nr-0", "nr-missing"]), ["v0", null]);
  }
  assert.strictEqual(await clients[0].del(["nr-0", "nr-missing"]), 1);
  const info = await clients[0].info();
  assert.ok(String(info).includes("redis_version"), info);
  // MULTI/EXEC over one hash tag runs at its owner; over two it is refused, nothing applied.
  assert.deepStrictEqual(await clients[0].multi().set("{nr}tx", "1").incr("{nr}n").exec(), ["OK", 1]);
  await assert.rejects(clients[0].multi().set("{nr-a}tx", "1").set("{nr-b}tx", "1").exec());
  for (const c of clients) assert.strictEqual(await c.get("{nr-a}tx"), null);
  assert.strictEqual(await clients[1].incr("nr-counter"), 1);
  assert.strictEqual(await clients[0].set("nr-lock", "a", { NX: true }), "OK");
  assert.strictEqual(await clients[1].set("nr-lock", "b", { NX: true }), null);
  assert.strictEqual(await clients[0].set("nr-ttl", "v", { EX: 100 }), "OK");
  const ttl = await clients[1].ttl("nr-ttl");
  assert.ok(ttl > 0 && ttl <= 100, `ttl ${ttl}`);
  for (const c of clients) await c.quit();
}

async function ioredis(modules, addrs) {
  const Redis = require(path.join(modules, "ioredis"));
  const version = require(path.join(modules, "ioredis", "package.json")).version;
  const clients = addrs.map((addr) => {
    const [host, port] = [addr.slice(0, addr.lastIndexOf(":")), Number(addr.slice(addr.lastIndexOf(":") + 1))];
    return new Redis({ host, port, maxRetriesPerRequest: 3 });
  });
  console.log("ioredis", version);
  for (const c of clients) assert.strictEqual(await c.ping(), "PONG");
  for (let i = 0; i < 30; i++) {
    assert.strictEqual(await clients[i % clients.length].set(`io-${i}`, `v${i}`), "OK");
  }
  for (const c of clients) {
    for (let i = 0; i < 30; i++) assert.strictEqual(await c.get(`io-${i}`), `v${i}`);
    assert.strictEqual(await c.get("io-missing"), null);
  }
  const piped = await clients[1].pipeline().set("io-pipe", "1").get("io-pipe").exec();
  assert.deepStrictEqual(piped, [[null, "OK"], [null, "1"]]);
  const tx = await clients[0].multi().set("{io}tx", "1").get("{io}tx").exec();
  assert.deepStrictEqual(tx, [[null, "OK"], [null, "1"]]);
  await assert.rejects(clients[0].multi().set("{io-a}tx", "1").set("{io-b}tx", "1").exec());
  for (const c of clients) assert.strictEqual(await c.get("{io-a}tx"), null);
  assert.strictEqual(await clients[1].incrby("io-counter", 5), 5);
  assert.strictEqual(await clients[0].set("io-ttl", "v", "PX", 100000), "OK");
  const pttl = await clients[1].pttl("io-ttl");
  assert.ok(pttl > 0 && pttl <= 100000, `pttl ${pttl}`);
  for (const c of clients) await c.quit();
}

async function main() {
  const [modules, ...addrs] = process.argv.slice(2);
  await nodeRedis(modules, addrs);
  await ioredis(modules, addrs);
  console.log("ok");
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
