'use strict';
// Destinations at their production HTTPS endpoints: the router's
// router.connect_to sends api2.amplitude.com, api.mixpanel.com and
// www.google-analytics.com connections to a local HTTPS server whose
// certificate a throw-away CA signed (router.ca_file), so the requests keep
// their production URL, Host and TLS server name, and the server checks
// each one.
const { describe, it, after } = require('node:test');
const assert = require('node:assert/strict');
const Rudder = require('@rudderstack/rudder-sdk-node');
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

const MP = { id: 'dst-mp', name: 'mixpanel', enabled: true, isProcessorEnabled: true, config: { token: 'mp-token', apiSecret: 'mp-secret', groupKeySettings: [{ groupKey: 'company' }] }, destinationDefinition: def('def-mp', 'MP', 'Mixpanel') };
const GA4 = {
  id: 'dst-ga4', name: 'ga4', enabled: true, isProcessorEnabled: true,
  config: { apiSecret: 'ga4-secret', measurementId: 'G-TEST1', typesOfClient: 'gtag' },
  // GA4's definition takes track, page and group only (the official one does too)
  destinationDefinition: { id: 'def-ga4', name: 'GA4', displayName: 'Google Analytics 4 (GA4)', config: { supportedMessageTypes: ['track', 'page', 'group'] } },
};

// ---- expectations, from the official transformer's fixture facts ----
// Each SDK event carries a unique seq (previousId old-<seq>, group company
// co-<seq>). xxExpect(ev) lists the request items the event must cause at
// a destination: {key, check(rec, item)}; itemsOf(rec) finds the items of a
// received request with the seq each carries.
const near = (ms) => typeof ms === 'number' && Math.abs(ms - Date.now()) < 36e5;

function amExpect(ev) {
  const check = (name, extra) => (rec, e) => {
    assert.equal(rec.path, '/batch', 'AM JSON events arrive merged (router batching)');
    assert.equal(rec.headers['content-type'], 'application/json');
    const body = JSON.parse(rec.raw);
    assert.equal(body.api_key, 'am-key');
    assert.equal(body.options, undefined, '/batch requests carry no options');
    assert.equal(e.event_type, name);
    assert.equal(e.user_id, ev.userId);
    assert.equal(e.device_id, ev.anonymousId);
    if (ev.type !== 'group') assert.equal(e.insert_id, ev.messageId);
    assert.equal(e.library, 'rudderstack');
    assert.equal(e.session_id, -1);
    assert.ok(near(e.time), `time ${e.time}`);
    if (extra) extra(e);
  };
  switch (ev.type) {
    case 'track': return [{ key: 'am-json', check: check(ev.event, (e) => assert.equal(e.event_properties.seq, ev.seq)) }];
    case 'page': return [{ key: 'am-json', check: check(`Viewed ${ev.name} Page`, (e) => assert.deepEqual(e.event_properties, { seq: ev.seq, name: ev.name })) }];
    case 'screen': return [{ key: 'am-json', check: check(`Viewed ${ev.name} Screen`, (e) => assert.deepEqual(e.event_properties, { seq: ev.seq, name: ev.name })) }];
    case 'identify': return [{ key: 'am-json', check: check('$identify', (e) => assert.equal(e.user_properties.plan, 'pro')) }];
    case 'group': return [{ key: 'am-group', check: check('$identify', (e) => assert.equal(e.insert_id, undefined)) }];
    case 'alias': return [{
      key: 'am-usermap',
      check: (rec, m) => {
        assert.equal(rec.path, '/usermap');
        assert.equal(rec.headers['content-type'], 'application/x-www-form-urlencoded');
        const form = new URLSearchParams(rec.raw.toString());
        assert.deepEqual([...form.keys()], ['api_key', 'mapping'], 'FORM keys sorted');
        assert.equal(form.get('api_key'), 'am-key');
        assert.match(form.get('mapping'), /^\[\{.*\}\]$/, 'mapping=[{...}] as fmt.Sprint writes the array');
        assert.equal(m.global_user_id, ev.userId);
        assert.equal(m.user_id, ev.previousId);
      },
    }];
    default: return [];
  }
}

