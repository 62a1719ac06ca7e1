/**
 * Change announcements between controllers through PostgreSQL LISTEN/NOTIFY, so caches stay fresh without
 * polling. A NOTIFY sent inside a transaction is delivered only if and when it commits, in commit order.
 *
 * The listener holds one dedicated connection. When it drops, announcements sent meanwhile are lost, so
 * subscribers hear `connected: false` (their cache can no longer be trusted) and, once a new connection
 * listens again, `connected: true` (time to re-read what they cache). It reconnects by itself with backoff,
 * and a periodic round trip finds a connection that died silently.
 */
import type pg from 'pg';
import { SwarmError, invalidInput } from '../../errors.js';
import { silentLogger, type Logger } from '../../logger.js';
import type { Queryable, StorePool } from './pool.js';

/** PostgreSQL's payload limit is 8000 bytes; a little is kept in hand. */
const MAX_PAYLOAD_BYTES = 7_900;
const CHANNEL = /^[a-z_][a-z0-9_]{0,62}$/;

/** Announces `payload` (JSON) on `channel`; inside a transaction it goes out on commit. */
export async function notifyChange(db: Queryable, channel: string, payload: unknown): Promise<void> {
  checkChannel(channel);
  const text = JSON.stringify(payload);
  if (Buffer.byteLength(text) > MAX_PAYLOAD_BYTES) {
    throw new SwarmError('INTERNAL', `notification on ${channel}: payload of ${Buffer.byteLength(text)} bytes exceeds ${MAX_PAYLOAD_BYTES}; announce an id and let listeners read the row`);
  }
  await db.query('SELECT pg_notify($1, $2)', [channel, text]);
}

export interface ChangeListenerOptions {
  pool: StorePool;
  logger?: Logger;
  /** First reconnect delay; doubles up to maxRetryMs (defaults 100 ms and 5 s). */
  retryMs?: number;
  maxRetryMs?: number;
  /** How often the connection is checked with a round trip (default 5 s). */
  heartbeatMs?: number;
}

type ChangeCallback = (payload: unknown) => void;
type StateCallback = (connected: boolean) => void;

export class ChangeListener {
  private readonly pool: StorePool;
  private readonly logger: Logger;
  private readonly retryMs: number;
  private readonly maxRetryMs: number;
  private readonly heartbeatMs: number;
  private readonly channels = new Map<string, Set<ChangeCallback>>();
  private readonly stateCallbacks = new Set<StateCallback>();
  private client?: pg.Client;
  private connecting?: Promise<void>;
  private retryTimer?: NodeJS.Timeout;
  private heartbeat?: NodeJS.Timeout;
  private attempt = 0;
  private closed = false;
  /** True while a connection is listening on every subscribed channel. */
  connected = false;

  constructor(options: ChangeListenerOptions) {
    this.pool = options.pool;
    this.logger = (options.logger ?? silentLogger()).child({ component: 'store-listener' });
    this.retryMs = options.retryMs ?? 100;
    this.maxRetryMs = options.maxRetryMs ?? 5_000;
    this.heartbeatMs = options.heartbeatMs ?? 5_000;
  }

  /**
   * Calls `cb` with each payload announced on `channel`. Resolves once the channel is listened to; the
   * first subscription connects and throws STORE_UNAVAILABLE when it cannot. Returns the unsubscribe.
   */
  async onChange(channel: string, cb: ChangeCallback): Promise<() => Promise<void>> {
    checkChannel(channel);
    if (this.closed) throw new SwarmError('STORE_UNAVAILABLE', 'state store unavailable: the change listener is closed');
    let set = this.channels.get(channel);
    const fresh = !set;
    if (!set) this.channels.set(channel, (set = new Set()));
    set.add(cb);
    if (!this.client && !this.connecting) await this.connect();
    else if (this.connecting) await this.connecting;
    else if (fresh && this.client) await this.client.query(`LISTEN ${channel}`).catch((err: unknown) => this.lost(err));
    return async () => {
      set.delete(cb);
      if (set.size === 0 && this.channels.get(channel) === set) {
        this.channels.delete(channel);
        await this.client?.query(`UNLISTEN ${channel}`).catch(() => undefined);
      }
    };
  }

  /** Hears every loss (false) and recovery (true) of the connection. Returns the unsubscribe. */
  onConnectionChange(cb: StateCallback): () => void {
    this.stateCallbacks.add(cb);
    return () => this.stateCallbacks.delete(cb);
  }

  private connect(): Promise<void> {
    this.connecting = this.open().finally(() => (this.connecting = undefined));
    return this.connecting;
  }

  private async open(): Promise<void> {
    const client = await this.pool.connectClient();
    client.on('notification', (msg) => this.deliver(msg));
    client.on('error', (err) => this.lost(err, client));
    client.on('end', () => this.lost(new Error('connection ended'), client));
    try {
      for (const channel of this.channels.keys()) await client.query(`LISTEN ${channel}`);
    } catch (err) {
      client.end().catch(() => undefined);
      throw this.pool.translate(err);
    }
    if (this.closed) {
      await client.end().catch(() => undefined);
      return;
    }
    this.client = client;
    this.attempt = 0;
    this.connected = true;
    this.heartbeat = setInterval(() => {
      client.query('SELECT 1').catch((err: unknown) => this.lost(err, client));
    }, this.heartbeatMs);
    this.heartbeat.unref();
    this.emitState(true);
  }

  private deliver(msg: pg.Notification): void {
    const callbacks = this.channels.get(msg.channel);
    if (!callbacks) return;
    let payload: unknown;
    try {
      payload = msg.payload === undefined ? undefined : JSON.parse(msg.payload);
    } catch {
      this.logger.warn({ channel: msg.channel }, 'notification payload is not JSON; ignored');
      return;
    }
    for (const cb of callbacks) {
      try {
        cb(payload);
      } catch (err) {
        this.logger.error({ channel: msg.channel, err: (err as Error).message }, 'change callback failed');
      }
    }
  }

  private lost(err: unknown, client?: pg.Client): void {
    if (client && client !== this.client) return;
    if (!this.client) return;
    const dead = this.client;
    this.client = undefined;
    clearInterval(this.heartbeat);
    dead.removeAllListeners('notification');
    dead.end().catch(() => undefined);
    if (this.closed) return;
    this.connected = false;
    this.logger.warn({ err: this.pool.clean((err as Error)?.message ?? String(err)) }, 'change listener lost its connection; reconnecting');
    this.emitState(false);
    this.scheduleReconnect();
  }

  private scheduleReconnect(): void {
    if (this.closed || this.retryTimer) return;
    const delay = Math.min(this.maxRetryMs, this.retryMs * 2 ** this.attempt++);
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      this.connect().catch((err: unknown) => {
        this.logger.debug({ err: this.pool.clean((err as Error).message) }, 'change listener reconnect failed');
        this.scheduleReconnect();
      });
    }, delay);
    this.retryTimer.unref();
  }

  private emitState(connected: boolean): void {
    for (const cb of this.stateCallbacks) {
      try {
        cb(connected);
      } catch (err) {
        this.logger.error({ err: (err as Error).message }, 'connection-change callback failed');
      }
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    this.connected = false;
    clearTimeout(this.retryTimer);
    clearInterval(this.heartbeat);
    await this.connecting?.catch(() => undefined);
    const client = this.client;
    this.client = undefined;
    await client?.end().catch(() => undefined);
  }
}

function checkChannel(channel: string): void {
  if (!CHANNEL.test(channel)) throw invalidInput('channel', 'a channel name of 1-63 characters a-z, 0-9 and "_"', channel);
}
