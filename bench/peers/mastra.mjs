#!/usr/bin/env node
// SPDX-License-Identifier: MIT
//
// The benchmark workloads of bench/peers/driver.c, run over Mastra's Node
// UnixSocketPubSub (@mastra/core, installed by tests/interop/setup.sh), with
// the same command line and the same RESULT lines:
//
//   node bench/peers/mastra.mjs throughput [--size 100] [--seconds 3] [--inflight N]
//   node bench/peers/mastra.mjs fanout [--subs 16] [--size 100] [--seconds 3] [--inflight N]
//   node bench/peers/mastra.mjs fanin  [--pubs 4] [--size 100] [--seconds 3] [--inflight N]
//   node bench/peers/mastra.mjs rtt [--count 20000] [--warmup 1000] [--size 100]
//   node bench/peers/mastra.mjs rss [--clients 100]
//
// Every role is its own process, a child_process.fork() of this script
// driven by IPC messages from the parent, which never touches the bus. The
// broker process starts first and alone: its UnixSocketPubSub binds
// <tmpdir>/bus.sock (Mastra elects whoever binds the path first) and it
// only routes. Every other process checks that its instances came up as
// clients. All of them run in a private fs.mkdtemp() directory that is
// removed at the end; every child is reaped, killed by its pid if late.
//
// An event's data is a JSON string of exactly --size bytes: a quote, the
// publisher's number (2 digits), its sequence number (12 digits), 'x'
// padding, a quote. Subscribers check per publisher that the sequence only
// grows by one: a gap counts as lost, a duplicate or step back as an error.
//
// throughput/fanout/fanin: the publishers publish on topic "b" for
// --seconds, awaiting each publish() (on a client it resolves once the
// frame is written to the broker's socket; keeping several in flight was
// no faster, and past 10 Mastra warns of a listener leak). With --inflight
// N (0: no window) a publisher waits while N of its events are not yet
// received by every subscriber; subscribers report their counts to the
// parent, which relays them, every 1024 events or 5 ms. By default N is
// the driver's max(1024, 64 MiB / size), but no more than Mastra's broker
// queues for one client before it drops that client (its default
// maxRemoteClientQueuedBytes, 64 MiB of event frames): with 4 KiB events
// the driver's window (16384 events, some 70 MB of frames) gets the
// subscriber dropped and a quarter of the events lost. An explicit
// --inflight is taken as given. Then each subscriber is told how many
// events to expect; it gives up after 5 s without progress and counts the
// rest as lost. The rate is what the subscribers received over the time
// from the first receive in any to the last in any (process.hrtime,
// CLOCK_MONOTONIC, is comparable across processes).
//
// rtt: A subscribes to "q", B to "p"; B's callback publishes each ping back
// on "q"; A's callback takes the time and publishes the next ping. Both are
// clients: four socket hops per round trip. A ping unanswered for 5 s is
// lost.
//
// rss: the broker's VmRSS before any client, then with --clients
// UnixSocketPubSub instances (up to 64 per process), each subscribed to
// "t<i>" and to "all".
//
// The last line is "RESULT mastra-<workload> key=value ..." or "SKIP
// <reason>". Exit status: 0 if the workload ran (lost events are reported,
// not a failure), 1 if it failed or events came out of order, 2 for a
// usage error.

import { fork } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const SCRIPT = fileURLToPath(import.meta.url);
const CORE_DIR = fileURLToPath(
  new URL('../../tests/interop/node_modules/@mastra/core/', import.meta.url),
);

// Deadlines, in ms, as in driver.c.
const CMD_MS = 120000; // a child waits this long for a command
const OPEN_MS = 30000; // clients connect and subscribe within this
const FLUSH_MS = 60000; // a publisher's last publish resolves within this
const STALL_MS = 5000; // a draining subscriber gives up without progress...
const DRAIN_MS = 120000; // ...or after this long in all
const PONG_MS = 5000; // an unanswered ping is lost
const REAP_MS = 10000; // children exit within this after "quit"
// A child's backstop for "until told to quit": the parent's own deadlines
// end a run long before, and a child leaves as soon as its parent is gone.
const UNTIL_QUIT_MS = 6 * 3600 * 1000;

const ID_DIGITS = 2;
const SEQ_DIGITS = 12;
const MIN_SIZE = 2 + ID_DIGITS + SEQ_DIGITS;
const MAX_SIZE = 16 << 20;
const WINDOW_BYTES = 64 << 20;
// Mastra's default maxRemoteClientQueuedBytes.
const MASTRA_QUEUE_BYTES = 64 << 20;
const CONNS_PER_PROC = 64;
const REPORT_EVERY = 1024;
const REPORT_MS = 5;

