// onair — WebRTC helpers shared by the broadcast and watcher pages.

/** How long ICE may look for a path (`new`/`checking`) before the page says it cannot connect. */
export const ICE_STUCK_MS = 10_000;
/** How long a connection may stay `disconnected` before the offering side restarts ICE. */
export const ICE_RESTART_MS = 3_000;
/** While a connection stays broken, the offering side restarts ICE again this often. */
export const ICE_RETRY_MS = 8_000;

/**
 * The TURN relays the page was given (`welcome.ice_servers`), in words for messages:
 * "TURN servers: none configured", or "TURN servers: 198.51.100.1:3478 (UDP, TCP)".
 */
export function describeTurn(iceServers) {
  const relays = new Map(); // host:port -> transports
  for (const s of Array.isArray(iceServers) ? iceServers : []) {
    for (const url of [].concat(s?.urls || [])) {
      const m = /^(turns?):([^?]+)(?:\?transport=(\w+))?/i.exec(String(url));
      if (!m) continue;
      const t = m[1].toLowerCase() === 'turns' ? 'TLS' : (m[3] || 'udp').toUpperCase();
      const list = relays.get(m[2]) || [];
      if (!list.includes(t)) list.push(t);
      relays.set(m[2], list);
    }
  }
  if (!relays.size) return 'TURN servers: none configured';
  return `TURN servers: ${[...relays].map(([host, t]) => `${host} (${t.join(', ')})`).join(', ')}`;
}

/** The session id of an SDP's `o=` line: the same for every offer of one connection (RFC 3264). */
export function sessionIdOf(sdp) {
  const m = /^o=\S+ (\d+) /m.exec(sdp || '');
  return m ? m[1] : null;
}

/** A description from a `signal` payload: `{type, sdp}`, or a bare SDP string, as `{type, sdp}`. */
export function toDesc(payload, type) {
  if (typeof payload === 'string') return { type, sdp: payload };
  return { type: payload?.type || type, sdp: payload?.sdp };
}

/**
 * One RTCPeerConnection to `remoteId`, signaling through `sig` (an OnairSocket: `iceServers`,
 * `send(frame)`).
 * - Remote candidates received before the remote description wait in `pending` and are applied
 *   right after it is set; none is dropped.
 * - Local candidates wait in `outbox` until our offer or answer has been sent (the other side
 *   cannot use them before), then go out as they come.
 * Events of the connection are the caller's (`pc.ontrack`, `pc.onconnectionstatechange`).
 */
export class Peer {
  constructor(remoteId, sig) {
    this.remoteId = remoteId;
    this.sig = sig;
    this.pc = new RTCPeerConnection({ iceServers: Array.isArray(sig.iceServers) ? sig.iceServers : [] });
    this.pending = [];
    this.outbox = [];
    this.described = false; // our offer/answer went out
    this.closed = false;
    this.createdAt = Date.now();
    this.restarts = 0;       // ICE restarts offered (offering side) or answered (answering side)
    this.troubleSince = 0;   // when the connection last stopped working (0: it works, or never did yet)
    this._iceTimers = [];
    this.pc.onicecandidate = (ev) => {
      if (!ev.candidate || this.closed) return;
      const payload = ev.candidate.toJSON();
      if (this.described) this._signal('candidate', payload); else this.outbox.push(payload);
    };
  }

  get hasRemote() {
    return !!this.pc.remoteDescription;
  }

  _signal(kind, payload) {
    this.sig.send({ type: 'signal', to: this.remoteId, kind, payload });
  }

  /** Set our local description, send it, then the candidates gathered so far. */
  async _describe(desc) {
    await this.pc.setLocalDescription(desc);
    if (this.closed) return;
    const local = this.pc.localDescription;
    this._signal(local.type, { type: local.type, sdp: local.sdp });
    this.described = true;
    for (const c of this.outbox.splice(0)) this._signal('candidate', c);
  }

  /** Broadcaster side: create and send the offer. */
  async offer() {
    await this._describe(await this.pc.createOffer());
  }

  /**
   * Offering side: restart ICE (new credentials, fresh candidates, a new relay allocation) with a
   * new offer on the same connection; media continues once the new path is up. Skipped while the
   * socket is down (the offer would be lost: the next retry sends it). An earlier restart offer
   * still waiting for its answer is rolled back first.
   */
  async restart() {
    if (this.closed || !this.sig.ready) return false;
    if (this.pc.signalingState === 'have-local-offer') await this.pc.setLocalDescription({ type: 'rollback' });
    if (this.pc.signalingState !== 'stable') return false;
    this.restarts += 1;
    await this._describe(await this.pc.createOffer({ iceRestart: true }));
    return true;
  }

