/**
 * A TCP proxy that breaks connections on purpose, to put between a client (dockerode, fly-admin, the AWS
 * SDK) and what it talks to (the Docker engine's socket, an emulator's port). Each new connection (with
 * `perExchange`, each request on a kept-alive connection) gets a fault with `probability`, chosen by a
 * seeded PRNG so a run can be repeated:
 *   delay    - the first bytes from the client are held for a while, then everything flows;
 *   reset    - part of the request (the server never sees it whole) or part of the response (the server
 *              acted, the client never hears) is forwarded, then the client socket is reset (RST);
 *   stall    - part of the response is forwarded, then nothing for `stallMs`, then both sides are closed;
 *   truncate - part of the response is forwarded, then the client side is ended cleanly (FIN).
 * `setDown(true)` refuses new connections and destroys open ones: "the provider is unreachable".
 * Every socket the proxy holds is destroyed once either side of its pair is gone.
 */
import net from 'node:net';

export type FaultKind = 'delay' | 'reset' | 'stall' | 'truncate';

export interface FaultPlan {
  /** Chance that a new connection gets a fault, 0..1. */
  probability: number;
  kinds: FaultKind[];
  /** delay: extra latency before forwarding (ms range); stall: stop forwarding after some bytes for stallMs, then close. */
  delayMs?: [number, number];
  stallMs?: number;
  seed?: number; // deterministic choices
  /**
   * Roll again for every request on a kept-alive connection (request bytes after response bytes), not
   * only per connection: HTTP clients that reuse one connection for many calls would otherwise see
   * faults only on their few new connections. Default false.
   */
  perExchange?: boolean;
}

export interface FaultProxy {
  /** tcp://127.0.0.1:<port> (for DOCKER_HOST) */ readonly url: string;
  /** http://127.0.0.1:<port> (for HTTP emulators) */ readonly httpUrl: string;
  readonly port: number;
  setFaults(plan: FaultPlan | null): void;
  /** down: new connections are refused (closed at once) and open ones are destroyed; up again with false. */
  setDown(down: boolean): void;
  /** exchanges: request/response rounds seen (a kept-alive connection carries several). */
  stats(): { connections: number; exchanges: number; faulted: Record<FaultKind, number> };
  /** Sockets the proxy holds right now (both sides of each connection); 0 once every pair has closed. */
  openConnections(): number;
  close(): Promise<void>;
}

export interface FaultProxyOptions {
  target: { socketPath: string } | { host: string; port: number };
  faults?: FaultPlan | null;
}

const FAULT_KINDS: readonly FaultKind[] = ['delay', 'reset', 'stall', 'truncate'];
const DEFAULT_DELAY_MS: [number, number] = [50, 400];
const DEFAULT_STALL_MS = 1500;

/** mulberry32: a small, fast, seedable PRNG giving floats in [0, 1). */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function validatePlan(plan: FaultPlan): void {
  if (!(plan.probability >= 0 && plan.probability <= 1)) {
    throw new Error(`fault plan: probability: expected a number between 0 and 1 (got ${plan.probability})`);
  }
  if (plan.probability > 0 && plan.kinds.length === 0) throw new Error('fault plan: kinds: expected at least one fault kind');
  for (const kind of plan.kinds) {
    if (!FAULT_KINDS.includes(kind)) throw new Error(`fault plan: kinds: unknown fault kind ${JSON.stringify(kind)}`);
  }
  if (plan.delayMs && !(plan.delayMs[0] >= 0 && plan.delayMs[1] >= plan.delayMs[0])) {
    throw new Error(`fault plan: delayMs: expected [min, max] with 0 <= min <= max (got ${JSON.stringify(plan.delayMs)})`);
  }
  if (plan.stallMs !== undefined && !(plan.stallMs >= 0)) throw new Error(`fault plan: stallMs: expected >= 0 (got ${plan.stallMs})`);
}

/** What one faulted connection (or exchange) will do, decided when it begins. */
interface ConnectionFault {
  kind: FaultKind;
  /** reset only: which direction is cut. */
  side: 'request' | 'response';
  /** Fraction (0..1) of the first chunk on the cut side that is still forwarded. */
  cutFraction: number;
  delayMs: number;
  stallMs: number;
}