const now = () => process.hrtime.bigint();
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function warn(msg) {
  process.stderr.write(`mastra.mjs: ${msg}\n`);
}

function errText(e) {
  return e && typeof e === 'object' && 'message' in e ? e.message : String(e);
}

// ---- events -----------------------------------------------------------------

// The data string of event @seq of publisher @id: its JSON is @size bytes.
function makeData(id, seq, pad) {
  return String(id).padStart(ID_DIGITS, '0') + String(seq).padStart(SEQ_DIGITS, '0') + pad;
}

// [id, seq] of a data string, or null if it is not one of ours.
function parseData(d, size) {
  if (typeof d !== 'string' || d.length !== size - 2) return null;
  const head = d.slice(0, ID_DIGITS + SEQ_DIGITS);
  if (!/^[0-9]+$/.test(head)) return null;
  return [Number(head.slice(0, ID_DIGITS)), Number(head.slice(ID_DIGITS))];
}

// ---- children -----------------------------------------------------------------

// In a child: the UnixSocketPubSub class, from the package's own exports.
async function loadMastra() {
  const pkg = JSON.parse(fs.readFileSync(path.join(CORE_DIR, 'package.json'), 'utf8'));
  const entry = pkg.exports?.['./events']?.import?.default;
  if (!entry) throw new Error('@mastra/core has no ./events export');
  const mod = await import(pathToFileURL(path.join(CORE_DIR, entry)).href);
  if (typeof mod.UnixSocketPubSub !== 'function') {
    throw new Error('@mastra/core/events has no UnixSocketPubSub');
  }
  return mod.UnixSocketPubSub;
}

function send(msg) {
  if (process.connected) process.send(msg);
}

// The commands of one child, in order; a child waits at most CMD_MS each.
// Messages of a type with a handler (on()) are handled as they come.
function commands() {
  const queue = [];
  const handlers = new Map();
  let waiter = null;
  process.on('message', (m) => {
    const h = m && handlers.get(m.t);
    if (h) {
      h(m);
    } else if (waiter) {
      const w = waiter;
      waiter = null;
      w(m);
    } else {
      queue.push(m);
    }
  });
  return {
    next(timeoutMs = CMD_MS) {
      if (queue.length) return Promise.resolve(queue.shift());
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => {
          waiter = null;
          reject(new Error(`no command in ${timeoutMs} ms`));
        }, timeoutMs);
        waiter = (m) => {
          clearTimeout(timer);
          resolve(m);
        };
      });
    },
    on(t, fn) {
      handlers.set(t, fn);
    },
  };
}

async function expect(cmds, want, timeoutMs) {
  const m = await cmds.next(timeoutMs);
  if (!m || m.t !== want) throw new Error(`expected "${want}", got ${JSON.stringify(m)}`);
  return m;
}

async function closeAll(list) {
  for (const ps of list) {
    try {
      await ps.close();
    } catch (e) {
      warn(`close: ${errText(e)}`);
    }
  }
}

const noop = () => {};

async function brokerMain(cfg, cmds, UnixSocketPubSub) {
  const ps = new UnixSocketPubSub(cfg.sock);
  await expect(cmds, 'open', CMD_MS);
  // Any publish starts the instance; nobody else is there to bind first.
  await ps.publish('__bench.start', { type: 'start', runId: 'bench', data: null });
  if (!ps.isBroker) throw new Error('the broker process did not become the broker');
  send({ t: 'ready' });
  for (;;) {
    const m = await cmds.next(UNTIL_QUIT_MS);
    if (m.t === 'status') {
      send({ t: 'status', clients: ps.remoteClientCount, rss: process.memoryUsage().rss });
    } else if (m.t === 'quit') {
      await ps.close();
      return;
    } else {
      throw new Error(`unexpected command ${JSON.stringify(m)}`);
    }
  }
}

// A client instance: started by its first call, checked to be a client.
async function startClient(UnixSocketPubSub, sock, topic, cb) {
  const ps = new UnixSocketPubSub(sock);
  try {
    if (cb) await ps.subscribe(topic, cb);
    else await ps.publish(topic, { type: 'warm', runId: 'bench', data: null });
    if (ps.isBroker) throw new Error('a client became the broker');
  } catch (e) {
    await closeAll([ps]);
    throw e;
  }
  return ps;
}

