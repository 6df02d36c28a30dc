// onair — small shared UI helpers (no framework).

/** Create an element: h('div', {class: 'x', onclick: fn, dataset: {...}}, child, 'text', ...) */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k === 'style' && typeof v === 'object') {
      for (const [prop, val] of Object.entries(v)) {
        if (prop.startsWith('--')) el.style.setProperty(prop, val); else el.style[prop] = val;
      }
    }
    else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'html') el.innerHTML = v; // only ever used with our own static SVG strings
    else if (v === true) el.setAttribute(k, '');
    else el.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

/** Inline icons (24×24, stroke = currentColor). */
const P = {
  eye: '<path d="M2 12s3.6-7 10-7 10 7 10 7-3.6 7-10 7S2 12 2 12Z"/><circle cx="12" cy="12" r="3"/>',
  clock: '<circle cx="12" cy="12" r="9"/><path d="M12 7v5l3 2"/>',
  play: '<path d="M7 4.5v15l13-7.5z" fill="currentColor" stroke="none"/>',
  mute: '<path d="M11 5 6 9H3v6h3l5 4z"/><path d="m22 9-6 6M16 9l6 6"/>',
  sound: '<path d="M11 5 6 9H3v6h3l5 4z"/><path d="M15.5 8.5a5 5 0 0 1 0 7M19 5a10 10 0 0 1 0 14"/>',
  expand: '<path d="M4 9V4h5M20 9V4h-5M4 15v5h5M20 15v5h-5"/>',
  x: '<path d="M18 6 6 18M6 6l12 12"/>',
  alert: '<circle cx="12" cy="12" r="9"/><path d="M12 7.5v5.5M12 16.5v.01"/>',
  info: '<circle cx="12" cy="12" r="9"/><path d="M12 11v5.5M12 7.5v.01"/>',
  check: '<circle cx="12" cy="12" r="9"/><path d="m8 12 3 3 5-6"/>',
  radio: '<circle cx="12" cy="12" r="2.5"/><path d="M7.8 16.2a6 6 0 0 1 0-8.4M16.2 7.8a6 6 0 0 1 0 8.4M4.9 19.1a10 10 0 0 1 0-14.2M19.1 4.9a10 10 0 0 1 0 14.2"/>',
  tv: '<rect x="3" y="6" width="18" height="13" rx="2"/><path d="m8 2 4 4 4-4"/>',
  camera: '<path d="M15 10.5 21 7v10l-6-3.5"/><rect x="3" y="6" width="12" height="12" rx="2"/>',
  cameraOff: '<path d="M15 10.5 21 7v10l-6-3.5"/><rect x="3" y="6" width="12" height="12" rx="2"/><path d="M2 2l20 20"/>',
  mic: '<rect x="9" y="3" width="6" height="11" rx="3"/><path d="M5 11a7 7 0 0 0 14 0M12 18v3"/>',
  micOff: '<rect x="9" y="3" width="6" height="11" rx="3"/><path d="M5 11a7 7 0 0 0 14 0M12 18v3M3 3l18 18"/>',
  download: '<path d="M12 4v11M7 10l5 5 5-5M5 20h14"/>',
  film: '<rect x="3" y="4" width="18" height="16" rx="2"/><path d="M7 4v16M17 4v16M3 9h4M17 9h4M3 15h4M17 15h4"/>',
  disk: '<ellipse cx="12" cy="6" rx="8" ry="3"/><path d="M4 6v12c0 1.7 3.6 3 8 3s8-1.3 8-3V6M4 12c0 1.7 3.6 3 8 3s8-1.3 8-3"/>',
  calendar: '<rect x="3" y="5" width="18" height="16" rx="2"/><path d="M3 10h18M8 3v4M16 3v4"/>',
  refresh: '<path d="M20 11a8 8 0 0 0-14.9-3.9M4 5v4h4M4 13a8 8 0 0 0 14.9 3.9M20 19v-4h-4"/>',
  copy: '<rect x="9" y="9" width="11" height="11" rx="2"/><path d="M5 15V5a2 2 0 0 1 2-2h10"/>',
  search: '<circle cx="11" cy="11" r="7"/><path d="m20 20-4-4"/>',
  wifiOff: '<path d="M2 2l20 20M8.5 16.5a5 5 0 0 1 7 0M5 12.9a10 10 0 0 1 5.2-2.8M19 12.9a10 10 0 0 0-2.6-1.8M2 8.8a15 15 0 0 1 4.2-2.6M22 8.8A15 15 0 0 0 10.5 5.1M12 20h.01"/>',
  users: '<circle cx="9" cy="8" r="3.5"/><path d="M2.5 20a6.5 6.5 0 0 1 13 0M16 4.5a3.5 3.5 0 0 1 0 7M18 14a6.5 6.5 0 0 1 3.5 6"/>',
};

