'use strict';
// Offline checks of helm/pintle: helm lint --strict, helm template with the
// default values and each tests/helm/values/*.yaml, every rendered object
// validated against the Kubernetes schemas (kubernetes-models), and what the
// objects must say: per component probes, ports, PDB, HPA, spread, grace
// periods that cover the services' shutdown bounds; the rendered pintle.conf
// and each Deployment's environment accepted by the real binaries
// (--check-config); checksums that roll pods; values the schema rejects.
const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { spawnSync } = require('node:child_process');
const { ROOT, CHART, BIN, helm, render, modelOf, YAML } = require('./lib');

const VALUES_DIR = path.join(__dirname, 'values');
const VALUE_SETS = { default: [] };
for (const f of fs.readdirSync(VALUES_DIR).filter((f) => f.endsWith('.yaml')).sort())
  VALUE_SETS[f.replace(/\.yaml$/, '')] = [path.join(VALUES_DIR, f)];
const C_COMPONENTS = ['gateway', 'processor', 'router', 'batchrouter'];
const COMPONENTS = [...C_COMPONENTS, 'transformer'];
const OPERATOR_KINDS = new Set(['ServiceMonitor', 'PrometheusRule']);

const rendered = {};
function objects(set) {
  if (!rendered[set]) rendered[set] = render(VALUE_SETS[set]);
  return rendered[set];
}
const find = (objs, kind, name) => objs.find((o) => o.kind === kind && o.metadata.name === name);
const full = (c) => `pin-pintle-${c}`;
function matches(selector, labels) {
  return Object.entries(selector.matchLabels || {}).every(([k, v]) => labels[k] === v);
}
function valuesOf(set) {
  const v = YAML.parse(fs.readFileSync(path.join(CHART, 'values.yaml'), 'utf8'));
  const merge = (a, b) => {
    for (const [k, x] of Object.entries(b || {}))
      a[k] = x && typeof x === 'object' && !Array.isArray(x) && a[k] && typeof a[k] === 'object' ? merge(a[k], x) : x;
    return a;
  };
  for (const f of VALUE_SETS[set]) merge(v, YAML.parse(fs.readFileSync(f, 'utf8')));
  return v;
}

test('the value sets under test: default plus at least three', () => {
  assert.ok(Object.keys(VALUE_SETS).length >= 4, Object.keys(VALUE_SETS).join(', '));
});

test('helm lint --strict passes with every value set', () => {
  for (const [set, files] of Object.entries(VALUE_SETS)) {
    const r = helm(['lint', '--strict', CHART, ...files.flatMap((f) => ['-f', f])]);
    assert.equal(r.code, 0, `helm lint ${set}:\n${r.out}${r.err}`);
  }
});

test('every rendered object is valid against the Kubernetes schemas', () => {
  for (const set of Object.keys(VALUE_SETS)) {
    const objs = objects(set);
    assert.ok(objs.length > 10, `${set}: only ${objs.length} objects`);
    for (const o of objs) {
      const where = `${set}: ${o.kind}/${o.metadata && o.metadata.name}`;
      const Model = modelOf(o);
      if (!Model) {
        assert.ok(OPERATOR_KINDS.has(o.kind) && o.apiVersion === 'monitoring.coreos.com/v1', `${where}: no schema for ${o.apiVersion}`);
        continue;
      }
      assert.doesNotThrow(() => new Model(o).validate(), where);
      assert.ok(o.metadata.labels && o.metadata.labels['app.kubernetes.io/instance'] === 'pin', `${where}: instance label`);
    }
  }
});

test('the schema validation itself rejects a bad object (the check above can fail)', () => {
  const dep = structuredClone(find(objects('default'), 'Deployment', full('gateway')));
  dep.spec.template.spec.containers[0].ports[0].containerPort = 'eighty';
  const Model = modelOf(dep);
  assert.throws(() => new Model(dep).validate(), /containerPort/);
});

