#!/usr/bin/env node
// Scriptable @mastra/core UnixSocketPubSub peer for the usps interop tests.
//
//   node peer.mjs SOCKET_PATH [--ack-timeout-ms N] [--max-inbound-frame-bytes N]
//                             [--max-queued-bytes N]
//
// Reads one command per stdin line and answers on stdout, one line per
// answer (see README.md for the full protocol). Commands run strictly one
// after another: the next command is not read until the previous one has
// printed its answer. `event ...` lines are printed asynchronously whenever a
// callback fires. Every stdout line is written with one process.stdout.write.

import { createInterface } from 'node:readline';
import { performance } from 'node:perf_hooks';
import { UnixSocketPubSub } from '@mastra/core/events';

function out(line) {
  process.stdout.write(line + '\n');
}

// A line must never contain a raw newline: the C side reads line by line.
function oneLine(s) {
  return String(s).replace(/\r?\n/g, ' ');
}

function errMsg(e) {
  return oneLine(e && typeof e === 'object' && 'message' in e ? e.message : e);
}

// ---- fatal handlers: report on stdout, keep Node's default report on stderr.
function fatal(kind, e) {
  try {
    out(`fatal ${errMsg(e)}`);
  } catch {
    /* stdout gone */
  }
  // What Node would have printed by default.
  process.stderr.write(`peer.mjs: ${kind}: ${e && e.stack ? e.stack : String(e)}\n`);
  process.exit(1);
}
process.on('uncaughtException', (e) => fatal('uncaughtException', e));
// Mastra 1.71.0 leaves the write promise of a frame unhandled when its
// broker connection dies under it (EPIPE/ECONNRESET); an application with a
// rejection handler survives that, so the peer does too, and says so (it
// may still be stuck: see the guard below). Any other unhandled rejection
// stays fatal.
process.on('unhandledRejection', (e) => {
  if (e && (e.code === 'EPIPE' || e.code === 'ECONNRESET')) {
    process.stderr.write(`peer.mjs: ignored unhandledRejection: ${e.code}\n`);
    return;
  }
  fatal('unhandledRejection', e);
});
// If the reader of our stdout goes away, there is nobody to report to.
process.stdout.on('error', () => process.exit(1));

// ---- arguments
function usage(msg) {
  process.stderr.write(
    `peer.mjs: ${msg}\nusage: node peer.mjs SOCKET_PATH [--ack-timeout-ms N] ` +
      `[--max-inbound-frame-bytes N] [--max-queued-bytes N]\n`,
  );
  process.exit(2);
}

const argv = process.argv.slice(2);
let socketPath;
const options = {};
const numericFlags = {
  '--ack-timeout-ms': 'membershipAckTimeoutMs',
  '--max-inbound-frame-bytes': 'maxInboundFrameBytes',
  '--max-queued-bytes': 'maxRemoteClientQueuedBytes',
};
for (let i = 0; i < argv.length; i++) {
  const a = argv[i];
  if (a in numericFlags) {
    const v = argv[++i];
    if (v === undefined || !/^\d+$/.test(v)) usage(`${a} needs a non-negative integer`);
    options[numericFlags[a]] = Number(v);
  } else if (a.startsWith('--')) {
    usage(`unknown option ${a}`);
  } else if (socketPath === undefined) {
    socketPath = a;
  } else {
    usage(`unexpected argument ${a}`);
  }
}
if (!socketPath) usage('missing SOCKET_PATH');