export function icon(name, cls = '') {
  const span = document.createElement('span');
  span.innerHTML = `<svg viewBox="0 0 24 24" fill="none" stroke="currentColor" stroke-width="2" stroke-linecap="round" stroke-linejoin="round" aria-hidden="true" class="${cls}">${P[name] || ''}</svg>`;
  return span.firstChild;
}

/** Replace `<i data-icon="name">` placeholders in static HTML with SVGs. */
export function hydrateIcons(root = document) {
  for (const el of root.querySelectorAll('i[data-icon]')) el.replaceWith(icon(el.dataset.icon, el.className));
}

// ---------------------------------------------------------------- banners

const ERROR_TITLES = {
  bad_json: 'The server could not read a message',
  unknown_type: 'The server did not understand a request',
  bad_request: 'Request rejected',
  too_large: 'Message too large',
  rate_limited: 'Slow down',
  not_found: 'Not found',
  unauthenticated: 'Access token needed',
  forbidden: 'Not allowed',
  conflict: 'Conflict',
  full: 'Full',
  limited: 'Limit reached',
  unavailable: 'Service unavailable',
};

export function errorTitle(code) {
  return ERROR_TITLES[code] || 'Something went wrong';
}

const ICON_FOR = { error: 'alert', warn: 'alert', info: 'info', success: 'check' };

/**
 * Show a banner in #banners. kind: 'error' | 'warn' | 'info' | 'success'.
 * `key` replaces an existing banner with the same key. `timeout` (ms) auto-dismisses.
 * Returns a function that removes it.
 */
export function showBanner({ kind = 'error', title = '', message = '', code = '', key = '', timeout = 0 } = {}) {
  const host = document.getElementById('banners');
  if (!host) return () => {};
  if (key) host.querySelector(`[data-key="${CSS.escape(key)}"]`)?.remove();
  const el = h('div', {
    class: `banner banner-${kind}`,
    role: kind === 'error' ? 'alert' : 'status',
    dataset: { kind, ...(code ? { code } : {}), ...(key ? { key } : {}) },
  },
  icon(ICON_FOR[kind] || 'info', 'banner-icon'),
  h('div', { class: 'banner-text' },
    title ? h('div', { class: 'banner-title' }, title, code ? h('span', { class: 'banner-code' }, code) : null) : null,
    message ? h('div', { class: 'banner-msg' }, message) : null),
  h('button', { class: 'banner-close', type: 'button', 'aria-label': 'Dismiss', onclick: () => remove() }, '×'));
  const remove = () => el.remove();
  host.append(el);
  // Keep the stack short.
  while (host.children.length > 3) host.firstElementChild.remove();
  if (timeout) setTimeout(remove, timeout);
  return remove;
}

export function clearBanner(key) {
  document.querySelector(`#banners [data-key="${CSS.escape(key)}"]`)?.remove();
}

/** Show a server `error` frame. */
export function showServerError(msg, extra = {}) {
  showBanner({
    kind: 'error',
    title: errorTitle(msg.code),
    message: msg.message || '',
    code: msg.code || '',
    key: extra.key || `err-${msg.code || 'x'}`,
    timeout: extra.timeout ?? (msg.code === 'rate_limited' ? 6000 : 12000),
  });
}

// ---------------------------------------------------------------- overlay

/**
 * Show a message over a video frame, or hide it (no `title`). `el` is an `.overlay` holding
 * `.spinner`, `.overlay-title`, `.overlay-sub` and optionally one button, shown with the text
 * `button`; `icon` names an icon shown above the title.
 */
export function setOverlay(el, title, sub = '', { spinner = false, icon: iconName = '', button = '' } = {}) {
  if (!title) { el.hidden = true; return; }
  el.hidden = false;
  el.querySelector('.overlay-title').textContent = title;
  el.querySelector('.overlay-sub').textContent = sub;
  const spin = el.querySelector('.spinner');
  spin.hidden = !spinner;
  el.querySelector('.overlay-icon')?.remove();
  if (iconName) el.insertBefore(h('div', { class: 'overlay-icon' }, icon(iconName)), spin);
  const btn = el.querySelector('button');
  if (btn) {
    btn.hidden = !button;
    if (button) btn.textContent = button;
  }
}

// -------------------------------------------------------------- share links

/** The watcher page for stream `id`. */
export function watchUrl(id) {
  return `${location.origin}/watcher?stream=${encodeURIComponent(id)}`;
}

