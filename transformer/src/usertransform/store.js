'use strict';
// Where user-transformation code comes from, cached.
//
// A transformation version is looked up by its VersionID, first in the local
// directory PINTLE_TRANSFORMATIONS_DIR (if set), then on the control plane
// CONFIG_BACKEND_URL (if set), the same endpoints as the official
// rudder-transformer:
//   GET ${CONFIG_BACKEND_URL}/transformation/getByVersionId?versionId=<id>
//   GET ${CONFIG_BACKEND_URL}/transformationLibrary/getByVersionId?versionId=<id>
// answering {id, versionId, name, code, codeVersion, language, workspaceId}
// (libraries: {id, versionId, name, code}). With
// CONFIG_BACKEND_TRANSFORMATION_FETCH_SECRET set, requests carry it as the
// Basic-auth user, as the official transformer sends it.
//
// In the directory, <versionId>.json holds that same JSON, or <versionId>.js
// holds just the code (codeVersion "1", javascript, named after the file).
// Libraries are looked up the same way by their VersionID.
//
// Versions are immutable on the control plane, so answers are cached (for
// TRANSFORMATION_STORE_CACHE_TTL_SECONDS, default one day, 0 = forever); a new
// version in the workspace config is a new VersionID and is fetched then. Local
// files are re-checked (mtime and size) at most once per second, so editing a
// file takes effect without a restart. Concurrent misses share one fetch;
// failures are never cached.
const fs = require('node:fs');
const path = require('node:path');
const crypto = require('node:crypto');

class StoreError extends Error {
  // statusCode: what the events of the group get; retry: the whole request
  // should be retried (the official transformer answers 809 for that).
  constructor(message, statusCode, retry = false) {
    super(message);
    this.statusCode = statusCode;
    this.retry = retry;
  }
}

const VERSION_ID_RE = /^[A-Za-z0-9._-]{1,200}$/;
const LOCAL_RECHECK_MS = 1000;
const FETCH_TIMEOUT_MS = 10000;

function envInt(name, dflt, min = 0) {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return dflt;
  if (!/^\d+$/.test(raw.trim())) throw new Error(`${name}="${raw}" is not a non-negative integer`);
  const v = parseInt(raw, 10);
  if (v < min) throw new Error(`${name}=${v} is below its minimum ${min}`);
  return v;
}

function contentHash(rec) {
  return crypto.createHash('sha1').update(String(rec.code)).update('\0').update(String(rec.name || '')).digest('hex');
}

class Store {
  constructor(opts = {}) {
    this.dir = opts.dir !== undefined ? opts.dir : process.env.PINTLE_TRANSFORMATIONS_DIR || '';
    const cp = opts.configBackendUrl !== undefined ? opts.configBackendUrl : process.env.CONFIG_BACKEND_URL || '';
    this.cpUrl = cp.replace(/\/+$/, '');
    this.secret = opts.secret !== undefined ? opts.secret : (process.env.CONFIG_BACKEND_TRANSFORMATION_FETCH_SECRET || '').trim();
    this.ttlMs = (opts.ttlSeconds !== undefined ? opts.ttlSeconds : envInt('TRANSFORMATION_STORE_CACHE_TTL_SECONDS', 86400)) * 1000;
    this.caches = { transformation: new Map(), library: new Map() };
    this.inflight = { transformation: new Map(), library: new Map() };
  }

  describe() {
    return { dir: this.dir || null, configBackendUrl: this.cpUrl || null };
  }

  getTransformation(versionId) {
    return this.get('transformation', versionId);
  }

  getLibrary(versionId) {
    return this.get('library', versionId);
  }

  async get(kind, versionId) {
    if (typeof versionId !== 'string' || !VERSION_ID_RE.test(versionId)) {
      throw new StoreError(`invalid ${kind} VersionID ${JSON.stringify(versionId)}`, 400);
    }
    const cache = this.caches[kind];
    const hit = cache.get(versionId);
    const now = Date.now();
    if (hit) {
      if (hit.local) {
        if (now - hit.checkedAt < LOCAL_RECHECK_MS) return hit.rec;
        const st = statOrNull(hit.local.file);
        if (st && st.mtimeMs === hit.local.mtimeMs && st.size === hit.local.size) {
          hit.checkedAt = now;
          return hit.rec;
        }
      } else if (this.ttlMs === 0 || now - hit.fetchedAt < this.ttlMs) {
        return hit.rec;
      }
    }
    const key = versionId;
    const pending = this.inflight[kind].get(key);
    if (pending) return pending;
    const p = this.load(kind, versionId)
      .then((entry) => {
        cache.set(versionId, entry);
        return entry.rec;
      })
      .finally(() => this.inflight[kind].delete(key));
    this.inflight[kind].set(key, p);
    return p;
  }

