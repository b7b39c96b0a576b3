'use strict';
// `make bench`: starts a fresh private stack (Postgres with fsync on, the
// transformer, gateway, processor, router, nginx as the webhook sink) on
// loopback, runs wrk scenarios, and reports throughput, latency, CPU per
// 1,000 events and peak RSS per process, Postgres bytes per event and idle
// CPU. Prints a markdown table and writes it with a JSON copy to
// bench/results/. `--quick` runs 10-second versions. Stops everything.
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { Stack, Proc, freePort, sleep, waitFor } = require('../tests/e2e/lib/stack');
const { startNginx } = require('../tests/e2e/lib/nginx');

const QUICK = process.argv.includes('--quick');
const NO_SCALED = process.argv.includes('--no-scaled'); // e.g. for a commit without leases
const DUR = QUICK ? 10 : 30;
const E2E_N = QUICK ? 20000 : 100000;
const CONNS = 50;
const HZ = 100; // USER_HZ on Linux
const ROOT = path.resolve(__dirname, '..');

function procStat(pid) {
  try {
    const s = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
    const cpu = (parseInt(f[11], 10) + parseInt(f[12], 10)) / HZ;
    const st = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
    const hwm = /VmHWM:\s+(\d+) kB/.exec(st);
    const rss = /VmRSS:\s+(\d+) kB/.exec(st);
    return { cpu, hwmKb: hwm ? +hwm[1] : 0, rssKb: rss ? +rss[1] : 0 };
  } catch (e) {
    return { cpu: 0, hwmKb: 0, rssKb: 0 };
  }
}

function children(pid) {
  const out = [];
  for (const d of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const s = fs.readFileSync(`/proc/${d}/stat`, 'utf8');
      const ppid = parseInt(s.slice(s.lastIndexOf(')') + 2).split(' ')[1], 10);
      if (ppid === pid) out.push(parseInt(d, 10));
    } catch (e) { /* gone */ }
  }
  return out;
}

// Named groups of pids: a process and its children (gateway workers,
// postgres backends, node cluster workers).
function sample(groups) {
  const r = {};
  for (const [name, rootPid] of Object.entries(groups)) {
    const pids = [rootPid, ...children(rootPid)];
    let cpu = 0, hwm = 0, rss = 0;
    for (const p of pids) {
      const s = procStat(p);
      cpu += s.cpu;
      hwm += s.hwmKb;
      rss += s.rssKb;
    }
    r[name] = { cpu, hwmKb: hwm, rssKb: rss };
  }
  return r;
}

function cpuDelta(a, b) {
  const d = {};
  for (const k of Object.keys(b)) d[k] = b[k].cpu - (a[k] ? a[k].cpu : 0);
  return d;
}

async function metric(url, name) {
  let text;
  for (let attempt = 0; ; attempt++) {
    try {
      // a fresh connection each time: an idle keep-alive one may have been closed
      text = await (await fetch(url, { headers: { Connection: 'close' } })).text();
      break;
    } catch (e) {
      if (attempt >= 3) throw e;
      await sleep(100);
    }
  }
  let sum = 0;
  for (const line of text.split('\n')) if (line.startsWith(name)) sum += parseFloat(line.split(' ').pop());
  return sum;
}

// Runs wrk; with until(), interrupts it (SIGINT: wrk stops and reports)
// once until() is true, since wrk otherwise runs for its whole duration.
async function wrk(url, pathName, seconds, perThreadLimit, perRequest, until) {
  const args = ['-t2', `-c${CONNS}`, `-d${seconds}s`, '--timeout', '10s', '-s', path.join(__dirname, 'load.lua'), url + pathName, '--', String(perThreadLimit), String(perRequest)];
  const child = spawn('wrk', args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (d) => { out += d; });
  child.stderr.on('data', (d) => { out += d; });
  const exited = new Promise((r) => child.on('exit', r));
  if (until) {
    let done = false;
    exited.then(() => { done = true; });
    while (!done && !(await until())) await sleep(20);
    if (!done) child.kill('SIGINT');
  }
  await exited;
  const m = /BENCH_JSON (.*)/.exec(out);
  if (!m) throw new Error(`wrk failed: ${out}`);
  return JSON.parse(m[1]);
}

