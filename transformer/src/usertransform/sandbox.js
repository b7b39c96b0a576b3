'use strict';
// User code in a real V8 isolate (isolated-vm): its own heap with a hard
// limit, no Node APIs (no require, process, fs, timers or sockets), and only
// the globals this file puts there:
//   log(...)            accepted and ignored (as the official transformer does
//                       outside its test mode)
//   fetch(url, opts)    parsed JSON of the answer, or the string 'ERROR'
//   fetchV2(url, opts)  {url, status, headers, body}; throws on failure
//                       Both only reach hosts listed in
//                       PINTLE_TRANSFORMATIONS_FETCH_HOSTS; with none listed
//                       (the default) they throw "fetch is disabled".
//   getCredential(key)  from the request's credentials [{key, value}]
//   geolocation(ip)     throws: not available in pintle
//
// Code is an ES module (codeVersion "1") exporting exactly one of
// transformEvent(event, metadata) and transformBatch(events, metadata);
// `metadata` is a function: metadata(event) gives the metadata of the input
// event with that messageId. Libraries are modules imported by the camelCased
// library name (import { f } from "myLibrary"), as in the official transformer.
//
// Limits: ISOLATE_VM_MEMORY (MB of heap per isolate, default 128);
// IVM_EXECUTION_TIMEOUT (ms of running code per call, default 4000);
// USER_TRANSFORM_TIMEOUT (ms of wall time per call including awaited fetches,
// default 10000). A call that exceeds one is stopped, the isolate thrown away
// and a fresh one built for the next call.
const ivm = require('isolated-vm');
const { envInt } = require('./store');

const FETCH_MAX_BYTES = 4 << 20;

function limitsFromEnv() {
  return {
    memoryMb: envInt('ISOLATE_VM_MEMORY', 128, 8),
    execTimeoutMs: envInt('IVM_EXECUTION_TIMEOUT', 4000, 1),
    wallTimeoutMs: envInt('USER_TRANSFORM_TIMEOUT', 10000, 1),
    fetchHosts: (process.env.PINTLE_TRANSFORMATIONS_FETCH_HOSTS || '')
      .split(',')
      .map((h) => h.trim().toLowerCase())
      .filter(Boolean),
    fetchTimeoutMs: envInt('PINTLE_TRANSFORMATIONS_FETCH_TIMEOUT_MS', 5000, 1),
  };
}

// lodash's camelCase for the names libraries are imported by.
function camelCase(name) {
  const words = String(name).match(/[A-Z]{2,}(?=[A-Z][a-z]+[0-9]*|\b)|[A-Z]?[a-z]+[0-9]*|[A-Z]+|[0-9]+/g) || [];
  return words.map((w, i) => (i === 0 ? w.toLowerCase() : w[0].toUpperCase() + w.slice(1).toLowerCase())).join('');
}

// Runs inside the isolate before any user code: turns the host references
// into plain functions and removes the references from the global object.
const BOOTSTRAP = `
(function () {
  const g = globalThis;
  const fetchRef = g.__pintleFetch, fetchV2Ref = g.__pintleFetchV2;
  delete g.__pintleFetch; delete g.__pintleFetchV2;
  g.global = g;
  g.log = function () {};
  g.fetch = async function (url, opts) {
    const r = await fetchRef.apply(undefined, [String(url), opts === undefined ? null : JSON.stringify(opts), false],
      { result: { promise: true, copy: true } });
    if (r.error) throw new Error(r.error);
    return r.value;
  };
  g.fetchV2 = async function (url, opts) {
    const r = await fetchV2Ref.apply(undefined, [String(url), opts === undefined ? null : JSON.stringify(opts), true],
      { result: { promise: true, copy: true } });
    if (r.error) throw new Error(r.error);
    return r.value;
  };
  g.geolocation = async function () { throw new Error('geolocation is not available in pintle'); };
  g.__pintleCredentials = {};
  g.getCredential = function (key) {
    if (key === null || key === undefined) throw new TypeError('Key should be valid and defined');
    return g.__pintleCredentials[key];
  };
})();
`;

