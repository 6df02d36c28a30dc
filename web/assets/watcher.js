// onair — watcher page: live list in real time, one stream played over WebRTC.
import { OnairSocket } from './ws.js';
import { Peer, webrtcSupported, describeTurn, sessionIdOf, toDesc } from './rtc.js';
import {
  h, icon, hydrateIcons, showBanner, clearBanner, showServerError, bindConnectionIndicator,
  setStatus, setOverlay, copyLink, watchUrl, parseTime, formatClock, formatSince, plural, hueOf,
  exposeDebug,
} from './ui.js';

const $ = (id) => document.getElementById(id);

const els = {
  status: $('status'),
  list: $('streams'),
  empty: $('streams-empty'),
  count: $('stream-count'),
  stage: $('stage'),
  frame: $('player-frame'),
  player: $('player'),
  overlay: $('player-overlay'),
  retry: $('retry'),
  unmute: $('unmute'),
  fullscreen: $('fullscreen'),
  stageTitle: $('stage-title'),
  stageViewers: $('stage-viewers'),
  stageViewersText: $('stage-viewers-text'),
  stageUptime: $('stage-uptime'),
  stageSince: $('stage-since'),
  stageId: $('stage-id'),
  mediaState: $('media-state'),
  mediaRes: $('media-res'),
  leave: $('leave'),
  copyLink: $('copy-link'),
  ended: $('ended-message'),
  endedDetail: $('ended-detail'),
  endedDismiss: $('ended-dismiss'),
};

hydrateIcons();

const OFFER_PATIENCE_MS = 10_000;
// A connection broken this long without the broadcaster's ICE restart bringing it back: ask for a
// fresh one (watch again), e.g. when the broadcaster's page went away and came back.
const REWATCH_AFTER_MS = 20_000;

/** id -> Stream */
const streams = new Map();
let listLoaded = false;
// The server sends the newest streams only (and how many are live): the rest come a page at a
// time from /api/streams, after `moreCursor` (the last stream loaded, in the server's order).
let liveTotal = 0;
let moreCursor = null;
const cursorOf = (s) => `${s.started_at}:${s.id}`;
/**
 * What we are watching:
 * {id, title, peer: Peer|null, early: [{from, payload}], remoteStream, watchSent, offerTimer, playing}
 */
let current = null;
let endedFor = null; // id of the stream whose end is being shown
let unwatchOwed = false; // left a stream while the socket was down
let deepLink = new URLSearchParams(location.search).get('stream');

const sock = new OnairSocket();
bindConnectionIndicator(sock);

// ------------------------------------------------------------------ list

function sortStreams(list) {
  return list.sort((a, b) => (parseTime(b.started_at) || 0) - (parseTime(a.started_at) || 0)
    || String(a.id).localeCompare(String(b.id)));
}

function viewersOf(s) {
  const n = Number(s?.viewers);
  return Number.isFinite(n) && n >= 0 ? n : 0;
}

function titleOf(s) {
  return (s && typeof s.title === 'string' && s.title.trim()) || 'Untitled broadcast';
}

function createCard(s) {
  const li = h('li', { class: 'stream-card', dataset: { streamId: s.id } });
  const letter = (titleOf(s).match(/[\p{L}\p{N}]/u) || ['•'])[0].toUpperCase();
  li.append(h('button', { type: 'button', class: 'card-hit' },
    h('div', { class: 'thumb', style: { '--h': String(hueOf(s.id)) } },
      h('span', { class: 'badge badge-live' }, 'Live'),
      h('span', { class: 'chip chip-viewers', title: 'Watching now' }, icon('eye'), h('span', { class: 'js-viewers' }, '0')),
      h('span', { class: 'thumb-letter', 'aria-hidden': 'true' }, letter),
      h('span', { class: 'thumb-play', 'aria-hidden': 'true' }, icon('play')),
      h('span', { class: 'chip chip-uptime' }, icon('clock'), h('span', { class: 'js-uptime' }, '')),
      h('span', { class: 'badge badge-dark watching-tag', hidden: true }, 'Watching')),
    h('div', { class: 'stream-body' },
      h('div', { class: 'stream-title js-title' }),
      h('div', { class: 'stream-meta js-meta' }))));
  updateCard(li, s);
  return li;
}

