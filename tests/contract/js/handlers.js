'use strict';
// The task handlers worker.js runs. A handler is `async (value, ctx) => result`:
// `value` is the decoded payload, `ctx` is {task_id, attempt, max_attempts,
// node_id, headers, signal}; `signal` aborts when the task is cancelled, times
// out or is taken back. A thrown error fails the attempt; it is retried unless
// the error has `retryable = false`.

const fs = require('fs');

function nonRetryable(error) {
  error.retryable = false;
  return error;
}

/** Appends one JSON line to `path`, to count executions across processes. */
function witness(path, event, ctx) {
  if (!path) return;
  const line = { event, task_id: ctx.task_id, attempt: ctx.attempt, node_id: ctx.node_id, pid: process.pid };
  fs.appendFileSync(path, `${JSON.stringify(line)}\n`);
}

/** Resolves once `path` exists; rejects when `signal` aborts. */
function fileAppears(path, signal) {
  return new Promise((resolve, reject) => {
    const timer = setInterval(() => {
      if (fs.existsSync(path)) {
        clearInterval(timer);
        resolve();
      }
    }, 20);
    signal.addEventListener('abort', () => {
      clearInterval(timer);
      reject(signal.reason);
    });
  });
}

module.exports = {
  /** A JSON string, reversed. */
  'js.reverse': async (value) => {
    if (typeof value !== 'string') throw nonRetryable(new TypeError('js.reverse takes a JSON string'));
    return [...value].reverse().join('');
  },

  /** Always fails, retryably, with the payload's `message`. */
  'js.fail': async (value) => {
    throw new Error((value && value.message) || 'js.fail failed');
  },

  /** Records its start in `witness_file`, waits until `release_file` exists,
   * records its finish and returns who ran it. */
  'js.block': async (value, ctx) => {
    witness(value.witness_file, 'start', ctx);
    await fileAppears(value.release_file, ctx.signal);
    witness(value.witness_file, 'finish', ctx);
    return { node_id: ctx.node_id, attempt: ctx.attempt };
  },
};
