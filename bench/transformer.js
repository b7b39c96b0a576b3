#!/usr/bin/env node
'use strict';
// Throughput of one transformer process (WORKERS=1), events/s:
//   destination transform only     POST /v0/destinations/webhook
//   user transformation only       POST /customTransform (a scrubbing transformEvent)
//   both, as the processor chains them for a destination with a transformation
// Batches of --batch events (default 200, processor.transform_chunk), --inflight
// requests at once (default 4, processor.max_inflight), each phase --seconds long
// (the first is a warm-up). User code runs on isolated-vm's own thread, so
// on a multi-core box the chained figure can exceed what one core gives.
//   node bench/transformer.js [--batch 200] [--inflight 4] [--seconds 10]
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');

const arg = (name, def) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : def;
};
const BATCH = arg('batch', 200);
const INFLIGHT = arg('inflight', 4);
const SECONDS = arg('seconds', 10);

const SCRUB = `export function transformEvent(event, metadata) {
  if (event.context && event.context.traits) delete event.context.traits.email;
  event.properties = { ...event.properties, scrubbed: true };
  return event;
}`;

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => { const { port } = s.address(); s.close(() => resolve(port)); });
  });
}

const destination = {
  ID: 'dst-bench', Name: 'bench', Enabled: true, WorkspaceID: 'ws',
  Config: { webhookUrl: 'http://127.0.0.1:1/hook', webhookMethod: 'POST', headers: [{ from: 'X-Test', to: 'bench' }] },
  DestinationDefinition: { ID: 'def', Name: 'WEBHOOK', DisplayName: 'Webhook', Config: {} },
  Transformations: [{ VersionID: 'scrub', ID: 'tr', Config: {} }],
};

function events(n, from) {
  const out = [];
  for (let i = 0; i < n; i++) {
    const k = from + i;
    const message = {
      type: 'track', event: 'Order Completed', userId: `u${k % 1000}`, anonymousId: `a${k % 1000}`,
      messageId: `m-${k}`, receivedAt: new Date().toISOString(), rudderId: `r${k % 1000}`,
      properties: { order_id: `o${k}`, total: 42.5, products: [{ sku: 'x', price: 42.5, quantity: 1 }] },
      context: { traits: { email: `u${k}@example.com`, plan: 'pro' }, library: { name: 'bench' }, ip: '127.0.0.1' },
    };
    out.push({ message, metadata: { jobId: k + 1, sourceId: 'src', destinationId: 'dst-bench', workspaceId: 'ws', messageId: message.messageId, destinationType: 'WEBHOOK' }, destination });
  }
  return out;
}

async function post(url, body, headers = {}) {
  const res = await fetch(url, { method: 'POST', headers: { 'Content-Type': 'application/json', ...headers }, body });
  const text = await res.text();
  if (res.status !== 200) throw new Error(`${url} answered ${res.status}: ${text.slice(0, 200)}`);
  return JSON.parse(text);
}

// One phase: as many batches as fit in SECONDS, INFLIGHT at once.
async function phase(name, run) {
  let done = 0;
  let seq = 0;
  const end = Date.now() + SECONDS * 1000;
  const t0 = process.hrtime.bigint();
  const worker = async () => {
    while (Date.now() < end) {
      const from = seq;
      seq += BATCH;
      await run(events(BATCH, from));
      done += BATCH;
    }
  };
  await Promise.all(Array.from({ length: INFLIGHT }, worker));
  const s = Number(process.hrtime.bigint() - t0) / 1e9;
  const rate = done / s;
  console.log(`${name.padEnd(44)} ${String(Math.round(rate)).padStart(8)} events/s  (${done} events in ${s.toFixed(1)} s)`);
  return rate;
}

async function main() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pintle-bench-ut-'));
  fs.writeFileSync(path.join(dir, 'scrub.js'), SCRUB);
  const port = await freePort();
  const tf = spawn(process.execPath, [path.join(__dirname, '../transformer/src/server.js')], {
    env: { ...process.env, PORT: String(port), WORKERS: '1', LOG_LEVEL: 'error', PINTLE_TRANSFORMATIONS_DIR: dir },
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  const base = `http://127.0.0.1:${port}`;
  try {
    const deadline = Date.now() + 20000;
    for (;;) {
      try { if ((await fetch(`${base}/health`)).ok) break; } catch (e) { /* not yet */ }
      if (Date.now() > deadline) throw new Error('transformer did not start');
      await new Promise((r) => setTimeout(r, 50));
    }
    const dest = (batch) => post(`${base}/v0/destinations/webhook`, JSON.stringify(batch));
    const user = (batch) => post(`${base}/customTransform`, JSON.stringify(batch), { 'X-Feature-Filter-Code': '?1' });
    // warm-up: isolate built, JIT warm
    await user(events(BATCH, 0));
    await dest(events(BATCH, 0));
    const chk = await user(events(2, 0));
    if (chk.length !== 2 || chk[0].statusCode !== 200 || chk[0].output.context.traits.email !== undefined) throw new Error(`unexpected /customTransform answer ${JSON.stringify(chk).slice(0, 300)}`);
    console.log(`one transformer process, batches of ${BATCH}, ${INFLIGHT} in flight, ${SECONDS} s per phase (${os.cpus().length} cores, loadavg ${os.loadavg()[0].toFixed(2)})`);
    const a0 = await phase('destination transform (webhook), warm-up', dest);
    const a = await phase('destination transform (webhook)', dest);
    const b = await phase('user transformation (/customTransform)', user);
    const c = await phase('user transformation + destination transform', async (batch) => {
      const out = await user(batch);
      const next = out.filter((o) => o.statusCode === 200).map((o) => ({ message: o.output, metadata: o.metadata, destination }));
      await dest(next);
    });
    void a0;
    console.log(`with a user transformation: ${Math.round(c)} events/s, ${(100 * c / a).toFixed(0)}% of the destination transform alone (${Math.round(a)}); /customTransform alone ${Math.round(b)}`);
  } finally {
    tf.kill('SIGTERM');
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((e) => { console.error(e); process.exitCode = 1; });