// ---- event rendering
// JSON with special values made visible. Walks the value itself so that
// undefined-valued keys and array holes are kept.
function render(v, stack = new Set()) {
  if (v === undefined) return { $undefined: true };
  if (v === null) return null;
  switch (typeof v) {
    case 'string':
    case 'boolean':
      return v;
    case 'number':
      if (Number.isFinite(v)) return Object.is(v, -0) ? { $number: '-0' } : v;
      return { $number: String(v) };
    case 'bigint':
      return { $bigint: v.toString() };
    case 'function':
      return { $function: v.name || '' };
    case 'symbol':
      return { $symbol: v.description ?? '' };
    default:
      break;
  }
  if (stack.has(v)) return { $cycle: true };
  stack.add(v);
  try {
    if (Array.isArray(v)) {
      const a = [];
      for (let i = 0; i < v.length; i++) a.push(render(v[i], stack));
      return a;
    }
    if (v instanceof Date) {
      return { $date: Number.isNaN(v.getTime()) ? 'Invalid Date' : v.toISOString() };
    }
    if (v instanceof RegExp) return { $regexp: [v.source, v.flags] };
    if (v instanceof URL) return { $url: v.href };
    if (v instanceof Map) {
      return { $map: [...v].map(([k, val]) => [render(k, stack), render(val, stack)]) };
    }
    if (v instanceof Set) return { $set: [...v].map((x) => render(x, stack)) };
    if (v instanceof Error) {
      const e = { name: v.name, message: v.message };
      if (v.code !== undefined) e.code = render(v.code, stack);
      if (v.cause !== undefined) e.cause = render(v.cause, stack);
      return { $error: e };
    }
    const o = {};
    for (const k of Object.keys(v)) o[k] = render(v[k], stack);
    const proto = Object.getPrototypeOf(v);
    if (proto !== null && proto !== Object.prototype) {
      return { $class: proto.constructor?.name ?? '?', v: o };
    }
    return o;
  } finally {
    stack.delete(v);
  }
}

const KNOWN_EVENT_KEYS = new Set(['type', 'runId', 'id', 'createdAt', 'deliveryAttempt', 'data']);

function renderEvent(topic, ev) {
  if (ev === null || typeof ev !== 'object') {
    return JSON.stringify({ topic, raw: render(ev) });
  }
  const createdAtIsDate = ev.createdAt instanceof Date;
  let createdAt = ev.createdAt;
  if (createdAtIsDate) {
    createdAt = Number.isNaN(createdAt.getTime()) ? 'Invalid Date' : createdAt.toISOString();
  } else {
    createdAt = render(createdAt);
  }
  const line = {
    topic,
    type: render(ev.type),
    runId: render(ev.runId),
    id: render(ev.id),
    createdAtIsDate,
    createdAt,
    deliveryAttempt: render(ev.deliveryAttempt),
    data: render(ev.data),
  };
  // Any other keys (e.g. `index`) are shown under "extra", only when present.
  const extraKeys = Object.keys(ev).filter((k) => !KNOWN_EVENT_KEYS.has(k));
  if (extraKeys.length) {
    line.extra = {};
    for (const k of extraKeys) line.extra[k] = render(ev[k]);
  }
  return JSON.stringify(line);
}

// ---- the pubsub
let pubsub = new UnixSocketPubSub(socketPath, options);

// Every subscription made, to make again on a new instance:
// `${id}\0${topic}` -> { topic, group, cb }.
const subscriptions = new Map();

// ---- the guard (command `guard MS`; 0, the default, is off)
// Mastra 1.71.0 can deadlock itself for good: when the write of a subscribe
// frame fails while it resubscribes on a new connection (the broker it just
// reached closes, e.g. a Node broker in the middle of its graceful close),
// #sendToBroker retries through #ensureStarted(), which returns the pending
// start: the one waiting for that very write. Every later call then waits
// forever. An application can only replace the instance. With the guard
// on, an instance is replaced when a publish, or a probe publish (sent
// every MS/3 on a topic nobody subscribes to, to find a stuck survivor
// that has no command running), is still pending after MS; a hung command
// publish then runs again on the new instance.
let guardMs = 0;
let replacing;
const HUNG = Symbol('hung');
const PROBE_TOPIC = '__usps_guard__';

function replaceInstance(stuck) {
  if (pubsub !== stuck) return replacing;
  replacing = (async () => {
    process.stderr.write(`peer.mjs: a publish hung for ${guardMs} ms: new instance\n`);
    pubsub = new UnixSocketPubSub(socketPath, options);
    stuck.close().catch(() => {});
    for (const s of subscriptions.values()) {
      try {
        await pubsub.subscribe(s.topic, s.cb, s.group ? { group: s.group } : undefined);
      } catch (e) {
        process.stderr.write(`peer.mjs: subscribe ${s.topic} again: ${errMsg(e)}\n`);
      }
    }
  })();
  return replacing;
}

