#!/usr/bin/python3
"""A WHIP publisher or WHEP player built on GStreamer's webrtcbin: an independent WebRTC stack
(libnice, GStreamer's DTLS/SRTP) for onair's interop tests. Run with Debian's python (python3-gi).

  webrtc_client.py whip URL [--codec vp8|h264] [--token T] [--seconds N] [--keep]
  webrtc_client.py whep URL [--token T] [--seconds N]

The session lasts N seconds from ICE connected (at most N + 30 s in all), then is DELETEd.

Prints one JSON object per line on stdout: {"event": "created", "location": ..., "stream_id": ...},
{"event": "connected"}, {"event": "frames", "video": N, "audio": N} (whep), {"event": "deleted",
"status": S} (unless --keep), or {"event": "error", ...}. Exits 0 when the session was created.
"""
import argparse
import json
import sys
import urllib.error
import urllib.parse
import urllib.request

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstWebRTC", "1.0")
gi.require_version("GstSdp", "1.0")
from gi.repository import GLib, Gst, GstSdp, GstWebRTC  # noqa: E402

VIDEO = {
    "vp8": "vp8enc deadline=1 cpu-used=8 keyframe-max-dist=30 target-bitrate=400000 ! rtpvp8pay pt=96 ! "
    "application/x-rtp,media=video,encoding-name=VP8,payload=96",
    "h264": "x264enc tune=zerolatency speed-preset=ultrafast key-int-max=30 bitrate=400 ! "
    "video/x-h264,profile=constrained-baseline ! rtph264pay pt=102 config-interval=-1 ! "
    "application/x-rtp,media=video,encoding-name=H264,payload=102",
}
AUDIO = ("audiotestsrc is-live=true wave=sine ! audioconvert ! audioresample ! "
         "opusenc ! rtpopuspay pt=111 ! "
         "application/x-rtp,media=audio,encoding-name=OPUS,payload=111")


# Holds back the encoded media (keeping its caps flowing, so the offer can be made) until ICE connects.
GATE = "valve name={}-gate drop=true drop-mode=forward-sticky-events"


def emit(**kw):
    print(json.dumps(kw), flush=True)


