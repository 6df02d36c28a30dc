// One load generator for both stacks: N pairs, the two sides of each pair on different nodes,
// a 205-byte trickled ICE candidate sent by side A and echoed back by side B.
//   node load.js --stack socketio|onair --a URL --b URL --pairs N [--rate R | --window W] --seconds S
//                --pids P1,P2,...   (the server processes whose CPU is counted: every node and Redis)
// socketio: URL is http://HOST:PORT (socket.io-client, websocket transport);
// onair:    URL is ws://HOST:PORT/ws (plain WebSocket; B goes live, A watches B's stream, then they
//           signal, as browsers do).
// Prints one JSON line: sent, delivered (relayed messages, both directions), lost, RTT p50/p99/max ms,
// and the CPU seconds the --pids used in the measured window (utime+stime from /proc), divided into
// CPU µs per relayed message.
'use strict';
const fs = require('fs');
const { execSync } = require('child_process');
const WebSocket = require('ws');
const { io } = require('socket.io-client');

function args() {
  const a = { stack: 'onair', pairs: 100, rate: 20, window: 0, seconds: 10, warmup: 2 };
  const v = process.argv.slice(2);
  for (let i = 0; i < v.length; i += 2) a[v[i].replace(/^--/, '')] = v[i + 1];
  for (const k of ['pairs', 'rate', 'window', 'seconds', 'warmup']) a[k] = Number(a[k]);
  a.pids = String(a.pids || '').split(',').filter(Boolean).map(Number);
  return a;
}

// A realistic trickled candidate: 205 bytes of JSON payload.
const CANDIDATE = {
  candidate: 'candidate:842163049 1 udp 1677729535 203.0.113.77 54321 typ srflx raddr 192.168.1.20 rport 54321 generation 0 ufrag EsAw network-cost 999',
  sdpMid: '0',
  sdpMLineIndex: 0,
};

const CLK_TCK = Number(execSync('getconf CLK_TCK').toString().trim()) || 100;
// utime + stime of `pid`, in seconds.
function cpuSeconds(pid) {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / CLK_TCK;
}
const totalCpu = (pids) => pids.reduce((sum, p) => sum + cpuSeconds(p), 0);

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const within = (p, ms, what) => Promise.race([p, sleep(ms).then(() => { throw new Error(`timeout: ${what}`); })]);

// ---------------------------------------------------------------- adapters: connect, send, on receive

async function socketioSide(url) {
  const s = io(url, { transports: ['websocket'], forceNew: true, reconnection: false });
  await within(new Promise((res, rej) => { s.on('connect', res); s.on('connect_error', rej); }), 10000, 'socket.io connect');
  return {
    id: s.id,
    send: (to, payload) => s.emit('message', { to, type: 'candidate', payload }),
    onMessage: (fn) => s.on('message', (m) => fn(m.from, m.payload)),
    close: () => s.close(),
  };
}

function onairSocket(url) {
  const ws = new WebSocket(url);
  const queue = [];
  const waiters = [];
  ws.on('message', (data) => {
    const m = JSON.parse(data.toString());
    const w = waiters.findIndex((x) => x.pred(m));
    if (w >= 0) waiters.splice(w, 1)[0].res(m); else queue.push(m);
  });
  const next = (pred, what) => {
    const i = queue.findIndex(pred);
    if (i >= 0) return Promise.resolve(queue.splice(i, 1)[0]);
    return within(new Promise((res) => waiters.push({ pred, res })), 10000, what);
  };
  return { ws, next, opened: within(new Promise((res, rej) => { ws.on('open', res); ws.on('error', rej); }), 10000, 'ws open') };
}

async function onairPair(urlA, urlB, n) {
  const b = onairSocket(urlB);
  const a = onairSocket(urlA);
  await Promise.all([a.opened, b.opened]);
  const [wa, wb] = await Promise.all([a.next((m) => m.type === 'welcome', 'welcome'), b.next((m) => m.type === 'welcome', 'welcome')]);
  b.ws.send(JSON.stringify({ type: 'publish', title: `bench ${n}` }));
  const pub = await b.next((m) => m.type === 'published', 'published');
  a.ws.send(JSON.stringify({ type: 'watch', stream_id: pub.stream.id }));
  await b.next((m) => m.type === 'watcher_joined' && m.peer === wa.peer_id, 'watcher_joined');
  const side = (s, me) => ({
    id: me,
    send: (to, payload) => s.ws.send(JSON.stringify({ type: 'signal', to, kind: 'candidate', payload })),
    onMessage: (fn) => s.ws.on('message', (data) => {
      const t = data.toString();
      if (!t.startsWith('{"type":"signal"')) return;
      const m = JSON.parse(t);
      fn(m.from, m.payload);
    }),
    close: () => s.ws.close(),
  });
  return [side(a, wa.peer_id), side(b, wb.peer_id)];
}

