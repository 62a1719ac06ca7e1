/**
 * A stand-in for an editor behind the gateway: a real HTTP server on loopback that answers every
 * request with what reached it, JSON `{ method, url, headers }`, and answers an HTTP Upgrade with
 * `101 Switching Protocols`, then echoes back every byte it receives (raw TCP echo, no WebSocket framing;
 * the gateway only pipes bytes). Shared by the gateway unit suite and the bench.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';

/** What one request looked like on arrival at the upstream. */
export interface EchoedRequest {
  method: string;
  url: string;
  headers: http.IncomingHttpHeaders;
  /** True for an HTTP Upgrade (switched to the byte echo). */
  upgrade: boolean;
}

export interface EchoUpstream {
  port: number;
  /** Every request that reached this upstream, oldest first. */
  requests: EchoedRequest[];
  close(): Promise<void>;
}

export async function startEchoUpstream(): Promise<EchoUpstream> {
  const requests: EchoedRequest[] = [];
  const sockets = new Set<Duplex>();

  // Generous header limit, so that a 431 seen through the gateway can only be the gateway's own.
  const server = http.createServer({ maxHeaderSize: 256 * 1024 }, (req, res) => {
    const seen = { method: req.method ?? '', url: req.url ?? '', headers: req.headers };
    requests.push({ ...seen, upgrade: false });
    req.resume();
    req.on('end', () => {
      const body = JSON.stringify(seen);
      res.writeHead(200, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) });
      res.end(body);
    });
  });

  server.on('upgrade', (req: http.IncomingMessage, socket: Duplex, head: Buffer) => {
    requests.push({ method: req.method ?? '', url: req.url ?? '', headers: req.headers, upgrade: true });
    socket.on('error', () => undefined);
    socket.write(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: ${req.headers.upgrade ?? 'websocket'}\r\nConnection: Upgrade\r\n\r\n`);
    if (head.length) socket.write(head);
    socket.pipe(socket);
  });

  server.on('connection', (socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      server.off('error', reject);
      resolve();
    });
  });

  return {
    port: (server.address() as AddressInfo).port,
    requests,
    async close() {
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
