// onair — recordings page: list from GET /api/recordings, play in page, download.
import {
  h, icon, hydrateIcons, showBanner, clearBanner, parseTime, formatClock, formatBytes, formatDate,
  plural, exposeDebug,
} from './ui.js';

const $ = (id) => document.getElementById(id);
const els = {
  list: $('recordings'),
  skeleton: $('rec-skeleton'),
  empty: $('rec-empty'),
  count: $('rec-count'),
  updated: $('rec-updated'),
  filter: $('filter'),
  refresh: $('refresh'),
};

hydrateIcons();

const POLL_ACTIVE_MS = 5_000;   // while something is still recording
const POLL_IDLE_MS = 30_000;

/** id -> recording */
let recordings = new Map();
let loaded = false;
let loadError = null;
let lastLoad = 0;
let pollTimer = 0;
let inFlight = null;

const STATE = {
  recording: { cls: 'badge-rec', label: 'Recording' },
  complete: { cls: 'badge-ok', label: 'Complete' },
  failed: { cls: 'badge-fail', label: 'Failed' },
};

/** The file's extension: `mp4` for H.264 recordings, `webm` otherwise. */
function extensionOf(r) {
  const m = /\.(webm|mp4)$/.exec(String(r.file_name || ''));
  return m ? m[1] : 'webm';
}

function mediaUrl(r) {
  return `/recordings/${encodeURIComponent(r.id)}.${extensionOf(r)}`;
}

function downloadName(r) {
  const base = String(r.file_name || '').split('/').pop();
  if (base) return base;
  return `${String(r.title || r.id).replace(/[^\p{L}\p{N} _.-]+/gu, '').trim().slice(0, 80) || r.id}.${extensionOf(r)}`;
}

function titleOf(r) {
  return (typeof r.title === 'string' && r.title.trim()) || 'Untitled broadcast';
}

/**
 * "Part n of m" for the recordings of a broadcast recorded in several parts (a recorder was replaced
 * mid-broadcast and another recorded on), by recording id; oldest part first.
 */
function partsOf(list) {
  const byStream = new Map();
  for (const r of list) {
    if (!r.stream_id) continue;
    const k = String(r.stream_id);
    if (!byStream.has(k)) byStream.set(k, []);
    byStream.get(k).push(r);
  }
  const out = new Map();
  for (const rs of byStream.values()) {
    if (rs.length < 2) continue;
    rs.sort((a, b) => (parseTime(a.started_at) || 0) - (parseTime(b.started_at) || 0));
    rs.forEach((r, i) => out.set(String(r.id), `Part ${i + 1} of ${rs.length}`));
  }
  return out;
}

function createItem(r, part) {
  const video = h('video', { controls: true, preload: 'metadata', playsinline: true, src: mediaUrl(r) });
  const frame = h('div', { class: 'video-frame' }, video);
  video.addEventListener('error', () => {
    if (frame.querySelector('.overlay')) return;
    const rec = recordings.get(String(r.id));
    const failed = rec?.state === 'failed';
    frame.append(h('div', { class: 'overlay' },
      h('div', { class: 'overlay-icon' }, icon('film')),
      h('div', { class: 'overlay-title' }, failed ? 'This recording failed' : 'Can’t play this recording'),
      h('div', { class: 'overlay-sub' }, failed ? 'There is no playable video.' : 'Your browser could not load the file. You can still try downloading it.')));
  });
  const li = h('li', { class: 'card rec-card', dataset: { recordingId: r.id } },
    frame,
    h('div', { class: 'rec-body' },
      h('div', { class: 'rec-head' },
        h('div', { class: 'rec-title js-title' }),
        h('span', { class: 'badge js-part', hidden: true }),
        h('span', { class: 'badge js-state' })),
      h('div', { class: 'rec-meta' },
        h('span', { title: 'Started' }, icon('calendar'), h('span', { class: 'js-date' })),
        h('span', { title: 'Duration' }, icon('clock'), h('span', { class: 'js-duration' })),
        h('span', { title: 'Size' }, icon('disk'), h('span', { class: 'js-size' }))),
      h('div', { class: 'rec-meta js-codecs' }),
      h('div', { class: 'rec-error js-error', hidden: true }),
      h('div', { class: 'rec-actions' },
        h('a', { class: 'btn btn-sm js-download', href: mediaUrl(r), download: downloadName(r) }, icon('download'), 'Download'),
        h('span', { class: 'spacer' }),
        h('span', { class: 'field-hint mono', title: `Stream ${r.stream_id || ''}` }, String(r.id)))));
  updateItem(li, r, part);
  return li;
}