  /**
   * Watches ICE and reports, instead of waiting silently:
   * - `onTrouble('stuck')` when no path is found within ICE_STUCK_MS of negotiating, or
   *   `onTrouble('failed')` when ICE fails;
   * - `onRestart()` after ICE_RESTART_MS of `disconnected`, at `failed` or stuck, and every
   *   ICE_RETRY_MS while it stays broken (the offering side restarts ICE there);
   * - `onHealthy()` when connected (again).
   */
  watchIce({ onTrouble = () => {}, onRestart = () => {}, onHealthy = () => {} } = {}) {
    const pc = this.pc;
    let stuck = 0;
    let retry = 0;
    const up = () => pc.iceConnectionState === 'connected' || pc.iceConnectionState === 'completed';
    const armStuck = () => {
      clearTimeout(stuck);
      stuck = setTimeout(() => {
        if (this.closed || up()) return;
        this.troubleSince ||= Date.now();
        onTrouble('stuck');
        // A relay that was down may be back, a network may have changed: try afresh.
        armRetry(0);
      }, ICE_STUCK_MS);
    };
    const armRetry = (ms) => {
      if (retry) return;
      retry = setTimeout(() => {
        retry = 0;
        if (this.closed || up()) return;
        onRestart();
        armRetry(ICE_RETRY_MS);
      }, ms);
    };
    this._iceTimers = [() => clearTimeout(stuck), () => clearTimeout(retry)];
    pc.addEventListener('iceconnectionstatechange', () => {
      if (this.closed) return;
      const st = pc.iceConnectionState;
      if (up()) {
        clearTimeout(stuck);
        clearTimeout(retry);
        retry = 0;
        this.troubleSince = 0;
        onHealthy();
      } else if (st === 'checking') {
        armStuck();
      } else if (st === 'disconnected') {
        this.troubleSince ||= Date.now();
        armRetry(ICE_RESTART_MS);
      } else if (st === 'failed') {
        this.troubleSince ||= Date.now();
        onTrouble('failed');
        armRetry(0);
      }
    });
    armStuck();
  }

  /**
   * Sends our current description again, with every candidate gathered so far in it: after the
   * socket came back, what was sent meanwhile may be lost (the other side ignores a duplicate).
   */
  resend() {
    const local = this.pc.localDescription;
    if (this.closed || !local) return;
    this._signal(local.type, { type: local.type, sdp: local.sdp });
  }

  /** Whether ICE has a working path right now. */
  get connected() {
    return this.pc.iceConnectionState === 'connected' || this.pc.iceConnectionState === 'completed';
  }

  /** Watcher side: take the offer `payload`, send the answer. */
  async answer(payload) {
    await this.setRemote(toDesc(payload, 'offer'));
    await this._describe(await this.pc.createAnswer());
  }

  /** Broadcaster side: take the answer `payload` (ignored unless an offer is outstanding). */
  async accept(payload) {
    if (this.pc.signalingState !== 'have-local-offer') return;
    await this.setRemote(toDesc(payload, 'answer'));
  }

  /** Add a remote candidate now, or queue it until the remote description is set. */
  async addCandidate(payload) {
    if (this.closed || !payload) return;
    if (!this.hasRemote) {
      this.pending.push(payload);
      return;
    }
    await this._add(payload);
  }

  async setRemote(desc) {
    await this.pc.setRemoteDescription(desc);
    const queued = this.pending.splice(0);
    for (const c of queued) await this._add(c);
  }

  async _add(c) {
    try {
      await this.pc.addIceCandidate(c);
    } catch (err) {
      // A candidate from a previous negotiation (other ufrag) is harmless.
      if (!this.closed) console.warn('[onair] addIceCandidate failed', err?.message || err);
    }
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    for (const stop of this._iceTimers) stop();
    this.pending.length = 0;
    this.outbox.length = 0;
    try { this.pc.close(); } catch { /* ignore */ }
  }
}

/** Put `mime` (e.g. "video/VP8") first in a transceiver's codec list, if the browser allows it. */
export function preferCodec(transceiver, kind, mime) {
  try {
    if (!transceiver.setCodecPreferences || !window.RTCRtpSender?.getCapabilities) return;
    const caps = RTCRtpSender.getCapabilities(kind);
    if (!caps?.codecs?.length) return;
    const want = mime.toLowerCase();
    const first = caps.codecs.filter((c) => c.mimeType.toLowerCase() === want);
    if (!first.length) return;
    const rest = caps.codecs.filter((c) => c.mimeType.toLowerCase() !== want);
    transceiver.setCodecPreferences([...first, ...rest]);
  } catch (err) {
    console.info('[onair] codec preference not applied', err?.message || err);
  }
}

export function webrtcSupported() {
  return typeof window.RTCPeerConnection === 'function';
}
