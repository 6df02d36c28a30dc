// onair — broadcast page: camera preview, go live, one RTCPeerConnection per watcher.
import { OnairSocket } from './ws.js';
import { Peer, preferCodec, webrtcSupported, describeTurn } from './rtc.js';
import {
  h, icon, hydrateIcons, showBanner, clearBanner, showServerError, bindConnectionIndicator,
  setStatus, setOverlay, copyLink, watchUrl, parseTime, formatClock, hueOf, shortId, exposeDebug,
} from './ui.js';

const TITLE_MAX = 200;
const $ = (id) => document.getElementById(id);

const els = {
  status: $('status'),
  form: $('golive-form'),
  title: $('title'),
  titleCount: $('title-count'),
  titleError: $('title-error'),
  goLive: $('go-live'),
  stop: $('stop'),
  preview: $('preview'),
  overlay: $('preview-overlay'),
  cameraRetry: $('camera-retry'),
  liveBadge: $('live-badge'),
  previewBadge: $('preview-badge'),
  timerChip: $('live-timer-chip'),
  timer: $('live-timer'),
  viewersChip: $('viewers-chip'),
  viewersChipN: $('viewers-chip-n'),
  mediaMode: $('media-mode'),
  viewerCount: $('viewer-count'),
  onAir: $('on-air-time'),
  shareBox: $('share-box'),
  shareLink: $('share-link'),
  copyShare: $('copy-share'),
  peers: $('peers'),
  peersEmpty: $('peers-empty'),
  toggleMic: $('toggle-mic'),
  toggleCam: $('toggle-cam'),
  micLevel: $('mic-level'),
  camLabel: $('cam-label'),
  micLabel: $('mic-label'),
};

hydrateIcons();

/** @type {MediaStream|null} */
let media = null;
let cameraPromise = null;
let cameraError = null;
let wantLive = false;      // the user asked to be live
let publishSent = false;   // publish sent, `published` not received yet
let published = null;      // the Stream from `published`
// Watchers (the recorder among them) may join between the stream's announcement and our
// `published`: keep them until then instead of losing their `watcher_joined`.
const earlyWatchers = new Set();
let liveSince = 0;
let serverViewers = null;  // last `viewers` count from the server
let relayPeer = null;      // the relay peer we upload to (`media` frame); null: peer to peer
let stoppedOnce = false;
let unpublishOwed = false; // stopped while the socket was down
/** watcher peer id -> Peer */
const peers = new Map();

const sock = new OnairSocket();
bindConnectionIndicator(sock);

// ------------------------------------------------------------------ camera

function previewOverlay(title, sub, opts) {
  setOverlay(els.overlay, title, sub, opts);
}

function describeMediaError(err) {
  const name = err?.name || '';
  if (name === 'NotAllowedError' || name === 'SecurityError') {
    return ['Camera access was blocked', 'Allow camera and microphone access in your browser’s site settings, then try again.'];
  }
  if (name === 'NotFoundError' || name === 'OverconstrainedError') {
    return ['No camera or microphone found', 'Connect a camera or microphone and try again.'];
  }
  if (name === 'NotReadableError' || name === 'AbortError') {
    return ['Your camera is busy', 'Another application may be using it. Close it and try again.'];
  }
  if (name === 'InsecureContext') {
    return ['Camera needs a secure connection', 'Open this page over HTTPS (or on localhost) to use your camera.'];
  }
  return ['Could not start the camera', err?.message || String(err)];
}

async function getMedia() {
  if (!navigator.mediaDevices?.getUserMedia) {
    const e = new Error('getUserMedia is unavailable'); e.name = 'InsecureContext'; throw e;
  }
  const video = { width: { ideal: 1280 }, height: { ideal: 720 }, frameRate: { ideal: 30 } };
  const audio = { echoCancellation: true, noiseSuppression: true };
  try {
    return await navigator.mediaDevices.getUserMedia({ video, audio });
  } catch (err) {
    if (err?.name !== 'NotFoundError' && err?.name !== 'OverconstrainedError' && err?.name !== 'NotReadableError') throw err;
    // Fall back to whatever we have: camera only, then microphone only.
    try { return await navigator.mediaDevices.getUserMedia({ video: true }); } catch { /* next */ }
    try { return await navigator.mediaDevices.getUserMedia({ audio: true }); } catch { /* next */ }
    throw err;
  }
}

