'use strict';
// Observability end to end (DESIGN §8, issue 10): the stack (a gateway
// with two workers, processor, router, batchrouter, transformer) is scraped by a REAL
// Prometheus (Debian's binary, a free port, a private directory, a 1 s
// scrape interval) loaded with deploy/prometheus/alerts.yml. Traffic goes
// to three webhook destinations, one answering 200, one 500 (retried), one
// 400 (aborted), and to a Postgres warehouse (the batchrouter). Then every query of every panel of the Grafana dashboard
// (deploy/grafana/pintle.json, template variables substituted) is run
// through Prometheus's HTTP API and must return data; so must the
// dashboard's variable queries. The two gateway workers are one target
// whose series sum to exactly the requests sent, and the alert rules load
// and evaluate against the real metric names (the abort alert goes pending
// for the aborting destination only).
const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { Stack, Proc, ROOT, freePort, waitFor, withLogs, basicAuth, startSink, webhookWorkspace } = require('./lib/stack');

const PROMETHEUS = process.env.PINTLE_PROMETHEUS || '/usr/bin/prometheus';
const DASHBOARD = path.join(ROOT, 'deploy/grafana/pintle.json');
const ALERTS = path.join(ROOT, 'deploy/prometheus/alerts.yml');
const KEY = 'e2e-key';
const FAST = {
  PINTLE_OPS_STATS_INTERVAL_MS: '500', PINTLE_OPS_POLL_INTERVAL_MS: '200', PINTLE_QUEUE_PARTITIONS: '8',
  PINTLE_OPS_METRICS_PUBLISH_MS: '200',
};

function workspace(sinkUrl, pgPort) {
  const ws = webhookWorkspace(sinkUrl);
  const d = ws.sources[0].destinations[0];
  ws.sources[0].destinations.push({ ...d, id: 'dst-retry', config: { ...d.config, webhookUrl: `${sinkUrl}/retry` } });
  ws.sources[0].destinations.push({ ...d, id: 'dst-abort', config: { ...d.config, webhookUrl: `${sinkUrl}/abort` } });
  // a warehouse in the test's own Postgres: the batchrouter's metrics
  ws.sources[0].destinations.push({
    id: 'dst-wh', name: 'wh', enabled: true, isProcessorEnabled: true,
    config: { host: '127.0.0.1', port: String(pgPort), database: 'pintle', user: 'postgres', password: '', namespace: 'obs_wh', sslMode: 'disable' },
    destinationDefinition: { id: 'def-pg', name: 'POSTGRES', displayName: 'Postgres', config: { supportedMessageTypes: ['track', 'identify', 'page', 'screen', 'group', 'alias'] } },
  });
  return ws;
}

// Every expression of the dashboard: panel targets, then variable queries.
function dashboardQueries() {
  const dash = JSON.parse(fs.readFileSync(DASHBOARD, 'utf8'));
  const panels = [];
  const walk = (list) => {
    for (const p of list) {
      if (p.panels) walk(p.panels);
      for (const t of p.targets || []) panels.push({ panel: p.title, expr: t.expr });
    }
  };
  walk(dash.panels);
  const vars = dash.templating.list.filter((v) => v.type === 'query').map((v) => ({ name: v.name, query: v.query.query || v.query }));
  return { panels, vars, names: dash.templating.list.map((v) => v.name) };
}

// Grafana's substitution for "All" of every variable, and a rate window
// that spans several 1 s scrapes.
function substitute(expr, names) {
  let out = expr.replace(/\$__rate_interval/g, '15s');
  for (const n of names) out = out.replace(new RegExp(`\\$\\{${n}\\}|\\$${n}\\b`, 'g'), '.*');
  assert.doesNotMatch(out, /\$/, `unsubstituted variable in ${expr}`);
  return out;
}

async function promQuery(url, query) {
  const res = await fetch(`${url}/api/v1/query?query=${encodeURIComponent(query)}`);
  const body = await res.json();
  assert.equal(body.status, 'success', `${query}: ${JSON.stringify(body)}`);
  return body.data.result;
}