  async load(kind, versionId) {
    if (this.dir) {
      for (const ext of ['.json', '.js']) {
        const file = path.join(this.dir, versionId + ext);
        const st = statOrNull(file);
        if (!st) continue;
        let text;
        try {
          text = fs.readFileSync(file, 'utf8');
        } catch (e) {
          throw new StoreError(`cannot read ${file}: ${e.message}`, 500, true);
        }
        let rec;
        if (ext === '.json') {
          try {
            rec = JSON.parse(text);
          } catch (e) {
            throw new StoreError(`${file} is not valid JSON: ${e.message}`, 400);
          }
        } else {
          rec = { versionId, name: versionId, code: text, codeVersion: '1', language: 'javascript' };
        }
        return { rec: normalise(kind, versionId, rec, file), local: { file, mtimeMs: st.mtimeMs, size: st.size }, checkedAt: Date.now() };
      }
    }
    if (!this.cpUrl) {
      const where = this.dir ? `in ${this.dir} (${versionId}.json or ${versionId}.js)` : '(neither PINTLE_TRANSFORMATIONS_DIR nor CONFIG_BACKEND_URL is set)';
      throw new StoreError(`${kind === 'library' ? 'Transformation Library' : 'Transformation'} ${versionId} not found ${where}`, 404);
    }
    const endpoint = kind === 'library' ? 'transformationLibrary' : 'transformation';
    const url = `${this.cpUrl}/${endpoint}/getByVersionId?versionId=${encodeURIComponent(versionId)}`;
    const entity = kind === 'library' ? 'Transformation Library' : 'Transformation';
    const headers = {};
    if (this.secret) headers.Authorization = `Basic ${Buffer.from(`${this.secret}:`).toString('base64')}`;
    let res;
    let text;
    try {
      res = await fetch(url, { headers, signal: AbortSignal.timeout(FETCH_TIMEOUT_MS) });
      text = await res.text();
    } catch (e) {
      // The control plane is unreachable: nothing is wrong with the events.
      throw new StoreError(`Error occurred while fetching ${entity} :: ${versionId}: ${e.cause ? e.cause.message || e.cause.code : e.message}`, 809, true);
    }
    if (res.status >= 500) throw new StoreError(`Error occurred while fetching ${entity} :: ${versionId} (control plane answered ${res.status})`, 809, true);
    if (res.status !== 200) throw new StoreError(`${entity} not found at ${url} (status ${res.status})`, res.status);
    let rec;
    try {
      rec = JSON.parse(text);
    } catch (e) {
      throw new StoreError(`${entity} ${versionId}: control plane answer is not JSON`, 809, true);
    }
    return { rec: normalise(kind, versionId, rec, url), fetchedAt: Date.now() };
  }
}

function statOrNull(file) {
  try {
    const st = fs.statSync(file);
    return st.isFile() ? st : null;
  } catch {
    return null;
  }
}

function normalise(kind, versionId, rec, where) {
  if (!rec || typeof rec !== 'object' || typeof rec.code !== 'string') {
    throw new StoreError(`${kind} ${versionId} from ${where} has no code`, 400);
  }
  const out = {
    id: rec.id,
    versionId: rec.versionId || versionId,
    name: typeof rec.name === 'string' && rec.name ? rec.name : versionId,
    code: rec.code,
    // As in the official transformer, a record without codeVersion "1" is the
    // legacy v0 format (a transform(events) script), which we do not run.
    codeVersion: rec.codeVersion === undefined || rec.codeVersion === null ? '0' : String(rec.codeVersion),
    language: rec.language || 'javascript',
    workspaceId: rec.workspaceId,
  };
  out.hash = contentHash(out);
  return out;
}

module.exports = { Store, StoreError, envInt };