/** Start the camera once; resolves to the MediaStream or null (error shown). */
function startCamera() {
  if (media) return Promise.resolve(media);
  if (cameraPromise) return cameraPromise;
  cameraError = null;
  previewOverlay('Starting your camera…', 'Your browser may ask for permission to use the camera and microphone.', { spinner: true });
  if (!wantLive) setStatus(els.status, 'connecting', 'Starting camera…');
  cameraPromise = (async () => {
    try {
      const s = await getMedia();
      media = s;
      els.preview.srcObject = s;
      els.preview.play().catch(() => {});
      const v = s.getVideoTracks()[0];
      const a = s.getAudioTracks()[0];
      els.camLabel.textContent = v ? (v.label || 'Camera') : 'No camera';
      els.micLabel.textContent = a ? (a.label || 'Microphone') : 'No microphone';
      for (const t of s.getTracks()) t.addEventListener('ended', () => onTrackEnded(t));
      applyToggles();
      startMeter(s);
      if (v) previewOverlay(null);
      else previewOverlay('Audio only', 'No camera was found; viewers will hear you.', { icon: 'mic' });
      if (!wantLive) setStatus(els.status, 'ready', 'Ready to go live');
      return s;
    } catch (err) {
      cameraError = err;
      const [title, sub] = describeMediaError(err);
      previewOverlay(title, sub, { icon: 'cameraOff', button: 'Try again' });
      setStatus(els.status, 'error', title);
      return null;
    } finally {
      cameraPromise = null;
    }
  })();
  return cameraPromise;
}

function stopCamera() {
  stopMeter();
  if (media) for (const t of media.getTracks()) t.stop();
  media = null;
  els.preview.srcObject = null;
  els.camLabel.textContent = '—';
  els.micLabel.textContent = '—';
}

function onTrackEnded(track) {
  if (!media || !media.getTracks().includes(track)) return;
  const what = track.kind === 'video' ? 'camera' : 'microphone';
  showBanner({ kind: 'error', title: `Your ${what} stopped`, message: 'It may have been unplugged or taken by another app.', key: 'track-ended' });
  if (track.kind === 'video') previewOverlay(`Your ${what} stopped`, 'Stop and go live again to pick it back up.', { icon: 'cameraOff' });
}

els.cameraRetry.addEventListener('click', () => startCamera());

// mute / camera off: tracks stay in place, they just send silence / black.
let micOff = false;
let camOff = false;
function applyToggles() {
  if (media) {
    for (const t of media.getAudioTracks()) t.enabled = !micOff;
    for (const t of media.getVideoTracks()) t.enabled = !camOff;
  }
  els.toggleMic.setAttribute('aria-pressed', String(micOff));
  els.toggleMic.replaceChildren(icon(micOff ? 'micOff' : 'mic'));
  els.toggleMic.title = micOff ? 'Unmute microphone' : 'Mute microphone';
  els.toggleMic.setAttribute('aria-label', els.toggleMic.title);
  els.toggleCam.setAttribute('aria-pressed', String(camOff));
  els.toggleCam.replaceChildren(icon(camOff ? 'cameraOff' : 'camera'));
  els.toggleCam.title = camOff ? 'Turn camera on' : 'Turn camera off';
  els.toggleCam.setAttribute('aria-label', els.toggleCam.title);
  if (media && media.getVideoTracks().length) {
    if (camOff) previewOverlay('Camera is off', 'Viewers see a black picture until you turn it back on.', { icon: 'cameraOff' });
    else previewOverlay(null);
  }
}
els.toggleMic.addEventListener('click', () => { micOff = !micOff; applyToggles(); });
els.toggleCam.addEventListener('click', () => { camOff = !camOff; applyToggles(); });

