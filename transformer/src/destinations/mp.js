'use strict';
// MP (Mixpanel): shaped as the official rudder-transformer's processor
// transform shapes it, written from its documented behaviour and fixtures.
// Every request is POST with body JSON_ARRAY {batch: "<JSON text of [payload]>"}:
//  - track / page ("Loaded a Page") / screen ("Loaded a Screen") / alias
//    ($create_alias) / identify merges ($merge) -> <base>/import/, Basic auth
//    with the project token (or service account user:secret + project_id),
//    params {strict: 0|1}; events older than 5 years are refused
//  - identify -> <base>/engage/ ($set of the mapped and custom traits; also
//    $set_once / $union / $append for configured properties); a track with
//    properties.revenue adds an engage $append of $transactions, and
//    Config.propIncrements an engage $add
//  - group -> engage $set of the group key for the user, and per group id
//    <base>/groups/ with the group traits
//  - base: https://api.mixpanel.com, Config.dataResidency "eu"
//    https://api-eu.mixpanel.com, "in" https://api-in.mixpanel.com
//  - Config.identityMergeApi "simplified": distinct_id "$device:<anonymousId>"
//    for anonymous users, $device_id / $user_id, no alias
const uaParser = require('@amplitude/ua-parser-js');
const {
  defaultRequestConfig,
  get,
  set,
  isDefined,
  removeUndefinedValues,
  getFieldValueFromMessage,
  getValueFromMessage,
  isAppleFamily,
  InstrumentationError,
  ConfigurationError,
} = require('../util');

const BASE = { us: 'https://api.mixpanel.com', eu: 'https://api-eu.mixpanel.com', in: 'https://api-in.mixpanel.com' };
const baseEndpoint = (config) => BASE[config.dataResidency] || BASE.us;

// [destKey, sourceKeys, {generic: sourceKeys name a GenericFieldMapping entry, str: as text}]
const EVENT_PROPERTIES = [
  ['ip', ['context.ip', 'request_ip']],
  ['campaign_id', 'context.campaign.name'],
  ['$user_id', 'userId'],
  ['$current_url', 'context.page.url'],
  ['$os', 'context.os.name'],
  ['$referrer', 'context.page.referrer'],
  ['$screen_height', 'context.screen.height'],
  ['$screen_width', 'context.screen.width'],
  ['$screen_dpi', 'context.screen.density'],
  ['$carrier', 'context.network.carrier'],
  ['$os_version', 'context.os.version'],
  ['$device', 'context.device.name'],
  ['$manufacturer', 'context.device.manufacturer'],
  ['$model', 'context.device.model'],
  ['mp_device_model', 'context.device.model'],
  ['$wifi', 'context.network.wifi'],
  ['$bluetooth_enabled', 'context.network.bluetooth'],
  ['$bluetooth_version', 'properties.bluetoothVersion'],
  ['mp_lib', 'context.library.name'],
  ['$initial_referrer', ['context.page.initial_referrer', 'context.page.initialReferrer']],
  ['$initial_referring_domain', ['context.page.initial_referring_domain', 'context.page.initialReferringDomain']],
  ['mp_processing_time_ms', 'properties.mpProcessingTimeMs'],
  ['$app_build_number', ['properties.appBuildNumber', 'context.app.build']],
  ['$app_version_string', ['properties.appVersionString', 'context.app.version']],
  ['$brand', ['properties.brand', 'device.manufacturer']],
  ['$radio', 'properties.radio'],
  ['$lib_version', 'properties.libVersion'],
  ['$search_engine', 'properties.searchEngine'],
  ['mp_keyword', 'properties.mpKeyword'],
  ['$has_nfc', 'properties.hasNfc'],
  ['$has_telephone', 'properties.hasTelephone'],
  ['$google_play_services', 'properties.googlePlayServices'],
  ['$insert_id', 'messageId'],
  ['$app_name', 'context.app.name'],
  ['$app_namespace', 'context.app.namespace'],
  ['$session_id', 'sessionId', { generic: true, str: true }],
];