function updateItem(li, r, part) {
  const prev = li.dataset.state;
  const state = STATE[r.state] ? r.state : 'complete';
  li.dataset.state = state;
  const set = (sel, text) => { const el = li.querySelector(sel); if (el.textContent !== text) el.textContent = text; };
  set('.js-title', titleOf(r));
  const partBadge = li.querySelector('.js-part');
  partBadge.hidden = !part;
  set('.js-part', part || '');
  const badge = li.querySelector('.js-state');
  badge.className = `badge js-state ${STATE[state].cls}`;
  set('.js-state', STATE[state].label);
  set('.js-date', formatDate(parseTime(r.started_at)));
  const dur = Number(r.duration_ms);
  set('.js-duration', Number.isFinite(dur) && dur > 0 ? formatClock(dur) : (state === 'recording' ? 'in progress' : '—'));
  set('.js-size', formatBytes(Number(r.bytes)));
  const codecs = li.querySelector('.js-codecs');
  const list = [r.video_codec, r.audio_codec].filter((c) => typeof c === 'string' && c);
  const key = list.join('|');
  if (codecs.dataset.key !== key) {
    codecs.dataset.key = key;
    codecs.replaceChildren(...list.map((c) => h('span', { class: 'codec' }, c)));
  }
  codecs.hidden = list.length === 0;
  // Nothing to download from a failed recording that never wrote a byte.
  li.querySelector('.js-download').hidden = state === 'failed' && !(Number(r.bytes) > 0);
  const err = li.querySelector('.js-error');
  // A failed recording says why; a finished one may carry a note (e.g. recorded audio only).
  const msg = state === 'failed' ? (r.error || 'The recording failed.') : (r.error || '');
  err.hidden = !msg;
  err.classList.toggle('rec-note', state !== 'failed');
  if (err.textContent !== msg) err.textContent = msg;
  // A recording that just finished: reload its player if nobody is watching it.
  if (prev === 'recording' && state !== 'recording') {
    const v = li.querySelector('video');
    if (v && v.paused && v.currentTime === 0) v.load();
  }
  li.hidden = !matchesFilter(r);
}

function matchesFilter(r) {
  const q = els.filter.value.trim().toLowerCase();
  if (!q) return true;
  return titleOf(r).toLowerCase().includes(q) || String(r.id).toLowerCase().includes(q)
    || String(r.stream_id || '').toLowerCase().includes(q);
}

function render() {
  els.skeleton.hidden = loaded || !!loadError;
  els.list.setAttribute('aria-busy', String(!loaded));
  const sorted = [...recordings.values()].sort((a, b) => (parseTime(b.started_at) || 0) - (parseTime(a.started_at) || 0));
  const existing = new Map([...els.list.children].map((li) => [li.dataset.recordingId, li]));
  const parts = partsOf(sorted);
  sorted.forEach((r, i) => {
    const id = String(r.id);
    let li = existing.get(id);
    if (li) { existing.delete(id); updateItem(li, r, parts.get(id)); } else li = createItem(r, parts.get(id));
    if (els.list.children[i] !== li) els.list.insertBefore(li, els.list.children[i] || null);
  });
  for (const li of existing.values()) li.remove();

  const visible = sorted.filter(matchesFilter).length;
  els.count.textContent = loaded ? (visible === sorted.length ? String(sorted.length) : `${visible} of ${sorted.length}`) : '…';
  renderEmpty(sorted.length, visible);
  renderUpdated();
}

