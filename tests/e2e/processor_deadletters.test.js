'use strict';
// Nothing the processor consumes disappears silently: unknown sources,
// payloads that do not parse, events without a type and events whose
// user transformation cannot run (its code is not found) become counted
// dead letters; processor
// dead letters are replayable to their one destination; error texts that
// are not valid UTF-8 are stored escaped and never wedge the batch.
const { describe, it, after } = require('node:test');
const assert = require('node:assert/strict');
const { execFileSync } = require('node:child_process');
const path = require('node:path');
const { BIN, withLogs, sleep, waitFor, webhookWorkspace } = require('./lib/stack');
const { procStack, closeStack, sendBatch, track, insertGwJobs, startFakeTransformer, webhookOutput, metrics } = require('./lib/processor');

function replay(st, args = []) {
  return execFileSync(path.join(BIN, 'pintlectl'), ['replay', ...args], { env: { ...process.env, ...st.env() }, encoding: 'utf8' });
}

async function deadLetters(pg, where = 'true') {
  return pg.query(`SELECT id, queue, stage, source_id, destination_id, user_id, partition, status_code, reason, payload, replayed_at FROM pintle.dead_letters WHERE ${where} ORDER BY id`);
}

async function reloaded(st, before) {
  await waitFor(() => (st.processor.log.match(/event=workspace_reloaded/g) || []).length > before, { what: 'processor reloaded the workspace' });
}
const reloads = (st) => (st.processor.log.match(/event=workspace_reloaded/g) || []).length;

function hook(sinkUrl, id, pathName, extra = {}) {
  const d = webhookWorkspace(sinkUrl).sources[0].destinations[0];
  d.id = id;
  d.config.webhookUrl = `${sinkUrl}${pathName}`;
  return { ...d, ...extra };
}