async function main() {
  const st = new Stack();
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'pintle-bench-'));
  let nginx;
  let lb;
  // Ctrl-C or a timeout still stops everything this run started
  const onSignal = async () => {
    if (lb) await lb.stop();
    try { await st.stopAll(); } catch (e) { /* best effort */ }
    if (nginx) nginx.kill('SIGTERM');
    fs.rmSync(tmp, { recursive: true, force: true });
    process.exit(130);
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    // nginx answering 200: a sink that adds little CPU
    const sinkPort = await freePort();
    fs.writeFileSync(path.join(tmp, 'nginx.conf'), `daemon off; master_process off; worker_processes 1; pid ${tmp}/nginx.pid; error_log ${tmp}/nginx-error.log;
events { worker_connections 1024; }
http { access_log off; client_body_temp_path ${tmp}; proxy_temp_path ${tmp}; fastcgi_temp_path ${tmp}; uwsgi_temp_path ${tmp}; scgi_temp_path ${tmp};
  keepalive_requests 1000000; client_body_buffer_size 64k;
  server { listen 127.0.0.1:${sinkPort}; location / { return 200 "ok"; } } }\n`);
    nginx = spawn('nginx', ['-c', path.join(tmp, 'nginx.conf'), '-p', tmp], { stdio: 'ignore' });
    await waitFor(async () => { try { return (await fetch(`http://127.0.0.1:${sinkPort}/`)).status === 200; } catch (e) { return false; } }, { what: 'nginx' });

    await st.startPostgres();
    st.writeWorkspace({
      workspaceId: 'ws-bench',
      sources: [{ id: 'src-bench', writeKey: 'bench-key', enabled: true, workspaceId: 'ws-bench', destinations: [{
        id: 'dst-bench', name: 'nginx', enabled: true, isProcessorEnabled: true,
        config: { webhookUrl: `http://127.0.0.1:${sinkPort}/events`, webhookMethod: 'POST', headers: [] },
        destinationDefinition: { id: 'd', name: 'WEBHOOK', displayName: 'Webhook', config: { supportedMessageTypes: ['track', 'identify', 'page', 'screen', 'group', 'alias'] } },
      }] }],
    });
    st.migrate();
    const pgPid = parseInt(fs.readFileSync(path.join(st.pg.data, 'postmaster.pid'), 'utf8').split('\n')[0], 10);
    // One gateway worker: with several, each has its own /metrics and the
    // stored-event counter this script polls would only see one of them.
    const env = { PINTLE_GATEWAY_WORKERS: '1' };
    const tf = await st.startTransformer();
    const proc = await st.startProcessor({ ...env, PINTLE_PROCESSOR_POLL_INTERVAL_MS: '300' });
    const router = await st.startRouter({ ...env, PINTLE_ROUTER_POLL_INTERVAL_MS: '300' });
    const gw = await st.startGateway({ ...env });
    const groups = { gateway: gw.child.pid, processor: proc.child.pid, router: router.child.pid, transformer: tf.child.pid, postgres: pgPid, nginx: nginx.pid };
    const cGroups = ['gateway', 'processor', 'router'];
    const gwMetrics = `${gw.url}/metrics`;
    const rtMetrics = `http://127.0.0.1:${router.port}/metrics`;
    const stored = () => metric(gwMetrics, 'pintle_gateway_events_stored_total');
    const delivered = () => metric(rtMetrics, 'pintle_router_delivered_total');
    const drain = async (what) => {
      const target = await stored();
      await waitFor(async () => (await delivered()) >= target, { timeoutMs: 600000, intervalMs: 200, what });
    };

    const results = { machine: { cpus: os.cpus().length, model: os.cpus()[0].model, memGb: Math.round(os.totalmem() / 2 ** 30) }, quick: QUICK, scenarios: {}, idle: {}, rss: {} };

    // idle CPU before any traffic
    let a = sample(groups);
    await sleep(10000);
    results.idle = cpuDelta(a, sample(groups));

    const scenario = async (name, pathName, perRequest) => {
      const s0 = sample(groups);
      const stored0 = await stored();
      const w = await wrk(gw.url, pathName, DUR, 0, perRequest);
      const storedN = (await stored()) - stored0;
      // the rest of the pipeline catches up: its CPU is counted for these events too
      await drain(`${name} drained`);
      const cpu = cpuDelta(s0, sample(groups));
      results.scenarios[name] = {
        requests: w.requests, seconds: w.duration_us / 1e6, req_per_s: w.requests / (w.duration_us / 1e6),
        events: storedN, events_per_s: storedN / (w.duration_us / 1e6),
        p50_ms: w.p50_us / 1000, p90_ms: w.p90_us / 1000, p99_ms: w.p99_us / 1000, non2xx: w.non2xx, socket_errors: w.socket_errors,
        cpu_s_per_1k: Object.fromEntries(Object.entries(cpu).map(([k, v]) => [k, (v / storedN) * 1000])),
      };
    };
    // Gateway and Postgres alone: the pipeline is paused (SIGSTOP) while wrk
    // runs, then resumed and drained; shows the ingest ceiling of this box
    // when the two cores are not shared with processing.
    const paused = [proc, router, tf].map((p) => p.child.pid);
    for (const pid of paused) process.kill(pid, 'SIGSTOP');
    try {
      const s0 = sample(groups);
      const stored0 = await stored();
      const w = await wrk(gw.url, '/v1/track', DUR, 0, 1);
      const storedN = (await stored()) - stored0;
      const cpu = cpuDelta(s0, sample(groups));
      results.scenarios.ingest_a_gateway_only = {
        requests: w.requests, seconds: w.duration_us / 1e6, req_per_s: w.requests / (w.duration_us / 1e6),
        events: storedN, events_per_s: storedN / (w.duration_us / 1e6),
        p50_ms: w.p50_us / 1000, p90_ms: w.p90_us / 1000, p99_ms: w.p99_us / 1000, non2xx: w.non2xx, socket_errors: w.socket_errors,
        cpu_s_per_1k: Object.fromEntries(Object.entries(cpu).map(([k, v]) => [k, (v / storedN) * 1000])),
      };
    } finally {
      for (const pid of paused) process.kill(pid, 'SIGCONT');
    }
    await drain('paused backlog drained');
    await scenario('ingest_a_track', '/v1/track', 1);
    await scenario('ingest_b_batch10', '/v1/batch', 10);

    // end to end: N single-event requests, then until the sink has them all
    const endToEnd = async (name, url, storedFn, deliveredFn) => {
      const s0 = sample(groups);
      const stored0 = await storedFn();
      const delivered0 = await deliveredFn();
      const t0 = Date.now();
      const w = await wrk(url, '/v1/track', 600, Math.ceil(E2E_N / 2), 1, async () => (await storedFn()) - stored0 >= E2E_N);
      const wrkEnd = Date.now();
      const sent = (await storedFn()) - stored0;
      let lastChange = Date.now();
      let last = await deliveredFn();
      await waitFor(async () => {
        const d = await deliveredFn();
        if (d !== last) { last = d; lastChange = Date.now(); }
        return d - delivered0 >= sent;
      }, { timeoutMs: 600000, intervalMs: 50, what: `${name} delivered` });
      const secs = (lastChange - t0) / 1000;
      const cpu = cpuDelta(s0, sample(groups));
      results.scenarios[name] = {
        requests: w.requests, seconds: secs, req_per_s: w.requests / ((wrkEnd - t0) / 1000), events: sent, events_per_s: sent / secs,
        p50_ms: w.p50_us / 1000, p90_ms: w.p90_us / 1000, p99_ms: w.p99_us / 1000, non2xx: w.non2xx, socket_errors: w.socket_errors,
        cpu_s_per_1k: Object.fromEntries(Object.entries(cpu).map(([k, v]) => [k, (v / sent) * 1000])),
      };
    };
    await drain('drained before e2e');
    await endToEnd('end_to_end', gw.url, stored, delivered);

    // Scaled: a second gateway, processor and router, nginx in front of the
    // two gateways (deploy/nginx/). On two cores this is not about more
    // throughput but about what leases, fencing and the proxy cost.
    if (!NO_SCALED) {
      const gw2 = await st.startGateway({ ...env });
      const proc2 = await st.startProcessor({ ...env, PINTLE_PROCESSOR_POLL_INTERVAL_MS: '300' });
      const router2 = await st.startRouter({ ...env, PINTLE_ROUTER_POLL_INTERVAL_MS: '300' });
      lb = await startNginx([gw.port, gw2.port]);
      Object.assign(groups, { gateway2: gw2.child.pid, processor2: proc2.child.pid, router2: router2.child.pid, lb_nginx: lb.proc.child.pid });
      cGroups.push('gateway2', 'processor2', 'router2');
      const half = async (stage) => {
        const r = await st.pg.query('SELECT count(DISTINCT owner)::int AS owners, count(*)::int AS n FROM pintle.leases WHERE stage = $1 AND owner IS NOT NULL AND expires_at > now()', [stage]);
        return r[0].owners === 2 && r[0].n === 64;
      };
      await waitFor(async () => (await half('processor')) && (await half('router')), { timeoutMs: 60000, intervalMs: 200, what: 'partitions spread over two processors and two routers' });
      const stored2 = async () => (await stored()) + (await metric(`${gw2.url}/metrics`, 'pintle_gateway_events_stored_total'));
      const delivered2 = async () => (await delivered()) + (await metric(`http://127.0.0.1:${router2.port}/metrics`, 'pintle_router_delivered_total'));
      await endToEnd('end_to_end_scaled_2x2x2_nginx', lb.url, stored2, delivered2);
    }

    const end = sample(groups);
    for (const [k, v] of Object.entries(end)) results.rss[k] = { peak_mb: v.hwmKb / 1024, now_mb: v.rssKb / 1024 };
    results.c_processes_peak_rss_mb = cGroups.reduce((s, k) => s + results.rss[k].peak_mb, 0);
    const sizes = await st.pg.query(`SELECT d.queue, sum(pg_total_relation_size(('pintle.' || d.table_name)::regclass))::float8 AS bytes FROM pintle.datasets d GROUP BY 1`);
    const counts = await st.pg.query(`SELECT 'gw' AS queue, count(*)::float8 AS n FROM pintle.gw_jobs UNION ALL SELECT 'rt', count(*)::float8 FROM pintle.rt_jobs`);
    results.pg_bytes_per_event = {};
    for (const q of ['gw', 'rt']) {
      const b = sizes.find((x) => x.queue === q);
      const n = counts.find((x) => x.queue === q);
      if (b && n && n.n > 0) results.pg_bytes_per_event[q] = b.bytes / n.n;
    }
    results.dropped_or_errors = { gateway_non2xx: Object.values(results.scenarios).reduce((s, x) => s + x.non2xx, 0) };

    // report
    const f = (x, d = 0) => (x === undefined ? '-' : Number(x).toFixed(d));
    const procs = Object.keys(groups);
    const lines = [];
    lines.push(`# pintle benchmark ${new Date().toISOString()}${QUICK ? ' (quick)' : ''}`, '');
    lines.push(`Machine: ${results.machine.cpus} cores (${results.machine.model}), ${results.machine.memGb} GB; Postgres 15 fsync on; wrk -t2 -c${CONNS}; gateway workers ${env.PINTLE_GATEWAY_WORKERS}.`, '');
    lines.push('| scenario | requests/s | events/s | p50 ms | p90 ms | p99 ms | non-2xx | ' + procs.map((p) => `${p} CPU s/1k ev`).join(' | ') + ' |');
    lines.push('|---|---|---|---|---|---|---|' + procs.map(() => '---').join('|') + '|');
    for (const [name, s] of Object.entries(results.scenarios)) {
      lines.push(`| ${name} | ${f(s.req_per_s)} | ${f(s.events_per_s)} | ${f(s.p50_ms, 2)} | ${f(s.p90_ms, 2)} | ${f(s.p99_ms, 2)} | ${s.non2xx} | ` + procs.map((p) => f(s.cpu_s_per_1k[p], 4)).join(' | ') + ' |');
    }
    const cSum = (s) => cGroups.reduce((t, k) => t + (s.cpu_s_per_1k[k] || 0), 0);
    lines.push('', `C processes together: ${f(cSum(results.scenarios.end_to_end), 4)} CPU s per 1,000 delivered events (end to end); peak RSS ${f(results.c_processes_peak_rss_mb, 1)} MB.`);
    const sc = results.scenarios.end_to_end_scaled_2x2x2_nginx;
    if (sc) lines.push(`Scaled (2 gateways behind nginx, 2 processors, 2 routers): ${f(sc.events_per_s)} events/s end to end, ${f(100 * sc.events_per_s / results.scenarios.end_to_end.events_per_s, 1)} % of the single-instance run; C processes together ${f(cSum(sc), 4)} CPU s per 1,000 events.`);
    lines.push('');
    lines.push('| process | peak RSS MB | idle CPU s over 10 s |', '|---|---|---|');
    for (const p of procs) lines.push(`| ${p} | ${f(results.rss[p].peak_mb, 1)} | ${f(results.idle[p], 2)} |`);
    lines.push('', `Postgres bytes per stored event: gw ${f(results.pg_bytes_per_event.gw)}, rt ${f(results.pg_bytes_per_event.rt)}.`);
    const md = lines.join('\n') + '\n';
    process.stdout.write('\n' + md);
    const dir = path.join(__dirname, 'results');
    fs.mkdirSync(dir, { recursive: true });
    const stamp = new Date().toISOString().replace(/[:.]/g, '-');
    fs.writeFileSync(path.join(dir, `${stamp}.md`), md);
    fs.writeFileSync(path.join(dir, `${stamp}.json`), JSON.stringify(results, null, 2));
    console.log(`written: bench/results/${stamp}.md and .json`);
  } catch (e) {
    for (const p of st.procs) process.stderr.write(`\n----- ${p.name} (exit ${JSON.stringify(p.exit)}) last log lines -----\n${p.log.split('\n').slice(-15).join('\n')}\n`);
    throw e;
  } finally {
    if (lb) await lb.stop();
    await st.stopAll();
    if (nginx) nginx.kill('SIGTERM');
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