async function subMain(cfg, cmds, UnixSocketPubSub) {
  const { size, pubs } = cfg;
  const next = new Array(pubs).fill(0); // 1 + the last sequence seen
  const good = new Array(pubs).fill(0); // events in order (after any gap)
  let n = 0;
  let dup = 0;
  let bad = 0;
  let first = 0n;
  let last = 0n;
  let sentAt = 0;
  let reported = true;
  let onProgress = noop;

  const report = () => {
    sentAt = n;
    reported = true;
    send({ t: 'count', sub: cfg.idx, next });
  };
  const onEvent = (ev) => {
    const t = now();
    if (n === 0) first = t;
    last = t;
    n++;
    const p = parseData(ev && ev.data, size);
    if (!p || p[0] >= pubs) {
      bad++;
      return;
    }
    const [id, seq] = p;
    if (seq < next[id]) {
      dup++;
      return;
    }
    good[id]++;
    next[id] = seq + 1;
    reported = false;
    if (n - sentAt >= REPORT_EVERY) report();
    onProgress();
  };

  await expect(cmds, 'open', CMD_MS);
  const ps = await startClient(UnixSocketPubSub, cfg.sock, 'b', onEvent);
  const timer = setInterval(() => {
    if (!reported) report();
  }, REPORT_MS);
  try {
    send({ t: 'ready' });
    const { want } = await expect(cmds, 'drain', UNTIL_QUIT_MS);
    const all = () => want.every((w, i) => next[i] >= w);
    const stalled = await new Promise((resolve) => {
      const start = Date.now();
      let progress = start;
      let sum = -1;
      let poll = null;
      const finish = (v) => {
        clearInterval(poll);
        onProgress = noop;
        resolve(v);
      };
      const check = () => {
        const s = next.reduce((x, y) => x + y, 0);
        if (s !== sum) {
          sum = s;
          progress = Date.now();
        }
        if (all()) finish(false);
        else if (Date.now() - progress > STALL_MS || Date.now() - start > DRAIN_MS) finish(true);
      };
      poll = setInterval(check, 20);
      onProgress = () => {
        if (all()) finish(false);
      };
      check();
    });
    let lost = 0;
    let extra = 0;
    for (let i = 0; i < pubs; i++) {
      if (good[i] <= want[i]) lost += want[i] - good[i];
      else extra += good[i] - want[i];
    }
    send({
      t: 'result',
      lost,
      errors: dup + bad + extra,
      n,
      first: Number(first),
      last: Number(last),
      stalled,
    });
    await expect(cmds, 'quit', UNTIL_QUIT_MS);
  } finally {
    clearInterval(timer);
    await closeAll([ps]);
  }
}

async function pubMain(cfg, cmds, UnixSocketPubSub) {
  const { size, inflight, seconds } = cfg;
  const pad = 'x'.repeat(size - MIN_SIZE);
  let low = 0; // the least count over all subscribers
  let wake = noop;
  cmds.on('low', (m) => {
    if (m.v > low) low = m.v;
    wake();
  });

  await expect(cmds, 'open', CMD_MS);
  const ps = await startClient(UnixSocketPubSub, cfg.sock, '__bench.warm', null);
  try {
    send({ t: 'ready' });
    await expect(cmds, 'go', CMD_MS);
    const start = now();
    const stop = start + BigInt(Math.round(seconds * 1e9));
    let seq = 0;
    let error = null;
    while (now() < stop) {
      if (inflight && seq - low >= inflight) {
        const left = Number(stop - now()) / 1e6;
        if (left <= 0) break;
        await new Promise((resolve) => {
          const timer = setTimeout(() => {
            wake = noop;
            resolve();
          }, Math.ceil(left));
          wake = () => {
            if (seq - low < inflight) {
              clearTimeout(timer);
              wake = noop;
              resolve();
            }
          };
        });
        continue;
      }
      try {
        await ps.publish('b', { type: 'b', runId: 'bench', data: makeData(cfg.idx, seq, pad) });
      } catch (e) {
        error = errText(e);
        break;
      }
      seq++;
    }
    const end = now();
    // Publishes resolve once written: the broker's flush is its own.
    await ps.flush();
    send({ t: 'done', published: seq, error, pub_ns: Number(end - start) });
    await expect(cmds, 'quit', UNTIL_QUIT_MS);
  } finally {
    await closeAll([ps]);
  }
}

// Nearest rank: the smallest value with at least @pct % at or below it.
function rank(sorted, pct) {
  if (!sorted.length) return 0;
  const k = Math.ceil((pct * sorted.length) / 100);
  return sorted[k ? k - 1 : 0];
}

