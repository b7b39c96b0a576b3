'use strict';
// Offline checks of deploy/docker/*: no docker daemon or registry is
// reachable here, so the images are not built. What can be checked is:
// the Dockerfiles parse (hadolint-like rules written here), install with
// tools/deps.sh (the same steps as `make deps`), copy only paths that exist
// and that .dockerignore keeps, run as the chart's non-root uid, put every
// executable where the chart's commands expect it, expose the chart's ports,
// and are named and tagged as the chart's values say (make images); and
// tools/runtime-packages.sh finds the runtime packages of the real binaries.
const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { spawnSync } = require('node:child_process');
const { ROOT, CHART, BIN, render, YAML } = require('./lib');

const FILES = {
  c: path.join(ROOT, 'deploy/docker/Dockerfile'),
  transformer: path.join(ROOT, 'deploy/docker/transformer.Dockerfile'),
};

// Instructions of a Dockerfile: {op, args, line}, continuation lines joined,
// comments and the parser directive dropped.
function parse(file) {
  const out = [];
  let buf = '';
  let start = 0;
  fs.readFileSync(file, 'utf8').split('\n').forEach((raw, i) => {
    if (!buf && /^\s*(#|$)/.test(raw)) return;
    if (buf && /^\s*#/.test(raw)) return;
    if (!buf) start = i + 1;
    if (/\\\s*$/.test(raw)) {
      buf += raw.replace(/\\\s*$/, ' ');
      return;
    }
    buf += raw;
    const m = /^\s*([A-Za-z]+)\s+(.*)$/.exec(buf);
    assert.ok(m, `${file}:${start}: cannot parse "${buf}"`);
    out.push({ op: m[1].toUpperCase(), args: m[2].trim(), line: start });
    buf = '';
  });
  assert.equal(buf, '', `${file}: ends in a continuation`);
  return out;
}

// Stages: [{from, name, ins[]}], with ARG defaults (before the first FROM)
// substituted into FROM.
function stages(ins) {
  const args = {};
  const out = [];
  for (const i of ins) {
    if (i.op === 'ARG' && !out.length) {
      const [k, v] = i.args.split('=');
      args[k] = v;
    } else if (i.op === 'FROM') {
      const m = /^(\S+)(?:\s+AS\s+(\S+))?$/i.exec(i.args);
      const from = m[1].replace(/\$\{(\w+)\}/g, (_, k) => args[k]);
      out.push({ from, name: m[2], ins: [] });
    } else {
      assert.ok(out.length, `line ${i.line}: ${i.op} before FROM`);
      out[out.length - 1].ins.push(i);
    }
  }
  return out;
}

// .dockerignore patterns (the subset used: plain paths and **/name).
function ignored(rel) {
  const pats = fs.readFileSync(path.join(ROOT, '.dockerignore'), 'utf8').split('\n').map((l) => l.trim()).filter((l) => l && !l.startsWith('#'));
  const parts = rel.replace(/\/$/, '').split('/');
  return pats.some((p) => {
    if (p.startsWith('**/')) return parts.includes(p.slice(3));
    return rel.replace(/\/$/, '') === p || rel.startsWith(p + '/');
  });
}

const chartValues = YAML.parse(fs.readFileSync(path.join(CHART, 'values.yaml'), 'utf8'));
const chart = YAML.parse(fs.readFileSync(path.join(CHART, 'Chart.yaml'), 'utf8'));
const objs = render([], ['batchrouter.enabled=true']);
const deployment = (c) => objs.find((o) => o.kind === 'Deployment' && o.metadata.name === `pin-pintle-${c}`);

for (const [which, file] of Object.entries(FILES)) {
  test(`${path.relative(ROOT, file)}: hadolint-like rules`, () => {
    const st = stages(parse(file));
    assert.ok(st.length >= 2, 'multi-stage');
    const names = new Set(st.map((s) => s.name).filter(Boolean));
    for (const s of st) {
      const m = /^([^:@\s]+)(?::([^@\s]+))?/.exec(s.from);
      assert.ok(m[2] || names.has(m[1]), `FROM ${s.from}: no tag`);
      assert.ok(m[2] !== 'latest', `FROM ${s.from}: latest`);
      if (m[2]) assert.match(m[2], /\d+\.\d+/, `FROM ${s.from}: tag not pinned to a version`);
      assert.match(s.from, /bookworm|debian:12/, `FROM ${s.from}: not Debian 12, which tools/deps.sh is written for`);
      for (const i of s.ins) {
        const at = `line ${i.line}`;
        assert.notEqual(i.op, 'ADD', `${at}: ADD (use COPY)`);
        assert.doesNotMatch(i.args, /\bsudo\b/, `${at}: sudo`);
        if (i.op === 'WORKDIR') assert.match(i.args, /^\//, `${at}: relative WORKDIR`);
        if (i.op === 'CMD' || i.op === 'ENTRYPOINT') assert.doesNotThrow(() => JSON.parse(i.args), `${at}: ${i.op} not in exec form`);
        if (i.op === 'COPY') {
          const from = /--from=(\S+)/.exec(i.args);
          if (from) assert.ok(names.has(from[1]), `${at}: --from=${from[1]} is no stage`);
        }
        if (i.op === 'RUN' && /apt-get install/.test(i.args)) {
          assert.match(i.args, /apt-get update/, `${at}: install without update in the same RUN`);
          assert.match(i.args, /--no-install-recommends/, `${at}: recommends`);
          assert.match(i.args, /-y\b/, `${at}: -y`);
          assert.match(i.args, /rm -rf \/var\/lib\/apt\/lists/, `${at}: apt lists left in the layer`);
        }
      }
    }
    const final = st[st.length - 1];
    const users = final.ins.filter((i) => i.op === 'USER');
    assert.ok(users.length, 'no USER in the final stage');
    const [uid, gid] = users[users.length - 1].args.split(':').map(Number);
    assert.ok(uid > 0, 'runs as root');
    assert.equal(uid, chartValues.podSecurityContext.runAsUser, 'uid vs the chart');
    assert.equal(gid, chartValues.podSecurityContext.runAsGroup, 'gid vs the chart');
    assert.ok(final.ins.some((i) => i.op === 'STOPSIGNAL' && i.args === 'SIGTERM'), 'STOPSIGNAL SIGTERM');
  });

  test(`${path.relative(ROOT, file)}: installs with tools/deps.sh, not its own package list`, () => {
    const st = stages(parse(file));
    const build = st[0];
    const runs = build.ins.filter((i) => i.op === 'RUN');
    assert.ok(runs.some((i) => /^tools\/deps\.sh\b/.test(i.args)), 'the build stage does not run tools/deps.sh');
    for (const s of st)
      for (const i of s.ins.filter((x) => x.op === 'RUN'))
        assert.doesNotMatch(i.args, /\bnpm (install|ci)\b|\bpip\b/, `line ${i.line}: installs outside tools/deps.sh`);
    for (const i of runs) assert.doesNotMatch(i.args, /apt-get install/, `line ${i.line}: build-stage apt list beside tools/deps.sh`);
    // a runtime apt-get install takes its list from tools/runtime-packages.sh's output
    for (const i of st[st.length - 1].ins.filter((x) => x.op === 'RUN' && /apt-get install/.test(x.args))) {
      assert.match(i.args, /xargs -a \/tmp\/runtime-packages\.txt/, `line ${i.line}: runtime packages not from tools/runtime-packages.sh`);
      const named = i.args.split(/apt-get install/)[1].split('&&')[0].split(/\s+/).filter((w) => w && !w.startsWith('-'));
      assert.deepEqual(named, ['ca-certificates'], `line ${i.line}: packages named by hand`);
    }
    assert.ok(fs.statSync(path.join(ROOT, 'tools/deps.sh')).mode & 0o111, 'tools/deps.sh is not executable');
    // tools/deps.sh must run from the copied tree: whatever it reads is copied before it runs
    const before = [];
    for (const i of build.ins) {
      if (i.op === 'RUN' && /^tools\/deps\.sh\b/.test(i.args)) break;
      if (i.op === 'COPY') before.push(...i.args.split(/\s+/).slice(0, -1));
    }
    assert.ok(before.includes('tools/'), 'tools/ is not copied before tools/deps.sh runs');
  });

  test(`${path.relative(ROOT, file)}: every COPY source exists and is in the build context`, () => {
    for (const s of stages(parse(file)))
      for (const i of s.ins.filter((x) => x.op === 'COPY' && !/--from=/.test(x.args))) {
        const words = i.args.split(/\s+/).filter((w) => !w.startsWith('--'));
        for (const src of words.slice(0, -1)) {
          assert.ok(fs.existsSync(path.join(ROOT, src)), `line ${i.line}: ${src} does not exist`);
          assert.ok(!ignored(src), `line ${i.line}: ${src} is excluded by .dockerignore`);
        }
      }
    assert.ok(ignored('build/bin/gateway') && ignored('transformer/node_modules/x') && ignored('.git'), '.dockerignore keeps build outputs or node_modules');
  });
}

test('the C image carries every executable the chart runs, where it runs them, and exposes its ports', () => {
  const st = stages(parse(FILES.c));
  const final = st[st.length - 1];
  const copied = new Set();
  for (const i of final.ins.filter((x) => x.op === 'COPY' && /--from=build/.test(x.args))) {
    const words = i.args.split(/\s+/).filter((w) => !w.startsWith('--'));
    const dest = words[words.length - 1];
    for (const src of words.slice(0, -1)) copied.add(dest.endsWith('/') ? dest + path.basename(src) : dest);
    for (const src of words.slice(0, -1).filter((w) => w.startsWith('/src/build/bin/')))
      assert.ok(fs.existsSync(path.join(BIN, path.basename(src))), `${src}: make all builds no ${path.basename(src)}`);
  }
  const commands = ['gateway', 'processor', 'router', 'batchrouter'].map((c) => deployment(c).spec.template.spec.containers[0].command[0]);
  const job = objs.find((o) => o.kind === 'Job');
  commands.push(job.spec.template.spec.containers.find((c) => c.name === 'migrate').command[0]);
  for (const cmd of commands) assert.ok(copied.has(cmd), `the chart runs ${cmd}, the image has no such file`);
  const exposed = final.ins.filter((i) => i.op === 'EXPOSE').flatMap((i) => i.args.split(/\s+/).map(Number));
  for (const c of ['gateway', 'processor', 'router', 'batchrouter'])
    for (const p of deployment(c).spec.template.spec.containers[0].ports)
      assert.ok(exposed.includes(p.containerPort), `${c}: port ${p.containerPort} not EXPOSEd`);
  const cmd = JSON.parse(final.ins.find((i) => i.op === 'CMD').args);
  assert.ok(copied.has(cmd[0]), `CMD ${cmd[0]} is not in the image`);
});

test('the transformer image: its files where the chart runs them, the same Node in both stages, the chart\'s port', () => {
  const st = stages(parse(FILES.transformer));
  const final = st[st.length - 1];
  const ctr = deployment('transformer').spec.template.spec.containers[0];
  const copy = final.ins.find((i) => i.op === 'COPY' && /--from=build/.test(i.args));
  const [src, dest] = copy.args.split(/\s+/).filter((w) => !w.startsWith('--'));
  assert.equal(src, '/src/transformer/');
  const script = ctr.command[1];
  assert.ok(script.startsWith(dest), `${script} is not under ${dest}`);
  assert.ok(fs.existsSync(path.join(ROOT, 'transformer', path.relative(dest, script))), `${script}: no such file in transformer/`);
  assert.deepEqual(JSON.parse(final.ins.find((i) => i.op === 'CMD').args), ctr.command);
  const build = st[0].ins;
  assert.ok(build.some((i) => i.op === 'COPY' && i.args.includes('transformer/package-lock.json')), 'the lock file is not copied');
  const nodeVersion = (from) => /node:([\d.]+)/.exec(from)[1];
  assert.equal(nodeVersion(st[0].from), nodeVersion(final.from), 'isolated-vm is built for another Node than it runs on');
  const exposed = final.ins.filter((i) => i.op === 'EXPOSE').flatMap((i) => i.args.split(/\s+/).map(Number));
  assert.ok(exposed.includes(ctr.ports[0].containerPort), 'transformer port not EXPOSEd');
  const env = final.ins.filter((i) => i.op === 'ENV').map((i) => i.args).join(' ');
  assert.match(env, /HOST=0\.0\.0\.0/, 'the transformer would listen on 127.0.0.1 only');
});

test('make images names and tags the images as the chart\'s values expect', () => {
  const r = spawnSync('make', ['-s', '-n', 'images'], { cwd: ROOT, encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  const tags = [...r.stdout.matchAll(/-f (\S+) -t (\S+):(\S+) \./g)].map((m) => ({ file: m[1], repo: m[2], tag: m[3] }));
  assert.deepEqual(tags.map((t) => t.file).sort(), ['deploy/docker/Dockerfile', 'deploy/docker/transformer.Dockerfile']);
  for (const t of tags) assert.equal(t.tag, chart.appVersion, `${t.repo}: tag vs appVersion (the chart's default tag)`);
  assert.equal(tags.find((t) => t.file.endsWith('/Dockerfile')).repo, chartValues.image.repository);
  assert.equal(tags.find((t) => t.file.endsWith('transformer.Dockerfile')).repo, chartValues.transformerImage.repository);
  assert.equal(chartValues.image.tag, '', 'the chart defaults to its appVersion');
});

test('tools/runtime-packages.sh names the installed packages of the built binaries\' libraries', () => {
  const bins = ['gateway', 'processor', 'router', 'batchrouter', 'pintlectl'].map((b) => path.join(BIN, b));
  const r = spawnSync(path.join(ROOT, 'tools/runtime-packages.sh'), bins, { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  const pkgs = r.stdout.trim().split('\n');
  for (const p of ['libpq5', 'libevent-2.1-7', 'libcurl4', 'libjson-c5', 'libnanomsg5', 'libconfig9', 'zlib1g'])
    assert.ok(pkgs.includes(p), `${p} missing from ${pkgs.join(' ')}`);
  for (const p of pkgs) assert.doesNotMatch(p, /-dev$/, `${p}: a -dev package at runtime`);
  const bad = spawnSync(path.join(ROOT, 'tools/runtime-packages.sh'), [path.join(ROOT, 'README.md')], { encoding: 'utf8' });
  assert.notEqual(bad.status, 0, 'a non-ELF file must fail');
});
