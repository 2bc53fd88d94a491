'use strict';
// A DTQ client CLI written from protos/dtq/v1/task_service.proto alone.
//
//   node client.js --address HOST:PORT [--timeout S] COMMAND [ARGS]
//     submit --type T [--queue Q] [--payload JSON] [--key K] [--max-attempts N]
//     get ID | watch ID | cancel ID
//     list [--queue Q] [--state STATE] [--type T] [--page-size N]   (every page)
//
// Prints one JSON line per answer on stdout ({"op": ..., ...}); a failed call
// prints {"op": ..., "error": {code, status, message, details}} with the
// google.rpc.Status details decoded, and exits 1. Exit 2: bad usage.

const { parseArgs } = require('util');
const { stub, deadline, jsonPayload, taskJson, errorJson } = require('./contract');

const TERMINAL = new Set(['TASK_STATE_SUCCEEDED', 'TASK_STATE_FAILED', 'TASK_STATE_CANCELLED']);

function print(line) {
  process.stdout.write(`${JSON.stringify(line)}\n`);
}

/** Calls a unary method as a promise. */
function unary(tasks, method, request, timeoutS) {
  return new Promise((resolve, reject) => {
    tasks[method](request, { deadline: deadline(timeoutS) }, (err, response) =>
      err ? reject(err) : resolve(response),
    );
  });
}

async function submit(tasks, opts) {
  const spec = {
    type: opts.type || '',
    queue: opts.queue || '',
    payload: jsonPayload(opts.payload === undefined ? null : JSON.parse(opts.payload)),
    idempotency_key: opts.key || '',
    max_attempts: Number(opts['max-attempts'] || 0),
  };
  const response = await unary(tasks, 'SubmitTask', { task: spec }, opts.timeout);
  print({ op: 'submit', created: response.created, task: taskJson(response.task) });
}

async function get(tasks, opts, id) {
  const response = await unary(tasks, 'GetTask', { task_id: id }, opts.timeout);
  print({ op: 'get', task: taskJson(response.task) });
}

async function cancel(tasks, opts, id) {
  const response = await unary(tasks, 'CancelTask', { task_id: id }, opts.timeout);
  print({ op: 'cancel', task: taskJson(response.task) });
}

async function list(tasks, opts) {
  let pageToken = '';
  do {
    const request = {
      queue: opts.queue || '',
      type: opts.type || '',
      state: opts.state || 'TASK_STATE_UNSPECIFIED',
      page_size: Number(opts['page-size'] || 0),
      page_token: pageToken,
    };
    const response = await unary(tasks, 'ListTasks', request, opts.timeout);
    print({
      op: 'list',
      tasks: response.tasks.map(taskJson),
      next_page_token: response.next_page_token,
    });
    pageToken = response.next_page_token;
  } while (pageToken);
}

/** Follows WatchTask: the current state first, then every change; the stream
 * ends after a terminal state. */
function watch(tasks, opts, id) {
  return new Promise((resolve, reject) => {
    const call = tasks.WatchTask({ task_id: id }, { deadline: deadline(opts.timeout) });
    let last = null;
    call.on('data', (message) => {
      last = message.task.state;
      print({ op: 'watch', task: taskJson(message.task) });
    });
    call.on('error', reject);
    call.on('end', () =>
      TERMINAL.has(last) ? resolve() : reject(new Error(`watch ended in ${last}`)),
    );
  });
}

const COMMANDS = { submit, get, cancel, list, watch };

async function main() {
  const { values: opts, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      address: { type: 'string', default: '127.0.0.1:50051' },
      timeout: { type: 'string', default: '10' },
      type: { type: 'string' },
      queue: { type: 'string' },
      payload: { type: 'string' },
      key: { type: 'string' },
      'max-attempts': { type: 'string' },
      state: { type: 'string' },
      'page-size': { type: 'string' },
    },
  });
  const [command, ...args] = positionals;
  if (!COMMANDS[command]) {
    process.stderr.write(`usage: client.js --address HOST:PORT ${Object.keys(COMMANDS).join('|')} ...\n`);
    return 2;
  }
  opts.timeout = Number(opts.timeout);
  const tasks = stub('TaskService', opts.address);
  try {
    await COMMANDS[command](tasks, opts, ...args);
    return 0;
  } catch (err) {
    if (err.code === undefined) throw err;
    print({ op: command, error: errorJson(err) });
    return 1;
  } finally {
    tasks.close();
  }
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (err) => {
    process.stderr.write(`${err.stack || err}\n`);
    process.exitCode = 1;
  },
);
