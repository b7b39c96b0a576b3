'use strict';
// User transformations: real isolates, a real HTTP control plane (a local
// server answering /transformation/getByVersionId and
// /transformationLibrary/getByVersionId), a real local directory, and the real
// server process for the HTTP contract.
const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const http = require('node:http');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { spawn } = require('node:child_process');
const { UserTransformer } = require('../src/usertransform');
const { Store } = require('../src/usertransform/store');
const { SandboxPool, camelCase } = require('../src/usertransform/sandbox');

// --- a control plane -------------------------------------------------------
function startControlPlane() {
  const cp = { transformations: {}, libraries: {}, hits: [], failWith: 0 };
  cp.server = http.createServer((req, res) => {
    const u = new URL(req.url, 'http://x');
    cp.hits.push(`${u.pathname}?${u.searchParams.get('versionId')}`);
    if (cp.failWith) {
      res.writeHead(cp.failWith);
      return res.end('down');
    }
    const table = u.pathname === '/transformation/getByVersionId' ? cp.transformations : u.pathname === '/transformationLibrary/getByVersionId' ? cp.libraries : null;
    const rec = table && table[u.searchParams.get('versionId')];
    if (!rec) {
      res.writeHead(404);
      return res.end('not found');
    }
    res.writeHead(200, { 'Content-Type': 'application/json' });
    res.end(JSON.stringify(rec));
  });
  return new Promise((resolve) => cp.server.listen(0, '127.0.0.1', () => {
    cp.url = `http://127.0.0.1:${cp.server.address().port}`;
    resolve(cp);
  }));
}

const tr = (versionId, code, extra = {}) => ({ id: `t-${versionId}`, versionId, name: `tr ${versionId}`, code, codeVersion: '1', language: 'javascript', workspaceId: 'w1', ...extra });

// The three transformations of the issue: PII scrubbing, sampling, fan-out.
const SCRUB = `export function transformEvent(event, metadata) {
  if (event.context && event.context.traits) delete event.context.traits.email;
  event.seenSource = metadata(event).sourceId;
  return event;
}`;
const SAMPLE = `function h(s) { let x = 2166136261; for (const c of s) { x ^= c.charCodeAt(0); x = Math.imul(x, 16777619) >>> 0; } return x; }
export function transformEvent(event) { return h(event.messageId) % 2 === 0 ? event : null; }`;
const FANOUT = `export function transformEvent(event) {
  const n = event.properties && event.properties.copies || 1;
  const out = [];
  for (let i = 0; i < n; i++) out.push({ ...event, event: event.event + '#' + i });
  return out;
}`;

function fnv(s) {
  let x = 2166136261;
  for (const c of s) {
    x ^= c.charCodeAt(0);
    x = Math.imul(x, 16777619) >>> 0;
  }
  return x;
}

let seq = 0;
function ev(versionId, message = {}, md = {}) {
  const id = message.messageId || `m${++seq}`;
  return {
    message: { type: 'track', event: 'e', userId: 'u1', messageId: id, context: { traits: { email: 'a@b.c', name: 'n' } }, ...message },
    metadata: { sourceId: 's1', destinationId: 'd1', workspaceId: 'w1', destinationType: 'WEBHOOK', messageId: id, jobId: seq, ...md },
    destination: { ID: md.destinationId || 'd1', Transformations: versionId === null ? [] : [{ VersionID: versionId, ID: 't' }] },
  };
}

const fastLimits = { memoryMb: 16, execTimeoutMs: 1500, wallTimeoutMs: 4000, fetchHosts: [], fetchTimeoutMs: 1000 };