// Run op() on the current instance; HUNG if it is still pending after
// guardMs (the instance is replaced then).
async function watched(op) {
  const inst = pubsub;
  const pending = op();
  pending.catch(() => {}); // settled here, or abandoned with its instance
  let timer;
  const hung = new Promise((resolve) => {
    timer = setTimeout(() => resolve(HUNG), guardMs);
  });
  try {
    if ((await Promise.race([pending, hung])) !== HUNG) return pending;
  } finally {
    clearTimeout(timer);
  }
  await replaceInstance(inst);
  return HUNG;
}

async function guarded(op) {
  if (!guardMs) return op();
  if ((await watched(op)) === HUNG) return op();
  return undefined;
}

async function probeLoop() {
  while (guardMs && !closing) {
    await new Promise((resolve) => setTimeout(resolve, guardMs / 3));
    if (!guardMs || closing) return;
    await replacing;
    try {
      await watched(() => pubsub.publish(PROBE_TOPIC, { type: 'probe', data: null }));
    } catch {
      /* a failed publish is not a hung one */
    }
  }
}

// id -> Map(topic -> callback). One callback function per (ID, TOPIC), so the
// topic is known when it fires; `sub ID TOPIC` twice reuses the same function
// (which is how a re-subscribe with another group is exercised).
const callbacks = new Map();

function callbackFor(id, topic) {
  let byTopic = callbacks.get(id);
  if (!byTopic) callbacks.set(id, (byTopic = new Map()));
  let cb = byTopic.get(topic);
  if (!cb) {
    cb = (event) => {
      out(`event ${id} ${renderEvent(topic, event)}`);
    };
    byTopic.set(topic, cb);
  }
  return cb;
}

function codecData(kind) {
  switch (kind) {
    case 'date':
      return new Date('2024-06-15T12:34:56.789Z');
    case 'regexp':
      return /foo.*bar/gi;
    case 'url':
      return new URL('https://example.com/p?q=1#h');
    case 'bigint':
      return 12345678901234567890n;
    case 'map':
      return new Map([
        ['a', 1],
        ['b', 2],
      ]);
    case 'set':
      return new Set(['x', 'y', 'z']);
    case 'error':
      return makeError();
    case 'undef':
      return { headers: undefined, value: 7 };
    case 'nested':
      return {
        when: new Date('2024-06-15T12:34:56.789Z'),
        inner: {
          err: makeError(),
          link: new URL('https://example.com/p?q=1#h'),
          deeper: { re: /foo.*bar/gi, tags: new Set(['a']) },
        },
        list: [1, new Date('2024-01-01T00:00:00.000Z')],
      };
    default:
      throw new Error(`unknown codec kind ${kind}`);
  }
}

function makeError() {
  const e = new Error('boom');
  e.name = 'MyError';
  e.code = 'E_BOOM';
  return e;
}

// Splits `line` into `n` space-separated words and the rest of the line.
function splitArgs(line, n) {
  const words = [];
  let rest = line;
  for (let i = 0; i < n; i++) {
    rest = rest.replace(/^ +/, '');
    const sp = rest.indexOf(' ');
    if (sp < 0) {
      words.push(rest);
      rest = '';
    } else {
      words.push(rest.slice(0, sp));
      rest = rest.slice(sp + 1);
    }
  }
  return { words, rest };
}

let closing = false;

async function closeAndExit() {
  if (closing) return;
  closing = true;
  try {
    await pubsub.close();
    out('closed');
    process.exit(0);
  } catch (e) {
    out(`error close ${errMsg(e)}`);
    process.exit(1);
  }
}