function updateCard(li, s) {
  const title = titleOf(s);
  const started = parseTime(s.started_at);
  const set = (sel, text) => { const el = li.querySelector(sel); if (el && el.textContent !== text) el.textContent = text; };
  set('.js-title', title);
  set('.js-viewers', String(viewersOf(s)));
  set('.js-uptime', Number.isFinite(started) ? formatSince(started) : 'live');
  set('.js-meta', Number.isFinite(started) ? `Started ${formatSince(started) === 'just now' ? 'just now' : `${formatSince(started)} ago`}` : 'Live now');
  li.querySelector('.card-hit').setAttribute('aria-label', `Watch “${title}”, ${plural(viewersOf(s), 'viewer')}`);
  const watching = current?.id === s.id;
  if (watching) li.setAttribute('aria-current', 'true'); else li.removeAttribute('aria-current');
  li.querySelector('.watching-tag').hidden = !watching;
}

function renderList() {
  const ul = els.list;
  const sorted = sortStreams([...streams.values()]);
  const existing = new Map([...ul.children].map((li) => [li.dataset.streamId, li]));
  sorted.forEach((s, i) => {
    let li = existing.get(String(s.id));
    if (li) { existing.delete(String(s.id)); updateCard(li, s); } else li = createCard(s);
    if (ul.children[i] !== li) ul.insertBefore(li, ul.children[i] || null);
  });
  for (const li of existing.values()) li.remove();
  els.count.textContent = String(Math.max(liveTotal, sorted.length));
  renderMore();
  renderEmpty();
}

function renderMore() {
  const more = $('streams-more');
  if (!more) return;
  const rest = liveTotal - streams.size;
  more.hidden = !(moreCursor && rest > 0);
  $('streams-more-btn').textContent = `Show more (${rest} more live)`;
}

async function loadMore() {
  if (!moreCursor) return;
  const btn = $('streams-more-btn');
  btn.disabled = true;
  try {
    const res = await fetch(`/api/streams?cursor=${encodeURIComponent(moreCursor)}`, { headers: { accept: 'application/json' }, cache: 'no-store' });
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    const body = await res.json();
    for (const s of Array.isArray(body.streams) ? body.streams : []) streams.set(String(s.id), s);
    liveTotal = Number(body.total) || streams.size;
    moreCursor = body.next_cursor || null;
    renderList();
  } catch (err) {
    showBanner({ kind: 'warn', title: 'Could not load more broadcasts', message: String(err.message || err), key: 'more', timeout: 6000 });
  } finally {
    btn.disabled = false;
  }
}
$('streams-more-btn')?.addEventListener('click', loadMore);

function renderEmpty() {
  const show = streams.size === 0;
  els.empty.hidden = !show;
  els.list.hidden = !show ? false : true;
  if (!show) return;
  let state;
  if (listLoaded) state = 'none';
  else if (sock.state === 'connecting' && sock.attempt < 2) state = 'connecting';
  else state = 'offline';
  if (els.empty.dataset.state === state) return;
  els.empty.dataset.state = state;
  els.empty.replaceChildren();
  if (state === 'none') {
    els.empty.append(
      h('div', { class: 'empty-icon' }, icon('radio')),
      h('h2', {}, 'No one is live right now'),
      h('p', {}, 'New broadcasts show up here instantly — no need to reload. Want to be the first?'),
      h('a', { class: 'btn btn-live', href: '/broadcast' }, 'Go live'));
  } else if (state === 'connecting') {
    els.empty.append(h('div', { class: 'spinner', 'aria-hidden': 'true' }), h('h2', {}, 'Connecting…'), h('p', {}, 'Looking for live broadcasts.'));
  } else {
    els.empty.append(
      h('div', { class: 'empty-icon' }, icon('wifiOff')),
      h('h2', {}, 'Can’t reach onair'),
      h('p', {}, 'We’ll keep trying to reconnect. Live broadcasts will appear here as soon as we’re back.'));
  }
}

