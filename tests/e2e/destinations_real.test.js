'use strict';
// Destinations at their production HTTPS endpoints: the router's
// router.connect_to sends api2.amplitude.com, api.mixpanel.com and
// www.google-analytics.com connections to a local HTTPS server whose
// certificate a throw-away CA signed (router.ca_file), so the requests keep
// their production URL, Host and TLS server name, and the server checks
// each one.
const { describe, it, after } = require('node:test');
const assert = require('node:assert/strict');
const { Stack, withLogs, basicAuth, waitFor, sleep } = require('./lib/stack');
const { startTlsServer } = require('./lib/tls');

const KEY = 'e2e-key';
const HOSTS = ['api2.amplitude.com', 'api.mixpanel.com', 'www.google-analytics.com'];
const TYPES = ['track', 'identify', 'page', 'screen', 'group', 'alias'];

function def(id, name, displayName) {
  return { id, name, displayName, config: { supportedMessageTypes: TYPES } };
}

function workspace(dests) {
  return {
    workspaceId: 'ws-e2e',
    sources: [{ id: 'src-e2e', name: 'e2e', writeKey: KEY, enabled: true, workspaceId: 'ws-e2e', destinations: dests }],
  };
}

const AM = { id: 'dst-am', name: 'amplitude', enabled: true, isProcessorEnabled: true, config: { apiKey: 'am-key' }, destinationDefinition: def('def-am', 'AM', 'Amplitude') };

async function sendBatch(url, events) {
  const res = await fetch(`${url}/v1/batch`, {
    method: 'POST',
    headers: { Authorization: basicAuth(KEY), 'Content-Type': 'application/json' },
    body: JSON.stringify({ batch: events }),
  });
  assert.equal(res.status, 200, await res.text());
}

async function newStack(dests, routerEnv, { handler, transformerEnv } = {}) {
  const st = new Stack();
  st.server = await startTlsServer(HOSTS, handler);
  await st.startPostgres();
  st.writeWorkspace(workspace(dests));
  st.migrate();
  await st.startTransformer(undefined, transformerEnv ? transformerEnv(st.server) : {});
  st.processor = await st.startProcessor();
  st.router = await st.startRouter({ PINTLE_ROUTER_TRANSFORMER_URL: `http://127.0.0.1:${st.transformerPort}`, ...routerEnv(st.server) });
  st.gw = await st.startGateway();
  return st;
}

async function teardown(st) {
  if (!st) return;
  await st.stopAll();
  await st.server.close();
}