// Appended to the user's module: the one entry point the host calls. Input
// and output cross the isolate boundary as JSON text (one copy each way, and
// whatever the user returns is reduced to JSON, as it is on the wire anyway).
// Per input event of transformEvent the answer lists its outputs in order
// ([] = filtered); transformBatch answers its list, each output tied to an
// input by messageId where one matches.
const WRAPPER = `
export async function __pintle_run__(payloadText) {
  const payload = JSON.parse(payloadText);
  const messages = payload.messages;
  const metas = payload.metas;
  const fname = payload.fname;
  globalThis.__pintleCredentials = payload.credentials || {};
  const byId = new Map();
  for (let i = 0; i < messages.length; i++) {
    const id = messages[i] && messages[i].messageId;
    if (id !== undefined && id !== null && !byId.has(id)) byId.set(id, i);
  }
  const isObject = (o) => Object.prototype.toString.call(o) === '[object Object]';
  const metadata = (ev) => {
    const i = ev && typeof ev === 'object' ? byId.get(ev.messageId) : undefined;
    return i === undefined ? {} : Object.assign({}, metas[i]);
  };
  const trace = (e) => {
    if (!e || typeof e !== 'object' || typeof e.stack !== 'string') {
      return String(e && e.message !== undefined ? e.message : e);
    }
    const lines = e.stack.split('\\n');
    let last = 0;
    for (let i = 1; i < lines.length; i++) if (lines[i].indexOf(fname) >= 0) last = i;
    return lines.slice(0, last + 1).join('\\n');
  };
  if (fname === 'transformBatch') {
    let res;
    try {
      res = await transformBatch(messages, metadata);
    } catch (e) {
      return JSON.stringify({ batchError: trace(e) });
    }
    if (!Array.isArray(res)) {
      return JSON.stringify({ batchError: 'returned events from transformBatch(events) is not an array' });
    }
    const out = res.map((ev) => {
      if (!isObject(ev)) return { err: 'returned event in events array from transformBatch(events) is not an object', src: -1 };
      const src = byId.get(ev.messageId);
      return { e: ev, src: src === undefined ? -1 : src };
    });
    return JSON.stringify({ out });
  }
  const per = await Promise.all(messages.map(async (ev) => {
    try {
      const r = await transformEvent(ev, metadata);
      if (r === null || r === undefined) return [];
      if (Array.isArray(r)) {
        if (!r.every(isObject)) return [{ err: 'returned event in events array from transformEvent(event) is not an object' }];
        return r.map((e) => ({ e }));
      }
      if (!isObject(r)) return [{ err: 'returned event from transformEvent(event) is not an object' }];
      return [{ e: r }];
    } catch (e) {
      return [{ err: trace(e) }];
    }
  }));
  return JSON.stringify({ per });
}
`;

class SandboxError extends Error {
  constructor(message, statusCode = 400) {
    super(message);
    this.statusCode = statusCode;
  }
}