function applySnapshot(list, total) {
  streams.clear();
  const arr = Array.isArray(list) ? list : [];
  for (const s of arr) {
    if (s && s.id !== undefined && (s.state === undefined || s.state === 'live')) streams.set(String(s.id), s);
  }
  liveTotal = Number.isFinite(total) ? total : streams.size;
  moreCursor = liveTotal > arr.length && arr.length ? cursorOf(arr[arr.length - 1]) : null;
  listLoaded = true;
  renderList();
  if (current && !streams.has(current.id)) endWatch('ended');
  if (deepLink) {
    const id = deepLink;
    deepLink = null;
    // Beyond the first page, the stream may be live without being listed yet: ask for it.
    if (streams.has(id) || moreCursor) watch(id);
    else if (!current) showBanner({ kind: 'info', title: 'That broadcast isn’t live', message: 'It may have ended. Here is what is live now.', key: 'deeplink', timeout: 8000 });
  }
}

els.list.addEventListener('click', (ev) => {
  const li = ev.target.closest('[data-stream-id]');
  if (li && els.list.contains(li)) watch(li.dataset.streamId);
});

// ---------------------------------------------------------------- player

/** The player overlay: a spinner unless `spinner: false`; `retry` shows "Try again". */
function playerOverlay(title, sub = '', { spinner = true, retry = false } = {}) {
  setOverlay(els.overlay, title, sub, { spinner, button: retry ? 'Try again' : '' });
}

function renderStage() {
  if (!current) return;
  const s = streams.get(current.id) || current.stream || {};
  const n = viewersOf(s);
  els.stageTitle.textContent = titleOf(s);
  document.title = `${titleOf(s)} · onair`;
  els.stageViewers.textContent = String(n);
  els.stageViewersText.textContent = `${n} watching`;
  els.stageId.textContent = current.id;
  tickStage();
}

function tickStage() {
  if (!current) return;
  const s = streams.get(current.id) || current.stream || {};
  const started = parseTime(s.started_at);
  els.stageUptime.textContent = Number.isFinite(started) ? formatClock(Date.now() - started) : '—';
  const since = Number.isFinite(started) ? formatSince(started) : '';
  els.stageSince.textContent = since ? (since === 'just now' ? 'started just now' : `started ${since} ago`) : 'live';
  const pc = current.peer?.pc;
  els.mediaState.textContent = pc ? pc.connectionState : (current.watchSent ? 'waiting for offer' : 'waiting for connection');
  const v = els.player;
  els.mediaRes.textContent = v.videoWidth ? `${v.videoWidth}×${v.videoHeight}` : '—';
}

function setUrl(id) {
  const url = new URL(location.href);
  if (id) url.searchParams.set('stream', id); else url.searchParams.delete('stream');
  history.replaceState(null, '', url);
}

function renderUnmute() {
  const muted = els.player.muted;
  els.unmute.replaceChildren(icon(muted ? 'mute' : 'sound'), h('span', {}, muted ? 'Tap to unmute' : 'Mute'));
  els.unmute.classList.toggle('attention', muted);
  els.unmute.setAttribute('aria-pressed', String(!muted));
}

els.unmute.addEventListener('click', () => {
  els.player.muted = !els.player.muted;
  if (!els.player.muted) els.player.play().catch(() => {});
  renderUnmute();
});
els.player.addEventListener('volumechange', renderUnmute);

els.fullscreen.addEventListener('click', () => {
  if (document.fullscreenElement) document.exitFullscreen?.();
  else (els.frame.requestFullscreen?.() || els.player.webkitEnterFullscreen?.());
});

els.player.addEventListener('playing', () => {
  if (!current) return;
  current.playing = true;
  playerOverlay(null);
  setStatus(els.status, 'live', 'Live');
  tickStage();
});
els.player.addEventListener('resize', tickStage);

els.retry.addEventListener('click', () => { if (current) rewatch(); });
els.leave.addEventListener('click', () => leave());
els.copyLink.addEventListener('click', () => { if (current) copyLink(watchUrl(current.id)); });
els.endedDismiss.addEventListener('click', () => { els.ended.hidden = true; endedFor = null; });

