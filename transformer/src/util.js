'use strict';
// Shapes shared by destination transforms: the delivery payload the router
// sends, and helpers with the same semantics as rudder-transformer's.

// The delivery payload of one event (DESIGN §2): the router sends the first
// non-empty body format; params become the query string.
function defaultRequestConfig() {
  return {
    version: '1',
    type: 'REST',
    method: 'POST',
    endpoint: '',
    headers: {},
    params: {},
    body: { JSON: {}, JSON_ARRAY: {}, XML: {}, FORM: {} },
    files: {},
  };
}

// {a: {b: 1, c: [2, 3]}} -> {'a.b': 1, 'a.c.0': 2, 'a.c.1': 3}
function flattenJson(obj, prefix = '', out = {}) {
  if (obj === null || obj === undefined) return out;
  if (typeof obj !== 'object') {
    if (prefix) out[prefix] = obj;
    return out;
  }
  const keys = Object.keys(obj);
  if (keys.length === 0 && prefix) {
    out[prefix] = Array.isArray(obj) ? [] : {};
    return out;
  }
  for (const k of keys) flattenJson(obj[k], prefix ? `${prefix}.${k}` : k, out);
  return out;
}

// [{from: 'X-Key', to: 'v'}] -> {'x-key': 'v'}; entries without a name are skipped.
function getHashFromArray(arr, fromKey = 'from', toKey = 'to', lowerCase = true) {
  const out = {};
  if (!Array.isArray(arr)) return out;
  for (const e of arr) {
    if (!e || typeof e[fromKey] !== 'string' || e[fromKey].trim() === '') continue;
    out[lowerCase ? e[fromKey].toLowerCase() : e[fromKey]] = e[toKey];
  }
  return out;
}

class TransformError extends Error {
  constructor(message, statusCode = 400) {
    super(message);
    this.statusCode = statusCode;
  }
}

// The integrations-object entry of a destination, by any of its names.
function integrationsObj(message, ...names) {
  const integ = message && message.integrations;
  if (!integ || typeof integ !== 'object') return undefined;
  for (const n of names) {
    for (const k of Object.keys(integ)) {
      if (k.toLowerCase() === n.toLowerCase() && integ[k] && typeof integ[k] === 'object') return integ[k];
    }
  }
  return undefined;
}

module.exports = { defaultRequestConfig, flattenJson, getHashFromArray, TransformError, integrationsObj };