async function publishCmd(rest, localOnly, codec) {
  const { words, rest: tail } = splitArgs(rest, 3);
  const [topic, type, runId] = words;
  if (!topic || !type || !runId) throw new Error('usage: pub TOPIC TYPE RUNID DATA_JSON');
  let data;
  if (codec) {
    data = codecData(tail.trim());
  } else {
    data = tail.trim() === '' ? undefined : JSON.parse(tail);
  }
  try {
    await guarded(() =>
      pubsub.publish(topic, { type, runId, data }, localOnly ? { localOnly: true } : undefined),
    );
    out('published');
  } catch (e) {
    out(`error pub ${errMsg(e)}`);
  }
}

async function handle(line) {
  const trimmed = line.replace(/\r$/, '');
  if (trimmed.trim() === '' || trimmed.startsWith('#')) return;
  const { words, rest } = splitArgs(trimmed, 1);
  const cmd = words[0];
  switch (cmd) {
    case 'sub': {
      const { words: w } = splitArgs(rest, 3);
      const [id, topic, group] = w;
      if (!id || !topic) throw new Error('usage: sub ID TOPIC [GROUP]');
      const cb = callbackFor(id, topic);
      const t0 = performance.now();
      try {
        await pubsub.subscribe(topic, cb, group ? { group } : undefined);
        subscriptions.set(`${id}\0${topic}`, { topic, group, cb });
        out(`subscribed ${id} ${Math.round(performance.now() - t0)}`);
      } catch (e) {
        out(`error ${id} ${errMsg(e)}`);
      }
      return;
    }
    case 'unsub': {
      const id = splitArgs(rest, 1).words[0];
      if (!id) throw new Error('usage: unsub ID');
      const byTopic = callbacks.get(id);
      try {
        if (byTopic) {
          for (const [topic, cb] of byTopic) {
            await pubsub.unsubscribe(topic, cb);
            byTopic.delete(topic);
            subscriptions.delete(`${id}\0${topic}`);
          }
          callbacks.delete(id);
        }
        out(`unsubscribed ${id}`);
      } catch (e) {
        out(`error ${id} ${errMsg(e)}`);
      }
      return;
    }
    case 'pub':
      return publishCmd(rest, false, false);
    case 'publocal':
      return publishCmd(rest, true, false);
    case 'pubcodec':
      return publishCmd(rest, false, true);
    case 'publocalcodec':
      return publishCmd(rest, true, true);
    case 'start': {
      try {
        const cb = () => {};
        await pubsub.subscribe('__usps_start__', cb);
        subscriptions.set('\0__usps_start__', { topic: '__usps_start__', cb });
        out(`started isBroker=${pubsub.isBroker}`);
      } catch (e) {
        out(`error start ${errMsg(e)}`);
      }
      return;
    }
    case 'status':
      out(`status isBroker=${pubsub.isBroker} clients=${pubsub.remoteClientCount}`);
      return;
    case 'flush':
      await pubsub.flush();
      out('flushed');
      return;
    case 'close':
      await closeAndExit();
      return;
    case 'guard': {
      const ms = Number(splitArgs(rest, 1).words[0]);
      if (!Number.isInteger(ms) || ms < 0) throw new Error('usage: guard MS');
      const was = guardMs;
      guardMs = ms;
      if (ms && !was) probeLoop().catch((e) => fatal('guard', e));
      out(`guard ${ms}`);
      return;
    }
    case 'sleep': {
      // sleep MS: handy in hand-written scripts.
      const ms = Number(splitArgs(rest, 1).words[0]);
      await new Promise((r) => setTimeout(r, Number.isFinite(ms) ? ms : 0));
      out('slept');
      return;
    }
    default:
      throw new Error(`unknown command ${cmd}`);
  }
}

out(`ready pid=${process.pid}`);

// Strictly sequential command processing.
const rl = createInterface({ input: process.stdin, crlfDelay: Infinity, terminal: false });
let chain = Promise.resolve();
rl.on('line', (line) => {
  chain = chain.then(() =>
    handle(line).catch((e) => {
      out(`error cmd ${errMsg(e)}`);
    }),
  );
});
rl.on('close', () => {
  chain = chain.then(() => closeAndExit());
});