describe('user transformations against a control plane', () => {
  let cp;
  let ut;
  before(async () => {
    cp = await startControlPlane();
    ut = new UserTransformer({ store: new Store({ dir: '', configBackendUrl: cp.url, ttlSeconds: 0 }), pool: new SandboxPool(fastLimits, 8) });
    Object.assign(cp.transformations, {
      scrub: tr('scrub', SCRUB),
      sample: tr('sample', SAMPLE),
      fanout: tr('fanout', FANOUT),
    });
  });
  after(() => {
    ut.close();
    cp.server.close();
  });

  it('PII scrubbing: outputs keep the input metadata and order; code is fetched once per version', async () => {
    cp.hits.length = 0;
    const input = [ev('scrub'), ev('scrub'), ev('scrub')];
    const { status, body } = await ut.transform(input);
    assert.equal(status, 200);
    assert.deepEqual(body.map((o) => o.statusCode), [200, 200, 200]);
    assert.deepEqual(body.map((o) => o.metadata.jobId), input.map((e) => e.metadata.jobId));
    for (const o of body) {
      assert.ok(!('email' in o.output.context.traits));
      assert.equal(o.output.context.traits.name, 'n');
      assert.equal(o.output.seenSource, 's1');
    }
    await ut.transform([ev('scrub')]);
    assert.deepEqual(cp.hits, ['/transformation/getByVersionId?scrub']);
  });

  it('sampling: dropped events are 298 with X-Feature-Filter-Code, absent without it', async () => {
    const input = [];
    for (let i = 0; i < 40; i++) input.push(ev('sample'));
    const kept = input.filter((e) => fnv(e.message.messageId) % 2 === 0).map((e) => e.metadata.jobId);
    assert.ok(kept.length > 5 && kept.length < 35);
    let { body } = await ut.transform(input, { filterCode: true });
    assert.equal(body.length, 40);
    assert.deepEqual(body.filter((o) => o.statusCode === 200).map((o) => o.metadata.jobId), kept);
    const dropped = body.filter((o) => o.statusCode === 298);
    assert.equal(dropped.length, 40 - kept.length);
    assert.equal(dropped[0].metadata.messageIds, null);
    assert.ok(dropped[0].metadata.messageId);
    assert.ok(!('output' in dropped[0]));
    ({ body } = await ut.transform(input));
    assert.deepEqual(body.map((o) => o.metadata.jobId), kept);
  });

  it('fan-out: one input becomes several outputs, in order, each with its input metadata', async () => {
    const a = ev('fanout', { properties: { copies: 3 } });
    const b = ev('fanout', { properties: { copies: 1 } });
    const { body } = await ut.transform([a, b]);
    assert.deepEqual(body.map((o) => [o.metadata.jobId, o.output.event]), [
      [a.metadata.jobId, 'e#0'],
      [a.metadata.jobId, 'e#1'],
      [a.metadata.jobId, 'e#2'],
      [b.metadata.jobId, 'e#0'],
    ]);
  });

  it('groups by destination and source, each group with its own transformation', async () => {
    const x = ev('scrub', {}, { destinationId: 'dA' });
    const y = ev('fanout', { properties: { copies: 2 } }, { destinationId: 'dB' });
    const z = ev('scrub', {}, { destinationId: 'dA' });
    const { body } = await ut.transform([x, y, z]);
    assert.deepEqual(body.map((o) => o.metadata.jobId), [x.metadata.jobId, z.metadata.jobId, y.metadata.jobId, y.metadata.jobId]);
    assert.equal(body[2].output.event, 'e#0');
    assert.ok(!('email' in body[0].output.context.traits));
  });

  it('a throw fails that event with the reason; non-object returns fail too', async () => {
    cp.transformations.picky = tr('picky', `export function transformEvent(e) {
      if (e.event === 'bad') throw new Error('bad event ' + e.messageId);
      if (e.event === 'num') return 42;
      if (e.event === 'arr') return [e, 'x'];
      return e;
    }`);
    const input = [ev('picky'), ev('picky', { event: 'bad' }), ev('picky', { event: 'num' }), ev('picky', { event: 'arr' })];
    const { status, body } = await ut.transform(input);
    assert.equal(status, 200);
    assert.deepEqual(body.map((o) => o.statusCode), [200, 400, 400, 400]);
    assert.match(body[1].error, new RegExp(`^Error: bad event ${input[1].message.messageId}\\n\\s+at transformEvent`));
    assert.equal(body[1].metadata.jobId, input[1].metadata.jobId);
    assert.equal(body[2].error, 'returned event from transformEvent(event) is not an object');
    assert.equal(body[3].error, 'returned event in events array from transformEvent(event) is not an object');
  });

  it('transformBatch: outputs matched to inputs by messageId, new events get the group metadata, a throw fails the group', async () => {
    cp.transformations.batch = tr('batch', `export async function transformBatch(events, metadata) {
      if (events.some((e) => e.event === 'explode')) throw new Error('batch exploded');
      const out = events.filter((e) => e.event !== 'skip').map((e) => ({ ...e, jobSeen: metadata(e).jobId }));
      out.push({ type: 'track', event: 'summary', messageId: 'new-1', count: events.length });
      return out;
    }`);
    const input = [ev('batch'), ev('batch', { event: 'skip' }), ev('batch')];
    let { body } = await ut.transform(input, { filterCode: true });
    assert.deepEqual(body.map((o) => o.statusCode), [200, 200, 200, 298]);
    assert.equal(body[0].metadata.jobId, input[0].metadata.jobId);
    assert.equal(body[0].output.jobSeen, input[0].metadata.jobId);
    assert.equal(body[1].metadata.jobId, input[2].metadata.jobId);
    assert.deepEqual(body[2].metadata, { sourceId: 's1', destinationId: 'd1', destinationType: 'WEBHOOK', workspaceId: 'w1', messageIds: input.map((e) => e.message.messageId) });
    assert.equal(body[2].output.count, 3);
    assert.equal(body[3].metadata.jobId, input[1].metadata.jobId);
    const boom = [ev('batch'), ev('batch', { event: 'explode' })];
    ({ body } = await ut.transform(boom, { filterCode: true }));
    assert.deepEqual(body.map((o) => [o.statusCode, o.metadata.jobId]), boom.map((e) => [400, e.metadata.jobId]));
    assert.match(body[0].error, /^Error: batch exploded/);
  });

  it('libraries are fetched from the control plane and imported by their camelCased name', async () => {
    cp.libraries['lib-v1'] = { id: 'l1', versionId: 'lib-v1', name: 'Pii Helpers', code: 'export function scrub(t) { delete t.email; return t; }' };
    cp.libraries['lib-unused'] = { id: 'l2', versionId: 'lib-unused', name: 'broken lib', code: 'this is not javascript' };
    cp.transformations.withlib = tr('withlib', `import { scrub } from "piiHelpers";
      export function transformEvent(e) { scrub(e.context.traits); return e; }`);
    assert.equal(camelCase('Pii Helpers'), 'piiHelpers');
    const input = [ev('withlib')];
    input[0].libraries = [{ VersionID: 'lib-v1' }, { VersionID: 'lib-unused' }];
    const { body } = await ut.transform(input);
    assert.equal(body[0].statusCode, 200, body[0].error);
    assert.ok(!('email' in body[0].output.context.traits));
    // without the library in the request the import cannot be resolved
    const { body: b2 } = await ut.transform([ev('withlib')]);
    assert.equal(b2[0].statusCode, 400);
    assert.match(b2[0].error, /import from piiHelpers failed\. Module not found/);
  });

  it('the host is not reachable: no require, process, fs or network', async () => {
    cp.hits.length = 0;
    cp.transformations.probe = tr('probe', `export async function transformEvent(e) {
      e.seen = [typeof require, typeof process, typeof module, typeof setTimeout, typeof XMLHttpRequest, typeof WebSocket].join(',');
      try { await fetch('${cp.url}/transformation/getByVersionId?versionId=leak'); e.fetch = 'reached'; } catch (err) { e.fetch = err.message; }
      try { await fetchV2('${cp.url}/x'); e.fetchV2 = 'reached'; } catch (err) { e.fetchV2 = err.message; }
      return e;
    }`);
    cp.transformations.importfs = tr('importfs', `import fs from "fs"; export function transformEvent(e) { return e; }`);
    const { body } = await ut.transform([ev('probe')]);
    assert.equal(body[0].statusCode, 200, body[0].error);
    assert.equal(body[0].output.seen, 'undefined,undefined,undefined,undefined,undefined,undefined');
    assert.match(body[0].output.fetch, /fetch is disabled/);
    assert.match(body[0].output.fetchV2, /fetch is disabled/);
    const { body: b2 } = await ut.transform([ev('importfs')]);
    assert.equal(b2[0].statusCode, 400);
    assert.match(b2[0].error, /import from fs failed\. Module not found/);
    assert.deepEqual(cp.hits, ['/transformation/getByVersionId?probe', '/transformation/getByVersionId?importfs']);
  });

  it('an endless loop is stopped by the execution timeout, the group fails, the next call works', async () => {
    cp.transformations.loop = tr('loop', `export function transformEvent(e) { if (e.event === 'spin') { for (;;) {} } return e; }`);
    const input = [ev('loop'), ev('loop', { event: 'spin' })];
    const t0 = Date.now();
    const { status, body } = await ut.transform(input);
    assert.ok(Date.now() - t0 < 3000);
    assert.equal(status, 200);
    assert.deepEqual(body.map((o) => [o.statusCode, o.metadata.jobId]), input.map((e) => [400, e.metadata.jobId]));
    assert.match(body[0].error, /Timed out: the transformation ran longer than IVM_EXECUTION_TIMEOUT=1500 ms/);
    const { body: b2 } = await ut.transform([ev('loop')]);
    assert.equal(b2[0].statusCode, 200);
  });

  it('a loop after an await is stopped by the wall-time limit', async () => {
    cp.transformations.lateloop = tr('lateloop', `export async function transformEvent(e) {
      try { await fetch('http://127.0.0.1:1/'); } catch (err) {}
      for (;;) {}
    }`);
    const t0 = Date.now();
    const { body } = await ut.transform([ev('lateloop')]);
    // stopped by the wall limit, not left running (margin for a busy machine)
    assert.ok(Date.now() - t0 < fastLimits.wallTimeoutMs + 10000);
    assert.equal(body[0].statusCode, 400);
    assert.match(body[0].error, /Timed out/);
  });

  it('unbounded allocation is stopped by the memory limit, the next call gets a fresh isolate', async () => {
    cp.transformations.hog = tr('hog', `const keep = [];
      export function transformEvent(e) { if (e.event === 'hog') { for (;;) keep.push(new Array(100000).fill(e.messageId)); } return e; }`);
    // time limits far away, so that on a busy machine only the memory limit can stop it
    const roomy = new UserTransformer({ store: new Store({ dir: '', configBackendUrl: cp.url, ttlSeconds: 0 }), pool: new SandboxPool({ ...fastLimits, execTimeoutMs: 60000, wallTimeoutMs: 60000 }, 2) });
    try {
      const { body } = await roomy.transform([ev('hog', { event: 'hog' })]);
      assert.equal(body[0].statusCode, 400);
      assert.match(body[0].error, /memory limit exceeded.*ISOLATE_VM_MEMORY=16 MB/);
      const { body: b2 } = await roomy.transform([ev('hog')]);
      assert.equal(b2[0].statusCode, 200);
    } finally {
      roomy.close();
    }
  });

  it('a call queued behind one that is stopped runs on a fresh isolate', async () => {
    const spin = ut.transform([ev('loop', { event: 'spin' }, { sourceId: 'sA' })]);
    const fine = ut.transform([ev('loop', {}, { sourceId: 'sB' })]);
    const [a, b] = await Promise.all([spin, fine]);
    assert.equal(a.body[0].statusCode, 400);
    assert.equal(b.body[0].statusCode, 200, b.body[0].error);
  });

  it('code that does not load fails every event of the group with the reason', async () => {
    cp.transformations.syntax = tr('syntax', 'export function transformEvent(e) { return e');
    cp.transformations.both = tr('both', 'export function transformEvent(e) { return e; }\nexport function transformBatch(e) { return e; }');
    cp.transformations.none = tr('none', 'export const x = 1;');
    cp.transformations.v0 = tr('v0', 'function transform(events) { return events; }', { codeVersion: '0' });
    cp.transformations.py = tr('py', 'def transformEvent(e, m): return e', { language: 'pythonfaas' });
    for (const [v, re] of [
      ['syntax', /SyntaxError/],
      ['both', /Expected one of transformEvent,transformBatch\. Found transformEvent,transformBatch/],
      ['none', /Expected one of transformEvent,transformBatch\. Found $/],
      ['v0', /codeVersion "0" is not supported/],
      ['py', /language pythonfaas is not supported/],
    ]) {
      const { status, body } = await ut.transform([ev(v), ev(v)]);
      assert.equal(status, 200);
      assert.deepEqual(body.map((o) => o.statusCode), [400, 400], v);
      assert.match(body[0].error, re, v);
    }
    const { body } = await ut.transform([ev(null), { metadata: { jobId: 99 } }]);
    assert.deepEqual(body.map((o) => [o.statusCode, o.error]), [
      [400, 'Transformation VersionID not found'],
      [400, 'event has no message object'],
    ]);
  });

  it('an unknown version is 404 per event; a control plane that is down makes the request 809, and is not cached', async () => {
    let { status, body } = await ut.transform([ev('nosuch')]);
    assert.equal(status, 200);
    assert.equal(body[0].statusCode, 404);
    assert.match(body[0].error, /Transformation not found at http:\/\/127\.0\.0\.1:\d+\/transformation\/getByVersionId\?versionId=nosuch/);
    cp.transformations.later = tr('later', SCRUB);
    cp.failWith = 503;
    ({ status, body } = await ut.transform([ev('later'), ev('later')]));
    assert.equal(status, 809);
    assert.deepEqual(body.map((o) => o.statusCode), [809, 809]);
    assert.match(body[0].error, /Error occurred while fetching Transformation :: later/);
    cp.failWith = 0;
    ({ status, body } = await ut.transform([ev('later')]));
    assert.equal(status, 200);
    assert.equal(body[0].statusCode, 200);
  });

  it('an unreachable control plane makes the request 809', async () => {
    const down = new UserTransformer({ store: new Store({ dir: '', configBackendUrl: 'http://127.0.0.1:1', ttlSeconds: 0 }), pool: new SandboxPool(fastLimits, 2) });
    const { status, body } = await down.transform([ev('x')]);
    down.close();
    assert.equal(status, 809);
    assert.match(body[0].error, /Error occurred while fetching Transformation :: x/);
  });
});

