// onair — shared WebSocket client.
//
// One socket per page to `ws(s)://<host>/ws`, JSON text frames with a `type`.
// - reconnects with exponential backoff (0.5 s … 10 s, jittered);
// - reconnects to `/ws?resume=<token>` with the last `resume_token` from `welcome`;
//   the server answers with one `welcome`: our old peer id if it took the token, else a
//   fresh one followed by an `error` saying why (swallowed here, emitted as `resume_refused`);
// - carries the page's access token (if any) as `?access_token=` on every upgrade: it comes from
//   the page's fragment (`/broadcast#access_token=…`), which never reaches a server, a log or a
//   Referer, and is kept for the tab in sessionStorage (then removed from the address bar);
// - sends `ping` every 20 s and drops a socket that has been silent for 50 s;
// - emits a `session` event once the server has (re)established who we are:
//   `{peerId, resumed}` where `resumed` is true when a reconnect kept our peer id.
//
// Events (subscribe with `on(type, fn)`): every server frame by its `type`
// ("welcome", "streams", "signal", "error", ...), plus "message" (any frame),
// "session", "state" (connection state changed) and "close".

const PING_INTERVAL_MS = 20_000;
const SILENCE_LIMIT_MS = 50_000;
const BACKOFF_MIN_MS = 500;
const BACKOFF_MAX_MS = 10_000;

export function defaultSocketUrl(loc = window.location) {
  const scheme = loc.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${scheme}//${loc.host}/ws`;
}

const TOKEN_KEY = 'onair.access_token';

/**
 * The page's access token: `#access_token=…` in the fragment (remembered for this tab, and taken
 * out of the address bar so it is not copied along with the link), else the one remembered.
 */