describe('metrics, alert rules and dashboard against a real Prometheus', { skip: !fs.existsSync(PROMETHEUS) && `no prometheus at ${PROMETHEUS} (make deps installs it)` }, () => {
  let st;
  let sink;
  let prom;
  let promUrl;
  let sending = false;
  let sent = 0;
  let traffic;
  let trafficError = null;
  const S = () => st;

  before(async () => {
    st = new Stack();
    sink = await startSink((r) => (r.url.startsWith('/retry') ? 500 : r.url.startsWith('/abort') ? 400 : 200));
    await st.startPostgres();
    st.writeWorkspace(workspace(sink.url, st.pg.port));
    st.migrate(FAST);
    await st.startTransformer();
    st.proc = await st.startProcessor(FAST);
    st.router = await st.startRouter(FAST);
    st.brt = await st.startService('batchrouter', { ...FAST, PINTLE_BATCHROUTER_UPLOAD_INTERVAL_S: '1' });
    st.gw = await st.startGateway({ ...FAST, PINTLE_GATEWAY_WORKERS: '2' });
    await waitFor(async () => (await fetch(`${st.gw.url}/health`)).status === 200, { what: 'gateway healthy' });

    // Prometheus: the repository's rules, the stack's ports, 1 s scrapes
    const dir = path.join(st.tmp, 'prometheus');
    fs.mkdirSync(path.join(dir, 'data'), { recursive: true });
    const targets = (job, port) => `  - job_name: ${job}\n    static_configs:\n      - targets: ['127.0.0.1:${port}']\n`;
    fs.writeFileSync(path.join(dir, 'prometheus.yml'),
      `global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - ${ALERTS}\nscrape_configs:\n`
      + targets('pintle-gateway', st.gw.port) + targets('pintle-processor', st.proc.port) + targets('pintle-router', st.router.port) + targets('pintle-batchrouter', st.brt.port));
    const port = await freePort();
    promUrl = `http://127.0.0.1:${port}`;
    prom = new Proc('prometheus', PROMETHEUS, [
      `--config.file=${path.join(dir, 'prometheus.yml')}`, `--storage.tsdb.path=${path.join(dir, 'data')}`,
      `--web.listen-address=127.0.0.1:${port}`, '--log.level=info',
    ], {});
    st.procs.push(prom); // stopped with the stack, whatever happens
    await prom.start(/Server is ready to receive web requests/, 60000);
  });

  after(async () => {
    sending = false;
    if (traffic) await traffic;
    if (st) await st.stopAll();
    if (sink) await sink.close();
  });

  it('every dashboard query returns data; workers are one target; rules load and evaluate', { timeout: 150000 }, withLogs(S, async () => {
    // steady traffic while the queries run, so rate() windows hold samples
    const post = async (key, body) => {
      const res = await fetch(`${st.gw.url}/v1/batch`, {
        method: 'POST', headers: { Authorization: basicAuth(key), 'Content-Type': 'application/json', Connection: 'close' }, body,
      });
      await res.text();
      return res.status;
    };
    let seq = 0;
    sending = true;
    traffic = (async () => {
      while (sending) {
        const batch = [0, 1].map((k) => ({ type: 'track', userId: `u${seq % 5}`, event: 'E', messageId: `m-${seq}-${k}` }));
        seq++;
        assert.equal(await post(KEY, JSON.stringify({ batch })), 200);
        sent++;
        await new Promise((r) => setTimeout(r, 100));
      }
    })().catch((e) => { sending = false; trafficError = e; });
    assert.equal(await post('no-such-key', '{"batch":[]}'), 401);
    assert.equal(await post(KEY, '{not json'), 400);

    const up = await waitFor(async () => {
      const r = await promQuery(promUrl, 'up == 1');
      return r.length === 4 && r;
    }, { timeoutMs: 30000, what: 'prometheus scraping all four targets' });
    assert.deepEqual(up.map((s) => s.metric.job).sort(), ['pintle-batchrouter', 'pintle-gateway', 'pintle-processor', 'pintle-router']);
    // failures reach the metrics: retries for one destination, aborts for another
    await waitFor(async () => (await promQuery(promUrl, 'sum(pintle_retries_total{destination="dst-retry"}) > 0')).length
      && (await promQuery(promUrl, 'sum(pintle_aborts_total{destination="dst-abort"}) > 0')).length
      && (await promQuery(promUrl, 'sum(pintle_queue_pending_jobs{destination="dst-retry"}) > 0')).length
      // the warehouse loads (or, while its loader is not built, retries them)
      && (await promQuery(promUrl, '(sum(pintle_stage_out_total{stage="batchrouter",destination="dst-wh"}) or vector(0))'
        + ' + (sum(pintle_retries_total{stage="batchrouter",destination="dst-wh"}) or vector(0)) > 0')).length,
    { timeoutMs: 60000, what: 'retries, aborts, pending jobs and warehouse loads in Prometheus' });

    const { panels, vars, names } = dashboardQueries();
    assert.ok(panels.length >= 20, `dashboard has ${panels.length} queries`);
    const empty = [];
    for (const q of panels) {
      const expr = substitute(q.expr, names);
      // a query whose window just opened may need another scrape
      const ok = await waitFor(async () => {
        const r = await promQuery(promUrl, expr);
        return r.some((s) => Number.isFinite(Number(s.value[1]))) && r;
      }, { timeoutMs: 20000, what: `data for "${q.panel}": ${expr}` }).catch(() => null);
      if (!ok) empty.push(`${q.panel}: ${expr}`);
    }
    assert.deepEqual(empty, [], 'panel queries without data');
    for (const v of vars) {
      const m = /^label_values\((\w+), *(\w+)\)$/.exec(v.query);
      assert.ok(m, `variable ${v.name}: ${v.query}`);
      const res = await (await fetch(`${promUrl}/api/v1/label/${m[2]}/values?match[]=${m[1]}`)).json();
      assert.equal(res.status, 'success');
      assert.ok(res.data.length > 0, `variable ${v.name} has no values`);
    }
    const dests = await promQuery(promUrl, 'count by (destination) (pintle_deliveries_total)');
    assert.deepEqual(dests.map((s) => s.metric.destination).sort(), ['dst-abort', 'dst-hook', 'dst-retry', 'dst-wh']);

    // the two workers: one target, both labelled, their sum is every request sent
    sending = false;
    await traffic;
    assert.equal(trafficError, null, `traffic: ${trafficError}`);
    const workers = await promQuery(promUrl, 'count by (worker) (pintle_gateway_connections)');
    assert.deepEqual(workers.map((s) => s.metric.worker).sort(), ['0', '1']);
    await waitFor(async () => {
      const r = await promQuery(promUrl, 'sum(pintle_gateway_requests_total{code="200",source="src-e2e"})');
      return r.length === 1 && Number(r[0].value[1]) === sent;
    }, { timeoutMs: 20000, what: `the workers' 200s summing to the ${sent} requests sent` });
    const refused = await promQuery(promUrl, 'sum by (code, source) (pintle_gateway_requests_total{code=~"4.."})');
    assert.deepEqual(refused.map((s) => `${s.metric.code}/${s.metric.source || ''}=${s.value[1]}`).sort(), ['400/src-e2e=1', '401/=1']);
    const events = await promQuery(promUrl, 'sum(pintle_gateway_events_total{code="200"})');
    assert.equal(Number(events[0].value[1]), 2 * sent);

    // the rules: all loaded and healthy; the abort alert is pending (for: 5m)
    // for the aborting destination and no other
    const rules = (await (await fetch(`${promUrl}/api/v1/rules`)).json()).data.groups.flatMap((g) => g.rules);
    assert.equal(rules.length, 8);
    for (const r of rules) assert.equal(r.health, 'ok', `${r.name}: ${r.lastError}`);
    await waitFor(async () => {
      const alerts = (await (await fetch(`${promUrl}/api/v1/alerts`)).json()).data.alerts;
      const aborting = alerts.filter((a) => a.labels.alertname === 'PintleDestinationAborting');
      return aborting.length === 1 && aborting[0].labels.destination === 'dst-abort' && aborting[0].state === 'pending';
    }, { timeoutMs: 20000, what: 'PintleDestinationAborting pending for dst-abort only' });
  }));
});

