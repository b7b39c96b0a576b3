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

// ---- helpers with the semantics of rudder-transformer's v0/util (lodash,
// get-value, set-value), used by the AM, MP and GA4 transforms.

// get(obj, 'a.b.c'): undefined when any step is missing.
function get(obj, path) {
  if (obj === null || obj === undefined) return undefined;
  if (typeof path !== 'string' || path === '') return undefined;
  let cur = obj;
  for (const k of path.split('.')) {
    if (cur === null || cur === undefined || (typeof cur !== 'object' && typeof cur !== 'function')) return undefined;
    cur = cur[k];
  }
  return cur;
}

// set(obj, 'a.b.c', v): creates the objects on the way (replacing non-objects).
function set(obj, path, value) {
  const keys = path.split('.');
  let cur = obj;
  for (let i = 0; i < keys.length - 1; i++) {
    const k = keys[i];
    if (cur[k] === null || typeof cur[k] !== 'object') cur[k] = {};
    cur = cur[k];
  }
  cur[keys[keys.length - 1]] = value;
  return obj;
}

const isDefined = (x) => x !== undefined;
const isDefinedAndNotNull = (x) => x !== undefined && x !== null;
// lodash isEmpty: numbers and booleans are "empty"; so are '', [], {}.
function lodashIsEmpty(x) {
  if (x === null || x === undefined) return true;
  if (typeof x === 'string' || Array.isArray(x)) return x.length === 0;
  if (x instanceof Map || x instanceof Set) return x.size === 0;
  if (typeof x === 'object') return Object.keys(x).length === 0;
  return true;
}
const isDefinedAndNotNullAndNotEmpty = (x) => isDefinedAndNotNull(x) && !lodashIsEmpty(x);
// isEmpty of the string form, as the v0 util's isEmpty
const isBlank = (x) => (x === null || x === undefined ? '' : String(x)).trim() === '';
const pickBy = (obj, pred) => {
  const out = {};
  if (!obj || typeof obj !== 'object') return out;
  for (const k of Object.keys(obj)) if (pred(obj[k])) out[k] = obj[k];
  return out;
};
const removeUndefinedValues = (obj) => pickBy(obj, isDefined);
const removeUndefinedAndNullValues = (obj) => pickBy(obj, isDefinedAndNotNull);
const removeUndefinedAndNullAndEmptyValues = (obj) => pickBy(obj, isDefinedAndNotNullAndNotEmpty);
const isObject = (v) => v !== null && typeof v === 'object' && !Array.isArray(v);

// The first of several source paths that has a value (0 and false count).
function getValueFromMessage(message, sourceKeys) {
  if (Array.isArray(sourceKeys)) {
    for (const k of sourceKeys) {
      const v = get(message, k);
      if (v || v === false || v === 0) return v;
    }
    return undefined;
  }
  return get(message, sourceKeys);
}

// rudder-transformer's GenericFieldMapping (the entries our transforms use).
const FIELD_MAPPING = {
  timestamp: ['timestamp', 'originalTimestamp'],
  traits: ['traits', 'context.traits'],
  groupTraits: ['traits', 'context.traits'],
  userId: ['userId', 'traits.userId', 'traits.id', 'context.traits.userId', 'context.traits.id', 'anonymousId'],
  userIdOnly: ['userId', 'traits.userId', 'traits.id', 'context.traits.userId', 'context.traits.id'],
  email: ['traits.email', 'context.traits.email', 'properties.email', 'context.externalId.0.id'],
  name: ['traits.name', 'context.traits.name'],
  firstName: ['traits.firstName', 'traits.firstname', 'traits.first_name', 'context.traits.firstName', 'context.traits.firstname', 'context.traits.first_name'],
  lastName: ['traits.lastName', 'traits.lastname', 'traits.last_name', 'context.traits.lastName', 'context.traits.lastname', 'context.traits.last_name'],
  phone: ['traits.phone', 'context.traits.phone', 'properties.phone'],
  groupId: ['groupId', 'traits.groupId'],
  sessionId: ['session_id', 'context.sessionId'],
  pageTitle: ['context.page.title', 'properties.title'],
  pageUrl: ['context.page.url', 'properties.url'],
  pagePath: ['context.page.path', 'properties.path'],
};
const getFieldValueFromMessage = (message, field) => getValueFromMessage(message, FIELD_MAPPING[field]);

const getParsedIP = (message) => (message.context && message.context.ip ? message.context.ip : message.request_ip);
const isAppleFamily = (platform) => typeof platform === 'string' && ['ios', 'watchos', 'ipados', 'tvos'].includes(platform.toLowerCase());
function isValidInteger(value) {
  if (typeof value === 'number') return Number.isInteger(value);
  return typeof value === 'string' && /^-?\d+$/.test(value);
}

class InstrumentationError extends TransformError {}
class ConfigurationError extends TransformError {}

module.exports.get = get;
module.exports.set = set;
Object.assign(module.exports, {
  isDefined,
  isDefinedAndNotNull,
  isDefinedAndNotNullAndNotEmpty,
  lodashIsEmpty,
  isBlank,
  removeUndefinedValues,
  removeUndefinedAndNullValues,
  removeUndefinedAndNullAndEmptyValues,
  isObject,
  getValueFromMessage,
  getFieldValueFromMessage,
  getParsedIP,
  isAppleFamily,
  isValidInteger,
  InstrumentationError,
  ConfigurationError,
});