export function pageAccessToken(loc = window.location) {
  const params = new URLSearchParams(loc.hash.slice(1));
  const fromHash = params.get('access_token');
  if (fromHash) {
    try { sessionStorage.setItem(TOKEN_KEY, fromHash); } catch { /* storage off: this load only */ }
    params.delete('access_token');
    const rest = params.toString();
    history.replaceState(null, '', `${loc.pathname}${loc.search}${rest ? `#${rest}` : ''}`);
    return fromHash;
  }
  try { return sessionStorage.getItem(TOKEN_KEY); } catch { return null; }
}

export class OnairSocket {
  constructor({ url = defaultSocketUrl(), accessToken = pageAccessToken() } = {}) {
    this.url = url;
    this.accessToken = accessToken || null;
    /** 'idle' | 'connecting' | 'online' | 'reconnecting' | 'closed' */
    this.state = 'idle';
    this.peerId = null;
    this.iceServers = [];
    this.resumeToken = null;
    this.attempt = 0;           // consecutive failed attempts
    this.nextRetryAt = 0;       // ms timestamp of the next reconnect, while reconnecting
    this.hasSession = false;    // a welcome was accepted on the current socket
    this.lastClose = null;      // {code, reason}
    this._ws = null;
    this._handlers = new Map();
    this._everConnected = false;
    this._stopped = false;
    this._retryTimer = 0;
    this._pingTimer = 0;
    this._lastRx = 0;
    this._resuming = null;      // our old peer id, from open until the welcome answering our token
    this._refusal = false;      // the frame after a welcome that refused our token explains why
    this._onOnline = () => { if (this.state === 'reconnecting') this._reconnectNow(); };
    // A link with a new token opened in this tab: reconnect carrying it.
    this._onHash = () => {
      const token = pageAccessToken();
      if (!token || token === this.accessToken) return;
      this.accessToken = token;
      const ws = this._ws;
      this._ws = null;
      this._stopPing();
      if (ws) { try { ws.close(1000, 'new access token'); } catch { /* ignore */ } }
      if (!this._stopped) this._reconnectNow();
    };
  }

  /** Subscribe to an event; returns an unsubscribe function. */
  on(type, fn) {
    let set = this._handlers.get(type);
    if (!set) { set = new Set(); this._handlers.set(type, set); }
    set.add(fn);
    return () => set.delete(fn);
  }

  _emit(type, data) {
    const set = this._handlers.get(type);
    if (!set) return;
    for (const fn of [...set]) {
      try { fn(data); } catch (err) { console.error(`[onair] handler for "${type}" failed`, err); }
    }
  }

  get isOpen() { return !!this._ws && this._ws.readyState === WebSocket.OPEN; }
  /** Open and the server has told us who we are. */
  get ready() { return this.isOpen && this.hasSession; }

  connect() {
    this._stopped = false;
    window.addEventListener('online', this._onOnline);
    window.addEventListener('hashchange', this._onHash);
    this._open();
    return this;
  }

  /** Close for good (no reconnect). */
  close(code = 1000, reason = 'bye') {
    this._stopped = true;
    window.removeEventListener('online', this._onOnline);
    window.removeEventListener('hashchange', this._onHash);
    clearTimeout(this._retryTimer);
    this._stopPing();
    if (this._ws) {
      try { this._ws.close(code, reason); } catch { /* ignore */ }
    }
    this._setState('closed');
  }

  /** Send a frame; returns false if the socket is not open (the frame is dropped). */
  send(msg) {
    if (!this.isOpen) return false;
    try {
      this._ws.send(JSON.stringify(msg));
      return true;
    } catch (err) {
      console.warn('[onair] send failed', err);
      return false;
    }
  }

  _setState(state) {
    if (this.state === state) return;
    this.state = state;
    this._emit('state', state);
  }

  _open() {
    clearTimeout(this._retryTimer);
    this.hasSession = false;
    this._setState(this._everConnected ? 'reconnecting' : 'connecting');
    this._resuming = this.resumeToken ? this.peerId : null;
    this._refusal = false;
    let ws;
    try {
      ws = new WebSocket(this._urlFor(this.resumeToken));
    } catch (err) {
      console.warn('[onair] cannot open socket', err);
      this._scheduleReconnect();
      return;
    }
    this._ws = ws;

    ws.onopen = () => {
      if (this._ws !== ws) return;
      this._lastRx = Date.now();
      this._startPing();
    };

    ws.onmessage = (ev) => {
      if (this._ws !== ws) return;
      this._lastRx = Date.now();
      if (typeof ev.data !== 'string') return;
      let msg;
      try { msg = JSON.parse(ev.data); } catch { console.warn('[onair] non-JSON frame ignored'); return; }
      if (!msg || typeof msg.type !== 'string') return;
      const refusal = this._refusal;
      this._refusal = false;
      if (refusal && msg.type === 'error') {
        // Why the server did not take our resume token. Not shown to the user: the page
        // simply starts a fresh session.
        console.info('[onair] resume refused:', msg.code, msg.message);
        this._emit('resume_refused', msg);
        return;
      }
      if (msg.type === 'welcome') this._onWelcome(msg);
      // Coalesced list changes: one frame carrying several, handled as if they came one by one.
      const frames = msg.type === 'batch' && Array.isArray(msg.frames) ? msg.frames : [msg];
      for (const f of frames) {
        if (!f || typeof f.type !== 'string') continue;
        this._emit('message', f);
        this._emit(f.type, f);
      }
    };

    ws.onerror = () => { /* a close event follows */ };

    ws.onclose = (ev) => {
      if (this._ws !== ws) return;
      this._ws = null;
      this.hasSession = false;
      this._stopPing();
      this.lastClose = { code: ev.code, reason: ev.reason };
      this._emit('close', this.lastClose);
      if (this._stopped) { this._setState('closed'); return; }
      this._scheduleReconnect(ev.code);
    };
  }

  /** The socket URL, carrying `token` (if any) as `?resume=` and the access token. */
  _urlFor(token) {
    if (!token && !this.accessToken) return this.url;
    const u = new URL(this.url, window.location.href);
    if (token) u.searchParams.set('resume', token);
    if (this.accessToken) u.searchParams.set('access_token', this.accessToken);
    return u.href;
  }

  _onWelcome(msg) {
    if (Array.isArray(msg.ice_servers)) this.iceServers = msg.ice_servers;
    if (msg.resume_token) this.resumeToken = msg.resume_token;
    const old = this._resuming;
    this._resuming = null;
    this.peerId = msg.peer_id || this.peerId;
    const resumed = !!old && msg.peer_id === old;
    if (old && !resumed) this._refusal = true;
    if (!this.hasSession) this._sessionUp(resumed);
  }

  _sessionUp(resumed) {
    this.hasSession = true;
    this.attempt = 0;
    this._everConnected = true;
    this._setState('online');
    this._emit('session', { peerId: this.peerId, resumed });
  }

  _scheduleReconnect(code) {
    if (this._stopped) return;
    this._setState(this._everConnected ? 'reconnecting' : 'connecting');
    // 1012 (service restart) and 1001 (going away): another gateway is likely ready right away.
    const quick = code === 1012 || code === 1001;
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** this.attempt);
    const jitter = base * (0.7 + Math.random() * 0.6);
    const delay = quick && this.attempt === 0 ? 150 + Math.random() * 350 : Math.round(jitter);
    this.attempt += 1;
    this.nextRetryAt = Date.now() + delay;
    this._emit('retry', { attempt: this.attempt, delay });
    clearTimeout(this._retryTimer);
    this._retryTimer = setTimeout(() => this._open(), delay);
  }

  _reconnectNow() {
    clearTimeout(this._retryTimer);
    this._open();
  }

  _startPing() {
    this._stopPing();
    this._pingTimer = setInterval(() => {
      if (!this.isOpen) return;
      if (Date.now() - this._lastRx > SILENCE_LIMIT_MS) {
        // Half-open connection: nothing heard for too long. Force a reconnect.
        console.warn('[onair] socket silent, reconnecting');
        const ws = this._ws;
        try { ws.close(4000, 'silent'); } catch { /* ignore */ }
        // Browsers may take a while to fire close on a dead link; do it ourselves.
        if (ws && ws.onclose) ws.onclose({ code: 4000, reason: 'silent' });
        return;
      }
      this.send({ type: 'ping' });
    }, PING_INTERVAL_MS);
  }

  _stopPing() {
    clearInterval(this._pingTimer);
    this._pingTimer = 0;
  }
}