test('a Deployment, Service and PDB per component, each with probes on /health, spread and resources', () => {
  for (const set of Object.keys(VALUE_SETS)) {
    const objs = objects(set);
    for (const c of COMPONENTS) {
      const where = `${set}: ${c}`;
      const d = find(objs, 'Deployment', full(c));
      assert.ok(d, `${where}: no Deployment`);
      const labels = d.spec.template.metadata.labels;
      assert.equal(labels['app.kubernetes.io/component'], c, where);
      assert.ok(matches(d.spec.selector, labels), `${where}: selector does not select its pods`);
      const pod = d.spec.template.spec;
      const ctr = pod.containers[0];
      const ports = new Map(ctr.ports.map((p) => [p.name, p.containerPort]));
      for (const kind of ['livenessProbe', 'readinessProbe']) {
        const p = ctr[kind];
        assert.ok(p && p.httpGet, `${where}: no ${kind}`);
        assert.match(p.httpGet.path, /^\/health(\/live)?$/, `${where}: ${kind} path`);
        const port = typeof p.httpGet.port === 'string' ? ports.get(p.httpGet.port) : p.httpGet.port;
        assert.ok([...ports.values()].includes(port), `${where}: ${kind} port ${p.httpGet.port} is not a container port`);
      }
      assert.equal(ctr.readinessProbe.httpGet.path, '/health', `${where}: readiness must be /health (database reachable)`);
      assert.ok(ctr.resources && ctr.resources.requests && ctr.resources.requests.cpu, `${where}: cpu request (the HPA needs it)`);
      assert.ok(ctr.securityContext && ctr.securityContext.allowPrivilegeEscalation === false, `${where}: securityContext`);
      assert.equal(pod.securityContext.runAsNonRoot, true, `${where}: runAsNonRoot`);
      const spread = pod.topologySpreadConstraints || [];
      assert.deepEqual(spread.map((t) => t.topologyKey).sort(), ['kubernetes.io/hostname', 'topology.kubernetes.io/zone'], `${where}: spread`);
      for (const t of spread) assert.ok(matches(t.labelSelector, labels), `${where}: spread selector`);

      const pdb = find(objs, 'PodDisruptionBudget', full(c));
      assert.ok(pdb, `${where}: no PDB`);
      assert.ok(matches(pdb.spec.selector, labels), `${where}: PDB does not select the pods`);
      const others = objs.filter((o) => o.kind === 'Deployment' && o !== d);
      for (const o of others)
        assert.ok(!matches(pdb.spec.selector, o.spec.template.metadata.labels), `${where}: PDB also selects ${o.metadata.name}`);

      const svc = find(objs, 'Service', full(c));
      assert.ok(svc && matches({ matchLabels: svc.spec.selector }, labels), `${where}: Service`);
      for (const sp of svc.spec.ports) {
        const target = typeof sp.targetPort === 'string' ? ports.get(sp.targetPort) : sp.targetPort;
        assert.ok([...ports.values()].includes(target), `${where}: Service port ${sp.name} targets no container port`);
      }
    }
  }
});