const IDENTIFY = [
  ['$created', 'createdAtOnly', { generic: true }],
  ['$email', 'email', { generic: true }],
  ['$first_name', 'firstName', { generic: true }],
  ['$last_name', 'lastName', { generic: true }],
  ['$name', 'name', { generic: true }],
  ['$username', ['traits.username', 'context.traits.username', 'traits.userName', 'context.traits.userName']],
  ['$phone', 'phone', { generic: true }],
  ['$avatar', ['traits.avatar', 'context.traits.avatar']],
  ['$country_code', ['traits.address.country', 'context.traits.address.country', 'traits.country', 'context.traits.country', 'context.location.country']],
  ['$city', ['traits.city', 'context.traits.city', 'traits.address.city', 'context.traits.address.city', 'context.location.city']],
  ['$region', ['traits.state', 'context.traits.state', 'traits.address.state', 'context.traits.address.state', 'context.location.region']],
  ['$geo_source', 'context.location.geoSource'],
  ['$timezone', 'context.location.timezone'],
  ['$latitude', 'context.location.latitude'],
  ['$longitude', 'context.location.longitude'],
  ['$carrier', 'context.network.carrier'],
  ['$manufacturer', 'context.device.manufacturer'],
  ['$model', 'context.device.model'],
  ['$screen_height', 'context.screen.height'],
  ['$screen_width', 'context.screen.width'],
  ['$wifi', 'context.network.wifi'],
  ['$unsubscribed', ['traits.unsubscribed', 'context.traits.unsubscribed', 'properties.unsubscribed']],
  ['$initial_referrer', ['context.page.initial_referrer', 'context.page.initialReferrer']],
  ['$initial_referring_domain', ['context.page.initial_referring_domain', 'context.page.initialReferringDomain']],
];
const PROFILE_IOS = [
  ['$ios_app_release', 'context.app.version'],
  ['$ios_app_version', 'context.app.build'],
  ['$ios_device_model', 'context.device.model'],
  ['$ios_version', 'context.os.version'],
];
const PROFILE_ANDROID = [
  ['$android_app_version', 'context.app.version'],
  ['$android_app_version_code', 'context.app.build'],
  ['$android_manufacturer', 'context.device.manufacturer'],
  ['$android_model', 'context.device.model'],
  ['$android_os_version', 'context.os.version'],
  ['$android_brand', 'context.device.brand'],
];
const IDENTIFY_EXCLUSIONS = ['createdAt', 'email', 'firstName', 'firstname', 'first_name', 'lastName', 'lastname', 'last_name', 'name', 'username', 'userName', 'phone', 'avatar', 'address', 'country', 'city', 'state', 'unsubscribed'];
const EXTRA_FIELDS = { createdAtOnly: ['traits.createdAt', 'context.traits.createdAt'] };

// rudder-transformer's constructPayload: a value is set when it is truthy, 0
// or false ('' and null are skipped).
function construct(message, mapping) {
  const out = {};
  for (const [dest, src, opt = {}] of mapping) {
    let v = opt.generic ? (EXTRA_FIELDS[src] ? getValueFromMessage(message, EXTRA_FIELDS[src]) : getFieldValueFromMessage(message, src)) : getValueFromMessage(message, src);
    if (opt.str && v !== undefined && v !== null) v = String(v);
    if (v || v === 0 || v === false) set(out, dest, v);
  }
  return out;
}

const browserInfo = (ua) => uaParser(ua).browser || {};
const unixMs = (ts) => new Date(ts).getTime();
const b64 = (s) => Buffer.from(s).toString('base64');

function yearsSince(ts) {
  const t = new Date(ts).getTime();
  if (!Number.isFinite(t)) return 0;
  return (Date.now() - t) / (365.25 * 86400e3);
}

function importCredentials(config) {
  const params = { strict: config.strictMode ? 1 : 0 };
  const { serviceAccountUserName, serviceAccountSecret, projectId, token } = config;
  let credentials;
  if (token) {
    credentials = `${token}:`;
  } else if (serviceAccountUserName && serviceAccountSecret && projectId) {
    credentials = `${serviceAccountUserName}:${serviceAccountSecret}`;
    params.projectId = projectId;
  } else {
    throw new ConfigurationError('Neither a project token nor service account credentials (user name, secret and project id) are configured');
  }
  return { headers: { 'Content-Type': 'application/json', Authorization: `Basic ${b64(credentials)}` }, params };
}