function mpExpect(ev) {
  const auth = 'Basic ' + Buffer.from('mp-token:').toString('base64');
  const imp = (name, extra) => ({
    key: 'mp-import',
    check: (rec, e) => {
      assert.equal(rec.path, '/import/');
      assert.equal(rec.query.get('strict'), '0');
      assert.equal(rec.headers.authorization, auth);
      assert.equal(rec.headers['content-type'], 'application/json');
      assert.equal(e.event, name);
      if (extra) extra(e.properties);
    },
  });
  const props = (p) => {
    assert.equal(p.token, 'mp-token');
    assert.equal(p.distinct_id, ev.userId);
    assert.equal(p.$user_id, ev.userId);
    assert.equal(p.$insert_id, ev.messageId);
    assert.equal(p.seq, ev.seq);
    assert.ok(near(p.time));
  };
  switch (ev.type) {
    case 'track': return [imp(ev.event, props)];
    case 'page': return [imp('Loaded a Page', (p) => { props(p); assert.equal(p.name, ev.name); })];
    case 'screen': return [imp('Loaded a Screen', (p) => { props(p); assert.equal(p.name, ev.name); })];
    case 'alias': return [imp('$create_alias', (p) => assert.deepEqual(p, { distinct_id: ev.previousId, alias: ev.userId, token: 'mp-token' }))];
    case 'identify': return [
      { key: 'mp-engage-set', check: (rec, e) => { assert.equal(rec.path, '/engage/'); assert.equal(e.$token, 'mp-token'); assert.equal(e.$distinct_id, ev.userId); assert.equal(e.$set.plan, 'pro'); } },
      { key: 'mp-merge', check: (rec, e) => { assert.equal(rec.path, '/import/'); assert.equal(rec.headers.authorization, auth); assert.deepEqual(e.properties, { $distinct_ids: [ev.userId, ev.anonymousId], token: 'mp-token' }); } },
    ];
    case 'group': return [
      { key: 'mp-engage-group', check: (rec, e) => { assert.equal(rec.path, '/engage/'); assert.deepEqual(e, { $token: 'mp-token', $distinct_id: ev.userId, $ip: '127.0.0.1', $set: { company: [ev.traits.company] } }); } },
      { key: 'mp-groups', check: (rec, e) => { assert.equal(rec.path, '/groups/'); assert.deepEqual(e, { $token: 'mp-token', $group_key: 'company', $group_id: ev.traits.company, $set: ev.traits }); } },
    ];
    default: return [];
  }
}

function ga4Expect(ev) {
  const collect = (name, params) => ({
    key: 'ga4',
    check: (rec, body) => {
      assert.equal(rec.path, '/mp/collect');
      assert.equal(rec.query.get('api_secret'), 'ga4-secret');
      assert.equal(rec.query.get('measurement_id'), 'G-TEST1');
      assert.equal(rec.headers['content-type'], 'application/json');
      assert.equal(body.client_id, ev.anonymousId);
      assert.equal(body.user_id, ev.userId);
      assert.ok(near(body.timestamp_micros / 1000));
      assert.equal(body.events.length, 1);
      assert.equal(body.events[0].name, name);
      for (const [k, v] of Object.entries(params)) assert.equal(body.events[0].params[k], v, k);
    },
  });
  switch (ev.type) {
    case 'track': return [collect(ev.event, { seq: ev.seq, engagement_time_msec: 1 })];
    case 'page': return [collect('page_view', { seq: ev.seq })];
    case 'group': return [collect('join_group', { group_id: ev.groupId, seq: ev.seq })];
    default: return []; // identify, screen, alias are not GA4 message types
  }
}