// ------------------------------------------------------------- watching

function watch(id) {
  id = String(id);
  if (current?.id === id) {
    els.stage.scrollIntoView({ behavior: 'smooth', block: 'start' });
    return;
  }
  if (!webrtcSupported()) {
    showBanner({ kind: 'error', title: 'This browser cannot play live video', message: 'WebRTC is not available.', key: 'webrtc' });
    return;
  }
  if (current) {
    unwatch();
    teardown();
  }
  els.ended.hidden = true;
  endedFor = null;
  current = {
    id, stream: streams.get(id) || null, peer: null, early: [], remoteStream: null,
    watchSent: false, offerTimer: 0, playing: false,
  };
  els.player.muted = true; // autoplay policy: start muted, the user unmutes
  renderUnmute();
  els.stage.hidden = false;
  setUrl(id);
  renderStage();
  renderList();
  sendWatch();
  window.scrollTo({ top: 0, behavior: 'smooth' });
}

function sendWatch() {
  if (!current) return;
  current.playing = false;
  clearTimeout(current.offerTimer);
  current.watchSent = sock.ready && sock.send({ type: 'watch', stream_id: current.id });
  if (current.watchSent) {
    setStatus(els.status, 'connecting', 'Connecting…');
    playerOverlay('Connecting to the broadcast…', '');
    const c = current;
    c.offerTimer = setTimeout(() => {
      if (current === c && !c.peer) playerOverlay('Waiting for the broadcaster…', 'The broadcaster’s browser has not answered yet. This usually takes a second or two.');
    }, OFFER_PATIENCE_MS);
  } else {
    setStatus(els.status, 'connecting', 'Waiting for connection…');
    playerOverlay('Waiting for connection…', 'We’ll start the stream as soon as we’re connected.');
  }
  tickStage();
}

function rewatch() {
  if (!current) return;
  sock.send({ type: 'unwatch' });
  teardownPeer();
  sendWatch();
}

function teardownPeer() {
  if (!current) return;
  clearTimeout(current.offerTimer);
  current.peer?.close();
  current.peer = null;
  current.early = [];
  current.remoteStream = null;
  current.playing = false;
  els.player.srcObject = null;
}

function teardown() {
  teardownPeer();
  current = null;
  els.stage.hidden = true;
  document.title = 'Watch · onair';
}

/** Send unwatch now, or once the socket is back if it is down. */
function unwatch() {
  if (!sock.send({ type: 'unwatch' })) unwatchOwed = true;
}

function leave() {
  if (!current) return;
  unwatch();
  teardown();
  setUrl(null);
  setStatus(els.status, 'idle', 'Choose a stream to watch');
  renderList();
}

/** The watched broadcast is over (stream_off, vanished from the list, or not found). */
function endWatch(reason) {
  if (!current) return;
  const title = titleOf(streams.get(current.id) || current.stream);
  endedFor = current.id;
  teardown();
  setUrl(null);
  els.endedDetail.textContent = reason === 'gone'
    ? `“${title}” is no longer live. Pick another stream below.`
    : `“${title}” has finished. Thanks for watching — pick another live stream below.`;
  els.ended.hidden = false;
  setStatus(els.status, 'ended', 'Broadcast ended');
  renderList();
  window.scrollTo({ top: 0, behavior: 'smooth' });
}

/** What went wrong with the media path, and what to try, on the player. */
function showIceTrouble(kind) {
  const what = kind === 'failed' ? 'The video connection failed' : 'No network path to the broadcaster was found';
  setStatus(els.status, 'error', 'Cannot reach the broadcaster');
  playerOverlay('Could not reach the broadcaster',
    `${what}: your network or the broadcaster’s may block WebRTC. ${describeTurn(sock.iceServers)}. `
    + 'Try another network (e.g. a phone hotspot) or turn off a VPN or firewall. Still trying…',
    { spinner: false, retry: true });
  els.overlay.dataset.reason = 'ice';
}

