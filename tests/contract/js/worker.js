'use strict';
// A DTQ worker node written from protos/dtq/v1/worker_service.proto alone.
//
//   node worker.js --address HOST:PORT --node-id ID [--types a,b] [--queues q,r]
//                  [--slots N] [--prefetch N]
//
// One WorkerService.Connect stream: RegisterNode, heartbeats at the interval
// NodeRegistered gives, assignments run by handlers.js (at most `slots` at once;
// the coordinator sends no more than slots + prefetch), outcomes kept until
// their TaskUpdateAck. SIGTERM: release what is unfinished, wait for the acks,
// Leave, exit 0 once the coordinator closes the stream with OK.
//
// This example does not resume sessions: when its stream breaks it exits 1 and
// whatever it held is requeued after the heartbeat timeout (contract point 6).
// Events go to stdout as JSON lines ({"event": "registered", ...}).

const os = require('os');
const { parseArgs } = require('util');
const { grpc, stub, jsonPayload, payloadValue, durationMs } = require('./contract');
const handlers = require('./handlers');

const { values: opts } = parseArgs({
  options: {
    address: { type: 'string', default: '127.0.0.1:50051' },
    'node-id': { type: 'string', default: `js-${os.hostname()}-${process.pid}` },
    types: { type: 'string', default: Object.keys(handlers).join(',') },
    queues: { type: 'string', default: '' },
    slots: { type: 'string', default: '2' },
    prefetch: { type: 'string', default: '0' },
  },
});
const NODE_ID = opts['node-id'];
const SLOTS = Number(opts.slots);

function log(event, fields = {}) {
  process.stdout.write(`${JSON.stringify({ event, node_id: NODE_ID, ...fields })}\n`);
}

const leaseKey = (lease) => `${lease.task_id}/${lease.attempt}`;

// Leases by key: {lease, assignment, controller, started, outcome (the terminal update
// once reported), dropped (stale or handed back: never report it again), refused
// (arrived while stopping: held for Leave to hand back)}.
const held = new Map();
const waiting = []; // assignments held but not yet started (a prefetched buffer)
let running = 0;
let stopping = false;
let session = null; // NodeRegistered
let heartbeatSeq = 0;
let unackedHeartbeat = false;
let lastHeard = Date.now();

const client = stub('WorkerService', opts.address);
const call = client.Connect();

function send(message) {
  call.write(message);
}

function report(update) {
  send({ updates: { updates: [update] } });
}

/** Reports a terminal outcome once; it stays in `held` until acked. */
function finish(entry, outcome) {
  if (entry.dropped || entry.outcome) return;
  entry.outcome = { lease: entry.lease, ...outcome };
  report(entry.outcome);
}

function taskError(err) {
  return {
    type: (err && err.name) || 'Error',
    message: String((err && err.message) || err).slice(0, 4096),
    traceback: String((err && err.stack) || '').slice(0, 8192),
    retryable: !(err && err.retryable === false),
  };
}

async function run(entry) {
  const { assignment, controller } = entry;
  const ctx = {
    task_id: assignment.lease.task_id,
    attempt: assignment.lease.attempt,
    max_attempts: assignment.max_attempts,
    node_id: NODE_ID,
    headers: assignment.headers,
    signal: controller.signal,
  };
  report({ lease: entry.lease, started: {} });
  const limitMs = durationMs(assignment.execution_timeout);
  const timer = limitMs > 0 ? setTimeout(() => controller.abort(timeoutError()), limitMs) : null;
  try {
    // A handler that ignores its signal still ends the attempt when it aborts.
    const result = await Promise.race([
      handlers[assignment.type](payloadValue(assignment.payload), ctx),
      aborted(controller.signal),
    ]);
    const payload = jsonPayload(result === undefined ? null : result);
    if (payload.data.length > Number(session.max_result_bytes)) {
      const err = new Error(`result of ${payload.data.length} bytes is over ${session.max_result_bytes}`);
      finish(entry, { failed: { error: { ...taskError(err), type: 'RESULT_TOO_LARGE', retryable: false } } });
    } else {
      finish(entry, { succeeded: { result: payload } });
    }
  } catch (err) {
    const cancelled = controller.signal.aborted && controller.signal.reason.name === 'Cancelled';
    finish(entry, { failed: { error: taskError(err), cancelled } });
  } finally {
    clearTimeout(timer);
    running -= 1;
    pump();
  }
}

function aborted(signal) {
  return new Promise((_, reject) => signal.addEventListener('abort', () => reject(signal.reason)));
}

function timeoutError() {
  const err = new Error('execution_timeout passed');
  err.name = 'TIMED_OUT';
  return err;
}

/** Starts waiting assignments while a slot is free. */
function pump() {
  while (running < SLOTS && waiting.length > 0 && !stopping) {
    const entry = waiting.shift();
    if (entry.dropped) continue;
    running += 1;
    entry.started = true;
    run(entry);
  }
  if (stopping) maybeLeave();
}

