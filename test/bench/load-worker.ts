/**
 * The bench's client, run in a worker thread so that it does not share an event loop with the gateway
 * (main thread) or the echo upstream (its own worker). Jobs arrive as messages; each answers with one
 * summary message.
 *   - http: `requests` GETs with `concurrency` in flight over a keep-alive agent; requests/second and
 *     latency percentiles of the timed phase (a short warm-up opens the sockets first, untimed).
 *   - ws: an HTTP Upgrade, then `messages` sequential writes of `size` bytes, each awaiting its echo.
 */
import http from 'node:http';
import type { Socket } from 'node:net';
import { parentPort } from 'node:worker_threads';

export interface HttpJob {
  kind: 'http';
  port: number;
  /** Host header (the gateway routes by it); the connection always goes to 127.0.0.1 unless `address` is set. */
  host: string;
  address?: string;
  path: string;
  cookie?: string;
  requests: number;
  concurrency: number;
  /** Stops issuing requests after this long, whatever the count. */
  maxMs: number;
}

export interface WsJob {
  kind: 'ws';
  port: number;
  host: string;
  address?: string;
  path: string;
  cookie?: string;
  messages: number;
  size: number;
}

export interface HttpResult {
  kind: 'http';
  requests: number;
  errors: number;
  /** Answers other than 200. */
  non200: number;
  elapsedMs: number;
  rps: number;
  p50: number;
  p99: number;
  firstError?: string;
}

export interface WsResult {
  kind: 'ws';
  messages: number;
  medianMs: number;
  p99Ms: number;
}

export type Job = HttpJob | WsJob;
export type JobResult = HttpResult | WsResult | { kind: 'error'; message: string };

function percentile(sorted: ArrayLike<number>, p: number): number {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(p * sorted.length) - 1))]!;
}

async function httpJob(job: HttpJob): Promise<HttpResult> {
  const agent = new http.Agent({ keepAlive: true, maxSockets: job.concurrency, maxFreeSockets: job.concurrency });
  const headers: http.OutgoingHttpHeaders = { host: job.host, ...(job.cookie ? { cookie: job.cookie } : {}) };
  let errors = 0;
  let non200 = 0;
  let firstError: string | undefined;
  const one = (): Promise<void> =>
    new Promise((resolve) => {
      const req = http.request({ agent, host: job.address ?? '127.0.0.1', port: job.port, path: job.path, headers }, (res) => {
        if (res.statusCode !== 200) non200++;
        res.on('end', resolve);
        res.on('error', () => {
          errors++;
          resolve();
        });
        res.resume();
      });
      req.on('error', (err) => {
        errors++;
        firstError ??= err.message;
        resolve();
      });
      req.end();
    });

  // Warm-up: open the sockets (and let both sides JIT) before the clock starts.
  const warm = Math.min(job.requests, job.concurrency * 20);
  let issued = 0;
  await Promise.all(
    Array.from({ length: job.concurrency }, async () => {
      while (issued < warm) {
        issued++;
        await one();
      }
    }),
  );
  errors = 0;
  non200 = 0;

  const latencies = new Float64Array(job.requests);
  let done = 0;
  issued = 0;
  const start = performance.now();
  const deadline = start + job.maxMs;
  await Promise.all(
    Array.from({ length: job.concurrency }, async () => {
      while (issued < job.requests && performance.now() < deadline) {
        issued++;
        const t = performance.now();
        await one();
        latencies[done++] = performance.now() - t;
      }
    }),
  );
  const elapsedMs = performance.now() - start;
  agent.destroy();
  const sorted = latencies.subarray(0, done).sort();
  return {
    kind: 'http',
    requests: done,
    errors,
    non200,
    elapsedMs,
    rps: (done / elapsedMs) * 1000,
    p50: percentile(sorted, 0.5),
    p99: percentile(sorted, 0.99),
    ...(firstError ? { firstError } : {}),
  };
}

async function wsJob(job: WsJob): Promise<WsResult> {
  const socket = await new Promise<Socket>((resolve, reject) => {
    const req = http.request({
      host: job.address ?? '127.0.0.1',
      port: job.port,
      path: job.path,
      agent: false,
      headers: {
        host: job.host,
        connection: 'Upgrade',
        upgrade: 'websocket',
        'sec-websocket-version': '13',
        'sec-websocket-key': 'dGhlIHNhbXBsZSBub25jZQ==',
        origin: `http://${job.host}`, // as a browser on the editor's page sends it
        ...(job.cookie ? { cookie: job.cookie } : {}),
      },
    });
    req.on('upgrade', (_res, sock: Socket, head: Buffer) => {
      if (head.length) sock.unshift(head);
      resolve(sock);
    });
    req.on('response', (res) => reject(new Error(`no upgrade: HTTP ${res.statusCode}`)));
    req.on('error', reject);
    req.end();
  });
  socket.setNoDelay(true);
  const payload = Buffer.alloc(job.size, 0x61);
  let waiting: { need: number; resolve: () => void } | undefined;
  let got = 0;
  socket.on('data', (chunk: Buffer) => {
    got += chunk.length;
    if (waiting && got >= waiting.need) {
      const w = waiting;
      waiting = undefined;
      w.resolve();
    }
  });
  const closed = new Promise<never>((_, reject) => socket.once('close', () => reject(new Error('the socket closed mid-echo'))));
  closed.catch(() => undefined);
  const roundTrip = async (): Promise<number> => {
    const t = performance.now();
    const need = got + job.size;
    await Promise.race([new Promise<void>((resolve) => {
      waiting = { need, resolve };
      socket.write(payload);
    }), closed]);
    return performance.now() - t;
  };
  for (let i = 0; i < Math.min(100, job.messages); i++) await roundTrip(); // warm-up
  const times = new Float64Array(job.messages);
  for (let i = 0; i < job.messages; i++) times[i] = await roundTrip();
  socket.destroy();
  times.sort();
  return { kind: 'ws', messages: job.messages, medianMs: percentile(times, 0.5), p99Ms: percentile(times, 0.99) };
}

parentPort?.on('message', (job: Job) => {
  (job.kind === 'http' ? httpJob(job) : wsJob(job)).then(
    (result) => parentPort!.postMessage(result),
    (err: unknown) => parentPort!.postMessage({ kind: 'error', message: err instanceof Error ? err.message : String(err) }),
  );
});