describe('real destination endpoints over HTTPS (router.connect_to, router.ca_file)', () => {
  let st;
  const S = () => st;
  after(() => teardown(st));

  it('delivers to https://api2.amplitude.com through connect_to, verified by the test CA', withLogs(S, async () => {
    st = await newStack([AM], (srv) => ({ PINTLE_ROUTER_CONNECT_TO: srv.connectTo, PINTLE_ROUTER_CA_FILE: srv.caFile }));
    await sendBatch(st.gw.url, [
      { type: 'track', userId: 'u1', event: 'Signed Up', messageId: 'm1', properties: { plan: 'pro' } },
      { type: 'alias', userId: 'u1', previousId: 'old-1', messageId: 'm2' },
    ]);
    await waitFor(() => st.server.received.length >= 2, { timeoutMs: 30000, what: '2 requests at the HTTPS server' });
    const [t, a] = st.server.received;
    for (const r of [t, a]) {
      assert.equal(r.host, 'api2.amplitude.com');
      assert.equal(r.servername, 'api2.amplitude.com', 'TLS server name is the production host');
    }
    assert.equal(t.path, '/2/httpapi');
    assert.equal(JSON.parse(t.raw).events[0].event_type, 'Signed Up');
    assert.equal(a.path, '/usermap');
  }));

  it('AM with router.batch_destination_types=AM: jobs merged by /batch into api2.amplitude.com/batch requests', withLogs(S, async () => {
    await teardown(st);
    st = await newStack([AM], (srv) => ({
      PINTLE_ROUTER_CONNECT_TO: srv.connectTo, PINTLE_ROUTER_CA_FILE: srv.caFile,
      PINTLE_ROUTER_BATCH_DESTINATION_TYPES: 'AM', PINTLE_ROUTER_BATCH_MAX_JOBS: '20', PINTLE_ROUTER_BATCH_MAX_WAIT_MS: '200',
    }));
    const events = [];
    for (let seq = 0; seq < 5; seq++) for (let u = 0; u < 30; u++) events.push({ type: 'track', userId: `user-${u}`, event: 'Step', messageId: `m-${u}-${seq}`, properties: { seq } });
    await sendBatch(st.gw.url, events);
    const count = () => st.server.received.reduce((n, r) => n + JSON.parse(r.raw).events.length, 0);
    await waitFor(() => count() >= 150, { timeoutMs: 30000, what: '150 events at the HTTPS server' });
    for (const r of st.server.received) {
      assert.equal(r.path, '/batch');
      const body = JSON.parse(r.raw);
      assert.equal(body.api_key, 'am-key');
      assert.equal(body.options, undefined);
      assert.ok(body.events.length <= 20);
    }
    assert.ok(st.server.received.length < 150, `batched: ${st.server.received.length} requests`);
    const seen = st.server.received.flatMap((r) => JSON.parse(r.raw).events.map((e) => `${e.user_id}:${e.event_properties.seq}`));
    assert.equal(new Set(seen).size, 150, 'every event once');
  }));

  it("AM through the transformer's delivery proxy: Amplitude's response handler decides ok, retry and abort", withLogs(S, async () => {
    await teardown(st);
    let throttled = 0;
    const handler = (r) => {
      const ev = JSON.parse(r.raw).events[0];
      if (ev.event_type === 'Throttle' && throttled++ === 0) return { status: 200, body: { code: 429, error: 'Too many requests for some devices and users' } };
      if (ev.event_type === 'Bad') return { status: 400, body: { code: 400, error: 'invalid' } };
      return { status: 200, body: { code: 200, events_ingested: 1 } };
    };
    st = await newStack([AM], (srv) => ({ PINTLE_ROUTER_PROXY_DESTINATION_TYPES: 'AM' }), {
      handler,
      transformerEnv: (srv) => ({ PINTLE_PROXY_CONNECT_TO: srv.connectTo, PINTLE_PROXY_CA_FILE: srv.caFile }),
    });
    await sendBatch(st.gw.url, [
      { type: 'track', userId: 'user-a', event: 'Throttle', messageId: 'm1' },
      { type: 'track', userId: 'user-b', event: 'Bad', messageId: 'm2' },
      { type: 'track', userId: 'user-c', event: 'Fine', messageId: 'm3' },
    ]);
    const dead = async () => st.pg.query('SELECT status_code AS status, reason FROM pintle.dead_letters');
    await waitFor(async () => (await dead()).length === 1 && st.server.received.filter((r) => r.status === 200).length >= 3, { timeoutMs: 30000, what: 'a dead letter and three 200 answers' });
    const [d] = await dead();
    assert.equal(Number(d.status), 400, 'aborted by the response handler (400)');
    assert.match(d.reason, /Aborted/);
    assert.match(st.router.log, /event=job_retry .*status=500 .*Too many requests/);
    assert.equal(st.server.received.filter((r) => JSON.parse(r.raw).events[0].event_type === 'Throttle').length, 2, 'retried once');
    for (const r of st.server.received) assert.equal(r.host, 'api2.amplitude.com');
  }));

  it('without the test CA the server is not trusted: nothing is delivered, the job is retried', withLogs(S, async () => {
    await teardown(st);
    st = await newStack([AM], (srv) => ({ PINTLE_ROUTER_CONNECT_TO: srv.connectTo }));
    await sendBatch(st.gw.url, [{ type: 'track', userId: 'u1', event: 'E', messageId: 'm1' }]);
    await waitFor(() => /event=job_retry .*status=504/.test(st.router.log), { timeoutMs: 30000, what: 'a retry of the untrusted delivery' });
    assert.equal(st.server.received.length, 0);
  }));
});