/** An offer for the connection we already have (same SDP session): an ICE restart or other renegotiation. */
function isRenegotiation(peer, from, payload) {
  if (!peer || peer.closed || peer.remoteId !== from) return false;
  const now = sessionIdOf(peer.pc.remoteDescription?.sdp);
  return !!now && now === sessionIdOf(toDesc(payload, 'offer').sdp);
}

async function onOffer(from, payload) {
  const c = current;
  clearTimeout(c.offerTimer);
  if (isRenegotiation(c.peer, from, payload)) {
    const peer = c.peer;
    try {
      await peer.answer(payload);
      peer.restarts += 1;
    } catch (err) {
      if (!peer.closed) console.warn('[onair] renegotiation failed', err?.message || err);
    }
    return;
  }
  // Otherwise a new offer means a new connection on the broadcaster's side.
  c.peer?.close();
  c.remoteStream = new MediaStream();
  const peer = new Peer(from, sock);
  c.peer = peer;
  // Candidates that arrived before this offer wait for the remote description.
  for (const e of c.early) if (e.from === from) peer.addCandidate(e.payload);
  c.early = c.early.filter((e) => e.from !== from);
  const pc = peer.pc;

  pc.ontrack = (ev) => {
    if (current !== c || c.peer !== peer) return;
    if (!c.remoteStream.getTracks().includes(ev.track)) c.remoteStream.addTrack(ev.track);
    if (els.player.srcObject !== c.remoteStream) els.player.srcObject = c.remoteStream;
    els.player.play().catch((err) => {
      if (err?.name === 'NotAllowedError' && current === c) {
        playerOverlay('Click to start playback', 'Your browser blocked autoplay.', { spinner: false });
        els.overlay.onclick = () => { els.overlay.onclick = null; els.player.play().catch(() => {}); };
      }
    });
  };
  pc.onconnectionstatechange = () => {
    if (current !== c || c.peer !== peer) return;
    const st = pc.connectionState;
    tickStage();
    if (st === 'connected') {
      delete els.overlay.dataset.reason;
      if (!c.playing) playerOverlay('Starting video…', '');
      else playerOverlay(null);
      if (c.playing) setStatus(els.status, 'live', 'Live');
    } else if (st === 'disconnected' && !peer.troubleShown) {
      setStatus(els.status, 'waiting', 'Reconnecting…');
      playerOverlay('Connection interrupted', 'Trying to get the picture back…');
    }
  };
  // The broadcaster's page offers, so it restarts ICE; we say what is wrong meanwhile, and ask for
  // a whole new connection if its restarts do not bring the picture back.
  peer.watchIce({
    onTrouble: (kind) => {
      if (current !== c || c.peer !== peer) return;
      peer.troubleShown = true;
      showIceTrouble(kind);
    },
    onRestart: () => {
      if (current !== c || c.peer !== peer) return;
      if (peer.troubleSince && Date.now() - peer.troubleSince > REWATCH_AFTER_MS) rewatch();
    },
    onHealthy: () => {
      if (current !== c || c.peer !== peer) return;
      peer.troubleShown = false;
    },
  });

  playerOverlay('Connecting to the broadcast…', '');
  try {
    await peer.answer(payload);
  } catch (err) {
    if (peer.closed) return;
    console.error('[onair] negotiation failed', err);
    setStatus(els.status, 'error', 'Could not start the video');
    playerOverlay('Could not start the video', err?.message || String(err), { spinner: false, retry: true });
  }
}

// --------------------------------------------------------- server frames

sock.on('streams', (msg) => applySnapshot(msg.streams, msg.total));

sock.on('stream_on', (msg) => {
  const s = msg.stream;
  if (!s || s.id === undefined) return;
  if (!streams.has(String(s.id))) liveTotal += 1;
  streams.set(String(s.id), s);
  renderList();
  if (current?.id === String(s.id)) renderStage();
});

sock.on('stream_off', (msg) => {
  const id = String(msg.stream_id ?? msg.stream?.id ?? '');
  if (streams.delete(id) || liveTotal > streams.size) liveTotal = Math.max(streams.size, liveTotal - 1);
  renderList();
  if (current?.id === id) endWatch('ended');
});