function respond(payload, message, kind, config) {
  const res = defaultRequestConfig();
  res.method = 'POST';
  res.userId = message.userId || message.anonymousId;
  res.body.JSON_ARRAY = { batch: JSON.stringify([removeUndefinedValues(payload)]) };
  const toImport = () => {
    const c = importCredentials(config);
    res.endpoint = `${baseEndpoint(config)}/import/`;
    res.headers = c.headers;
    res.params = { project_id: c.params.projectId, strict: c.params.strict };
  };
  switch (kind) {
    case 'alias':
    case 'track':
    case 'screen':
    case 'page':
      if (yearsSince(message.timestamp) > 5) throw new InstrumentationError('Event timestamp should be within last 5 years');
      toImport();
      break;
    case 'merge':
      toImport();
      break;
    default:
      res.endpoint = `${baseEndpoint(config)}/engage/`;
      res.headers = { 'Content-Type': 'application/json' };
  }
  return res;
}

const simplified = (config) => config.identityMergeApi === 'simplified';
const distinctId = (message, config) => (simplified(config) ? message.userId || `$device:${message.anonymousId}` : message.userId || message.anonymousId);

function utmParams(campaign) {
  const out = {};
  if (campaign && typeof campaign === 'object') {
    for (const k of Object.keys(campaign)) out[k === 'name' ? 'utm_campaign' : `utm_${k}`] = campaign[k];
  }
  return out;
}

function withIdentity(properties, message, config) {
  if (!simplified(config)) return properties;
  return { ...properties, distinct_id: message.userId || `$device:${message.anonymousId}`, $device_id: message.anonymousId, $user_id: message.userId };
}

function addBrowser(properties, message) {
  if (message.channel === 'web' && message.context && message.context.userAgent) {
    const b = browserInfo(message.context.userAgent);
    properties.$browser = b.name;
    properties.$browser_version = b.version;
  }
}

function mappedEventProperties(message) {
  const mapped = construct(message, EVENT_PROPERTIES);
  // SDKs may prefix the messageId with a timestamp: "1662363980287-<uuid>"
  if (typeof mapped.$insert_id === 'string') mapped.$insert_id = mapped.$insert_id.slice(-36);
  return mapped;
}

function trackResponse(message, config) {
  if (message.messageId && typeof message.messageId !== 'string') throw new InstrumentationError('messageId should be of type string');
  const traits = config.dropTraitsInTrackEvent ? {} : { ...get(message, 'context.traits') };
  let properties = {
    ...message.properties,
    ...traits,
    ...mappedEventProperties(message),
    token: config.token,
    distinct_id: message.userId || message.anonymousId,
    time: unixMs(message.timestamp || message.originalTimestamp),
    ...utmParams(get(message, 'context.campaign')),
  };
  properties = withIdentity(properties, message, config);
  addBrowser(properties, message);
  return respond({ event: message.event, properties }, message, 'track', config);
}

function processTrack(message, config) {
  const out = [];
  const revenue = get(message, 'properties.revenue');
  if (revenue) {
    out.push(
      respond(
        { $append: { $transactions: { $time: new Date(message.timestamp).toISOString(), $amount: revenue } }, $token: config.token, $distinct_id: distinctId(message, config) },
        message,
        'revenue',
        config,
      ),
    );
  }
  if (Array.isArray(config.propIncrements)) {
    const names = config.propIncrements.map((p) => p && p.property);
    const add = {};
    for (const [k, v] of Object.entries(message.properties || {})) if (v && names.includes(k)) add[k] = v;
    if (Object.keys(add).length > 0) out.push(respond({ $add: add, $token: config.token, $distinct_id: distinctId(message, config) }, message, 'incremental_properties', config));
  }
  out.push(trackResponse(message, config));
  return out;
}

