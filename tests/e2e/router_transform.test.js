'use strict';
// Router-side transforms: a destination whose definition says
// transformAtV1 "router" is not transformed by the processor (rt holds the
// event itself, user-transformed first when it has a transformation); the
// router sends its ready jobs to the transformer's POST /routerTransform in
// groups and delivers each returned request, in per-user order. An output
// with an error status aborts its jobs into dead letters (stage router,
// with the transformer's reason), without holding back the other
// destination; replayed after the destination is fixed, they arrive.
const { describe, it, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { execFileSync } = require('node:child_process');
const { Stack, BIN, withLogs, waitFor, startSink } = require('./lib/stack');
const { sendBatch, checkDelivered } = require('./lib/router');

const KEY = 'e2e-key';
const USERS = ['ann', 'bob', 'cy', 'dee'];
const PER_USER = 25;
const DEF = (name) => ({
  id: `def-${name}`, name: 'WEBHOOK', displayName: 'Webhook',
  config: { transformAt: 'processor', transformAtV1: 'router', supportedMessageTypes: ['track', 'identify'] },
});

function workspace(sinkUrl) {
  return {
    workspaceId: 'ws-e2e',
    sources: [{
      id: 'src-e2e', name: 'e2e', writeKey: KEY, enabled: true, workspaceId: 'ws-e2e',
      destinations: [
        {
          id: 'dst-rt', name: 'rt-hook', enabled: true, isProcessorEnabled: true,
          config: { webhookUrl: `${sinkUrl}/hook`, webhookMethod: 'POST', headers: [{ from: 'X-Test', to: 'rt' }] },
          destinationDefinition: DEF('rt'),
          transformations: [{ id: 'tr-tag', versionId: 'tag', config: {} }],
        },
        {
          // no URL: the transformer fails every event of it (400)
          id: 'dst-nourl', name: 'no-url', enabled: true, isProcessorEnabled: true,
          config: { webhookMethod: 'POST' },
          destinationDefinition: DEF('nourl'),
        },
      ],
    }],
  };
}

describe('transformAt router: /routerTransform from the router', () => {
  let st;
  let sink;
  const S = () => st;
  after(async () => {
    if (st) await st.stopAll();
    if (sink) await sink.close();
  });

  it('delivers through /routerTransform in per-user order; a failing output aborts into dead letters', withLogs(S, async () => {
    sink = await startSink();
    st = new Stack();
    await st.startPostgres();
    st.writeWorkspace(workspace(sink.url));
    st.migrate();
    const dir = path.join(st.tmp, 'transformations');
    fs.mkdirSync(dir);
    fs.writeFileSync(path.join(dir, 'tag.js'), 'export function transformEvent(event) { event.properties = { ...event.properties, tagged: true }; return event; }');
    await st.startTransformer(undefined, { PINTLE_TRANSFORMATIONS_DIR: dir, LOG_LEVEL: 'debug' });
    const turl = `http://127.0.0.1:${st.transformerPort}`;
    await st.startProcessor();
    st.router = await st.startRouter({
      PINTLE_ROUTER_TRANSFORMER_URL: turl,
      PINTLE_ROUTER_ROUTER_TRANSFORM_MAX_JOBS: '3',
      PINTLE_ROUTER_ROUTER_TRANSFORM_MAX_WAIT_MS: '50',
      PINTLE_LOG_LEVEL: 'debug',
    });
    st.gw = await st.startGateway();
    await waitFor(async () => (await fetch(`${st.gw.url}/health`)).status === 200, { what: 'gateway healthy' });

    // users interleaved, several batches, so groups mix users and each
    // user has several jobs waiting behind one another
    const sent = [];
    for (let round = 0; round < 5; round++) {
      const batch = [];
      for (let k = 0; k < PER_USER / 5; k++) {
        for (const u of USERS) {
          const seq = round * (PER_USER / 5) + k;
          batch.push({ type: 'track', userId: u, event: 'E', messageId: `${u}-${seq}`, properties: { seq } });
        }
      }
      await sendBatch(st.gw.url, batch);
      sent.push(...batch);
    }
    const total = USERS.length * PER_USER;

    await waitFor(() => sink.ok().length >= total, { timeoutMs: 60000, what: `${total} deliveries at the sink (have ${sink.ok().length})` });
    const { repeats } = checkDelivered('dst-rt', sent, sink.ok());
    assert.equal(repeats, 0, 'each event delivered once');
    // the transformer's WEBHOOK transform ran (its header) on the
    // user-transformed event
    for (const r of sink.ok().filter((x) => x.url !== '/fixed')) {
      assert.equal(r.url, '/hook');
      assert.equal(r.headers['x-test'], 'rt');
      assert.equal(r.body.properties.tagged, true, 'user transformation applied before /routerTransform');
    }

    // the processor stored events, not delivery payloads
    const rows = await st.pg.query("SELECT payload FROM pintle.rt_jobs WHERE destination_id = 'dst-rt'");
    assert.equal(rows.length, total);
    for (const row of rows) {
      const p = JSON.parse(row.payload);
      assert.equal(p.type, 'track');
      assert.equal(p.endpoint, undefined);
      assert.equal(p.properties.tagged, true);
    }

    // the router asked /routerTransform, in groups of at most 3
    const metrics = await (await fetch(`http://127.0.0.1:${st.router.port}/metrics`)).text();
    const m = /pintle_router_transform_requests_total\{destination_id="dst-rt"\} (\d+)/.exec(metrics);
    assert.ok(m, 'router transform requests counted');
    assert.ok(Number(m[1]) >= Math.ceil(total / 3), `at least ${Math.ceil(total / 3)} requests for ${total} jobs of at most 3 (got ${m[1]})`);
    const sizes = [...st.router.log.matchAll(/event=batch_sent destination_id=dst-rt jobs=(\d+) bytes=\d+ router_transform=true/g)].map((x) => Number(x[1]));
    assert.ok(sizes.length > 0, 'batch_sent logged for dst-rt');
    assert.ok(sizes.every((n) => n >= 1 && n <= 3), `groups of 1..3 jobs: ${sizes}`);
    assert.ok(sizes.some((n) => n > 1), `some group carried several jobs: ${sizes}`);
    assert.match(st.procs.find((p) => p.name === 'transformer').log, /router_transformed/);

    // the failing destination: every event a dead letter of the router,
    // with the transformer's reason and the event as payload
    const dead = await waitFor(async () => {
      const d = await st.pg.query("SELECT job_id, user_id, status_code, reason, payload FROM pintle.dead_letters WHERE destination_id = 'dst-nourl' AND stage = 'router' ORDER BY job_id");
      return d.length >= total && d;
    }, { timeoutMs: 60000, what: 'dead letters of dst-nourl' });
    assert.equal(dead.length, total);
    for (const d of dead) {
      assert.equal(d.status_code, 400);
      assert.match(d.reason, /Invalid URL in destination config/);
      assert.equal(JSON.parse(d.payload).type, 'track');
    }
    assert.equal(new Set(dead.map((d) => d.job_id)).size, total, 'one dead letter per job');
    // nothing of dst-nourl reached the sink, and no retry loop
    assert.equal(sink.received.length, sink.ok().length);

    // the operator fixes the destination and replays its dead letters: the
    // events (not delivery payloads) go through /routerTransform again and
    // arrive, in per-user order
    const reloads = () => (st.router.log.match(/event=workspace_reloaded/g) || []).length;
    const before = reloads();
    const fixed = workspace(sink.url);
    fixed.sources[0].destinations[1].config.webhookUrl = `${sink.url}/fixed`;
    st.writeWorkspace(fixed);
    await waitFor(() => reloads() > before, { what: 'router reloaded the workspace config' });
    const out = execFileSync(path.join(BIN, 'pintlectl'), ['replay', '--destination', 'dst-nourl'], { env: { ...process.env, ...st.env() }, encoding: 'utf8' });
    assert.match(out, new RegExp(`replayed ${total} dead letters`));
    const atFixed = () => sink.ok().filter((r) => r.url === '/fixed');
    await waitFor(() => atFixed().length >= total, { timeoutMs: 60000, what: `${total} replayed deliveries (have ${atFixed().length})` });
    assert.equal(checkDelivered('dst-nourl replayed', sent, atFixed()).repeats, 0);

    const code = await st.router.stop();
    assert.equal(code.code, 0);
    for (const p of st.procs) assert.deepEqual(p.errors ? p.errors() : [], [], `${p.name} logged no error`);
  }));
});