// microphone level meter
let audioCtx = null;
let meterRaf = 0;
function startMeter(s) {
  stopMeter();
  const track = s.getAudioTracks()[0];
  const Ctx = window.AudioContext || window.webkitAudioContext;
  if (!track || !Ctx) return;
  try {
    audioCtx = audioCtx || new Ctx();
    const src = audioCtx.createMediaStreamSource(new MediaStream([track]));
    const analyser = audioCtx.createAnalyser();
    analyser.fftSize = 512;
    src.connect(analyser);
    const buf = new Float32Array(analyser.fftSize);
    const loop = () => {
      analyser.getFloatTimeDomainData(buf);
      let sum = 0;
      for (const x of buf) sum += x * x;
      const rms = Math.sqrt(sum / buf.length);
      const pct = micOff ? 0 : Math.min(100, Math.round(Math.sqrt(rms) * 160));
      els.micLevel.style.width = `${pct}%`;
      meterRaf = requestAnimationFrame(loop);
    };
    loop();
  } catch (err) {
    console.info('[onair] level meter unavailable', err);
  }
}
function stopMeter() {
  cancelAnimationFrame(meterRaf);
  els.micLevel.style.width = '0%';
}
// Audio contexts start suspended until the user interacts with the page.
document.addEventListener('pointerdown', () => { if (audioCtx?.state === 'suspended') audioCtx.resume().catch(() => {}); });

// ------------------------------------------------------------------- UI

function renderTitleCount() {
  const n = [...els.title.value].length;
  els.titleCount.textContent = `${n} / ${TITLE_MAX}`;
}

function titleError(msg) {
  els.titleError.textContent = msg || '';
  els.titleError.hidden = !msg;
  if (msg) els.title.setAttribute('aria-invalid', 'true'); else els.title.removeAttribute('aria-invalid');
}

els.title.addEventListener('input', () => { renderTitleCount(); if (els.title.value.trim()) titleError(''); });

function renderControls() {
  els.goLive.hidden = wantLive;
  els.stop.hidden = !wantLive;
  els.title.disabled = wantLive;
  const live = !!published;
  els.liveBadge.hidden = !live;
  els.timerChip.hidden = !live;
  els.viewersChip.hidden = !live;
  els.previewBadge.hidden = live;
  els.shareBox.hidden = !live;
  if (live) els.shareLink.value = watchUrl(published.id);
  document.title = live ? `● Live: ${published.title || els.title.value} · onair` : 'Go live · onair';
  renderViewers();
  tick();
}

function viewerCount() {
  if (!published) return 0;
  return serverViewers ?? [...peers.values()].filter((p) => !p.closed).length;
}

function renderViewers() {
  const n = viewerCount();
  els.viewerCount.textContent = String(n);
  els.viewersChipN.textContent = String(n);
}

function renderPeers() {
  els.peers.replaceChildren(...[...peers.values()].map((p) => {
    const st = p.pc.connectionState;
    let label = { new: 'connecting', connecting: 'connecting', connected: 'connected', disconnected: 'interrupted', failed: 'failed', closed: 'closed' }[st] || st;
    if (p.trouble && st !== 'connected') label = 'cannot connect';
    return h('li', { dataset: { peerId: p.remoteId } },
      h('span', { class: 'peer-avatar', style: { '--h': String(hueOf(p.remoteId)) } }, String(p.remoteId).replace(/[^a-z0-9]/gi, '').slice(0, 2).toUpperCase() || '?'),
      h('span', { class: 'peer-id', title: p.remoteId }, p.remoteId === relayPeer ? 'onair relay · sends to every viewer' : shortId(p.remoteId)),
      h('span', { class: 'peer-state', dataset: { state: st } }, label));
  }));
  els.peersEmpty.hidden = peers.size > 0;
  els.peersEmpty.textContent = published ? 'Nobody yet. Viewers appear here as they join.' : 'Viewers appear here once you are live.';
}

