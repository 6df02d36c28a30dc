// The signaling stack onair replaces, as the old demo ran it: socket.io 4.8 with the Redis adapter,
// every socket in a room named by its id, `message{to,type,payload}` relayed to that room.
//   PORT=3001 REDIS_URL=redis://127.0.0.1:6379 node server.js
'use strict';
const http = require('http');
const { Server } = require('socket.io');
const { createAdapter } = require('@socket.io/redis-adapter');
const { createClient } = require('redis');

async function main() {
  const port = Number(process.env.PORT || 3001);
  const url = process.env.REDIS_URL || 'redis://127.0.0.1:6379';
  const pub = createClient({ url });
  const sub = pub.duplicate();
  await Promise.all([pub.connect(), sub.connect()]);
  const server = http.createServer();
  const io = new Server(server, { adapter: createAdapter(pub, sub), transports: ['websocket'] });
  io.on('connection', (socket) => {
    socket.join(socket.id);
    socket.on('message', (m) => {
      if (!m || typeof m.to !== 'string') return;
      io.to(m.to).emit('message', { from: socket.id, type: m.type, payload: m.payload });
    });
  });
  server.listen(port, '127.0.0.1', () => console.log(`socket.io listening on 127.0.0.1:${port}`));
}

main().catch((e) => { console.error(e); process.exit(1); });