async function pingMain(cfg, cmds, UnixSocketPubSub) {
  const { size, count, warmup } = cfg;
  const total = warmup + count;
  const pad = 'x'.repeat(size - MIN_SIZE);
  const trips = new Float64Array(count);
  let n = 0;
  let want = -1;
  let sent = 0n;
  let lost = 0;
  let stale = 0;
  let bad = 0;
  let failed = 0;
  let finish = noop;
  let ps = null;

  const sendNext = () => {
    want++;
    if (want >= total) {
      finish();
      return;
    }
    const data = makeData(0, want, pad);
    sent = now();
    ps.publish('p', { type: 'ping', runId: 'bench', data }).catch(() => {
      failed++; // unanswered: the timer counts it lost in time
    });
  };
  const onPong = (ev) => {
    const t = now(); // receipt: before anything else
    const p = parseData(ev && ev.data, size);
    if (!p || p[0] !== 0) {
      bad++;
      return;
    }
    if (p[1] !== want) {
      stale++; // the answer to a ping already counted lost
      return;
    }
    if (want >= warmup) trips[n++] = Number(t - sent);
    sendNext();
  };

  await expect(cmds, 'open', CMD_MS);
  ps = await startClient(UnixSocketPubSub, cfg.sock, 'q', onPong);
  try {
    send({ t: 'ready' });
    await expect(cmds, 'go', CMD_MS);
    await new Promise((resolve) => {
      const timer = setInterval(() => {
        if (want < total && now() - sent > BigInt(PONG_MS) * 1000000n) {
          lost++;
          sendNext();
        }
      }, 10);
      finish = () => {
        clearInterval(timer);
        resolve();
      };
      sendNext();
    });
    const sorted = Array.from(trips.subarray(0, n)).sort((a, b) => a - b);
    const sum = sorted.reduce((a, b) => a + b, 0);
    send({
      t: 'result',
      n,
      lost,
      stale,
      bad,
      failed,
      p50: rank(sorted, 50),
      p99: rank(sorted, 99),
      max: n ? sorted[n - 1] : 0,
      mean: n ? sum / n : 0,
    });
    await expect(cmds, 'quit', UNTIL_QUIT_MS);
  } finally {
    await closeAll([ps]);
  }
}

async function pongMain(cfg, cmds, UnixSocketPubSub) {
  let ps = null;
  let failed = 0;
  const onPing = (ev) => {
    ps.publish('q', { type: 'pong', runId: 'bench', data: ev.data }).catch(() => {
      failed++;
    });
  };
  await expect(cmds, 'open', CMD_MS);
  ps = await startClient(UnixSocketPubSub, cfg.sock, 'p', onPing);
  try {
    send({ t: 'ready' });
    // Answers run in the callback; wait for the end, however long.
    for (;;) {
      const m = await cmds.next(UNTIL_QUIT_MS);
      if (m.t === 'quit') break;
      throw new Error(`unexpected command ${JSON.stringify(m)}`);
    }
  } finally {
    await closeAll([ps]);
    if (failed) warn(`pong: ${failed} answers failed`);
  }
}

async function connsMain(cfg, cmds, UnixSocketPubSub) {
  const list = [];
  await expect(cmds, 'open', CMD_MS);
  try {
    for (let i = cfg.lo; i < cfg.hi; i++) {
      const ps = await startClient(UnixSocketPubSub, cfg.sock, `t${i}`, noop);
      list.push(ps);
      await ps.subscribe('all', noop);
    }
    send({ t: 'ready' });
    await expect(cmds, 'quit', UNTIL_QUIT_MS);
  } finally {
    await closeAll(list);
  }
}

const ROLES = {
  broker: brokerMain,
  sub: subMain,
  pub: pubMain,
  ping: pingMain,
  pong: pongMain,
  conns: connsMain,
};

async function childMain(role, cfg) {
  // The parent is gone (killed): nobody to report to. Everyone leaves, and
  // the broker, the last to go, removes the run's directory in its place.
  process.on('disconnect', () => {
    const dir = path.dirname(cfg.sock);
    if (role === 'broker' && path.basename(dir).startsWith('mastra-bench-')) {
      fs.rmSync(dir, { recursive: true, force: true });
    }
    process.exit(1);
  });
  // Mastra 1.71.0 can leave a write's promise unhandled when a connection
  // dies under it; say so, and let the run's own checks judge.
  process.on('unhandledRejection', (e) => {
    warn(`${role} ${cfg.idx}: unhandled rejection: ${errText(e)}`);
  });
  const cmds = commands();
  try {
    const UnixSocketPubSub = await loadMastra();
    await ROLES[role](cfg, cmds, UnixSocketPubSub);
    process.exit(0);
  } catch (e) {
    send({ t: 'fail', why: errText(e) });
    warn(`${role} ${cfg.idx}: ${errText(e)}`);
    // Let the message go out before exiting.
    await sleep(50);
    process.exit(1);
  }
}