function tick() {
  if (published) {
    const t = formatClock(Date.now() - liveSince);
    els.timer.textContent = t;
    els.onAir.textContent = t;
  } else {
    els.onAir.textContent = '—';
  }
}
setInterval(tick, 1000);

els.copyShare.addEventListener('click', () => copyLink(els.shareLink.value));

// ------------------------------------------------------------- go live

async function goLive() {
  if (wantLive) return;
  const title = els.title.value.trim();
  if (!title) { titleError('Give your broadcast a title.'); els.title.focus(); return; }
  if ([...title].length > TITLE_MAX) { titleError(`Keep the title under ${TITLE_MAX} characters.`); return; }
  if (!webrtcSupported()) {
    showBanner({ kind: 'error', title: 'This browser cannot broadcast', message: 'WebRTC is not available.', key: 'webrtc' });
    return;
  }
  titleError('');
  if (unpublishOwed && sock.ready) { sock.send({ type: 'unpublish' }); unpublishOwed = false; }
  wantLive = true;
  published = null;
  earlyWatchers.clear();
  publishSent = false;
  serverViewers = null;
  audioCtx?.resume?.().catch(() => {});
  setStatus(els.status, 'connecting', 'Connecting…');
  renderControls();
  renderPeers();
  const m = await startCamera();
  if (!wantLive) return; // stopped meanwhile
  if (!m) {
    wantLive = false;
    renderControls();
    return;
  }
  sendPublish();
}

function sendPublish() {
  if (!wantLive) return;
  setStatus(els.status, 'connecting', 'Connecting…');
  publishSent = sock.ready && sock.send({ type: 'publish', title: els.title.value.trim() });
}

function stop({ status = true } = {}) {
  const had = wantLive || published || publishSent;
  // Offline right now: tell the server once we are back (if it still knows us).
  if (had && !sock.send({ type: 'unpublish' })) unpublishOwed = true;
  wantLive = false;
  publishSent = false;
  published = null;
  earlyWatchers.clear();
  serverViewers = null;
  closeAllPeers();
  stopCamera();
  stoppedOnce = true;
  if (status) setStatus(els.status, 'stopped', 'Stopped');
  previewOverlay('Your broadcast has ended', 'The camera is off. Go live again whenever you are ready.', { icon: 'cameraOff', button: 'Turn camera on' });
  renderControls();
  renderPeers();
}

els.form.addEventListener('submit', (ev) => { ev.preventDefault(); goLive(); });
els.stop.addEventListener('click', () => stop());

// ---------------------------------------------------------- peer links

async function createPeer(id) {
  closePeer(id);
  const peer = new Peer(id, sock);
  peers.set(id, peer);
  const pc = peer.pc;
  for (const track of media.getTracks()) {
    const init = { direction: 'sendonly', streams: [media] };
    // To the relay, video goes in simulcast layers: it sends each viewer the best one its
    // bandwidth allows. A viewer's browser (peer to peer) takes one layer only.
    const layers = track.kind === 'video' && id === relayPeer ? simulcastLayers(track) : undefined;
    if (layers) init.sendEncodings = layers;
    const tr = pc.addTransceiver(track, init);
    // VP8 first: every browser and the recorder decode it.
    if (track.kind === 'video') preferCodec(tr, 'video', 'video/VP8');
  }
  pc.onconnectionstatechange = () => {
    if (peer.closed) return;
    renderPeers();
    renderViewers();
  };
  // We offer, so we restart ICE when a viewer's connection breaks (their network changed, a
  // relay went away); what cannot connect at all is said on the page.
  peer.watchIce({
    onTrouble: (kind) => {
      if (peer.closed) return;
      peer.trouble = kind;
      renderPeers();
      renderIceTrouble();
    },
    onRestart: () => {
      if (peer.closed) return;
      peer.restart().catch((err) => { if (!peer.closed) console.warn('[onair] ICE restart failed', err?.message || err); });
    },
    onHealthy: () => {
      peer.trouble = null;
      renderPeers();
      renderIceTrouble();
    },
  });
  renderPeers();
  renderViewers();
  try {
    await peer.offer();
  } catch (err) {
    if (peer.closed) return;
    console.error('[onair] offer failed', err);
    showBanner({ kind: 'warn', title: 'Could not connect a viewer', message: err?.message || String(err), key: 'offer' });
  }
}

