/**
 * A stand-in host agent for the AWS emulator's own tests. It documents the contract between the emulator's
 * "EC2 hosts" and the process each one runs (the real one is `node dist/src/cli.js agent`):
 *
 * - argv: `[agent] --host-id <id> --bind <ip> [--api-port <port>] [--token <bearer>] …`. The emulator
 *   always passes `--host-id` and `--bind`, then the extra arguments from its options. Flags this stand-in
 *   does not know (`--gateway-secret x`, `--proxy-port n`, `--capacity n`, `--image x`, `--no-pull`, …) are
 *   accepted and ignored; a flag followed by a value not starting with `--` takes that value.
 * - It listens on `<bind>:<api-port>` (port 0 picks a free one) and, once it can serve, prints one line on
 *   stdout starting with `agent ready`: `agent ready <id> api=http://<ip>:<port>`. The emulator keeps the
 *   host's agent `starting` until it sees that line (the instance is InService after the boot delay
 *   whatever the agent does), and reads `api=` to learn the port when it was not told one.
 * - `GET /v1/host` answers the host's state as JSON; `POST /v1/drain` (bearer token when `--token` is given)
 *   starts draining and answers 202. The emulator never calls it (no AWS component drains a host); a test
 *   or the controller may.
 * - SIGTERM: close the server and exit 0. End of stdin (the emulator died): exit as well.
 * - `--state-dir <dir>`: writes `host.json` there at start and `drain.json` when drained (so a test can see
 *   that per-host arguments arrived and that the drain happened after the process is gone).
 * - Test knobs: `--ready-delay-ms <n>` waits before printing the ready line; `--drain-delay-ms <n>` delays
 *   the drain answer; `--exit-on-drain` exits right after answering a drain.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';

interface AgentArgs {
  hostId: string;
  bind: string;
  apiPort: number;
  token: string | undefined;
  stateDir: string | undefined;
  readyDelayMs: number;
  drainDelayMs: number;
  exitOnDrain: boolean;
  other: Record<string, string | true>;
}

function parseArgs(argv: string[]): AgentArgs {
  const flags: Record<string, string | true> = {};
  const rest = argv[0] === 'agent' ? argv.slice(1) : argv;
  for (let i = 0; i < rest.length; i++) {
    const arg = rest[i]!;
    if (!arg.startsWith('--')) throw new Error(`unexpected argument: ${arg}`);
    const eq = arg.indexOf('=');
    if (eq > 0) {
      flags[arg.slice(2, eq)] = arg.slice(eq + 1);
      continue;
    }
    const next = rest[i + 1];
    if (next !== undefined && !next.startsWith('--')) {
      flags[arg.slice(2)] = next;
      i++;
    } else {
      flags[arg.slice(2)] = true;
    }
  }
  const str = (name: string): string | undefined => (typeof flags[name] === 'string' ? (flags[name] as string) : undefined);
  const num = (name: string, fallback: number): number => {
    const v = str(name);
    if (v === undefined) return fallback;
    const n = Number(v);
    if (!Number.isInteger(n) || n < 0) throw new Error(`--${name}: expected a non-negative integer, got ${v}`);
    return n;
  };
  const hostId = str('host-id');
  const bind = str('bind');
  if (!hostId) throw new Error('--host-id is required');
  if (!bind) throw new Error('--bind is required');
  const known = new Set(['host-id', 'bind', 'api-port', 'token', 'state-dir', 'ready-delay-ms', 'drain-delay-ms', 'exit-on-drain']);
  return {
    hostId,
    bind,
    apiPort: num('api-port', 0),
    token: str('token'),
    stateDir: str('state-dir'),
    readyDelayMs: num('ready-delay-ms', 0),
    drainDelayMs: num('drain-delay-ms', 0),
    exitOnDrain: flags['exit-on-drain'] === true,
    other: Object.fromEntries(Object.entries(flags).filter(([k]) => !known.has(k))),
  };
}

function main(): void {
  let args: AgentArgs;
  try {
    args = parseArgs(process.argv.slice(2));
  } catch (err) {
    process.stderr.write(`fake-agent: ${(err as Error).message}\n`);
    process.exit(2);
  }
  const startedAt = new Date().toISOString();
  let draining: { at: string; reason: string | undefined } | undefined;
  let drainCount = 0;

  const writeState = (file: string, data: unknown): void => {
    if (!args.stateDir) return;
    mkdirSync(args.stateDir, { recursive: true });
    writeFileSync(path.join(args.stateDir, file), JSON.stringify(data, null, 2));
  };

  const hostJson = (): Record<string, unknown> => ({
    hostId: args.hostId,
    bind: args.bind,
    pid: process.pid,
    startedAt,
    draining: draining !== undefined,
    drainedAt: draining?.at ?? null,
    drainCount,
    args: args.other,
  });

  const server = http.createServer((req, res) => {
    const send = (status: number, body: unknown): void => {
      res.writeHead(status, { 'content-type': 'application/json' });
      res.end(JSON.stringify(body));
    };
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      if (args.token !== undefined && req.headers.authorization !== `Bearer ${args.token}`) {
        send(401, { error: 'unauthorized' });
        return;
      }
      const url = new URL(req.url ?? '/', 'http://agent');
      if (req.method === 'GET' && url.pathname === '/v1/host') {
        send(200, hostJson());
        return;
      }
      if (req.method === 'POST' && url.pathname === '/v1/drain') {
        let reason: string | undefined;
        try {
          const body = chunks.length ? (JSON.parse(Buffer.concat(chunks).toString('utf8')) as { reason?: unknown }) : {};
          reason = typeof body.reason === 'string' ? body.reason : undefined;
        } catch {
          send(400, { error: 'invalid JSON body' });
          return;
        }
        drainCount++;
        draining ??= { at: new Date().toISOString(), reason };
        writeState('drain.json', { ...hostJson(), reason });
        setTimeout(() => {
          send(202, { hostId: args.hostId, draining: true, reason: reason ?? null });
          if (args.exitOnDrain) setTimeout(() => shutdown('drained'), 10);
        }, args.drainDelayMs);
        return;
      }
      send(404, { error: `not found: ${req.method} ${url.pathname}` });
    });
  });

  let stopping = false;
  const shutdown = (why: string): void => {
    if (stopping) return;
    stopping = true;
    process.stdout.write(`agent stopped ${args.hostId} (${why})\n`);
    server.closeAllConnections();
    server.close(() => process.exit(0));
    setTimeout(() => process.exit(0), 1_000).unref();
  };
  process.on('SIGTERM', () => shutdown('SIGTERM'));
  process.on('SIGINT', () => shutdown('SIGINT'));
  // The emulator keeps our stdin open; its end means the emulator is gone, and a host must not outlive it.
  process.stdin.on('end', () => shutdown('stdin closed'));
  process.stdin.on('error', () => shutdown('stdin error'));
  process.stdin.resume();

  server.on('error', (err) => {
    process.stderr.write(`fake-agent ${args.hostId}: ${err.message}\n`);
    process.exit(1);
  });
  server.listen(args.apiPort, args.bind, () => {
    const { port } = server.address() as AddressInfo;
    writeState('host.json', hostJson());
    setTimeout(() => process.stdout.write(`agent ready ${args.hostId} api=http://${args.bind}:${port}\n`), args.readyDelayMs);
  });
}

main();
