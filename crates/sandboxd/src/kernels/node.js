// run_code driver for JavaScript, started by sandboxd as a long-lived child.
// Requests: one JSON object per line on stdin ({"code": "..."}).
// Replies: JSON lines on the descriptor named by SANDBOXD_PROTO_FD (result, error, done).
// User output goes to the process's own stdout and stderr.
'use strict';
const fs = require('fs');
const util = require('util');
const vm = require('vm');
const readline = require('readline');

const PROTO = Number(process.env.SANDBOXD_PROTO_FD);
delete process.env.SANDBOXD_PROTO_FD;
const send = (obj) => fs.writeSync(PROTO, JSON.stringify(obj) + '\n');
const writer = (fd) => (...args) => { fs.writeSync(fd, util.format(...args) + '\n'); };
const cellConsole = {
  log: writer(1), info: writer(1), debug: writer(1), trace: writer(2),
  error: writer(2), warn: writer(2), dir: (o) => writer(1)(util.inspect(o)),
  table: writer(1),
};
const context = vm.createContext({
  console: cellConsole, require, process, Buffer, URL, URLSearchParams,
  TextEncoder, TextDecoder, setTimeout, clearTimeout, setInterval, clearInterval,
  setImmediate, clearImmediate, queueMicrotask, structuredClone,
  fetch: globalThis.fetch, module: { exports: {} }, exports: {},
});
process.on('SIGINT', () => {});

// Top-level await: run the cell in an async function, returning its last expression when the
// last line is one.
function asyncWrap(code) {
  const lines = code.replace(/[\s;]+$/, '').split('\n');
  const last = lines.pop();
  const withReturn = '(async () => {\n' + lines.join('\n') + '\nreturn (' + last + ');\n})()';
  try {
    new vm.Script(withReturn);
    return withReturn;
  } catch (_) {
    return '(async () => {\n' + code + '\n})()';
  }
}

async function run(code) {
  let status = 'ok';
  try {
    let value;
    try {
      value = vm.runInContext(code, context, { filename: 'cell', breakOnSigint: true });
    } catch (e) {
      if (e && e.name === 'SyntaxError' && /await/.test(String(e.message))) {
        value = await vm.runInContext(asyncWrap(code), context, { filename: 'cell', breakOnSigint: true });
      } else {
        throw e;
      }
    }
    if (value && typeof value.then === 'function') value = await value;
    if (value !== undefined) {
      send({ type: 'result', text: util.inspect(value), data: {} });
    }
  } catch (e) {
    status = 'error';
    const name = (e && e.name) || 'Error';
    const value = (e && e.message !== undefined) ? String(e.message) : String(e);
    const stack = String((e && e.stack) || e).split('\n')
      .filter((l) => !/node:vm|\[eval\]|node:internal/.test(l)).join('\n');
    send({ type: 'error', name, value, traceback: stack });
  }
  send({ type: 'done', status });
}

let chain = Promise.resolve();
const rl = readline.createInterface({ input: fs.createReadStream(null, { fd: 0 }) });
rl.on('line', (line) => {
  let request;
  try { request = JSON.parse(line); } catch (_) { return; }
  chain = chain.then(() => run(String(request.code || '')));
});
rl.on('close', () => { chain.then(() => process.exit(0)); });