function fullName(message) {
  const first = getFieldValueFromMessage(message, 'firstName');
  const last = getFieldValueFromMessage(message, 'lastName');
  const name = getFieldValueFromMessage(message, 'name');
  return !name && first && last ? `${first} ${last}` : undefined;
}

function profileProperties(message, config) {
  const raw = construct(message, IDENTIFY);
  if (isDefined(raw.$geo_source) && raw.$geo_source !== null && raw.$geo_source !== 'reverse_geocoding') {
    throw new InstrumentationError("$geo_source value must be either null or 'reverse_geocoding' ");
  }
  if (!raw.$name) {
    const n = fullName(message);
    if (n !== undefined) raw.$name = n;
  }
  for (const path of ['traits', 'context.traits']) {
    const src = get(message, path);
    if (!src || typeof src !== 'object') continue;
    for (const k of Object.keys(src)) if (!IDENTIFY_EXCLUSIONS.includes(k) && src[k] !== undefined) raw[k] = src[k];
  }
  if (!config.useNewMapping) {
    if (raw.$first_name) {
      raw.$firstName = raw.$first_name;
      delete raw.$first_name;
    }
    if (raw.$last_name) {
      raw.$lastName = raw.$last_name;
      delete raw.$last_name;
    }
  }
  const device = get(message, 'context.device');
  if (device && device.token) {
    if (isAppleFamily(device.type)) {
      Object.assign(raw, construct(message, PROFILE_IOS));
      raw.$ios_devices = [device.token];
    } else if (typeof device.type === 'string' && device.type.toLowerCase() === 'android') {
      Object.assign(raw, construct(message, PROFILE_ANDROID));
      raw.$android_devices = [device.token];
    }
  }
  addBrowser(raw, message);
  return raw;
}

// setOnceProperties / unionProperties / appendProperties: [{property: path}];
// the values found in traits or context traits leave them and go to their own
// engage operation.
function profileOperation(message, config, list, operation) {
  if (!Array.isArray(list) || list.length === 0) return null;
  const props = {};
  for (const { property } of list.filter((p) => p && typeof p.property === 'string' && p.property.trim() !== '')) {
    const key = property.split('.').pop();
    for (const holder of [message.traits, get(message, 'context.traits')]) {
      if (!holder || typeof holder !== 'object') continue;
      const v = get(holder, property);
      if (v === undefined) continue;
      if (props[key] === undefined) props[key] = operation === '$union' && !Array.isArray(v) ? [v] : v;
      const parts = property.split('.');
      const parent = parts.length > 1 ? get(holder, parts.slice(0, -1).join('.')) : holder;
      if (parent && typeof parent === 'object') delete parent[parts[parts.length - 1]];
    }
  }
  if (Object.keys(props).length === 0) return null;
  return respond({ [operation]: props, $token: config.token, $distinct_id: distinctId(message, config) }, message, 'identify', config);
}

function processIdentify(message, config) {
  // traits are edited by the profile operations: work on copies
  const m = { ...message, traits: message.traits ? JSON.parse(JSON.stringify(message.traits)) : message.traits };
  m.context = { ...(message.context || {}) };
  if (m.context.traits) m.context.traits = JSON.parse(JSON.stringify(m.context.traits));
  const out = [];
  for (const [list, op] of [
    [config.setOnceProperties, '$set_once'],
    [config.unionProperties, '$union'],
    [config.appendProperties, '$append'],
  ]) {
    const r = profileOperation(m, config, list, op);
    if (r) out.push(r);
  }
  const payload = {
    $set: profileProperties(m, config),
    $token: config.token,
    $distinct_id: distinctId(m, config),
    $ip: get(m, 'context.ip') || m.request_ip,
    $time: unixMs(m.timestamp || m.originalTimestamp),
  };
  if (get(m, 'context.active') === false) payload.$ignore_time = true;
  out.push(respond(payload, m, 'identify', config));
  const importAuth = config.apiSecret || (config.serviceAccountSecret && config.serviceAccountUserName && config.projectId);
  if (!simplified(config) && m.userId && m.anonymousId && importAuth) {
    out.push(respond({ event: '$merge', properties: { $distinct_ids: [m.userId, m.anonymousId], token: config.token } }, m, 'merge', config));
  }
  return out;
}