export async function startFaultProxy(options: FaultProxyOptions): Promise<FaultProxy> {
  let plan: FaultPlan | null = null;
  let random = seededRandom(1);
  let down = false;
  let connections = 0;
  let exchanges = 0;
  const faulted: Record<FaultKind, number> = { delay: 0, reset: 0, stall: 0, truncate: 0 };
  const open = new Set<net.Socket>();
  const timers = new Set<NodeJS.Timeout>();

  const setFaults = (next: FaultPlan | null): void => {
    if (next) validatePlan(next);
    plan = next;
    random = seededRandom(next?.seed ?? 1);
  };
  setFaults(options.faults ?? null);

  const later = (ms: number, fn: () => void): void => {
    const timer = setTimeout(() => {
      timers.delete(timer);
      fn();
    }, ms);
    timer.unref();
    timers.add(timer);
  };

  const chooseFault = (): ConnectionFault | undefined => {
    if (!plan || plan.probability <= 0 || plan.kinds.length === 0) return undefined;
    // Always draw the same number of values per connection, so one connection's kind does not shift the next one's.
    const roll = random();
    const kindRoll = random();
    const sideRoll = random();
    const cutRoll = random();
    const delayRoll = random();
    if (roll >= plan.probability) return undefined;
    const [lo, hi] = plan.delayMs ?? DEFAULT_DELAY_MS;
    return {
      kind: plan.kinds[Math.floor(kindRoll * plan.kinds.length)]!,
      side: sideRoll < 0.5 ? 'request' : 'response',
      cutFraction: cutRoll,
      delayMs: Math.round(lo + delayRoll * (hi - lo)),
      stallMs: plan.stallMs ?? DEFAULT_STALL_MS,
    };
  };

  /** Bytes of a chunk still forwarded before a cut: at least 1 and fewer than all when the chunk allows. */
  const cutLength = (chunk: Buffer, fraction: number): number =>
    chunk.length <= 1 ? chunk.length : 1 + Math.floor(fraction * (chunk.length - 1));

  const handle = (client: net.Socket): void => {
    connections += 1;
    client.on('error', () => undefined);
    if (down) {
      client.destroy();
      return;
    }
    const upstream = 'socketPath' in options.target
      ? net.connect({ path: options.target.socketPath })
      : net.connect({ host: options.target.host, port: options.target.port });
    upstream.on('error', () => undefined);
    open.add(client);
    open.add(upstream);

    let finished = false;
    /** Closes both sides (once); `reset` sends an RST to the client instead of a FIN. */
    const finish = (how: 'destroy' | 'reset' | 'end' = 'destroy'): void => {
      if (finished) return;
      finished = true;
      upstream.destroy();
      if (how === 'reset' && !client.destroyed) client.resetAndDestroy();
      else if (how === 'end' && !client.destroyed) client.end(() => client.destroy());
      else client.destroy();
      // An ended client that never reads its FIN would linger: destroy it after a grace period regardless.
      if (how === 'end') later(2000, () => client.destroy());
    };
    client.on('close', () => {
      open.delete(client);
      finish();
    });
    upstream.on('close', () => {
      open.delete(upstream);
      // The upstream's FIN was passed on ('end' below); destroy whatever remains once it is gone.
      if (!finished) {
        finished = true;
        if (!client.destroyed) client.end(() => client.destroy());
        later(2000, () => client.destroy());
      }
    });

    // The fault of the current exchange (of the whole connection unless the plan says perExchange).
    let fault: ConnectionFault | undefined;
    let held: Buffer[] | undefined; // delay: request bytes waiting
    let requestCut = false; // reset on the request side: armed
    let responseFault: ConnectionFault | undefined;
    let cut = false; // the stream was cut: nothing more is forwarded
    let sawResponse = false; // response bytes since the last request bytes: the next request is a new exchange
    let clientEnded = false;
    const arm = (next: ConnectionFault | undefined): void => {
      exchanges += 1;
      fault = next;
      if (fault) faulted[fault.kind] += 1;
      requestCut = fault?.kind === 'reset' && fault.side === 'request';
      responseFault = fault && fault.kind !== 'delay' && !requestCut ? fault : undefined;
      held = fault?.kind === 'delay' ? [] : undefined;
      if (held) {
        later(fault!.delayMs, () => {
          if (finished) return;
          const chunks = held ?? [];
          held = undefined;
          for (const chunk of chunks) upstream.write(chunk);
          if (clientEnded) upstream.end();
        });
      }
    };
    arm(chooseFault());

    // Request direction: client -> upstream.
    client.on('data', (chunk: Buffer) => {
      if (finished || cut) return;
      if (sawResponse) {
        sawResponse = false;
        if (plan?.perExchange) arm(chooseFault());
      }
      if (held) {
        held.push(chunk);
        return;
      }
      if (requestCut) {
        // The server gets part of the request, then the client's connection is reset. If the write never
        // completes (upstream gone), the close handlers finish the pair anyway.
        requestCut = false;
        cut = true;
        upstream.write(chunk.subarray(0, cutLength(chunk, fault!.cutFraction)), () => finish('reset'));
        return;
      }
      upstream.write(chunk);
    });
    client.on('end', () => {
      clientEnded = true;
      if (!finished && !held && !cut) upstream.end();
    });

    // Response direction: upstream -> client.
    upstream.on('data', (chunk: Buffer) => {
      sawResponse = true;
      if (finished || cut) return;
      if (!responseFault) {
        client.write(chunk);
        return;
      }
      cut = true;
      const part = chunk.subarray(0, cutLength(chunk, responseFault.cutFraction));
      if (responseFault.kind === 'reset') {
        client.write(part, () => finish('reset'));
      } else if (responseFault.kind === 'truncate') {
        client.write(part);
        finish('end');
      } else {
        // stall: forward part, then nothing for stallMs, then close both sides.
        client.write(part);
        later(responseFault.stallMs, () => finish('destroy'));
      }
    });
    upstream.on('end', () => {
      if (!finished && !cut) client.end();
    });
  };

  const server = net.createServer({ allowHalfOpen: true }, handle);
  server.on('error', () => undefined);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      server.off('error', reject);
      resolve();
    });
  });
  const address = server.address();
  if (!address || typeof address === 'string') throw new Error('fault proxy: no TCP address after listen');
  const port = address.port;

  const destroyAll = (): void => {
    for (const socket of open) socket.destroy();
    open.clear();
  };

  return {
    url: `tcp://127.0.0.1:${port}`,
    httpUrl: `http://127.0.0.1:${port}`,
    port,
    setFaults,
    setDown(value: boolean) {
      down = value;
      if (down) destroyAll();
    },
    stats: () => ({ connections, exchanges, faulted: { ...faulted } }),
    openConnections: () => [...open].filter((s) => !s.destroyed).length,
    async close() {
      destroyAll();
      for (const timer of timers) clearTimeout(timer);
      timers.clear();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