describe('user transformations from a local directory', () => {
  let dir;
  let ut;
  before(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pintle-tr-'));
    ut = new UserTransformer({ store: new Store({ dir, configBackendUrl: '' }), pool: new SandboxPool(fastLimits, 4) });
  });
  after(() => {
    ut.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('<versionId>.js is the code; <versionId>.json is the control plane record; a missing one is 404', async () => {
    fs.writeFileSync(path.join(dir, 'loc1.js'), SCRUB);
    fs.writeFileSync(path.join(dir, 'loc2.json'), JSON.stringify(tr('loc2', FANOUT)));
    let { body } = await ut.transform([ev('loc1'), ev('loc2', { properties: { copies: 2 } }, { destinationId: 'd2' })]);
    assert.deepEqual(body.map((o) => o.statusCode), [200, 200, 200]);
    assert.ok(!('email' in body[0].output.context.traits));
    ({ body } = await ut.transform([ev('gone')]));
    assert.equal(body[0].statusCode, 404);
    assert.match(body[0].error, /Transformation gone not found in .*\(gone\.json or gone\.js\)/);
  });

  it('an edited file is picked up without a restart', async () => {
    const f = path.join(dir, 'edit.js');
    fs.writeFileSync(f, 'export function transformEvent(e) { e.v = 1; return e; }');
    let { body } = await ut.transform([ev('edit')]);
    assert.equal(body[0].output.v, 1);
    fs.writeFileSync(f, 'export function transformEvent(e) { e.v = 22; return e; }');
    const later = new Date(Date.now() + 5000);
    fs.utimesSync(f, later, later);
    await new Promise((r) => setTimeout(r, 1100));
    ({ body } = await ut.transform([ev('edit')]));
    assert.equal(body[0].output.v, 22);
  });
});

describe('fetch when allowed', () => {
  it('reaches only the listed hosts, with JSON (fetch) and full answers (fetchV2)', async () => {
    const api = http.createServer((req, res) => {
      res.writeHead(200, { 'Content-Type': 'application/json', 'X-Thing': 'y' });
      res.end(JSON.stringify({ path: req.url }));
    });
    await new Promise((r) => api.listen(0, '127.0.0.1', r));
    const port = api.address().port;
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pintle-tr-'));
    fs.writeFileSync(path.join(dir, 'f.js'), `export async function transformEvent(e) {
      e.a = await fetch('http://127.0.0.1:${port}/a');
      const r = await fetchV2('http://127.0.0.1:${port}/b', { method: 'POST', body: { x: 1 } });
      e.b = [r.status, r.headers['x-thing'], r.body.path];
      try { await fetch('http://localhost:${port}/c'); } catch (err) { e.c = err.message; }
      return e;
    }`);
    const ut = new UserTransformer({ store: new Store({ dir, configBackendUrl: '' }), pool: new SandboxPool({ ...fastLimits, fetchHosts: ['127.0.0.1'] }, 2) });
    const { body } = await ut.transform([ev('f')]);
    ut.close();
    api.close();
    fs.rmSync(dir, { recursive: true, force: true });
    assert.equal(body[0].statusCode, 200, body[0].error);
    assert.deepEqual(body[0].output.a, { path: '/a' });
    assert.deepEqual(body[0].output.b, [200, 'y', '/b']);
    assert.match(body[0].output.c, /fetch to localhost:\d+ is not allowed/);
  });
});

describe('POST /customTransform on the server', () => {
  let cp;
  let child;
  let base;
  let log = '';
  before(async () => {
    cp = await startControlPlane();
    cp.transformations.sample = tr('sample', SAMPLE);
    const port = await new Promise((resolve) => {
      const s = http.createServer().listen(0, '127.0.0.1', () => {
        const p = s.address().port;
        s.close(() => resolve(p));
      });
    });
    base = `http://127.0.0.1:${port}`;
    child = spawn(process.execPath, [path.join(__dirname, '../src/server.js')], {
      env: { ...process.env, PORT: String(port), CONFIG_BACKEND_URL: cp.url, PINTLE_TRANSFORMATIONS_DIR: '', ISOLATE_VM_MEMORY: '32' },
    });
    child.stderr.on('data', (d) => {
      log += d;
    });
    for (let i = 0; i < 400 && !/event=ready/.test(log); i++) await new Promise((r) => setTimeout(r, 25));
    assert.match(log, /event=ready/);
    assert.match(log, /event=user_transformations .*memory_mb=32/);
  });
  after(async () => {
    child.kill('SIGTERM');
    await new Promise((r) => child.on('exit', r));
    cp.server.close();
  });

  it('answers with apiVersion 2, 298 for filtered events under X-Feature-Filter-Code, 809 when the control plane is down', async () => {
    const input = [];
    for (let i = 0; i < 10; i++) input.push(ev('sample'));
    let res = await fetch(`${base}/customTransform`, { method: 'POST', body: JSON.stringify(input), headers: { 'Content-Type': 'application/json', 'X-Feature-Filter-Code': '?1' } });
    assert.equal(res.status, 200);
    assert.equal(res.headers.get('apiversion'), '2');
    const out = await res.json();
    assert.equal(out.length, 10);
    assert.deepEqual(out.filter((o) => o.statusCode === 200).map((o) => o.metadata.jobId), input.filter((e) => fnv(e.message.messageId) % 2 === 0).map((e) => e.metadata.jobId));
    cp.failWith = 500;
    res = await fetch(`${base}/customTransform`, { method: 'POST', body: JSON.stringify([ev('other')]) });
    assert.equal(res.status, 809);
    cp.failWith = 0;
    res = await fetch(`${base}/customTransform`, { method: 'POST', body: '{"not":"an array"}' });
    assert.equal(res.status, 400);
    res = await fetch(`${base}/customTransform`);
    assert.equal(res.status, 405);
    res = await fetch(`${base}/customTransform`, { method: 'POST', body: '[]' });
    assert.deepEqual(await res.json(), []);
  });

  it('refuses to start with an invalid limit', async () => {
    const bad = spawn(process.execPath, [path.join(__dirname, '../src/server.js')], { env: { ...process.env, PORT: '0', ISOLATE_VM_MEMORY: 'lots' } });
    let err = '';
    bad.stderr.on('data', (d) => {
      err += d;
    });
    const code = await new Promise((r) => bad.on('exit', r));
    assert.equal(code, 2);
    assert.match(err, /event=startup_failed .*ISOLATE_VM_MEMORY=\\"lots\\" is not a non-negative integer/);
  });
});