/**
 * Simulcast layers for a camera track, lowest first (the relay ranks them by bitrate): full, half
 * and quarter resolution as the camera's height allows (a 180p layer is the smallest worth sending).
 */
function simulcastLayers(track) {
  const height = track.getSettings?.().height || 720;
  const layers = [
    { rid: 'q', scaleResolutionDownBy: 4, maxBitrate: 150_000 },
    { rid: 'h', scaleResolutionDownBy: 2, maxBitrate: 500_000 },
    { rid: 'f', scaleResolutionDownBy: 1, maxBitrate: 2_500_000 },
  ];
  const fitting = layers.filter((l) => height / l.scaleResolutionDownBy >= 180 || l.rid === 'f');
  return fitting.length > 1 ? fitting : undefined;
}

/** One banner while any viewer cannot be reached: what failed and what to try. */
function renderIceTrouble() {
  const stuck = [...peers.values()].filter((p) => !p.closed && p.trouble);
  if (!stuck.length) { clearBanner('ice'); return; }
  const who = stuck.length === 1 ? 'A viewer cannot' : `${stuck.length} viewers cannot`;
  showBanner({
    kind: 'warn',
    title: `${who} receive your video`,
    message: `No network path was found: your network or theirs may block WebRTC. ${describeTurn(sock.iceServers)}. `
      + 'Try another network or turn off a VPN or firewall. Still trying…',
    key: 'ice',
  });
}

function closePeer(id) {
  const p = peers.get(id);
  if (!p) return;
  p.close();
  peers.delete(id);
  renderIceTrouble();
}

function closeAllPeers() {
  for (const p of peers.values()) p.close();
  peers.clear();
  clearBanner('ice');
}

// -------------------------------------------------------- server frames

sock.on('published', (msg) => {
  if (!wantLive) {
    // Stopped while the publish was in flight.
    sock.send({ type: 'unpublish' });
    return;
  }
  published = msg.stream || { id: '', title: els.title.value.trim() };
  publishSent = false;
  liveSince = parseTime(published.started_at);
  if (!Number.isFinite(liveSince) || liveSince > Date.now() + 60_000) liveSince = Date.now();
  const v = Number(published.viewers);
  serverViewers = Number.isFinite(v) ? v : null;
  setStatus(els.status, 'live', 'Live');
  renderControls();
  for (const peer of earlyWatchers) if (media) createPeer(peer);
  earlyWatchers.clear();
  renderPeers();
});

sock.on('media', (msg) => {
  relayPeer = msg.relay || null;
  els.mediaMode.textContent = relayPeer ? 'Once, via relay' : 'To each viewer';
  els.mediaMode.title = relayPeer
    ? 'Your browser uploads one copy; the server relays it to every viewer and the recorder.'
    : 'No relay is running: your browser sends a copy to each viewer.';
  renderPeers();
});

sock.on('watcher_joined', ({ peer }) => {
  if (!peer) return;
  if (!published) {
    if (publishSent) earlyWatchers.add(peer);
    return;
  }
  if (media) createPeer(peer);
});

sock.on('watcher_left', ({ peer }) => {
  earlyWatchers.delete(peer);
  closePeer(peer);
  renderPeers();
  renderViewers();
});