// ---- the parent ---------------------------------------------------------------

// One child process and its messages. A child that fails or exits before
// it is told to quit aborts the whole run at once (Run.abort()).
class Kid {
  constructor(run, role, idx, cfg) {
    this.run = run;
    this.name = `${role} ${idx}`;
    this.queue = [];
    this.waiter = null;
    this.exited = false;
    this.quitting = false;
    this.onMessage = null;
    this.proc = fork(SCRIPT, ['--child', role, JSON.stringify({ ...cfg, idx })], {
      // A child's stdout is never the report: send it to stderr.
      stdio: ['ignore', 2, 2, 'ipc'],
    });
    this.exitPromise = new Promise((resolve) => {
      this.proc.on('exit', (code, sig) => {
        this.exited = true;
        this.status = sig ? `signal ${sig}` : `status ${code}`;
        this.code = code;
        if (!this.quitting) run.abort(new Error(`${this.name} exited (${this.status})`));
        resolve();
      });
    });
    this.proc.on('error', (e) => warn(`${this.name}: ${errText(e)}`));
    this.proc.on('message', (m) => {
      if (m && m.t === 'fail') {
        run.abort(new Error(`${this.name}: ${m.why}`));
      } else if (this.onMessage && this.onMessage(m)) {
        /* handled */
      } else if (this.waiter) {
        this.waiter.ok(m);
      } else {
        this.queue.push(m);
      }
    });
  }

  tell(msg) {
    if (this.exited || !this.proc.connected) throw new Error(`${this.name} is gone`);
    this.proc.send(msg);
  }

  // The next message, which must be of type @want, within @timeoutMs.
  hear(want, timeoutMs) {
    const check = (m) => {
      if (!m || m.t !== want) {
        throw new Error(`${this.name}: expected "${want}", got ${JSON.stringify(m)}`);
      }
      return m;
    };
    if (this.run.error) return Promise.reject(this.run.error);
    if (this.queue.length) return Promise.resolve(check(this.queue.shift()));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiter = null;
        reject(new Error(`${this.name}: no "${want}" in ${timeoutMs} ms`));
      }, timeoutMs);
      this.waiter = {
        ok: (m) => {
          clearTimeout(timer);
          this.waiter = null;
          try {
            resolve(check(m));
          } catch (e) {
            reject(e);
          }
        },
        fail: (e) => {
          clearTimeout(timer);
          this.waiter = null;
          reject(e);
        },
      };
    });
  }

  quit() {
    this.quitting = true;
    try {
      this.tell({ t: 'quit' });
    } catch {
      /* gone already */
    }
  }

  // Wait up to @timeoutMs for the exit; then SIGKILL it, by its pid.
  // True if it exited by itself with status 0.
  async reap(timeoutMs) {
    let timer;
    const late = new Promise((resolve) => {
      timer = setTimeout(() => resolve(true), timeoutMs);
    });
    const wasLate = await Promise.race([this.exitPromise.then(() => false), late]);
    clearTimeout(timer);
    if (!wasLate) return this.code === 0;
    warn(`${this.name} (pid ${this.proc.pid}) did not exit: killing it`);
    this.kill();
    await this.exitPromise;
    return false;
  }

  kill() {
    this.quitting = true;
    if (this.exited) return;
    try {
      process.kill(this.proc.pid, 'SIGKILL');
    } catch {
      /* gone already */
    }
  }
}

class Run {
  constructor(opts) {
    this.o = opts;
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mastra-bench-'));
    this.sock = path.join(this.dir, 'bus.sock');
    this.kids = [];
    this.broker = null;
    this.error = null;
  }

  spawn(role, idx, cfg = {}) {
    const k = new Kid(this, role, idx, { sock: this.sock, ...cfg });
    this.kids.push(k);
    return k;
  }

  // The first failure ends every wait of the run.
  abort(e) {
    if (this.error) return;
    this.error = e;
    for (const k of this.kids) {
      if (k.waiter) k.waiter.fail(e);
    }
  }