sock.on('viewers', (msg) => {
  const id = String(msg.stream_id ?? '');
  const s = streams.get(id);
  if (s) s.viewers = msg.count;
  else if (current?.id === id && current.stream) current.stream.viewers = msg.count;
  const li = els.list.querySelector(`[data-stream-id="${CSS.escape(id)}"]`);
  if (li && s) updateCard(li, s);
  if (current?.id === id) renderStage();
});

sock.on('signal', (msg) => {
  if (!current) return;
  const { from } = msg;
  if (msg.kind === 'offer') {
    onOffer(from, msg.payload);
  } else if (msg.kind === 'candidate') {
    if (current.peer && current.peer.remoteId === from) current.peer.addCandidate(msg.payload);
    else current.early.push({ from, payload: msg.payload });
  }
});

sock.on('error', (msg) => {
  // A watch that cannot be served: the stream is gone.
  if (current && !current.peer && msg.code === 'not_found') {
    endWatch('gone');
    return;
  }
  if (current && msg.code === 'too_slow') {
    // The relay let us go: our network cannot carry even the stream's lowest quality.
    teardownPeer();
    setStatus(els.status, 'error', 'Your connection is too slow');
    playerOverlay('Your connection is too slow for this stream',
      'Even its lowest quality did not get through. Try a faster network (or close other downloads), then try again.',
      { spinner: false, retry: true });
    els.overlay.dataset.reason = 'too_slow';
    return;
  }
  if (current && !current.peer && (msg.code === 'forbidden' || msg.code === 'unauthenticated' || msg.code === 'full' || msg.code === 'unavailable' || msg.code === 'bad_request')) {
    // Shown on the player and in the status; no banner repeating it.
    setStatus(els.status, 'error', msg.message || 'Could not watch this stream');
    playerOverlay('Could not watch this stream', msg.message || '', { spinner: false, retry: true });
    return;
  }
  showServerError(msg);
});

sock.on('session', ({ resumed }) => {
  clearBanner('conn-lost');
  if (unwatchOwed) {
    unwatchOwed = false;
    if (resumed && !current) sock.send({ type: 'unwatch' });
  }
  if (current && resumed && current.peer && !current.peer.connected) {
    // Our answer to an ICE restart may have been lost with the old socket (a network change
    // breaks both): send it again.
    current.peer.resend();
  }
  if (current && (!resumed || !current.watchSent)) {
    // A fresh identity: the broadcaster knows nothing about us any more.
    teardownPeer();
    sendWatch();
  }
});

sock.on('state', (st) => {
  renderEmpty();
  if (st === 'reconnecting' && current) {
    if (!current.playing) setStatus(els.status, 'connecting', 'Reconnecting…');
  }
});

// ----------------------------------------------- fallback: HTTP list poll

// While the socket is down, keep the list fresh from GET /api/streams.
async function pollStreams() {
  if (sock.ready) return;
  try {
    const res = await fetch('/api/streams', { headers: { accept: 'application/json' }, cache: 'no-store' });
    if (!res.ok) return;
    const body = await res.json();
    if (!sock.ready && Array.isArray(body?.streams)) applySnapshot(body.streams, body.total);
  } catch { /* offline */ }
}
setTimeout(pollStreams, 3000);
setInterval(pollStreams, 10_000);

// -------------------------------------------------------------- tickers

setInterval(() => {
  tickStage();
}, 1000);
setInterval(() => {
  for (const li of els.list.children) {
    const s = streams.get(li.dataset.streamId);
    if (s) updateCard(li, s);
  }
}, 15_000);

window.addEventListener('pagehide', () => {
  if (current) sock.send({ type: 'unwatch' });
});

exposeDebug(() => ({
  page: 'watcher',
  socket: sock.state,
  peerId: sock.peerId,
  streams: [...streams.keys()],
  listLoaded,
  watching: current?.id ?? null,
  connection: current?.peer?.pc.connectionState ?? null,
  ice: current?.peer?.pc.iceConnectionState ?? null,
  iceRestarts: current?.peer?.restarts ?? 0,
  playing: !!current?.playing,
  ended: endedFor,
}), { socket: sock, pc: () => current?.peer?.pc ?? null });

renderEmpty();
sock.connect();