test('HPAs: on CPU for gateway and transformer, queue lag for processor and router when asked; none when off', () => {
  const objs = objects('scaled');
  const v = valuesOf('scaled');
  const opsSrc = fs.readFileSync(path.join(ROOT, 'common/ops.c'), 'utf8');
  for (const c of COMPONENTS) {
    const h = find(objs, 'HorizontalPodAutoscaler', full(c));
    assert.ok(h, `scaled: no HPA for ${c}`);
    assert.equal(h.spec.scaleTargetRef.name, full(c));
    assert.equal(h.spec.minReplicas, v[c].autoscaling.minReplicas);
    assert.equal(h.spec.maxReplicas, v[c].autoscaling.maxReplicas);
    const d = find(objs, 'Deployment', full(c));
    assert.equal(d.spec.replicas, undefined, `${c}: replicas must be left to the HPA`);
    const cpu = h.spec.metrics.find((m) => m.type === 'Resource');
    assert.equal(cpu.resource.name, 'cpu');
    assert.equal(cpu.resource.target.averageUtilization, v[c].autoscaling.targetCPUUtilizationPercentage);
    const ext = h.spec.metrics.filter((m) => m.type === 'External');
    if (c === 'processor' || c === 'router') {
      assert.equal(ext.length, 1, `${c}: queue-lag metric`);
      const name = ext[0].external.metric.name;
      assert.ok(opsSrc.includes(`"${name}"`), `${c}: the services export no metric ${name}`);
      assert.deepEqual(ext[0].external.metric.selector.matchLabels, { stage: c });
      // the stage label's value is the StageOps name the component registers
      assert.ok(fs.readFileSync(path.join(ROOT, c, 'main.c'), 'utf8').includes(`StageOps ops = {"${c}"`), `${c}: stage label`);
      assert.equal(ext[0].external.target.value, String(v[c].autoscaling.queueLag.targetSeconds));
    } else {
      assert.equal(ext.length, 0, `${c}: no external metric`);
    }
  }
  const def = objects('default');
  assert.equal(def.filter((o) => o.kind === 'HorizontalPodAutoscaler').length, 0, 'default: HPAs are off');
  for (const c of COMPONENTS) assert.equal(typeof find(def, 'Deployment', full(c)).spec.replicas, 'number', c);
});

test('extra volumes reach the component that asks for them only', () => {
  const objs = objects('scaled');
  const pod = (c) => find(objs, 'Deployment', full(c)).spec.template.spec;
  const br = pod('batchrouter');
  assert.equal(br.volumes.find((x) => x.name === 'uploads').persistentVolumeClaim.claimName, 'pintle-uploads');
  assert.equal(br.containers[0].volumeMounts.find((x) => x.name === 'uploads').mountPath, '/var/lib/pintle/uploads');
  for (const c of ['gateway', 'processor', 'router', 'transformer'])
    assert.ok(!pod(c).volumes.some((x) => x.name === 'uploads'), c);
});

test('an HPA that could exceed the partitions is refused', () => {
  const r = helm(['template', 'pin', CHART, '--set', 'processor.autoscaling.enabled=true', '--set', 'processor.autoscaling.maxReplicas=65']);
  assert.notEqual(r.code, 0);
  assert.match(r.err, /maxReplicas \(65\) is above partitions \(64\)/);
});

