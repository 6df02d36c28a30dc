// onair — WebRTC helpers shared by the broadcast and watcher pages.

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