function renderEmpty(total, visible) {
  const e = els.empty;
  let state = '';
  if (!loaded && loadError) state = 'error';
  else if (loaded && total === 0) state = 'none';
  else if (loaded && visible === 0) state = 'nomatch';
  e.hidden = !state;
  if (e.dataset.state === state) return;
  e.dataset.state = state;
  e.replaceChildren();
  if (state === 'error') {
    e.append(h('div', { class: 'empty-icon' }, icon('wifiOff')),
      h('h2', {}, 'Couldn’t load recordings'),
      h('p', {}, 'The server did not answer. Check your connection and try again.'),
      h('button', { type: 'button', class: 'btn', onclick: () => load() }, icon('refresh'), 'Try again'));
  } else if (state === 'none') {
    e.append(h('div', { class: 'empty-icon' }, icon('film')),
      h('h2', {}, 'No recordings yet'),
      h('p', {}, 'Every broadcast is recorded automatically. Go live and your recording shows up here.'),
      h('a', { class: 'btn btn-live', href: '/broadcast' }, 'Go live'));
  } else if (state === 'nomatch') {
    e.append(h('div', { class: 'empty-icon' }, icon('search')),
      h('h2', {}, 'No recordings match'),
      h('p', {}, 'Try a different title.'));
  }
}

function renderUpdated() {
  if (!lastLoad) { els.updated.textContent = ''; return; }
  const s = Math.round((Date.now() - lastLoad) / 1000);
  const active = [...recordings.values()].filter((r) => r.state === 'recording').length;
  const when = s < 5 ? 'just now' : s < 60 ? `${s}s ago` : `${Math.round(s / 60)} min ago`;
  els.updated.textContent = `${active ? `${plural(active, 'recording')} in progress · ` : ''}Updated ${when}`;
}

async function load({ quiet = false } = {}) {
  if (inFlight) return inFlight;
  els.refresh.disabled = true;
  inFlight = (async () => {
    try {
      const res = await fetch('/api/recordings', { headers: { accept: 'application/json' }, cache: 'no-store' });
      if (!res.ok) {
        let detail = `HTTP ${res.status}`;
        try { const b = await res.json(); detail = b?.message || b?.error?.message || b?.error || detail; } catch { /* not JSON */ }
        throw new Error(String(detail));
      }
      const body = await res.json();
      const list = Array.isArray(body) ? body : (Array.isArray(body?.recordings) ? body.recordings : []);
      recordings = new Map(list.filter((r) => r && r.id !== undefined).map((r) => [String(r.id), r]));
      loaded = true;
      loadError = null;
      lastLoad = Date.now();
      clearBanner('load');
    } catch (err) {
      loadError = err;
      if (loaded || !quiet) {
        showBanner({ kind: loaded ? 'warn' : 'error', title: 'Couldn’t load recordings', message: err?.message || String(err), key: 'load', timeout: loaded ? 8000 : 0 });
      }
    } finally {
      inFlight = null;
      els.refresh.disabled = false;
      render();
      schedule();
    }
  })();
  return inFlight;
}

function schedule() {
  clearTimeout(pollTimer);
  const active = [...recordings.values()].some((r) => r.state === 'recording');
  pollTimer = setTimeout(() => { if (!document.hidden) load({ quiet: true }); else schedule(); }, active ? POLL_ACTIVE_MS : POLL_IDLE_MS);
}

els.refresh.addEventListener('click', () => load());
els.filter.addEventListener('input', () => render());
document.addEventListener('visibilitychange', () => {
  if (!document.hidden && Date.now() - lastLoad > 5000) load({ quiet: true });
});
setInterval(renderUpdated, 5000);

exposeDebug(() => ({
  page: 'recordings',
  loaded,
  error: loadError ? String(loadError.message || loadError) : null,
  recordings: [...recordings.values()].map((r) => ({ id: r.id, state: r.state })),
}));

render();
load();