  async startBroker() {
    this.broker = this.spawn('broker', 0);
    this.broker.tell({ t: 'open' });
    await this.broker.hear('ready', OPEN_MS);
  }

  // Tell each of @kids @cmd, then hear @want from each, in order.
  async step(kids, cmd, want, timeoutMs) {
    for (const k of kids) k.tell(cmd);
    const out = [];
    for (const k of kids) out.push(await k.hear(want, timeoutMs));
    return out;
  }

  // Clients first, then the broker: a broker that leaves first makes its
  // clients elect a new one. Returns false if any exit was not clean.
  async end() {
    let clean = true;
    const clients = this.kids.filter((k) => k !== this.broker);
    for (const k of clients) k.quit();
    for (const k of clients) clean = (await k.reap(REAP_MS)) && clean;
    if (this.broker) {
      this.broker.quit();
      clean = (await this.broker.reap(REAP_MS)) && clean;
    }
    fs.rmSync(this.dir, { recursive: true, force: true });
    return clean;
  }

  // On failure or a signal: kill everything now, by pid, and wait.
  async kill() {
    for (const k of this.kids) k.kill();
    await Promise.all(this.kids.map((k) => k.exitPromise));
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

// The bytes of one broker -> subscriber frame for an event of @size bytes
// (as UnixSocketPubSub writes it), for the window's cap.
function eventFrameBytes(size) {
  const data = makeData(0, 0, 'x'.repeat(size - MIN_SIZE));
  const frame = {
    type: 'event',
    topic: 'b',
    event: {
      type: 'b',
      runId: 'bench',
      data,
      id: '00000000-0000-4000-8000-000000000000',
      createdAt: { __m_codec__: 'Date', v: new Date(0).toISOString() },
      deliveryAttempt: 1,
    },
  };
  return Buffer.byteLength(JSON.stringify(frame)) + 1;
}

async function runStream(run) {
  const o = run.o;
  const w = o.workload;
  const subs = [];
  const pubs = [];
  // counts[s][p]: subscriber s has received publisher p's events below it.
  const counts = Array.from({ length: o.subs }, () => new Array(o.pubs).fill(0));
  const lows = new Array(o.pubs).fill(0);

  await run.startBroker();
  for (let i = 0; i < o.subs; i++) {
    const k = run.spawn('sub', i, { size: o.size, pubs: o.pubs });
    k.onMessage = (m) => {
      if (m.t !== 'count') return false;
      counts[m.sub] = m.next;
      for (let p = 0; p < o.pubs; p++) {
        let least = Infinity;
        for (let s = 0; s < o.subs; s++) least = Math.min(least, counts[s][p]);
        if (least > lows[p]) {
          lows[p] = least;
          try {
            pubs[p].tell({ t: 'low', v: least });
          } catch {
            /* it ended; its "done" or exit says the rest */
          }
        }
      }
      return true;
    };
    subs.push(k);
  }
  for (let i = 0; i < o.pubs; i++) {
    pubs.push(
      run.spawn('pub', i, {
        size: o.size,
        inflight: o.inflight,
        seconds: o.seconds,
      }),
    );
  }
  // Subscribed, then connected, then go.
  await run.step(subs, { t: 'open' }, 'ready', OPEN_MS);
  await run.step(pubs, { t: 'open' }, 'ready', OPEN_MS);
  for (const k of pubs) k.tell({ t: 'go' });
  const published = [];
  let total = 0;
  let failed = false;
  for (const k of pubs) {
    const m = await k.hear('done', o.seconds * 1000 + FLUSH_MS + OPEN_MS);
    published.push(m.published);
    total += m.published;
    if (m.error) {
      warn(`${k.name}: publish failed: ${m.error}`);
      failed = true;
    }
  }
  const drain = { t: 'drain', want: published };
  const results = await run.step(subs, drain, 'result', DRAIN_MS + OPEN_MS);
  let lost = 0;
  let errors = 0;
  let timed = 0;
  let first = Infinity;
  let last = -Infinity;
  results.forEach((m, i) => {
    lost += m.lost;
    errors += m.errors;
    if (m.stalled) {
      warn(`sub ${i}: gave up after ${STALL_MS} ms without progress, ${m.lost} events missing`);
    }
    if (m.errors) warn(`sub ${i}: ${m.errors} events duplicated, out of order or malformed`);
    if (!m.n) return;
    timed += m.n;
    first = Math.min(first, m.first);
    last = Math.max(last, m.last);
  });
  const span = timed > 1 && last > first ? (last - first) / 1e9 : 0;
  const rate = span > 0 ? (timed - 1) / span : 0;
  const s = (n) => (n > 1 ? 's' : '');
  console.log(
    `mastra ${w}: ${o.pubs} publisher${s(o.pubs)} -> broker -> ${o.subs} subscriber${s(o.subs)}, ` +
      `${o.size}-byte events, ${o.seconds.toFixed(1)} s, window ${o.inflight}${o.windowNote}`,
  );
  console.log(
    `  published ${total}, received in ${span.toFixed(3)} s, lost ${lost}, errors ${errors}`,
  );
  let res;
  if (w === 'fanout') {
    res =
      `RESULT mastra-fanout size=${o.size} subs=${o.subs} deliveries_per_s=${rate.toFixed(0)} ` +
      `events_per_s=${(rate / o.subs).toFixed(0)} lost=${lost} published=${total}`;
  } else if (w === 'fanin') {
    res =
      `RESULT mastra-fanin size=${o.size} pubs=${o.pubs} events_per_s=${rate.toFixed(0)} ` +
      `lost=${lost} published=${total}`;
  } else {
    res =
      `RESULT mastra-throughput size=${o.size} events_per_s=${rate.toFixed(0)} ` +
      `lost=${lost} published=${total}`;
  }
  if (errors) res += ` errors=${errors}`;
  return { res, ok: !failed && !errors };
}

async function runRtt(run) {
  const o = run.o;
  await run.startBroker();
  const ping = run.spawn('ping', 0, { size: o.size, count: o.count, warmup: o.warmup });
  const pong = run.spawn('pong', 0, {});
  await run.step([ping], { t: 'open' }, 'ready', OPEN_MS);
  await run.step([pong], { t: 'open' }, 'ready', OPEN_MS);
  ping.tell({ t: 'go' });
  const m = await ping.hear('result', (o.count + o.warmup + 1) * PONG_MS + OPEN_MS);
  if (m.bad) warn(`ping: ${m.bad} malformed answers`);
  if (m.failed) warn(`ping: ${m.failed} pings could not be sent`);
  const us = (ns) => (ns / 1e3).toFixed(1);
  console.log(
    `mastra rtt: client A -> broker -> client B -> broker -> A, ${o.size}-byte events, ` +
      `${o.count} trips after ${o.warmup} warm-up`,
  );
  console.log(
    `  p50 ${us(m.p50)} us, p99 ${us(m.p99)} us, max ${us(m.max)} us, lost ${m.lost}, ` +
      `late answers ${m.stale}`,
  );
  return {
    res:
      `RESULT mastra-rtt size=${o.size} p50_us=${us(m.p50)} p99_us=${us(m.p99)} ` +
      `mean_us=${us(m.mean)} lost=${m.lost} count=${m.n}`,
    ok: !m.bad,
  };
}

// VmRSS of @pid in KiB.
function rssKb(pid) {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  const m = /^VmRSS:\s+(\d+) kB/m.exec(status);
  if (!m) throw new Error(`no VmRSS in /proc/${pid}/status`);
  return Number(m[1]);
}

async function runRss(run) {
  const o = run.o;
  const procs = Math.ceil(o.clients / CONNS_PER_PROC);
  await run.startBroker();
  const idle = rssKb(run.broker.proc.pid);
  const kids = [];
  for (let i = 0; i < procs; i++) {
    const lo = Math.floor((o.clients * i) / procs);
    const hi = Math.floor((o.clients * (i + 1)) / procs);
    kids.push(run.spawn('conns', i, { lo, hi }));
  }
  await run.step(kids, { t: 'open' }, 'ready', OPEN_MS + o.clients * 100);
  const busy = rssKb(run.broker.proc.pid);
  const [st] = await run.step([run.broker], { t: 'status' }, 'status', OPEN_MS);
  if (st.clients !== o.clients) {
    warn(`the broker counts ${st.clients} clients, not ${o.clients}`);
  }
  console.log(
    `mastra rss: broker ${idle} KiB idle, ${busy} KiB with ${o.clients} clients ` +
      `(each subscribed to 2 topics) in ${procs} processes`,
  );
  return {
    res: `RESULT mastra-rss server_rss_kb=${busy} server_rss_idle_kb=${idle} clients=${o.clients}`,
    ok: st.clients === o.clients,
  };
}

// ---- the command line -----------------------------------------------------------

const WORKLOADS = {
  throughput: { opts: ['--size', '--seconds', '--inflight'], run: runStream },
  fanout: { opts: ['--subs', '--size', '--seconds', '--inflight'], run: runStream },
  fanin: { opts: ['--pubs', '--size', '--seconds', '--inflight'], run: runStream },
  rtt: { opts: ['--count', '--warmup', '--size'], run: runRtt },
  rss: { opts: ['--clients'], run: runRss },
};

const LIMITS = {
  '--size': ['size', MIN_SIZE, MAX_SIZE],
  '--inflight': ['inflight', 0, Number.MAX_SAFE_INTEGER],
  '--subs': ['subs', 1, 1000],
  '--pubs': ['pubs', 1, 99],
  '--count': ['count', 1, 10000000],
  '--warmup': ['warmup', 0, 10000000],
  '--clients': ['clients', 1, 100000],
};

function usage(msg) {
  if (msg) warn(msg);
  process.stderr.write(
    'usage: node mastra.mjs throughput [--size 100] [--seconds 3] [--inflight N]\n' +
      '       node mastra.mjs fanout [--subs 16] [--size 100] [--seconds 3] [--inflight N]\n' +
      '       node mastra.mjs fanin [--pubs 4] [--size 100] [--seconds 3] [--inflight N]\n' +
      '       node mastra.mjs rtt [--count 20000] [--warmup 1000] [--size 100]\n' +
      '       node mastra.mjs rss [--clients 100]\n' +
      `--size is in bytes (${MIN_SIZE}..${MAX_SIZE}), --inflight 0 means no window ` +
      '(default max(1024, 64 MiB / size), at most what fits in Mastra\'s 64 MiB client queue)\n',
  );
  process.exit(2);
}

function parseArgs(argv) {
  const w = argv[0];
  if (!(w in WORKLOADS)) usage(w ? `unknown workload ${w}` : 'no workload');
  const o = {
    workload: w,
    size: 100,
    seconds: 3,
    subs: w === 'fanout' ? 16 : 1,
    pubs: w === 'fanin' ? 4 : 1,
    clients: 100,
    count: 20000,
    warmup: 1000,
    inflight: null,
    windowNote: '',
  };
  for (let i = 1; i < argv.length; i += 2) {
    const opt = argv[i];
    const v = argv[i + 1];
    if (!WORKLOADS[w].opts.includes(opt)) usage(`unknown option for ${w}: ${opt}`);
    if (opt === '--seconds') {
      const x = Number(v);
      if (v === undefined || !(x > 0) || x > 3600) {
        usage(`--seconds: expected 0 < S <= 3600, got ${v}`);
      }
      o.seconds = x;
      continue;
    }
    const [key, min, max] = LIMITS[opt];
    if (v === undefined || !/^[0-9]+$/.test(v) || Number(v) < min || Number(v) > max) {
      usage(`${opt}: expected an integer in ${min}..${max}, got ${v}`);
    }
    o[key] = Number(v);
  }
  if (o.inflight === null) {
    o.inflight = Math.max(1024, Math.floor(WINDOW_BYTES / o.size));
    const cap = Math.floor(MASTRA_QUEUE_BYTES / eventFrameBytes(o.size));
    if (o.inflight > cap) {
      o.inflight = cap;
      o.windowNote = " (Mastra's 64 MiB client queue)";
    }
  }
  return o;
}

async function parentMain(argv) {
  const o = parseArgs(argv);
  if (!fs.existsSync(path.join(CORE_DIR, 'package.json'))) {
    console.log('SKIP @mastra/core is not installed (bash tests/interop/setup.sh)');
    return 0;
  }
  const run = new Run(o);
  let signals = 0;
  // The first signal ends the run through the usual cleanup; a second one
  // kills the children at once.
  const onSignal = (sig) => {
    warn(`interrupted (${sig})`);
    if (signals++ === 0) run.abort(new Error(`interrupted by ${sig}`));
    else run.kill().then(() => process.exit(1));
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);

  let result;
  try {
    result = await WORKLOADS[o.workload].run(run);
  } catch (e) {
    warn(errText(e));
    await run.kill();
    return 1;
  }
  const clean = await run.end();
  if (!clean) warn('a process did not end cleanly');
  if (run.error) {
    // Interrupted while ending: no result to stand by.
    warn(errText(run.error));
    return 1;
  }
  console.log(result.res);
  return result.ok && clean ? 0 : 1;
}

if (process.argv[2] === '--child') {
  await childMain(process.argv[3], JSON.parse(process.argv[4]));
} else {
  process.exitCode = await parentMain(process.argv.slice(2));
}