function customEventName(message, template) {
  if (typeof template !== 'string' || template.trim() === '') throw new ConfigurationError('Event name template is not configured');
  const name = template.replace(/{{\s*([^{}]+?)\s*}}/g, (_, key) => {
    const v = get(message, key) ?? get(message.properties, key);
    return v === undefined || v === null ? '' : String(v);
  });
  return name.replace(/\s+/g, ' ').trim();
}

function processPageOrScreen(message, type, config) {
  let properties = {
    ...get(message, 'context.traits'),
    ...message.properties,
    ...mappedEventProperties(message),
    token: config.token,
    distinct_id: message.userId || message.anonymousId,
    time: unixMs(message.timestamp || message.originalTimestamp),
    ...utmParams(get(message, 'context.campaign')),
  };
  properties = withIdentity(properties, message, config);
  if (message.name) properties.name = message.name;
  if (message.category) properties.category = message.category;
  addBrowser(properties, message);
  let event;
  if (type === 'page') event = config.useUserDefinedPageEventName ? customEventName(message, config.userDefinedPageEventTemplate) : 'Loaded a Page';
  else event = config.useUserDefinedScreenEventName ? customEventName(message, config.userDefinedScreenEventTemplate) : 'Loaded a Screen';
  return respond({ event, properties }, message, type, config);
}

function processAlias(message, config) {
  const aliasId = message.previousId || message.anonymousId;
  if (!aliasId) throw new InstrumentationError('Either `previousId` or `anonymousId` should be present in alias payload');
  if (aliasId === message.userId) throw new InstrumentationError('One of `previousId` or `anonymousId` is same as `userId`. Aborting');
  return respond({ event: '$create_alias', properties: { distinct_id: aliasId, alias: message.userId, token: config.token } }, message, 'alias', config);
}

function processGroup(message, config) {
  const keys = Array.isArray(config.groupKeySettings) ? config.groupKeySettings.map((g) => g && g.groupKey).filter((k) => typeof k === 'string' && k.trim() !== '') : [];
  if (keys.length === 0) throw new ConfigurationError('`Group Key Settings` is not configured in destination');
  const out = [];
  for (const key of keys) {
    let values = key === 'groupId' ? getFieldValueFromMessage(message, 'groupId') : get(message.traits, key);
    if (values && !Array.isArray(values)) values = [values];
    if (!values) continue;
    out.push(
      respond(
        { $token: config.token, $distinct_id: distinctId(message, config), $set: { [key]: values }, $ip: get(message, 'context.ip') || message.request_ip },
        message,
        'group',
        config,
      ),
    );
    for (const value of values) {
      const g = respond({ $token: config.token, $group_key: key, $group_id: value, $set: { ...message.traits } }, message, 'group', config);
      g.endpoint = `${baseEndpoint(config)}/groups/`;
      out.push(g);
    }
  }
  if (out.length === 0) {
    throw new InstrumentationError('Group Key is not present. Please ensure that the group key is included in the payload as configured in the `Group Key Settings` in destination');
  }
  return out;
}

function process(event) {
  const config = (event.destination && event.destination.Config) || {};
  const message = { ...event.message };
  if (message.userId) message.userId = String(message.userId);
  if (message.anonymousId) message.anonymousId = String(message.anonymousId);
  if (!message.type) throw new InstrumentationError('Event type is required');
  switch (message.type) {
    case 'track':
      return processTrack(message, config);
    case 'page':
    case 'screen':
      return processPageOrScreen(message, message.type, config);
    case 'identify':
      return processIdentify(message, config);
    case 'alias':
      if (simplified(config)) throw new InstrumentationError('The use of the alias call in the context of the `Simplified ID merge` feature is not supported anymore.');
      return processAlias(message, config);
    case 'group':
      return processGroup(message, config);
    default:
      throw new InstrumentationError(`Event type '${message.type}' is not supported`);
  }
}

module.exports = { process };
