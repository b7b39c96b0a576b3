'use strict';
// POST /customTransform: user transformations, the contract of the official
// rudder-transformer (and what rudder-server's processor sends and reads).
//
// Request: a JSON array of {message, metadata, destination, libraries?,
// credentials?}. Events are grouped by metadata.destinationId + sourceId; a
// group runs the code named by destination.Transformations[0].VersionID of its
// first event, with the libraries [{VersionID}] and credentials [{key, value}]
// of the request's first event.
//
// Answer: a JSON array of {output, metadata, statusCode, error}, header
// apiVersion: 2, HTTP 200; HTTP 809 (the official "retry the request" code)
// when code could not be fetched because the control plane is down or
// answered 5xx, so the caller retries instead of failing the events.
//   200  an output event; metadata is that of the input it came from
//        (transformEvent: always; transformBatch: the input with the output's
//        messageId, else {sourceId, destinationId, destinationType,
//        workspaceId, messageIds} of the group)
//   298  an input that produced no output (filtered), only when the request
//        carries `X-Feature-Filter-Code: ?1` (or true), as rudder-server sends;
//        without it such inputs are simply absent, as in the official one
//   400  that event failed: transformEvent threw for it or returned a
//        non-object; for a whole-group failure (code not loadable, no
//        VersionID, transformBatch threw, a limit was hit) every event of the
//        group gets its own 400 with the reason
//   404  the VersionID (or a library) is not known to the code source
// Outputs of transformEvent come in input order, fan-outs in the order
// returned.
const { Store } = require('./store');
const { SandboxPool, camelCase } = require('./sandbox');

const IMPORT_RE = /\bimport\s+(?:[\w*{}\s,$]+?\s+from\s+)?["']([^"']+)["']/g;

function importedNames(code) {
  const names = new Set();
  for (const m of code.matchAll(IMPORT_RE)) names.add(m[1]);
  return names;
}

class UserTransformer {
  constructor({ store = new Store(), pool = new SandboxPool(), log = () => {} } = {}) {
    this.store = store;
    this.pool = pool;
    this.log = log;
  }

  close() {
    this.pool.close();
  }

  // -> {status, body}
  async transform(events, { filterCode = false } = {}) {
    const state = { retry: false };
    const groups = new Map();
    for (const ev of events) {
      const md = ev && ev.metadata && typeof ev.metadata === 'object' ? ev.metadata : {};
      const key = `${md.destinationId}_${md.sourceId}`;
      let g = groups.get(key);
      if (!g) groups.set(key, (g = []));
      g.push({ ev, md });
    }
    const first = events[0] || {};
    const libIds = Array.isArray(first.libraries) ? first.libraries.map((l) => l && l.VersionID).filter((v) => typeof v === 'string' && v) : [];
    const credentials = {};
    if (Array.isArray(first.credentials)) {
      for (const c of first.credentials) if (c && typeof c.key === 'string') credentials[c.key] = c.value;
    }
    const results = await Promise.all([...groups.values()].map((g) => this.group(g, libIds, credentials, filterCode, state)));
    return { status: state.retry ? 809 : 200, body: results.flat() };
  }

  async group(items, libIds, credentials, filterCode, state) {
    const out = [];
    const valid = [];
    for (const it of items) {
      if (!it.ev || typeof it.ev !== 'object' || !it.ev.message || typeof it.ev.message !== 'object' || Array.isArray(it.ev.message)) {
        out.push({ statusCode: 400, error: 'event has no message object', metadata: it.md });
      } else {
        valid.push(it);
      }
    }
    if (valid.length === 0) return out;
    const dest = valid[0].ev.destination;
    const versionId = dest && Array.isArray(dest.Transformations) && dest.Transformations[0] ? dest.Transformations[0].VersionID : undefined;
    const failAll = (statusCode, error) => {
      for (const it of valid) out.push({ statusCode, error, metadata: it.md });
      return out;
    };
    if (!versionId) return failAll(400, 'Transformation VersionID not found');

    let res;
    const t0 = Date.now();
    try {
      const tr = await this.store.getTransformation(versionId);
      const wanted = importedNames(tr.code);
      const libs = [];
      if (wanted.size > 0 && libIds.length > 0) {
        for (const lib of await Promise.all(libIds.map((id) => this.store.getLibrary(id)))) {
          if (wanted.has(camelCase(lib.name)) || wanted.has(lib.name)) libs.push(lib);
        }
      }
      const messages = valid.map((it) => it.ev.message);
      const metas = valid.map((it) => it.md);
      for (let attempt = 0; ; attempt++) {
        const sb = await this.pool.get(tr, libs);
        try {
          res = await sb.run(messages, metas, credentials);
          break;
        } catch (e) {
          if (!e.stale || attempt >= 3) throw e;
        }
      }
    } catch (e) {
      if (e.retry) state.retry = true;
      const md = valid[0].md;
      this.log(e.retry ? 'error' : 'warn', 'user_transformation_failed', {
        version_id: versionId,
        destination_id: md.destinationId,
        source_id: md.sourceId,
        events: valid.length,
        status: e.statusCode || 400,
        ms: Date.now() - t0,
        error: String(e.message).slice(0, 300),
      });
      return failAll(e.statusCode || 400, e.message);
    }

    const filtered = (it) => ({ statusCode: 298, metadata: { ...it.md, messageId: it.md.messageId, messageIds: null } });
    if (res.per) {
      valid.forEach((it, i) => {
        const entries = res.per[i] || [];
        if (entries.length === 0) {
          if (filterCode) out.push(filtered(it));
          return;
        }
        for (const en of entries) {
          if (en.err !== undefined) out.push({ statusCode: 400, error: en.err, metadata: it.md });
          else out.push({ output: en.e, metadata: it.md, statusCode: 200 });
        }
      });
      return out;
    }
    if (res.batchError !== undefined) return failAll(400, res.batchError);
    const common = {
      sourceId: valid[0].md.sourceId,
      destinationId: valid[0].md.destinationId,
      destinationType: valid[0].md.destinationType,
      workspaceId: valid[0].md.workspaceId,
      messageIds: valid.map((it) => it.md.messageId),
    };
    const seen = new Set();
    for (const o of res.out) {
      const it = o.src >= 0 ? valid[o.src] : null;
      if (it) seen.add(it.ev.message.messageId);
      if (o.err !== undefined) out.push({ statusCode: 400, error: o.err, metadata: common });
      else out.push({ output: o.e, metadata: it ? it.md : common, statusCode: 200 });
    }
    if (filterCode) {
      for (const it of valid) if (!seen.has(it.ev.message.messageId)) out.push(filtered(it));
    }
    return out;
  }
}

module.exports = { UserTransformer, importedNames };