// The rendered pintle.conf and the environment of a container, run through
// the real binary's --check-config: returns its key=value lines.
function checkConfig(objs, ctr, bin) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pintle-helm-'));
  try {
    const cm = find(objs, 'ConfigMap', full('config'));
    const conf = path.join(dir, 'pintle.conf');
    fs.writeFileSync(conf, cm.data['pintle.conf']);
    const env = { PATH: process.env.PATH };
    for (const e of ctr.env || []) {
      let val = e.value;
      if (e.valueFrom && e.valueFrom.fieldRef) val = '10.1.2.3';
      else if (e.valueFrom && e.valueFrom.secretKeyRef) val = e.name === 'PINTLE_DB_DSN' ? 'host=db.invalid dbname=pintle' : 'secret';
      env[e.name] = String(val).replace(/\$\((\w+)\)/g, (_, n) => env[n]);
    }
    if (env.PINTLE_CONFIG) env.PINTLE_CONFIG = conf;
    const args = bin === 'pintlectl' ? ['check-config'] : ['--check-config'];
    const r = spawnSync(path.join(BIN, bin), args, { env, encoding: 'utf8' });
    assert.equal(r.status, 0, `${bin} --check-config failed:\n${r.stderr}`);
    const kv = {};
    for (const line of r.stdout.split('\n')) {
      const m = /^([a-z_]+\.[a-z_0-9]+)=(.*)$/.exec(line);
      if (m) kv[m[1]] = m[2].replace(/^"(.*)"$/, '$1');
    }
    assert.ok(Object.keys(kv).length > 50, `${bin}: too few keys printed`);
    return { kv, env };
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

test('the rendered pintle.conf and each Deployment\'s env pass the binaries\' --check-config and agree with ports, probes and grace periods', () => {
  for (const set of Object.keys(VALUE_SETS)) {
    const objs = objects(set);
    const v = valuesOf(set);
    const tfSvc = find(objs, 'Service', full('transformer'));
    for (const c of C_COMPONENTS) {
      const where = `${set}: ${c}`;
      const d = find(objs, 'Deployment', full(c));
      const pod = d.spec.template.spec;
      const ctr = pod.containers[0];
      assert.deepEqual(ctr.command, [`/usr/local/bin/${c}`], where);
      const { kv, env } = checkConfig(objs, ctr, c);
      const known = new Set(Object.keys(kv).map((k) => 'PINTLE_' + k.replace('.', '_').toUpperCase()));
      for (const name of Object.keys(env).filter((n) => n.startsWith('PINTLE_') && n !== 'PINTLE_CONFIG'))
        assert.ok(known.has(name), `${where}: env ${name} is no config key`);
      const ports = new Map(ctr.ports.map((p) => [p.name, p.containerPort]));
      const admin = c === 'gateway' ? Number(kv['gateway.port']) : Number(kv[`${c}.admin_port`]);
      assert.equal(ctr.readinessProbe.httpGet.port, admin, `${where}: probe port vs config`);
      assert.equal(ports.get(c === 'gateway' ? 'http' : 'metrics'), admin, `${where}: container port vs config`);
      assert.equal(kv[c === 'gateway' ? 'gateway.listen_address' : `${c}.listen_address`], '0.0.0.0', where);
      if (d.spec.template.metadata.annotations['prometheus.io/port'])
        assert.equal(Number(d.spec.template.metadata.annotations['prometheus.io/port']), admin, `${where}: scrape port`);
      // Kubernetes must wait longer than preStop plus the service's own bound
      const shutdownMs = Number(kv[`${c}.shutdown_timeout_ms`]);
      assert.equal(shutdownMs, v[c].shutdownTimeoutMs, `${where}: shutdown_timeout_ms from values`);
      const preStop = ctr.lifecycle ? Number(ctr.lifecycle.preStop.exec.command[1]) : 0;
      assert.equal(preStop, v[c].preStopSleepSeconds, `${where}: preStop`);
      assert.ok(pod.terminationGracePeriodSeconds * 1000 >= preStop * 1000 + shutdownMs + 2000,
        `${where}: grace ${pod.terminationGracePeriodSeconds}s < preStop ${preStop}s + shutdown ${shutdownMs}ms + 2s`);
      assert.equal(kv['db.schema'], v.database.schema, where);
      assert.equal(Number(kv['queue.partitions']), v.partitions, where);
      assert.equal(kv['workspace.path'], '/etc/pintle/workspace/workspaceConfig.json', where);
      const mounts = ctr.volumeMounts.map((m) => m.mountPath);
      assert.ok(mounts.includes('/etc/pintle/workspace') && mounts.includes('/etc/pintle/pintle.conf'), `${where}: mounts`);
      if (c !== 'gateway') {
        assert.equal(kv['hints.bind'], `tcp://0.0.0.0:${v.hints.port}`, where);
        assert.equal(kv['hints.advertise'], `tcp://10.1.2.3:${v.hints.port}`, `${where}: advertised hint endpoint`);
        assert.equal(ports.get('hints'), v.hints.port, where);
      }
      if (c === 'processor' || c === 'router') {
        const u = new URL(kv[`${c}.transformer_url`]);
        assert.equal(u.hostname, tfSvc.metadata.name, `${where}: transformer_url host`);
        assert.equal(Number(u.port), tfSvc.spec.ports[0].port, `${where}: transformer_url port`);
      }
      for (const [sec, keys] of Object.entries(v.config || {}))
        for (const [k, val] of Object.entries(keys)) assert.equal(kv[`${sec}.${k}`], String(val), `${where}: config.${sec}.${k}`);
      if (env.PINTLE_DB_DSN !== undefined) assert.ok(kv['db.dsn'] !== '', `${where}: DSN`);
    }
    // pintlectl with the rendered file itself (what `kubectl exec ... pintlectl` reads)
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pintle-helm-'));
    try {
      fs.writeFileSync(path.join(dir, 'pintle.conf'), find(objs, 'ConfigMap', full('config')).data['pintle.conf']);
      const r = spawnSync(path.join(BIN, 'pintlectl'), ['-c', path.join(dir, 'pintle.conf'), 'check-config'], { encoding: 'utf8', env: { PATH: process.env.PATH } });
      assert.equal(r.status, 0, `${set}: pintlectl check-config of the rendered pintle.conf:\n${r.stderr}`);
      assert.match(r.stdout, new RegExp(`^queue\\.partitions=${v.partitions}$`, 'm'), set);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
    const job = find(objs, 'Job', full('migrate'));
    const jctr = job.spec.template.spec.containers.find((x) => x.name === 'migrate');
    assert.deepEqual(jctr.command, ['/usr/local/bin/pintlectl', 'migrate'], set);
    const { kv } = checkConfig(objs, jctr, 'pintlectl');
    assert.equal(kv['db.schema'], v.database.schema, `${set}: migrate schema`);
    assert.equal(Number(kv['queue.partitions']), v.partitions, `${set}: migrate partitions`);
  }
});

test('the probe paths are ones the services serve', () => {
  const admin = fs.readFileSync(path.join(ROOT, 'common/admin.c'), 'utf8');
  const gw = fs.readFileSync(path.join(ROOT, 'gateway/server.c'), 'utf8');
  for (const p of ['/health', '/health/live']) {
    assert.ok(admin.includes(`"${p}"`), `common/admin.c serves no ${p}`);
    assert.ok(gw.includes(`"${p}"`), `gateway/server.c serves no ${p}`);
  }
  const tf = fs.readFileSync(path.join(ROOT, 'transformer/src/server.js'), 'utf8');
  assert.ok(tf.includes("'/health'"), 'the transformer serves no /health');
});

test('the transformer Deployment: env the server reads, grace over its 5 s drain', () => {
  const src = fs.readFileSync(path.join(ROOT, 'transformer/src/server.js'), 'utf8');
  const drain = /setTimeout\(\(\) => process\.exit\(0\), (\d+)\)/.exec(src);
  assert.ok(drain, 'transformer/src/server.js: drain bound not found');
  for (const set of Object.keys(VALUE_SETS)) {
    const d = find(objects(set), 'Deployment', full('transformer'));
    const pod = d.spec.template.spec;
    const ctr = pod.containers[0];
    assert.deepEqual(ctr.command, ['node', '/app/transformer/src/server.js']);
    for (const e of ctr.env) assert.ok(src.includes(`process.env.${e.name}`), `${set}: transformer reads no ${e.name}`);
    assert.equal(ctr.env.find((e) => e.name === 'HOST').value, '0.0.0.0');
    assert.equal(Number(ctr.env.find((e) => e.name === 'PORT').value), ctr.ports[0].containerPort);
    const preStop = ctr.lifecycle ? Number(ctr.lifecycle.preStop.exec.command[1]) : 0;
    assert.ok(pod.terminationGracePeriodSeconds * 1000 >= preStop * 1000 + Number(drain[1]) + 2000, `${set}: transformer grace`);
  }
});

test('migrations run as a pre-install/pre-upgrade hook Job, after the Secret it reads', () => {
  for (const set of Object.keys(VALUE_SETS)) {
    const objs = objects(set);
    const job = find(objs, 'Job', full('migrate'));
    assert.ok(job, `${set}: no migrate Job`);
    assert.equal(job.metadata.annotations['helm.sh/hook'], 'pre-install,pre-upgrade');
    assert.equal(job.spec.template.spec.restartPolicy, 'Never');
    const secret = find(objs, 'Secret', 'pin-pintle');
    if (secret) {
      assert.match(secret.metadata.annotations['helm.sh/hook'], /pre-install/);
      assert.ok(Number(secret.metadata.annotations['helm.sh/hook-weight']) < Number(job.metadata.annotations['helm.sh/hook-weight']), `${set}: Secret after the Job`);
    }
  }
});

const annotation = (objs, c, a) => find(objs, 'Deployment', full(c)).spec.template.metadata.annotations[a];

test('checksum/config changes with pintle.conf (pods roll) and not with unrelated values', () => {
  const base = render();
  const changed = render([], ['config.router.max_attempts=7']);
  const unrelated = render([], ['gateway.replicas=5']);
  const ws = render([], ['workspace.config.workspaceId=ws-2']);
  for (const c of C_COMPONENTS) {
    const a = annotation(base, c, 'checksum/config');
    assert.match(a, /^[0-9a-f]{64}$/, c);
    assert.notEqual(annotation(changed, c, 'checksum/config'), a, `${c}: config change must roll pods`);
    assert.equal(annotation(unrelated, c, 'checksum/config'), a, `${c}: replicas are no config change`);
    assert.equal(annotation(ws, c, 'checksum/config'), a, `${c}: the workspace config reloads live`);
    assert.equal(annotation(ws, c, 'checksum/workspace'), undefined, c);
  }
  const roll1 = render([], ['workspace.rollOnChange=true']);
  const roll2 = render([], ['workspace.rollOnChange=true', 'workspace.config.workspaceId=ws-2']);
  assert.match(annotation(roll1, 'router', 'checksum/workspace'), /^[0-9a-f]{64}$/);
  assert.notEqual(annotation(roll1, 'router', 'checksum/workspace'), annotation(roll2, 'router', 'checksum/workspace'));
  assert.match(find(changed, 'ConfigMap', full('config')).data['pintle.conf'], /max_attempts = 7;/);
});

test('the schema rejects bad values (and accepts the good ones next to them)', () => {
  const bad = [
    ['image.tag=latest', /image/],
    ['transformerImage.tag=latest', /transformerImage/],
    ['postgresql.image.tag=latest', /postgresql/],
    ['partitions=0', /partitions/],
    ['gateway.replicas=-1', /gateway/],
    ['gateway.bogus=1', /bogus/],
    ['router.shutdownTimeoutMs=50', /shutdownTimeoutMs/],
    ['gateway.autoscaling.targetCPUUtilizationPercentage=150', /targetCPUUtilizationPercentage/],
    ['logLevel=verbose', /logLevel/],
    ['image.pullPolicy=Sometimes', /pullPolicy/],
  ];
  for (const [s, field] of bad) {
    const r = helm(['template', 'pin', CHART, '--set', s]);
    assert.notEqual(r.code, 0, `--set ${s} was accepted`);
    assert.match(r.err, /schema/, `--set ${s}: ${r.err}`);
    assert.match(r.err, field, `--set ${s}: ${r.err}`);
  }
  for (const s of ['image.tag=0.1.1', 'partitions=1', 'gateway.replicas=0', 'router.shutdownTimeoutMs=100', 'logLevel=debug']) {
    const r = helm(['template', 'pin', CHART, '--set', s]);
    assert.equal(r.code, 0, `--set ${s} refused: ${r.err}`);
  }
});

test('images: configurable, pinned, never latest', () => {
  for (const set of Object.keys(VALUE_SETS)) {
    for (const o of objects(set)) {
      const spec = o.spec && (o.spec.template ? o.spec.template.spec : o.spec.jobTemplate && o.spec.jobTemplate.spec.template.spec);
      if (!spec) continue;
      for (const ctr of [...(spec.initContainers || []), ...spec.containers]) {
        const m = /^(.+):([^:/]+)$/.exec(ctr.image);
        assert.ok(m, `${set}: ${o.metadata.name}/${ctr.name}: image ${ctr.image} has no tag`);
        assert.notEqual(m[2], 'latest', `${set}: ${ctr.image}`);
      }
    }
  }
  const objs = render([], ['image.repository=r.example/p', 'image.tag=9.9.9', 'transformerImage.tag=8.8.8']);
  assert.equal(find(objs, 'Deployment', full('router')).spec.template.spec.containers[0].image, 'r.example/p:9.9.9');
  assert.equal(find(objs, 'Job', full('migrate')).spec.template.spec.containers[0].image, 'r.example/p:9.9.9');
  assert.equal(find(objs, 'Deployment', full('transformer')).spec.template.spec.containers[0].image, 'pintle/pintle-transformer:8.8.8');
});

test('external database: the DSN and token come from the existing Secrets, the chart makes none', () => {
  const objs = objects('external-db');
  assert.equal(objs.filter((o) => o.kind === 'Secret').length, 0);
  const v = valuesOf('external-db');
  for (const c of C_COMPONENTS) {
    const env = find(objs, 'Deployment', full(c)).spec.template.spec.containers[0].env;
    const dsn = env.find((e) => e.name === 'PINTLE_DB_DSN');
    assert.deepEqual(dsn.valueFrom.secretKeyRef, { name: v.database.existingSecret, key: v.database.existingSecretKey }, c);
    const tok = env.find((e) => e.name === 'PINTLE_WORKSPACE_CONTROL_PLANE_TOKEN');
    assert.deepEqual(tok.valueFrom.secretKeyRef, { name: v.workspace.controlPlaneTokenSecret, key: v.workspace.controlPlaneTokenSecretKey }, c);
    const vol = find(objs, 'Deployment', full(c)).spec.template.spec.volumes.find((x) => x.name === 'workspace');
    assert.equal(vol.configMap.name, v.workspace.existingConfigMap);
    assert.equal(vol.configMap.items[0].key, v.workspace.existingConfigMapKey);
  }
  assert.equal(find(objs, 'ConfigMap', full('workspace')), undefined);
  const ing = find(objs, 'Ingress', full('gateway'));
  const be = ing.spec.rules[0].http.paths[0].backend.service;
  const svc = find(objs, 'Service', be.name);
  assert.ok(svc && svc.spec.ports.some((p) => p.name === be.port.name), 'Ingress backend is a gateway Service port');
  assert.equal(ing.spec.tls[0].secretName, 'events-tls');
});

test('bundled Postgres: marked not for production, the DSN points at it, ServiceMonitor selects every metrics Service', () => {
  const objs = objects('bundled-pg');
  const sts = find(objs, 'StatefulSet', full('postgresql'));
  assert.ok(sts, 'no bundled Postgres');
  assert.match(sts.metadata.annotations['pintle.io/not-for-production'], /trial/);
  const secret = find(objs, 'Secret', 'pin-pintle');
  assert.match(secret.stringData.dsn, new RegExp(`host=${full('postgresql')} `));
  const pgSecret = find(objs, 'Secret', full('postgresql'));
  assert.ok(secret.stringData.dsn.includes(`password=${pgSecret.stringData.password}`), 'DSN password is the bundled one');
  assert.equal(find(objects('default'), 'StatefulSet', full('postgresql')), undefined, 'no Postgres unless asked');
  const sm = objs.find((o) => o.kind === 'ServiceMonitor');
  assert.ok(sm, 'no ServiceMonitor');
  const selected = objs.filter((o) => o.kind === 'Service' && matches(sm.spec.selector, o.metadata.labels));
  assert.deepEqual(selected.map((s) => s.metadata.name).sort(), C_COMPONENTS.map(full).sort());
  for (const s of selected) assert.ok(s.spec.ports.some((p) => p.name === sm.spec.endpoints[0].port), s.metadata.name);
  for (const c of C_COMPONENTS) assert.equal(annotation(objs, c, 'prometheus.io/scrape'), undefined, c);
  for (const c of C_COMPONENTS) assert.equal(annotation(objects('default'), c, 'prometheus.io/scrape'), 'true', c);
  const rule = objs.find((o) => o.kind === 'PrometheusRule');
  assert.ok(rule && Array.isArray(rule.spec.groups) && rule.spec.groups.length > 0, 'PrometheusRule groups');
});

test('the PrometheusRule carries the alert rules of deploy/prometheus', () => {
  const chartRules = fs.readFileSync(path.join(CHART, 'files/alerts.yml'), 'utf8');
  assert.ok(Array.isArray(YAML.parse(chartRules).groups));
  const deployRules = path.join(ROOT, 'deploy/prometheus/alerts.yml');
  if (fs.existsSync(deployRules))
    assert.equal(chartRules, fs.readFileSync(deployRules, 'utf8'), 'helm/pintle/files/alerts.yml differs from deploy/prometheus/alerts.yml: cp deploy/prometheus/alerts.yml helm/pintle/files/alerts.yml');
});

// NOTES.txt is not rendered by `helm template` (and `helm install --dry-run`
// wants a cluster): render it through tpl in a copy of the chart.
function notes(files = [], sets = []) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pintle-notes-'));
  try {
    fs.cpSync(CHART, dir, { recursive: true });
    fs.copyFileSync(path.join(dir, 'templates/NOTES.txt'), path.join(dir, 'files/NOTES.txt'));
    fs.writeFileSync(path.join(dir, 'templates/zz-notes.yaml'),
      'apiVersion: v1\nkind: ConfigMap\nmetadata: {name: notes}\ndata:\n  notes: {{ tpl (.Files.Get "files/NOTES.txt") . | toJson }}\n');
    const args = ['template', 'pin', dir, '--namespace', 'events', '--show-only', 'templates/zz-notes.yaml'];
    for (const f of files) args.push('-f', f);
    for (const s of sets) args.push('--set', s);
    const r = helm(args);
    assert.equal(r.code, 0, r.err);
    return YAML.parse(r.out).data.notes;
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

test('NOTES.txt tells how to send a first event, and warns about the bundled Postgres', () => {
  const n = notes();
  assert.match(n, /port-forward svc\/pin-pintle-gateway 8080:80/);
  assert.match(n, /curl -u 'WRITE_KEY:'.*\/v1\/track/s);
  assert.doesNotMatch(n, /NOT FOR PRODUCTION/);
  const pg = notes(VALUE_SETS['bundled-pg']);
  assert.match(pg, /NOT FOR PRODUCTION/);
  assert.match(notes(VALUE_SETS['external-db']), /GATEWAY=https:\/\/events\.example\.com/);
});

test('a config value the binaries refuse is caught by the check-config step (it can fail)', () => {
  for (const bad of ['config.router.no_such_key=1', 'config.router.max_attempts=-5']) {
    const objs = render([], [bad]);
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pintle-helm-'));
    try {
      fs.writeFileSync(path.join(dir, 'pintle.conf'), find(objs, 'ConfigMap', full('config')).data['pintle.conf']);
      const r = spawnSync(path.join(BIN, 'pintlectl'), ['-c', path.join(dir, 'pintle.conf'), 'check-config'], { encoding: 'utf8', env: { PATH: process.env.PATH } });
      assert.notEqual(r.status, 0, `--set ${bad}: accepted`);
      assert.match(r.stderr, /router|max_attempts|no_such_key/, r.stderr);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }
});

test('the chart states the Kubernetes versions its APIs need (autoscaling/v2, policy/v1)', () => {
  assert.equal(helm(['template', 'pin', CHART, '--kube-version', '1.23.0']).code, 0);
  const r = helm(['template', 'pin', CHART, '--kube-version', '1.22.0']);
  assert.notEqual(r.code, 0, 'rendered for Kubernetes 1.22');
  assert.match(r.err, /kubeVersion/);
});