describe('processor dead letters', () => {
  let st;
  let fake;
  const S = () => st;
  after(async () => {
    await closeStack(st);
    if (fake) await fake.close();
  });

  it('dead-letters unknown sources, unparsable payloads and typeless events with a counter; the batch goes on; replay after the source is added', withLogs(S, async () => {
    st = await procStack({ processorEnv: { PINTLE_WORKSPACE_POLL_INTERVAL_MS: '100' } });
    const gone = { type: 'track', userId: 'g1', event: 'E', messageId: 'gone-0', receivedAt: new Date().toISOString() };
    await insertGwJobs(st.pg, [
      { partition: 3, source_id: 'src-gone', user_id: 'g1', payload: JSON.stringify(gone) },
      { partition: 3, source_id: 'src-e2e', user_id: 'u2', payload: '{"type": "track", not json' },
      { partition: 5, source_id: 'src-e2e', user_id: 'u3', payload: JSON.stringify({ userId: 'u3', messageId: 'notype-0' }) },
    ]);
    await sendBatch(st.gw.url, [track('ok', 0), track('ok', 1)]);
    await waitFor(() => st.sink.ok().length === 2, { what: 'good events delivered' });
    const dead = await waitFor(async () => { const r = await deadLetters(st.pg); return r.length === 3 && r; }, { what: '3 dead letters' });
    const by = new Map(dead.map((d) => [d.user_id, d]));
    assert.equal(by.get('g1').reason, 'source "src-gone" is not in the workspace config');
    assert.equal(by.get('g1').destination_id, '');
    assert.equal(by.get('g1').partition, 3);
    assert.equal(by.get('u2').reason, 'payload is not a JSON object');
    assert.equal(by.get('u2').payload, '{"type": "track", not json');
    assert.equal(by.get('u3').reason, 'event has no type');
    for (const d of dead) {
      assert.equal(d.stage, 'processor');
      assert.equal(d.queue, 'gw');
    }
    const m = await metrics(st.processor.port);
    assert.match(m, /pintle_processor_dead_letters_total\{reason="unknown_source"\} 1/);
    assert.match(m, /pintle_processor_dead_letters_total\{reason="unparsable"\} 1/);
    assert.match(m, /pintle_processor_dead_letters_total\{reason="no_type"\} 1/);
    // the operator adds the source: its event is replayed to the source's destinations
    const ws = webhookWorkspace(st.sink.url);
    ws.sources.push({ id: 'src-gone', name: 'gone', writeKey: 'gone-key', enabled: true, workspaceId: 'ws-e2e', destinations: [hook(st.sink.url, 'dst-gone', '/gone')] });
    const r0 = reloads(st);
    st.writeWorkspace(ws);
    await reloaded(st, r0);
    assert.match(replay(st, ['--id', String(by.get('g1').id)]), /replayed 1 dead letters/);
    await waitFor(() => st.sink.ok().some((r) => r.url === '/gone'), { what: 'replayed event delivered' });
    await sleep(500);
    assert.deepEqual(st.sink.ok().filter((r) => r.url === '/gone').map((r) => r.body.messageId), ['gone-0']);
    assert.equal(st.sink.ok().filter((r) => r.url === '/hook').length, 2, 'nothing else sent again');
    assert.ok((await deadLetters(st.pg, `id = ${by.get('g1').id}`))[0].replayed_at);
    assert.deepEqual(st.processor.errors(), []);
  }));

  it('a destination whose user transformation is not found gets dead letters, never untransformed events; replayed once fixed, to that destination only', withLogs(S, async () => {
    await closeStack(st);
    const workspace = (url, { transformation = true, brokenFixed = false } = {}) => {
      const ws = webhookWorkspace(url);
      ws.sources[0].destinations = [
        hook(url, 'dst-hook', '/hook'),
        hook(url, 'dst-ut', '/ut', transformation ? { transformations: [{ id: 'tr-1', versionId: 'tv-1', config: {} }] } : {}),
        hook(url, 'dst-broken', '/broken'),
      ];
      if (!brokenFixed) ws.sources[0].destinations[2].config = {}; // the transformer rejects it (400)
      return ws;
    };
    st = await procStack({ workspace, processorEnv: { PINTLE_WORKSPACE_POLL_INTERVAL_MS: '100' } });
    const events = Array.from({ length: 12 }, (_, i) => track(`T${i % 3}`, i));
    await sendBatch(st.gw.url, events);
    await waitFor(() => st.sink.ok().filter((r) => r.url === '/hook').length === 12, { what: 'dst-hook delivered' });
    const dead = await waitFor(async () => { const r = await deadLetters(st.pg); return r.length === 24 && r; }, { what: '24 dead letters' });
    const ut = dead.filter((d) => d.destination_id === 'dst-ut');
    const broken = dead.filter((d) => d.destination_id === 'dst-broken');
    assert.equal(ut.length, 12);
    for (const d of ut) {
      assert.match(d.reason, /^Transformation tv-1 not found/);
      assert.equal(d.status_code, 404);
      assert.equal(d.stage, 'user_transformation');
    }
    assert.equal(broken.length, 12);
    for (const d of broken) assert.equal(d.reason, 'Invalid URL in destination config');
    assert.equal(st.sink.ok().filter((r) => r.url === '/ut').length, 0, 'nothing sent untransformed');
    const m = await metrics(st.processor.port);
    assert.match(m, /pintle_processor_dead_letters_total\{reason="user_transformation"\} 12/);
    assert.match(m, /pintle_processor_dead_letters_total\{reason="transformer"\} 12/);
    // fixed: the transformation removed, the broken config corrected
    const r0 = reloads(st);
    st.writeWorkspace(workspace(st.sink.url, { transformation: false, brokenFixed: true }));
    await reloaded(st, r0);
    assert.match(replay(st, ['--destination', 'dst-ut']), /replayed 12 dead letters/);
    assert.match(replay(st, ['--id', String(broken[4].id)]), /replayed 1 dead letters/);
    await waitFor(() => st.sink.ok().filter((r) => r.url === '/ut').length === 12, { what: 'dst-ut delivered' });
    await waitFor(() => st.sink.ok().some((r) => r.url === '/broken'), { what: 'the replayed dst-broken event delivered' });
    await sleep(800);
    assert.match(replay(st, ['--destination', 'dst-ut']), /replayed 0 dead letters/);
    await sleep(300);
    const at = (p) => st.sink.ok().filter((r) => r.url === p).map((r) => r.body.messageId);
    assert.equal(at('/hook').length, 12, 'dst-hook got nothing again');
    assert.deepEqual(at('/broken'), [broken[4].payload && JSON.parse(broken[4].payload).messageId]);
    const ut_ids = at('/ut');
    assert.equal(new Set(ut_ids).size, 12, 'each replayed once');
    for (let u = 0; u < 3; u++) {
      assert.deepEqual(st.sink.ok().filter((r) => r.url === '/ut' && r.body.userId === `T${u}`).map((r) => r.body.messageId),
        events.filter((e) => e.userId === `T${u}`).map((e) => e.messageId), `order of T${u}`);
    }
    const left = await deadLetters(st.pg, 'replayed_at IS NULL');
    assert.equal(left.length, 11, 'the other dst-broken dead letters stay');
    assert.ok(left.every((d) => d.destination_id === 'dst-broken'));
    assert.deepEqual(st.processor.errors(), []);
  }));

  it('stores error texts that are not valid UTF-8 or are cut inside a character; the batch commits', withLogs(S, async () => {
    await closeStack(st);
    const bad = Buffer.from([0x62, 0x61, 0x64, 0xff, 0xfe, 0x21]); // "bad" 0xff 0xfe "!"
    fake = await startFakeTransformer((req, body, res) => {
      const evs = JSON.parse(body.toString('utf8'));
      const mid = (e) => e.message.messageId;
      res.setHeader('apiVersion', '2');
      if (evs.some((e) => mid(e) === 'reject-0')) {
        // a multi-byte character across the 200-byte cut of the quoted body
        res.writeHead(400);
        res.end(Buffer.concat([Buffer.from('x'.repeat(199) + 'é' + 'tail'), bad]));
        return;
      }
      if (evs.some((e) => mid(e) === 'reject-1')) {
        res.writeHead(400);
        res.end(bad);
        return;
      }
      const parts = [Buffer.from('[')];
      evs.forEach((e, i) => {
        if (i) parts.push(Buffer.from(','));
        const md = JSON.stringify(e.metadata);
        if (mid(e) === 'bad-0') parts.push(Buffer.from(`{"metadata":${md},"statusCode":400,"error":"`), bad, Buffer.from('"}'));
        else if (mid(e) === 'nul-0') parts.push(Buffer.from(`{"metadata":${md},"statusCode":400,"error":"before\\u0000after"}`));
        else if (mid(e) === 'long-0') parts.push(Buffer.from(JSON.stringify({ metadata: e.metadata, statusCode: 400, error: 'é'.repeat(3000) })));
        else parts.push(Buffer.from(JSON.stringify({ output: webhookOutput(e), metadata: e.metadata, statusCode: 200 })));
      });
      parts.push(Buffer.from(']'));
      res.writeHead(200, { 'Content-Type': 'application/json' });
      res.end(Buffer.concat(parts));
    });
    st = await procStack({ processor: false });
    st.processor = await st.startProcessor({ PINTLE_PROCESSOR_TRANSFORMER_URL: fake.url });
    await sendBatch(st.gw.url, [track('good', 0), track('bad', 0), track('nul', 0), track('long', 0), track('good', 1)]);
    await waitFor(() => st.sink.ok().length === 2, { what: 'good events delivered' });
    let dead = await waitFor(async () => { const r = await deadLetters(st.pg); return r.length === 3 && r; }, { what: '3 dead letters' });
    const by = new Map(dead.map((d) => [JSON.parse(d.payload).messageId, d]));
    assert.equal(by.get('bad-0').reason, 'bad\\xff\\xfe!');
    assert.equal(by.get('nul-0').reason, 'before\\x00after');
    const long = by.get('long-0').reason;
    assert.ok(long.length > 100 && long.length < 3000, `long reason cut (${long.length} characters)`);
    assert.match(long, /^é+$/, 'cut on a character boundary');
    // whole-request rejections: the quoted body is cut and escaped too
    await sendBatch(st.gw.url, [track('reject', 0)]);
    dead = await waitFor(async () => { const r = await deadLetters(st.pg, "user_id = 'reject'"); return r.length === 1 && r; }, { what: 'reject-0 dead letter' });
    assert.equal(dead[0].status_code, 400);
    assert.equal(dead[0].reason, `transformer answered 400: ${'x'.repeat(199)}`);
    await sendBatch(st.gw.url, [track('reject', 1)]);
    dead = await waitFor(async () => { const r = await deadLetters(st.pg, "user_id = 'reject'"); return r.length === 2 && r; }, { what: 'reject-1 dead letter' });
    assert.equal(dead[1].reason, 'transformer answered 400: bad\\xff\\xfe!');
    await sendBatch(st.gw.url, [track('good', 2)]);
    await waitFor(() => st.sink.ok().length === 3, { what: 'later events delivered' });
    assert.doesNotMatch(st.processor.log, /event=db_error/, 'no failed commit');
  }));
});
