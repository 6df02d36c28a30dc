// onair — WebRTC helpers shared by the broadcast and watcher pages.

/**
 * One RTCPeerConnection plus the ICE candidates received before its remote
 * description was set. Candidates are never dropped: they wait in `pending`
 * and are applied right after setRemoteDescription.
 */
export class Peer {
  constructor(remoteId, iceServers) {
    this.remoteId = remoteId;
    this.pc = new RTCPeerConnection({ iceServers: Array.isArray(iceServers) ? iceServers : [] });
    this.pending = [];
    this.closed = false;
    this.createdAt = Date.now();
  }

  get hasRemote() {
    return !!this.pc.remoteDescription;
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

/** A description as plain JSON {type, sdp}. */
export function descJSON(desc) {
  return { type: desc.type, sdp: desc.sdp };
}

export function webrtcSupported() {
  return typeof window.RTCPeerConnection === 'function';
}
