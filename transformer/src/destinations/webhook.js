'use strict';
// WEBHOOK: the event itself, sent to the configured URL. Same shape as the
// official rudder-transformer's webhook destination:
//  - POST (default), PUT, PATCH: the event as the JSON body, content-type json
//  - GET, DELETE: the event's properties (traits for identify), flattened, as params
//  - Config.headers [{from, to}] add headers; message.header adds headers (a
//    value that is not a string is sent as its JSON text) and is removed from
//    the body
//  - message.fullPath replaces the URL, message.appendPath is appended to it
//    (also from integrations.webhook); both are removed from the body
//  - context.ip is set from request_ip when missing
const { defaultRequestConfig, flattenJson, getHashFromArray, TransformError, integrationsObj } = require('../util');

function propertyParams(message) {
  if (message.type === 'identify') {
    return flattenJson((message.context && message.context.traits) || message.traits || {});
  }
  return flattenJson(message.properties || {});
}

function process(event) {
  const { message, destination } = event;
  const config = (destination && destination.Config) || {};
  const integ = integrationsObj(message, 'webhook');
  const hasIp = message.context && typeof message.context === 'object' && message.context.ip;
  if (!hasIp && message.request_ip !== undefined && message.request_ip !== null) {
    if (!message.context || typeof message.context !== 'object') message.context = {};
    message.context.ip = message.request_ip;
  }
  const url = config.webhookUrl;
  if (!url || typeof url !== 'string') throw new TransformError('Invalid URL in destination config');

  const response = defaultRequestConfig();
  const method = typeof config.webhookMethod === 'string' ? config.webhookMethod.toUpperCase() : 'POST';
  switch (method) {
    case 'GET':
    case 'DELETE':
      response.method = method;
      response.params = propertyParams(message);
      break;
    case 'PUT':
    case 'PATCH':
      response.method = method;
      response.body.JSON = message;
      response.headers = { 'content-type': 'application/json' };
      break;
    default:
      response.method = 'POST';
      response.body.JSON = message;
      response.headers = { 'content-type': 'application/json' };
  }
  Object.assign(response.headers, getHashFromArray(config.headers));
  const { header } = message;
  if (header !== undefined) {
    if (header && typeof header === 'object') {
      for (const [k, v] of Object.entries(header)) {
        // as the official transform: strings as they are, other values as
        // their JSON text (10 -> "10", {k1: "v1"} -> '{"k1":"v1"}')
        if (typeof v === 'string') {
          if (v) response.headers[k] = v;
        } else if (v !== null && v !== undefined) {
          response.headers[k] = JSON.stringify(v);
        }
      }
    }
    if (response.method !== 'GET' && response.method !== 'DELETE') delete response.body.JSON.header;
  }
  response.userId = message.anonymousId;
  response.endpoint = url;
  const fullPath = (typeof message.fullPath === 'string' && message.fullPath) || (integ && typeof integ.fullPath === 'string' && integ.fullPath);
  if (fullPath) {
    response.endpoint = fullPath;
    delete message.fullPath;
  }
  const appendPath = (typeof message.appendPath === 'string' && message.appendPath) || (integ && typeof integ.appendPath === 'string' && integ.appendPath);
  if (appendPath) {
    response.endpoint += appendPath;
    delete message.appendPath;
  }
  return response;
}

module.exports = { process };