function hostAllowed(url, hosts) {
  let u;
  try {
    u = new URL(url);
  } catch {
    return `invalid URL ${JSON.stringify(url)}`;
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') return `protocol ${u.protocol} is not allowed`;
  if (hosts.length === 0) return 'fetch is disabled (PINTLE_TRANSFORMATIONS_FETCH_HOSTS is empty)';
  const h = u.hostname.toLowerCase().replace(/^\[|\]$/g, '');
  if (hosts.includes('*') || hosts.includes(h) || hosts.includes(u.host.toLowerCase())) return null;
  return `fetch to ${u.host} is not allowed (not in PINTLE_TRANSFORMATIONS_FETCH_HOSTS)`;
}

function makeFetch(limits) {
  return async (url, optsText, v2) => {
    const denied = hostAllowed(url, limits.fetchHosts);
    if (denied) return { error: denied };
    let opts = {};
    if (optsText) {
      try {
        opts = JSON.parse(optsText) || {};
      } catch {
        opts = {};
      }
    }
    const init = {
      method: typeof opts.method === 'string' ? opts.method : 'GET',
      headers: opts.headers && typeof opts.headers === 'object' ? opts.headers : undefined,
      body: typeof opts.body === 'string' ? opts.body : opts.body !== undefined && opts.body !== null ? JSON.stringify(opts.body) : undefined,
      redirect: 'manual',
      signal: AbortSignal.timeout(limits.fetchTimeoutMs),
    };
    try {
      const res = await fetch(url, init);
      const buf = Buffer.from(await res.arrayBuffer());
      if (buf.length > FETCH_MAX_BYTES) return v2 ? { error: `response of ${buf.length} bytes exceeds ${FETCH_MAX_BYTES}` } : { value: 'ERROR' };
      const text = buf.toString('utf8');
      let body = text;
      try {
        body = JSON.parse(text);
      } catch {
        if (!v2) return { value: 'ERROR' };
      }
      if (!v2) return { value: body };
      const headers = {};
      for (const [k, v] of res.headers) headers[k] = v;
      return { value: { url: res.url || url, status: res.status, headers, body } };
    } catch (e) {
      if (!v2) return { value: 'ERROR' };
      return { error: `fetch ${url} failed: ${e.cause ? e.cause.message || e.cause.code : e.message}` };
    }
  };
}

// One isolate with one transformation loaded. Calls are run one at a time
// (queued), so a call that must be stopped never takes another one with it.
class Sandbox {
  constructor(tr, libraries, limits) {
    this.tr = tr;
    this.libraries = libraries;
    this.limits = limits;
    this.queue = Promise.resolve();
    this.dead = false;
    this.pending = 0;
  }

  async init() {
    const { limits, tr } = this;
    if (tr.language !== 'javascript') throw new SandboxError(`transformation language ${tr.language} is not supported`);
    if (tr.codeVersion !== '1') {
      throw new SandboxError(`transformation codeVersion ${JSON.stringify(tr.codeVersion)} is not supported (only "1": an ES module exporting transformEvent or transformBatch)`);
    }
    this.isolate = new ivm.Isolate({ memoryLimit: limits.memoryMb });
    try {
      this.context = await this.isolate.createContext();
      const jail = this.context.global;
      const fetchRef = new ivm.Reference(makeFetch(limits));
      await jail.set('__pintleFetch', fetchRef);
      await jail.set('__pintleFetchV2', fetchRef);
      await (await this.isolate.compileScript(BOOTSTRAP)).run(this.context, { timeout: limits.execTimeoutMs });

      const libs = new Map();
      for (const lib of this.libraries) {
        const mod = await this.isolate.compileModule(lib.code, { filename: `library ${lib.name}` });
        libs.set(camelCase(lib.name), mod);
        if (!libs.has(lib.name)) libs.set(lib.name, mod);
      }
      const resolve = (spec) => {
        const mod = libs.get(spec);
        if (!mod) throw new Error(`import from ${spec} failed. Module not found.`);
        return mod;
      };
      for (const mod of new Set(libs.values())) await mod.instantiate(this.context, resolve);
      this.module = await this.isolate.compileModule(`${tr.code}\n${WRAPPER}`, { filename: tr.name || 'base transformation' });
      await this.module.instantiate(this.context, resolve);
      await this.module.evaluate({ timeout: limits.execTimeoutMs });
      const found = [];
      for (const name of ['transformEvent', 'transformBatch']) {
        const ref = await this.module.namespace.get(name, { reference: true });
        if (ref.typeof === 'function') found.push(name);
        ref.release();
      }
      if (found.length !== 1) {
        throw new SandboxError(`Expected one of transformEvent,transformBatch. Found ${found.join(',')}`);
      }
      this.fname = found[0];
      this.entry = await this.module.namespace.get('__pintle_run__', { reference: true });
    } catch (e) {
      this.dispose();
      if (e instanceof SandboxError) throw e;
      throw new SandboxError(this.explain(e, 'loading'));
    }
    return this;
  }

  explain(e, what) {
    const msg = (e && e.message) || String(e);
    if (this.wallExpired) return `Timed out: ${what} took longer than USER_TRANSFORM_TIMEOUT=${this.limits.wallTimeoutMs} ms`;
    if (/memory limit/i.test(msg)) return `memory limit exceeded while ${what}: the isolate used more than ISOLATE_VM_MEMORY=${this.limits.memoryMb} MB`;
    if (/execution timed out/i.test(msg)) return `Timed out: ${what} ran longer than IVM_EXECUTION_TIMEOUT=${this.limits.execTimeoutMs} ms`;
    return what === 'loading' && e && e.stack ? String(e.stack).split('\n').slice(0, 3).join('\n') : msg;
  }

  // messages: plain event objects; metas: their metadata; resolves to the
  // wrapper's answer. Rejects with SandboxError when the call as a whole
  // failed (limits, disposal); the sandbox is then dead.
  run(messages, metas, credentials) {
    this.pending++;
    const p = this.queue.then(() => this.call(messages, metas, credentials));
    this.queue = p
      .catch(() => {})
      .finally(() => {
        this.pending--;
        if (this.retired && this.pending === 0) this.dispose();
      });
    return p;
  }

  async call(messages, metas, credentials) {
    if (this.dead) {
      // Not this call's fault: the caller runs it again on a fresh sandbox.
      const e = new SandboxError('isolate was stopped by an earlier call', 500);
      e.stale = true;
      throw e;
    }
    const payload = JSON.stringify({ messages, metas, credentials, fname: this.fname });
    let timer;
    const wall = new Promise((_, reject) => {
      timer = setTimeout(() => {
        this.wallExpired = true;
        this.dispose();
        reject(new Error('wall'));
      }, this.limits.wallTimeoutMs);
    });
    try {
      const text = await Promise.race([
        this.entry.apply(undefined, [payload], { timeout: this.limits.execTimeoutMs, result: { promise: true, copy: true } }),
        wall,
      ]);
      return JSON.parse(text);
    } catch (e) {
      const msg = this.explain(e, 'the transformation');
      this.dispose();
      throw new SandboxError(msg);
    } finally {
      clearTimeout(timer);
    }
  }

  dispose() {
    this.dead = true;
    if (this.isolate && !this.isolate.isDisposed) {
      try {
        this.isolate.dispose();
      } catch {
        /* already gone */
      }
    }
  }
}

// Ready sandboxes by transformation content (and its libraries), most
// recently used last; at most `max` are kept, idle ones beyond that disposed.
class SandboxPool {
  constructor(limits = limitsFromEnv(), max = envInt('PINTLE_TRANSFORMATIONS_MAX_ISOLATES', 32, 1)) {
    this.limits = limits;
    this.max = Math.max(1, max);
    this.entries = new Map();
  }

  describe() {
    const l = this.limits;
    return {
      memory_mb: l.memoryMb,
      exec_timeout_ms: l.execTimeoutMs,
      wall_timeout_ms: l.wallTimeoutMs,
      fetch_hosts: l.fetchHosts.length ? l.fetchHosts.join(',') : 'none',
      max_isolates: this.max,
    };
  }

  async get(tr, libraries) {
    const key = [tr.versionId, tr.hash, ...libraries.map((l) => `${l.versionId}:${l.hash}`)].join('|');
    let p = this.entries.get(key);
    if (p) {
      this.entries.delete(key);
      this.entries.set(key, p);
      const sb = await p;
      if (!sb.dead) return sb;
      if (this.entries.get(key) === p) this.entries.delete(key);
      return this.get(tr, libraries);
    }
    p = new Sandbox(tr, libraries, this.limits).init();
    this.entries.set(key, p);
    p.catch(() => {
      if (this.entries.get(key) === p) this.entries.delete(key);
    });
    this.evict();
    return p;
  }

  evict() {
    if (this.entries.size <= this.max) return;
    for (const [key, p] of this.entries) {
      if (this.entries.size <= this.max) break;
      this.entries.delete(key);
      p.then((sb) => {
        sb.retired = true;
        if (sb.pending === 0) sb.dispose();
      }).catch(() => {});
    }
  }

  close() {
    for (const p of this.entries.values()) p.then((sb) => sb.dispose()).catch(() => {});
    this.entries.clear();
  }
}

module.exports = { Sandbox, SandboxPool, SandboxError, limitsFromEnv, camelCase };
