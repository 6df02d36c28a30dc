// The first-frame baseline (issue 13): the least a watch can cost. One process, socket.io with no
// adapter, two bare pages: /broadcast opens the camera at load and offers to whoever watches (trickled
// candidates, no waits); /watch has `watch()`, which times click → first decoded frame the way the
// onair bench does (requestVideoFrameCallback until videoWidth > 0). Peer to peer, host candidates only.
//   PORT=3002 node firstframe.js
'use strict';
const http = require('http');
const { Server } = require('socket.io');

const head = '<!doctype html><meta charset="utf-8"><video id="v" autoplay muted playsinline></video>'
  + '<script src="/socket.io/socket.io.js"></script>';

const broadcast = `${head}<script>
const s = io({ transports: ['websocket'] });
const pcs = {};
let media = null;
navigator.mediaDevices.getUserMedia({ video: { width: 1280, height: 720 }, audio: true }).then((m) => {
  media = m; v.srcObject = m; s.emit('broadcaster'); window.ready = true;
});
s.on('watch', async (id) => {
  if (pcs[id]) pcs[id].close();
  const pc = new RTCPeerConnection();
  pcs[id] = pc;
  for (const t of media.getTracks()) pc.addTrack(t, media);
  pc.onicecandidate = (e) => { if (e.candidate) s.emit('signal', { to: id, candidate: e.candidate }); };
  await pc.setLocalDescription(await pc.createOffer());
  s.emit('signal', { to: id, sdp: pc.localDescription });
});
// One signal at a time: a candidate must not overtake the description before it.
let chain = Promise.resolve();
s.on('signal', (m) => { chain = chain.then(() => onSignal(m)).catch(() => {}); });
async function onSignal({ from, sdp, candidate }) {
  const pc = pcs[from];
  if (!pc) return;
  if (sdp) await pc.setRemoteDescription(sdp);
  if (candidate) await pc.addIceCandidate(candidate);
}
</script>`;

const watch = `${head}<script>
const s = io({ transports: ['websocket'] });
let pc = null;
s.on('connect', () => { window.ready = true; });
window.watch = () => {
  if (pc) pc.close();
  v.srcObject = null;
  window.__first = null;
  window.__t0 = performance.now();
  const cb = () => { if (v.videoWidth > 0) window.__first = performance.now() - window.__t0; else v.requestVideoFrameCallback(cb); };
  v.requestVideoFrameCallback(cb);
  pc = new RTCPeerConnection();
  const mine = pc;
  pc.ontrack = (e) => { if (pc === mine) v.srcObject = e.streams[0]; };
  s.emit('watch');
};
let chain = Promise.resolve();
s.on('signal', (m) => { chain = chain.then(() => onSignal(m)).catch(() => {}); });
async function onSignal({ from, sdp, candidate }) {
  const mine = pc;
  if (!mine) return;
  mine.onicecandidate = (e) => { if (e.candidate) s.emit('signal', { to: from, candidate: e.candidate }); };
  if (sdp) {
    await mine.setRemoteDescription(sdp);
    await mine.setLocalDescription(await mine.createAnswer());
    s.emit('signal', { to: from, sdp: mine.localDescription });
  }
  if (candidate) await mine.addIceCandidate(candidate);
}
</script>`;

const server = http.createServer((req, res) => {
  const page = req.url === '/broadcast' ? broadcast : req.url === '/watch' ? watch : null;
  if (!page) { res.writeHead(404); res.end(); return; }
  res.writeHead(200, { 'content-type': 'text/html' });
  res.end(page);
});
const io = new Server(server, { transports: ['websocket'] });
let broadcaster = null;
io.on('connection', (socket) => {
  socket.join(socket.id);
  socket.on('broadcaster', () => { broadcaster = socket.id; });
  socket.on('watch', () => { if (broadcaster) io.to(broadcaster).emit('watch', socket.id); });
  socket.on('signal', (m) => {
    if (!m || typeof m.to !== 'string') return;
    io.to(m.to).emit('signal', { ...m, from: socket.id });
  });
});
const port = Number(process.env.PORT || 3002);
server.listen(port, '127.0.0.1', () => console.log(`first-frame fixture on 127.0.0.1:${port}`));