class Client:
    def __init__(self, args):
        self.args = args
        self.location = None
        self.posted = False
        self.counts = {"video": 0, "audio": 0}
        self.ok = False
        self.connected = False
        self.finished = False
        if args.mode == "whip":
            desc = ("webrtcbin name=w bundle-policy=max-bundle "
                    "videotestsrc is-live=true pattern=ball ! video/x-raw,width=320,height=240,framerate=30/1 ! "
                    f"videoconvert ! {VIDEO[args.codec]} ! {GATE.format('video')} ! w. {AUDIO} ! {GATE.format('audio')} ! w.")
            self.pipe = Gst.parse_launch(desc)
            self.w = self.pipe.get_by_name("w")
        else:
            self.pipe = Gst.Pipeline.new("whep")
            self.w = Gst.ElementFactory.make("webrtcbin", "w")
            self.w.set_property("bundle-policy", GstWebRTC.WebRTCBundlePolicy.MAX_BUNDLE)
            self.pipe.add(self.w)
        if args.mode == "whep":
            recv = GstWebRTC.WebRTCRTPTransceiverDirection.RECVONLY
            for caps in ("application/x-rtp,media=video,encoding-name=VP8,payload=96,clock-rate=90000",
                         "application/x-rtp,media=audio,encoding-name=OPUS,payload=111,clock-rate=48000,encoding-params=(string)2"):
                self.w.emit("add-transceiver", recv, Gst.Caps.from_string(caps))
            self.w.connect("pad-added", self.on_pad)
        self.w.connect("on-negotiation-needed", self.on_negotiation)
        self.w.connect("notify::ice-gathering-state", self.on_gathering)
        self.w.connect("notify::ice-connection-state", self.on_ice)

    def on_negotiation(self, _w):
        if getattr(self, "negotiating", False):
            return
        self.negotiating = True
        promise = Gst.Promise.new_with_change_func(self.on_offer, None)
        self.w.emit("create-offer", None, promise)

    def on_offer(self, promise, _data):
        # Keep the reply alive while its offer is used (the offer points into it).
        reply = promise.get_reply()
        offer = reply.get_value("offer")
        self.w.emit("set-local-description", offer, Gst.Promise.new())
        # Gathering on loopback-only hosts is quick; post what we have after 2 s at the latest.
        GLib.timeout_add(2000, self.post)

    def on_gathering(self, w, _pspec):
        if w.get_property("ice-gathering-state") == GstWebRTC.WebRTCICEGatheringState.COMPLETE:
            GLib.idle_add(self.post)

    def on_ice(self, w, _pspec):
        state = w.get_property("ice-connection-state")
        if state in (GstWebRTC.WebRTCICEConnectionState.CONNECTED, GstWebRTC.WebRTCICEConnectionState.COMPLETED):
            if not self.connected:
                self.connected = True
                # Like a real encoder, send nothing before the connection is up (webrtcbin would
                # otherwise queue what the live sources made meanwhile and send it in one burst).
                for gate in ("video-gate", "audio-gate"):
                    if self.pipe.get_by_name(gate):
                        self.pipe.get_by_name(gate).set_property("drop", False)
                emit(event="connected")
                # The session lasts --seconds from here.
                GLib.timeout_add(int(self.args.seconds * 1000), self.finish)
        elif state == GstWebRTC.WebRTCICEConnectionState.FAILED:
            emit(event="error", message="ICE failed")

    def request(self, method, url, body=None, ctype=None):
        req = urllib.request.Request(url, data=body, method=method)
        if ctype:
            req.add_header("Content-Type", ctype)
        if self.args.token:
            req.add_header("Authorization", f"Bearer {self.args.token}")
        try:
            with urllib.request.urlopen(req, timeout=15) as r:
                return r.status, r.headers, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.headers, e.read().decode()

    def post(self):
        if self.posted:
            return False
        self.posted = True
        sdp = self.w.get_property("local-description").sdp.as_text()
        status, headers, body = self.request("POST", self.args.url, sdp.encode(), "application/sdp")
        if status != 201:
            emit(event="error", status=status, message=body.strip())
            self.loop.quit()
            return False
        self.location = urllib.parse.urljoin(self.args.url, headers.get("Location", ""))
        self.ok = True
        emit(event="created", location=self.location, stream_id=headers.get("Onair-Stream-Id", ""),
             etag=headers.get("ETag", ""), links=headers.get_all("Link") or [])
        _, msg = GstSdp.SDPMessage.new_from_text(body)
        answer = GstWebRTC.WebRTCSessionDescription.new(GstWebRTC.WebRTCSDPType.ANSWER, msg)
        self.w.emit("set-remote-description", answer, Gst.Promise.new())
        return False

    def on_pad(self, _w, pad):
        if pad.direction != Gst.PadDirection.SRC:
            return
        decode = Gst.ElementFactory.make("decodebin")
        decode.connect("pad-added", self.on_decoded)
        self.pipe.add(decode)
        decode.sync_state_with_parent()
        pad.link(decode.get_static_pad("sink"))

    def on_decoded(self, _decode, pad):
        caps = pad.get_current_caps() or pad.query_caps(None)
        kind = "video" if caps.to_string().startswith("video") else "audio"
        sink = Gst.ElementFactory.make("fakesink")
        sink.set_property("signal-handoffs", True)
        sink.set_property("sync", False)
        sink.connect("handoff", lambda *_: self.counts.__setitem__(kind, self.counts[kind] + 1))
        self.pipe.add(sink)
        sink.sync_state_with_parent()
        pad.link(sink.get_static_pad("sink"))

    def finish(self):
        if self.finished:
            return False
        self.finished = True
        if self.args.mode == "whep":
            emit(event="frames", **self.counts)
        if self.location and not self.args.keep:
            status, _, _ = self.request("DELETE", self.location)
            emit(event="deleted", status=status)
        self.loop.quit()
        return False

    def run(self):
        self.loop = GLib.MainLoop()
        bus = self.pipe.get_bus()
        bus.add_signal_watch()
        bus.connect("message::error", lambda _b, m: emit(event="error", message=str(m.parse_error()[0])))
        self.pipe.set_state(Gst.State.PLAYING)
        # Bounded even if ICE never connects.
        GLib.timeout_add(int((self.args.seconds + 30) * 1000), self.finish)
        self.loop.run()
        self.pipe.set_state(Gst.State.NULL)
        return 0 if self.ok else 1


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["whip", "whep"])
    p.add_argument("url")
    p.add_argument("--codec", choices=sorted(VIDEO), default="vp8")
    p.add_argument("--token", default="")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--keep", action="store_true", help="do not DELETE the session at the end")
    args = p.parse_args()
    Gst.init(None)
    sys.exit(Client(args).run())


if __name__ == "__main__":
    main()