// ---------------------------------------------------------------- the run

async function main() {
  const o = args();
  const pairs = [];
  for (let i = 0; i < o.pairs; i++) {
    if (o.stack === 'socketio') pairs.push(await Promise.all([socketioSide(o.a), socketioSide(o.b)]));
    else pairs.push(await onairPair(o.a, o.b, i));
  }
  let measuring = false;
  let sent = 0; let delivered = 0; let lost = 0;
  const rtts = [];
  const inflight = new Map(); // seq -> {at: sent at (ms), counted: sent inside the measured window}
  let seq = 0;
  for (const [a, b] of pairs) {
    b.onMessage((from, payload) => { b.send(from, payload); if (measuring) delivered++; });
    a.onMessage((_from, payload) => {
      const sent = inflight.get(payload.seq);
      if (sent === undefined) return;
      inflight.delete(payload.seq);
      if (measuring && sent.counted) { delivered++; rtts.push(performance.now() - sent.at); }
      // Closed loop: every echo sends the next message (warm-up included, or the loop would stall).
      if (o.window > 0 && running) fire(a, b);
    });
  }
  let running = true;
  const fire = (a, b) => {
    const s = seq++;
    inflight.set(s, { at: performance.now(), counted: measuring });
    if (measuring) sent++;
    a.send(b.id, { ...CANDIDATE, seq: s });
  };
  const start = () => {
    if (o.window > 0) {
      for (const [a, b] of pairs) for (let k = 0; k < o.window; k++) fire(a, b);
      return () => {};
    }
    const timers = pairs.map(([a, b], i) => {
      const every = 1000 / o.rate;
      let t;
      const kick = setTimeout(() => { t = setInterval(() => fire(a, b), every); }, (i * every) / pairs.length);
      return () => { clearTimeout(kick); clearInterval(t); };
    });
    return () => timers.forEach((f) => f());
  };
  const stop = start();
  await sleep(o.warmup * 1000);
  const cpu0 = totalCpu(o.pids);
  const each0 = o.pids.map(cpuSeconds);
  measuring = true;
  const t0 = Date.now();
  await sleep(o.seconds * 1000);
  measuring = false;
  const t1 = Date.now();
  const cpu = totalCpu(o.pids) - cpu0;
  const each = o.pids.map((p, i) => cpuSeconds(p) - each0[i]);
  running = false;
  stop();
  // Whatever was sent in the window and is not back within 2 s is lost.
  const pending = [...inflight.entries()].filter(([, v]) => v.counted).map(([k]) => k);
  await sleep(2000);
  for (const s of pending) if (inflight.has(s)) lost++;
  rtts.sort((x, y) => x - y);
  const q = (p) => (rtts.length ? rtts[Math.min(rtts.length - 1, Math.floor(p * rtts.length))] : null);
  const secs = (t1 - t0) / 1000;
  console.log(JSON.stringify({
    stack: o.stack, pairs: o.pairs, rate: o.rate, window: o.window, sent, delivered, lost,
    delivered_per_s: delivered / secs, p50_ms: q(0.5), p99_ms: q(0.99), max_ms: rtts.length ? rtts[rtts.length - 1] : null,
    cpu_s: cpu, cpu_us_per_msg: delivered ? (cpu * 1e6) / delivered : null,
    // Per process, in the order of --pids.
    cpu_us_per_msg_each: each.map((c) => (delivered ? (c * 1e6) / delivered : null)),
  }));
  for (const [a, b] of pairs) { a.close(); b.close(); }
  setTimeout(() => process.exit(0), 200);
}

main().catch((e) => { console.error(e.stack || String(e)); process.exit(1); });
