'use strict';
// The dtq.v1 contract, loaded at run time from protos/ (no generated code), and
// what both the client and the worker need around it: channels, payloads,
// durations, and the google.rpc.Status a failed call carries in its trailers.

const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const googleProtos = require('google-proto-files');

const PROTOS = path.resolve(__dirname, '..', '..', '..', 'protos');

// keepCase: field names as the .proto spells them (snake_case); enums as their
// names; 64-bit integers as strings (JSON has no int64); oneofs: a virtual field
// names the member that is set (ConnectResponse.message == 'registered', ...).
const LOADER_OPTIONS = {
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
  includeDirs: [PROTOS],
};

const definition = protoLoader.loadSync(
  ['dtq/v1/task_service.proto', 'dtq/v1/worker_service.proto'],
  LOADER_OPTIONS,
);
const dtq = grpc.loadPackageDefinition(definition).dtq.v1;

// google.rpc.Status and its standard detail messages (ErrorInfo, BadRequest, ...)
// from the googleapis protos, to decode `grpc-status-details-bin`.
const rpcRoot = googleProtos.loadSync([
  googleProtos.getProtoPath('rpc', 'status.proto'),
  googleProtos.getProtoPath('rpc', 'error_details.proto'),
]);
const RpcStatus = rpcRoot.lookupType('google.rpc.Status');

/** A stub of `service` ('TaskService', 'WorkerService') on a plaintext channel. */
function stub(service, address) {
  return new dtq[service](address, grpc.credentials.createInsecure());
}

/** A deadline `seconds` from now, for a call's options. */
function deadline(seconds) {
  return new Date(Date.now() + seconds * 1000);
}

const JSON_TYPE = 'application/json';

/** A Payload holding `value` as JSON. */
function jsonPayload(value) {
  return { data: Buffer.from(JSON.stringify(value)), content_type: JSON_TYPE };
}

/** A Payload's value: parsed when it is JSON (an empty content type means JSON),
 * else `{content_type, base64}`; null for an absent or empty payload. */
function payloadValue(payload) {
  if (!payload || !payload.data || payload.data.length === 0) return null;
  const type = payload.content_type || JSON_TYPE;
  if (type === JSON_TYPE) return JSON.parse(payload.data.toString('utf8'));
  return { content_type: type, base64: payload.data.toString('base64') };
}

/** A google.protobuf.Duration in milliseconds (0 when unset). */
function durationMs(duration) {
  if (!duration) return 0;
  return Number(duration.seconds) * 1000 + Math.floor(duration.nanos / 1e6);
}

/** A google.protobuf.Timestamp as an ISO string (null when unset). */
function isoTime(timestamp) {
  if (!timestamp) return null;
  return new Date(Number(timestamp.seconds) * 1000 + timestamp.nanos / 1e6).toISOString();
}

/** A dtq.v1.Task as plain JSON: payloads decoded, timestamps as ISO strings. */
function taskJson(task) {
  const out = {};
  for (const [key, value] of Object.entries(task)) {
    if (key === 'payload' || key === 'result') {
      out[key] = payloadValue(value);
      out[`${key}_content_type`] = value ? value.content_type : null;
    } else if (value && typeof value === 'object' && 'seconds' in value && 'nanos' in value) {
      out[key] = key.endsWith('_time') ? isoTime(value) : durationMs(value) / 1000;
    } else {
      out[key] = value;
    }
  }
  return out;
}

/** A failed call as JSON: code, its name, message, and every detail of the
 * google.rpc.Status in the `grpc-status-details-bin` trailer, decoded. */
function errorJson(err) {
  const out = {
    code: err.code,
    status: grpc.status[err.code] || String(err.code),
    message: err.details,
    details: [],
  };
  const raw = err.metadata ? err.metadata.get('grpc-status-details-bin') : [];
  if (raw.length === 0) return out;
  const status = RpcStatus.decode(raw[0]);
  for (const any of status.details) {
    const typeName = any.type_url.slice(any.type_url.lastIndexOf('/') + 1);
    const type = rpcRoot.lookupType(typeName);
    out.details.push({
      '@type': typeName,
      ...type.toObject(type.decode(any.value), { defaults: true, longs: String }),
    });
  }
  return out;
}

module.exports = {
  grpc,
  stub,
  deadline,
  jsonPayload,
  payloadValue,
  durationMs,
  taskJson,
  errorJson,
  JSON_TYPE,
};