function itemsOf(rec) {
  const out = [];
  if (rec.host === 'api2.amplitude.com') {
    if (rec.path === '/usermap') {
      const m = JSON.parse(new URLSearchParams(rec.raw.toString()).get('mapping'))[0];
      out.push(['am-usermap', Number(m.user_id.slice(4)), m]);
    } else {
      // a group's $identify carries no insert_id (the official shape): counted per user
      for (const e of JSON.parse(rec.raw).events) out.push(e.insert_id ? ['am-json', Number(e.insert_id.slice(4)), e] : ['am-group', `group:${e.user_id}`, e]);
    }
  } else if (rec.host === 'api.mixpanel.com') {
    for (const e of JSON.parse(rec.raw)) {
      if (rec.path === '/groups/') out.push(['mp-groups', e.$set.seq, e]);
      else if (rec.path === '/engage/' && e.$set && e.$set.company) out.push(['mp-engage-group', Number(e.$set.company[0].slice(3)), e]);
      else if (rec.path === '/engage/') out.push(['mp-engage-set', e.$set.seq, e]);
      else if (e.event === '$merge') out.push(['mp-merge', `merge:${e.properties.$distinct_ids[0]}`, e]);
      else if (e.event === '$create_alias') out.push(['mp-import', Number(e.properties.distinct_id.slice(4)), e]);
      else out.push(['mp-import', e.properties.seq, e]);
    }
  } else if (rec.host === 'www.google-analytics.com') {
    const body = JSON.parse(rec.raw);
    out.push(['ga4', body.events[0].params.seq, body]);
  }
  return out;
}

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

  it('AM, MP and GA4: 1,000 SDK events of every type, each request as the official transformer shapes it, AM in batches', withLogs(S, async () => {
    await teardown(st);
    st = await newStack([AM, MP, GA4], (srv) => ({
      PINTLE_ROUTER_CONNECT_TO: srv.connectTo, PINTLE_ROUTER_CA_FILE: srv.caFile,
      PINTLE_ROUTER_BATCH_DESTINATION_TYPES: 'AM', PINTLE_ROUTER_BATCH_MAX_WAIT_MS: '200',
    }));
    const client = new Rudder(KEY, { dataPlaneUrl: st.gw.url, flushAt: 100, flushInterval: 100000, logLevel: 'error' });
    const sent = [];
    for (let seq = 0; seq < 1000; seq++) {
      const u = seq % 20;
      const base = { userId: `user-${String(u).padStart(2, '0')}`, anonymousId: `anon-${u}`, messageId: `mid-${seq}` };
      const type = TYPES[Math.floor(seq / 20) % 6];
      let ev;
      if (type === 'track') ev = { ...base, event: 'Step', properties: { seq } };
      else if (type === 'page') ev = { ...base, name: 'Home', properties: { seq } };
      else if (type === 'screen') ev = { ...base, name: 'Main', properties: { seq } };
      else if (type === 'identify') ev = { ...base, traits: { plan: 'pro', seq } };
      else if (type === 'group') ev = { ...base, groupId: `g-${seq}`, traits: { name: 'Co', seq, company: `co-${seq}` } };
      else ev = { ...base, previousId: `old-${seq}` };
      client[type](JSON.parse(JSON.stringify(ev)));
      sent.push({ ...ev, type, seq });
    }
    await new Promise((resolve, reject) => client.flush((err) => (err ? reject(err) : resolve())));
    const want = new Map();
    for (const ev of sent) {
      for (const x of [...amExpect(ev), ...mpExpect(ev), ...ga4Expect(ev)]) {
        const k = `${x.key}|${x.key === 'mp-merge' ? `merge:${ev.userId}` : x.key === 'am-group' ? `group:${ev.userId}` : ev.seq}`;
        if (!want.has(k)) want.set(k, []);
        want.get(k).push(x.check);
      }
    }
    const total = [...want.values()].reduce((n, l) => n + l.length, 0);
    const got = () => st.server.received.reduce((n, r) => n + itemsOf(r).length, 0);
    const byKind = (pairs) => pairs.reduce((m, [k, n]) => ({ ...m, [k]: (m[k] || 0) + n }), {});
    try {
      await waitFor(() => got() >= total, { timeoutMs: 90000, what: `${total} request items at the HTTPS server` });
    } catch (e) {
      const wantKinds = byKind([...want.entries()].map(([k, l]) => [k.split('|')[0], l.length]));
      const gotKinds = byKind(st.server.received.flatMap((r) => itemsOf(r).map(([k]) => [k, 1])));
      const dead = await st.pg.query('SELECT destination_id, status_code, reason FROM pintle.dead_letters LIMIT 5');
      const retries = await st.pg.query('SELECT count(*)::int AS n FROM pintle.rt_retries');
      throw new Error(`${e.message}; want ${JSON.stringify(wantKinds)} got ${JSON.stringify(gotKinds)} dead ${JSON.stringify(dead)} retries ${JSON.stringify(retries)}`);
    }
    await sleep(500); // nothing more may arrive
    assert.equal(got(), total);
    for (const rec of st.server.received) {
      assert.equal(rec.status, 200);
      assert.equal(rec.servername, rec.host, 'TLS server name is the production host');
      assert.ok(HOSTS.includes(rec.host), rec.host);
      assert.equal(rec.method, 'POST');
      for (const [key, seq, item] of itemsOf(rec)) {
        const checks = want.get(`${key}|${seq}`);
        assert.ok(checks && checks.length > 0, `unexpected ${key}|${seq}`);
        checks.shift()(rec, item);
      }
    }
    assert.equal([...want.values()].filter((l) => l.length > 0).length, 0, 'every expected request arrived');
    // per-user order at Amplitude, within and across batches
    const last = new Map();
    for (const rec of st.server.received.filter((r) => r.host === 'api2.amplitude.com')) {
      for (const [key, seq, item] of itemsOf(rec)) {
        if (typeof seq !== 'number') continue;
        const u = key === 'am-usermap' ? item.global_user_id : item.user_id;
        assert.ok(seq > (last.get(u) ?? -1), `AM order for ${u}: ${seq} after ${last.get(u)}`);
        last.set(u, seq);
      }
    }
    assert.ok(st.server.received.some((r) => r.path === '/batch' && JSON.parse(r.raw).events.length > 1), 'AM requests were merged');
    assert.equal((await st.pg.query('SELECT count(*)::int AS n FROM pintle.dead_letters'))[0].n, 0);
  }));

  it('without the test CA the server is not trusted: nothing is delivered, the job is retried', withLogs(S, async () => {
    await teardown(st);
    st = await newStack([AM], (srv) => ({ PINTLE_ROUTER_CONNECT_TO: srv.connectTo }));
    await sendBatch(st.gw.url, [{ type: 'track', userId: 'u1', event: 'E', messageId: 'm1' }]);
    await waitFor(() => /event=job_retry .*status=504/.test(st.router.log), { timeoutMs: 30000, what: 'a retry of the untrusted delivery' });
    assert.equal(st.server.received.length, 0);
  }));
});
