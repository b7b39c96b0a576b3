'use strict';
// Drives the real server process over HTTP.
const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { spawn } = require('node:child_process');
const net = require('node:net');
const path = require('node:path');

function freePort() {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

describe('transformer server', () => {
  let child;
  let base;
  let log = '';
  before(async () => {
    const port = await freePort();
    base = `http://127.0.0.1:${port}`;
    child = spawn(process.execPath, [path.join(__dirname, '../src/server.js')], { env: { ...process.env, PORT: String(port), WORKERS: '2' } });
    child.stderr.on('data', (d) => { log += d; });
    for (let i = 0; i < 200 && (log.match(/event=ready/g) || []).length < 2; i++) await new Promise((r) => setTimeout(r, 25));
    assert.match(log, /event=ready/);
  });
  after(async () => {
    child.kill('SIGTERM');
    const code = await new Promise((r) => child.on('exit', r));
    assert.equal(code, 0);
  });

  const body = JSON.stringify([
    { message: { type: 'track', userId: 'u', event: 'e' }, metadata: { jobId: 7 }, destination: { Config: { webhookUrl: 'http://sink/x' } } },
    { message: { type: 'track', userId: 'u', event: 'e' }, metadata: { jobId: 8 }, destination: { Config: {} } },
  ]);

  it('POST /v0/destinations/webhook answers per event with apiVersion 2', async () => {
    const res = await fetch(`${base}/v0/destinations/webhook`, { method: 'POST', body, headers: { 'Content-Type': 'application/json' } });
    assert.equal(res.status, 200);
    assert.equal(res.headers.get('apiversion'), '2');
    const out = await res.json();
    assert.equal(out.length, 2);
    assert.equal(out[0].statusCode, 200);
    assert.equal(out[0].metadata.jobId, 7);
    assert.equal(out[0].output.endpoint, 'http://sink/x');
    assert.equal(out[1].statusCode, 400);
    assert.match(out[1].error, /Invalid URL/);
  });

  it('legacy POST /v0/webhook answers with apiVersion 1', async () => {
    const res = await fetch(`${base}/v0/WEBHOOK`, { method: 'POST', body });
    assert.equal(res.status, 200);
    assert.equal(res.headers.get('apiversion'), '1');
    assert.equal((await res.json())[0].statusCode, 200);
  });

  it('unknown destination types fail per event; bad bodies fail the request', async () => {
    let res = await fetch(`${base}/v0/destinations/nosuch`, { method: 'POST', body });
    const out = await res.json();
    assert.deepEqual(out.map((o) => o.statusCode), [400, 400]);
    assert.match(out[0].error, /not supported/);
    res = await fetch(`${base}/v0/destinations/webhook`, { method: 'POST', body: '{nope' });
    assert.equal(res.status, 400);
    res = await fetch(`${base}/v0/destinations/webhook`, { method: 'POST', body: '{}' });
    assert.equal(res.status, 400);
    res = await fetch(`${base}/v0/destinations/webhook`);
    assert.equal(res.status, 405);
  });

  it('GET /health and /features', async () => {
    const h = await fetch(`${base}/health`);
    assert.equal(h.status, 200);
    assert.equal((await h.json()).service, 'UP');
    const f = await (await fetch(`${base}/features`)).json();
    assert.ok(f.destinations.includes('WEBHOOK'));
    assert.ok('routerTransform' in f);
    assert.equal(f.routerTransform.WEBHOOK, true);
  });
});