sock.on('signal', async (msg) => {
  const peer = peers.get(msg.from);
  if (!peer) return;
  try {
    if (msg.kind === 'answer') await peer.accept(msg.payload);
    else if (msg.kind === 'candidate') await peer.addCandidate(msg.payload);
  } catch (err) {
    if (peer.closed) return;
    if (msg.kind === 'answer' && peer.restarts > 0 && media && peers.get(msg.from) === peer) {
      // Our ICE restart was answered from a new connection (the recorder replaces its connection
      // on every offer), which ours cannot take: start over with a new one.
      console.info('[onair] restart answer not applicable; reconnecting', msg.from, err?.message || err);
      createPeer(msg.from);
      return;
    }
    console.warn('[onair] bad signal from', msg.from, err);
  }
});

sock.on('viewers', (msg) => {
  if (!published || String(msg.stream_id) !== String(published.id)) return;
  const n = Number(msg.count);
  if (Number.isFinite(n)) serverViewers = n;
  renderViewers();
});

sock.on('stream_off', (msg) => {
  // Our own stream ended by the server (e.g. an operator or a lost session).
  if (!published || String(msg.stream_id) !== String(published.id)) return;
  if (!wantLive) return;
  showBanner({ kind: 'warn', title: 'Your broadcast was ended by the server', message: 'Press Go live to start again.', key: 'ended' });
  wantLive = false;
  published = null;
  earlyWatchers.clear();
  closeAllPeers();
  setStatus(els.status, 'stopped', 'Stopped');
  renderControls();
  renderPeers();
});

sock.on('error', (msg) => {
  if (wantLive && !published && publishSent) {
    // Our publish was refused: the status says why (no banner repeating it).
    wantLive = false;
    publishSent = false;
    setStatus(els.status, 'error', msg.message || 'Could not go live');
    renderControls();
    return;
  }
  showServerError(msg);
});

sock.on('session', ({ resumed }) => {
  clearBanner('conn-lost');
  if (unpublishOwed) {
    unpublishOwed = false;
    if (resumed) sock.send({ type: 'unpublish' });
  }
  if (!wantLive) return;
  if (published && resumed) {
    setStatus(els.status, 'live', 'Live');
    // Restarts that came due while we were offline were skipped: send them now.
    for (const p of peers.values()) if (p.troubleSince) p.restart().catch(() => {});
    return;
  }
  if (published && !resumed) {
    // The server forgot us: the old stream is gone, start a new one.
    closeAllPeers();
    published = null;
    earlyWatchers.clear();
    serverViewers = null;
    renderControls();
    renderPeers();
    showBanner({ kind: 'warn', title: 'Connection was lost', message: 'Your broadcast restarted; viewers will reconnect to the new stream.', key: 'restart', timeout: 10000 });
    sendPublish();
    return;
  }
  if (!publishSent || !resumed) sendPublish();
});

sock.on('state', (st) => {
  if (st !== 'online' && wantLive) setStatus(els.status, 'waiting', 'Reconnecting…');
});

window.addEventListener('pagehide', () => {
  if (wantLive || published) sock.send({ type: 'unpublish' });
});

exposeDebug(() => ({
  page: 'broadcast',
  socket: sock.state,
  peerId: sock.peerId,
  camera: media ? 'on' : (cameraError ? `error: ${cameraError.name || cameraError}` : 'off'),
  live: !!published,
  stream: published,
  wantLive,
  viewers: viewerCount(),
  peers: [...peers.values()].map((p) => ({ id: p.remoteId, state: p.pc.connectionState, iceRestarts: p.restarts })),
  stoppedOnce,
}), {
  socket: sock,
  pcs: () => [...peers.values()].map((p) => p.pc),
  // Tests: restart ICE on every connection now, as a network change would.
  restartIce: () => { for (const p of peers.values()) p.restart().catch(() => {}); },
});

renderTitleCount();
renderControls();
renderPeers();
sock.connect();
startCamera();