describe('deploy/prometheus', () => {
  it('the make run scrape config names the ports deploy/run.sh gives each service', () => {
    const run = fs.readFileSync(path.join(ROOT, 'deploy/run.sh'), 'utf8');
    const yml = fs.readFileSync(path.join(ROOT, 'deploy/prometheus/prometheus.yml'), 'utf8');
    const bases = {
      gateway: /PINTLE_GATEWAY_PORT=\$\(\((\d+) \+ i\)\)/, processor: /PINTLE_PROCESSOR_ADMIN_PORT=\$\(\((\d+) \+ i\)\)/,
      router: /PINTLE_ROUTER_ADMIN_PORT=\$\(\((\d+) \+ i\)\)/, batchrouter: /PINTLE_BATCHROUTER_ADMIN_PORT=\$\(\((\d+) \+ i\)\)/,
    };
    for (const [svc, re] of Object.entries(bases)) {
      const m = re.exec(run);
      assert.ok(m, `deploy/run.sh: no port of ${svc}`);
      const job = new RegExp(`job_name: pintle-${svc}\\n[^]*?targets: \\[([^\\]]*)\\]`).exec(yml);
      assert.ok(job, `prometheus.yml: no job pintle-${svc}`);
      const ports = job[1].split(',').map((t) => Number(t.trim().replace(/'/g, '').split(':')[1]));
      assert.deepEqual(ports, [1, 2, 3].map((i) => Number(m[1]) + i), `pintle-${svc} targets`);
    }
  });
});
