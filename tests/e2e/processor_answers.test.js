'use strict';
// Transformer answers: any size up to processor.max_transformer_response_bytes
// is read whole; a larger one makes the processor split the chunk in halves
// and retry (only a single event whose own answer is too large becomes a
// dead letter); several outputs of one event keep their order.
const { describe, it, after } = require('node:test');
const assert = require('node:assert/strict');
const { withLogs, sleep, waitFor, webhookWorkspace } = require('./lib/stack');
const { procStack, closeStack, sendBatch, track, startFakeTransformer, webhookOutput } = require('./lib/processor');

const blob = (n) => 'x'.repeat(n);

describe('transformer answers', () => {
  let st;
  let fake;
  const S = () => st;
  after(async () => {
    await closeStack(st);
    if (fake) await fake.close();
  });

  it('delivers 300 events of ~6 KB claimed in one batch (answers over 1 MiB)', withLogs(S, async () => {
    st = await procStack();
    const events = Array.from({ length: 300 }, (_, i) => track(`big-${i}`, i, { properties: { seq: i, blob: blob(6000) } }));
    await sendBatch(st.gw.url, events);
    await waitFor(() => st.sink.ok().length >= 300, { timeoutMs: 30000, what: '300 deliveries' });
    await sleep(300);
    assert.equal(new Set(st.sink.ok().map((r) => r.body.messageId)).size, 300);
    assert.equal(st.sink.ok().length, 300);
    assert.equal((await st.pg.query('SELECT count(*)::int AS n FROM pintle.dead_letters'))[0].n, 0, 'no dead letters');
    assert.doesNotMatch(st.processor.log, /event=transformer_answer_split/, 'answers fit the default limit');
  }));

  it('splits a chunk whose answer is over the limit; only an event too large on its own is a dead letter', withLogs(S, async () => {
    const LIMIT = 100000;
    await st.processor.stop();
    st.processor = await st.startProcessor({ PINTLE_PROCESSOR_MAX_TRANSFORMER_RESPONSE_BYTES: String(LIMIT) });
    const before = st.sink.ok().length;
    const events = Array.from({ length: 300 }, (_, i) => track(`sp-${i}`, i, { properties: { seq: i, blob: blob(6000) } }));
    events.splice(150, 0, track('sp-huge', 0, { properties: { blob: blob(150000) } }));
    await sendBatch(st.gw.url, events);
    await waitFor(() => st.sink.ok().length >= before + 300, { timeoutMs: 30000, what: '300 deliveries' });
    const dead = await waitFor(async () => {
      const rows = await st.pg.query("SELECT destination_id, status_code, reason, payload FROM pintle.dead_letters WHERE stage = 'processor'");
      return rows.length > 0 && rows;
    }, { what: 'dead letter of the huge event' });
    await sleep(300);
    assert.equal(dead.length, 1);
    assert.equal((await st.pg.query("SELECT count(*)::int AS n FROM pintle.dead_letters WHERE stage = 'processor'"))[0].n, 1, 'no second dead letter later');
    assert.equal(JSON.parse(dead[0].payload).messageId, 'sp-huge-0');
    assert.equal(dead[0].destination_id, 'dst-hook');
    assert.match(dead[0].reason, /transformer answer for this event is larger than processor\.max_transformer_response_bytes \(100000 bytes\)/);
    const got = st.sink.ok().slice(before).map((r) => r.body.messageId);
    assert.equal(got.length, 300);
    assert.equal(new Set(got).size, 300);
    assert.ok(!got.includes('sp-huge-0'));
    assert.match(st.processor.log, /event=transformer_answer_split/);
    const m = await (await fetch(`http://127.0.0.1:${st.processor.port}/metrics`)).text();
    assert.match(m, /pintle_processor_transformer_splits_total [1-9]/);
    assert.match(m, /pintle_processor_dead_letters_total\{reason="answer_too_large"\} 1/);
  }));

  it('keeps several outputs of one event in the transformer\'s order, after gw job and destination order', withLogs(S, async () => {
    await closeStack(st);
    // three outputs per event, answered in reverse event order
    fake = await startFakeTransformer((req, body, res) => {
      const evs = JSON.parse(body.toString('utf8'));
      const out = [];
      for (const e of [...evs].reverse()) {
        for (let part = 0; part < 3; part++) {
          const o = webhookOutput(e);
          o.body.JSON = { ...e.message, part };
          out.push({ output: o, metadata: e.metadata, statusCode: 200 });
        }
      }
      res.writeHead(200, { 'Content-Type': 'application/json', apiVersion: '2' });
      res.end(JSON.stringify(out));
    });
    st = await procStack({
      processor: false,
      workspace: (url) => {
        const ws = webhookWorkspace(url);
        const b = JSON.parse(JSON.stringify(ws.sources[0].destinations[0]));
        b.id = 'dst-second';
        ws.sources[0].destinations.push(b);
        return ws;
      },
    });
    st.processor = await st.startProcessor({ PINTLE_PROCESSOR_TRANSFORMER_URL: fake.url, PINTLE_PROCESSOR_TRANSFORM_CHUNK: '7' });
    const events = Array.from({ length: 60 }, (_, i) => track(`O${i % 3}`, i));
    await sendBatch(st.gw.url, events);
    const rows = await waitFor(async () => {
      const r = await st.pg.query("SELECT destination_id, payload::json->'body'->'JSON'->>'messageId' AS mid, (payload::json->'body'->'JSON'->>'part')::int AS part FROM pintle.rt_jobs ORDER BY job_id");
      return r.length === 360 && r;
    }, { what: '360 rt jobs' });
    const expected = [];
    for (const e of events) for (const d of ['dst-hook', 'dst-second']) for (let part = 0; part < 3; part++) expected.push(`${e.messageId}/${d}/${part}`);
    // rt job ids follow the hand-off order within each partition; compare per user
    const byUser = (list) => {
      const m = new Map();
      for (const x of list) {
        const u = x.split('-')[0];
        if (!m.has(u)) m.set(u, []);
        m.get(u).push(x);
      }
      return m;
    };
    const got = byUser(rows.map((r) => `${r.mid}/${r.destination_id}/${r.part}`));
    for (const [u, list] of byUser(expected)) assert.deepEqual(got.get(u), list, `order of ${u}`);
  }));
});