/** Copy `link` to the clipboard and say so; where the clipboard is refused, show the link instead. */
export async function copyLink(link) {
  try {
    await navigator.clipboard.writeText(link);
    showBanner({ kind: 'success', title: 'Link copied', message: link, key: 'copy', timeout: 3000 });
  } catch {
    showBanner({ kind: 'info', title: 'Share this link', message: link, key: 'copy', timeout: 10000 });
  }
}

// ------------------------------------------------------ connection indicator

/** Bind the header indicator (#connection) to an OnairSocket. */
export function bindConnectionIndicator(socket, el = document.getElementById('connection')) {
  if (!el) return;
  const text = el.querySelector('.conn-text') || el;
  let tick = 0;
  const render = () => {
    const st = socket.state;
    let label;
    let ui = st;
    if (st === 'online') label = 'Connected';
    else if (st === 'connecting' && socket.attempt === 0) label = 'Connecting…';
    else if (st === 'connecting' || st === 'reconnecting') {
      const secs = Math.ceil((socket.nextRetryAt - Date.now()) / 1000);
      const verb = st === 'connecting' ? 'Connecting' : 'Reconnecting';
      if (socket.isOpen || secs <= 0) label = `${verb}…`;
      else label = `${verb} in ${secs}s`;
      if (socket.attempt >= 4) ui = 'offline';
    } else if (st === 'closed') { label = 'Disconnected'; ui = 'offline'; }
    else label = 'Connecting…';
    el.dataset.state = ui;
    el.title = socket.peerId ? `${label} · peer ${socket.peerId}` : label;
    if (text.textContent !== label) text.textContent = label;
  };
  socket.on('state', render);
  socket.on('retry', render);
  clearInterval(tick);
  tick = setInterval(() => { if (socket.state !== 'online') render(); }, 500);
  render();
}

// -------------------------------------------------------------- status pill

/** Set a `.status` pill: state drives colour (data-state), text is what users read. */
export function setStatus(el, state, text) {
  if (!el) return;
  el.dataset.state = state;
  const label = el.querySelector('.status-text') || el;
  label.textContent = text;
}

// -------------------------------------------------------------- formatting

/** started_at may be Unix ms (number or numeric string) or an RFC 3339 string. */
export function parseTime(v) {
  if (v === null || v === undefined || v === '') return NaN;
  if (typeof v === 'number') return v < 1e11 ? v * 1000 : v; // tolerate seconds
  if (/^\d+$/.test(v)) return parseTime(Number(v));
  return Date.parse(v);
}

/** 3:07, 1:02:03 */
export function formatClock(ms) {
  if (!Number.isFinite(ms) || ms < 0) ms = 0;
  const s = Math.floor(ms / 1000);
  const hh = Math.floor(s / 3600);
  const mm = Math.floor((s % 3600) / 60);
  const ss = s % 60;
  const p = (n) => String(n).padStart(2, '0');
  return hh ? `${hh}:${p(mm)}:${p(ss)}` : `${mm}:${p(ss)}`;
}

/** "just now", "5 min", "2 h 10 min" */
export function formatSince(ts, now = Date.now()) {
  if (!Number.isFinite(ts)) return '';
  const m = Math.max(0, Math.floor((now - ts) / 60000));
  if (m < 1) return 'just now';
  if (m < 60) return `${m} min`;
  const hrs = Math.floor(m / 60);
  return m % 60 ? `${hrs} h ${m % 60} min` : `${hrs} h`;
}

export function formatBytes(n) {
  if (!Number.isFinite(n) || n <= 0) return '0 B';
  const units = ['B', 'KB', 'MB', 'GB', 'TB'];
  const i = Math.min(units.length - 1, Math.floor(Math.log(n) / Math.log(1024)));
  const v = n / 1024 ** i;
  return `${v >= 100 || i === 0 ? Math.round(v) : v.toFixed(1)} ${units[i]}`;
}

const dateFmt = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'short' });
export function formatDate(ts) {
  return Number.isFinite(ts) ? dateFmt.format(new Date(ts)) : '—';
}

export function plural(n, one, many = `${one}s`) {
  return `${n} ${n === 1 ? one : many}`;
}

/** Stable hue (0..359) from a string, for placeholder art. */
export function hueOf(str) {
  let x = 2166136261;
  for (const ch of String(str)) { x ^= ch.codePointAt(0); x = Math.imul(x, 16777619); }
  return Math.abs(x) % 360;
}

export function shortId(id) {
  const s = String(id ?? '');
  return s.length > 10 ? `${s.slice(0, 8)}…` : s;
}

/** Debug hook for tests / the console: window.onair.state */
export function exposeDebug(getState, extra = {}) {
  window.onair = Object.assign(window.onair || {}, extra);
  Object.defineProperty(window.onair, 'state', { get: getState, configurable: true, enumerable: true });
}