function onAssignments(assignments) {
  for (const assignment of assignments) {
    if (held.has(leaseKey(assignment.lease))) continue; // the same dispatch twice: already ours
    const entry = { lease: assignment.lease, assignment, controller: new AbortController() };
    held.set(leaseKey(assignment.lease), entry);
    log('assigned', { task_id: assignment.lease.task_id, attempt: assignment.lease.attempt });
    if (stopping) {
      // Held, not released: a release frees the credit and the next task would
      // come at once. Leave hands these back all together.
      entry.refused = true;
    } else if (!handlers[assignment.type]) {
      finish(entry, { released: { reason: 'UNKNOWN_TASK_TYPE' } });
    } else {
      waiting.push(entry);
    }
  }
  pump();
}

/** Forgets a lease: its handler's outcome, if any comes, is never reported. */
function drop(lease, why) {
  const entry = held.get(leaseKey(lease));
  if (!entry) return;
  held.delete(leaseKey(lease));
  entry.dropped = true;
  entry.controller.abort(Object.assign(new Error(why), { name: why }));
  log('dropped', { task_id: lease.task_id, attempt: lease.attempt, why });
}

function onAcks(acks) {
  for (const ack of acks) {
    const entry = held.get(leaseKey(ack.lease));
    if (entry && entry.outcome) held.delete(leaseKey(ack.lease));
    log('ack', { task_id: ack.lease.task_id, attempt: ack.lease.attempt, accepted: ack.accepted, reason: ack.reason });
  }
  if (stopping) maybeLeave();
}

function heartbeat() {
  if (unackedHeartbeat && Date.now() - lastHeard > durationMs(session.heartbeat_timeout)) {
    log('stream_dead', { silent_ms: Date.now() - lastHeard });
    process.exit(1);
  }
  heartbeatSeq += 1;
  unackedHeartbeat = true;
  // Every lease still held; one whose outcome was reported is the coordinator's again.
  const leases = [...held.values()].filter((e) => !e.outcome && !e.dropped).map((e) => e.lease);
  const now = Date.now();
  send({
    heartbeat: {
      sequence: heartbeatSeq,
      leases,
      node_time: { seconds: Math.floor(now / 1000), nanos: (now % 1000) * 1e6 },
    },
  });
}

call.on('data', (message) => {
  lastHeard = Date.now();
  switch (message.message) {
    case 'registered':
      session = message.registered;
      log('registered', { session_id: session.session_id });
      setInterval(heartbeat, durationMs(session.heartbeat_interval)).unref();
      if (stopping) maybeLeave();
      break;
    case 'assignments':
      onAssignments(message.assignments.assignments);
      break;
    case 'cancel':
      for (const lease of message.cancel.leases) {
        const entry = held.get(leaseKey(lease));
        if (entry) entry.controller.abort(Object.assign(new Error('cancelled by a client'), { name: 'Cancelled' }));
      }
      break;
    case 'drain':
      log('drain');
      stop('DRAINED');
      break;
    case 'heartbeat_ack':
      unackedHeartbeat = false;
      for (const lease of message.heartbeat_ack.stale_leases) drop(lease, 'STALE_LEASE');
      break;
    case 'update_acks':
      onAcks(message.update_acks.acks);
      break;
    default:
      log('unknown_message', { kind: message.message });
  }
});

let leaveReason = null;
let left = false;

/** Graceful stop: hand back every unfinished task (a drain lets running ones finish). */
function stop(reason) {
  if (stopping) return;
  stopping = true;
  leaveReason = reason;
  for (const entry of held.values()) {
    if (entry.outcome || (reason === 'DRAINED' && entry.started)) continue;
    // Unfinished: handed back now (contract point 7), its handler's outcome ignored.
    finish(entry, { released: { reason: 'SHUTDOWN' } });
    entry.dropped = true;
    entry.controller.abort(Object.assign(new Error('node shutting down'), { name: 'Shutdown' }));
  }
  // Acks that never come must not keep the node forever.
  setTimeout(() => {
    log('leave_timeout');
    process.exit(1);
  }, 2 * durationMs(session && session.heartbeat_timeout) + 5000).unref();
  maybeLeave();
}

/** Leave once every reported outcome is acked (and, draining, every started task done). */
function maybeLeave() {
  if (left || !session) return;
  for (const entry of held.values()) {
    if (entry.outcome || (entry.started && !entry.dropped)) return;
  }
  left = true;
  send({ leave: { reason: leaveReason } });
  call.end();
}

call.on('status', (status) => {
  log('closed', { code: status.code, details: status.details, left });
  client.close();
  process.exit(left && status.code === grpc.status.OK ? 0 : 1);
});
call.on('error', () => {}); // 'status' reports it

process.on('SIGTERM', () => stop('SHUTDOWN'));
process.on('SIGINT', () => stop('SHUTDOWN'));

send({
  register: {
    node_id: NODE_ID,
    hostname: os.hostname(),
    pid: process.pid,
    version: 'js-contract-example',
    task_types: opts.types.split(',').filter(Boolean),
    queues: opts.queues.split(',').filter(Boolean),
    slots: SLOTS,
    prefetch: Number(opts.prefetch),
  },
});
