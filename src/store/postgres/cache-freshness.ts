/**
 * Whether a cache kept fresh by announcements (./notify.ts) may answer reads, for the PostgreSQL stores
 * that read synchronously from memory (instances, principals). While the listener is down an announcement
 * may be missed, so the cache is stale until the listener is back and everything has been re-read; a
 * stale cache refuses (STORE_UNAVAILABLE) rather than answer from what may be out of date.
 */
import { SwarmError } from '../../errors.js';
import type { Logger } from '../../logger.js';
import type { ChangeListener } from './notify.js';

export interface CacheFreshnessOptions {
  listener: ChangeListener;
  /** Reads everything the cache holds again. */
  reread: () => Promise<void>;
  logger: Logger;
  /** Names the cache in messages: "instance store". */
  what: string;
  /** The server, for messages (StorePool.where). */
  where: string;
}

export class CacheFreshness {
  private loaded = false;
  private fresh = false;
  private resyncing?: Promise<void>;

  constructor(private readonly options: CacheFreshnessOptions) {}

  /** Follows the listener's connection: a loss makes the cache stale, a recovery re-reads it. Returns the unsubscribe. */
  follow(): () => void {
    return this.options.listener.onConnectionChange((connected) => {
      if (!this.loaded) return;
      if (!connected) {
        this.fresh = false;
        return;
      }
      this.resync();
    });
  }

  /** The first full read is done: fresh if no announcement can have been missed meanwhile. */
  loadedNow(): void {
    this.loaded = true;
    this.fresh = this.options.listener.connected;
  }

  /** A change is known to exist but could not be read: stale until everything is re-read. */
  missed(): void {
    this.fresh = false;
    this.resync();
  }

  /** The store stopped following changes. */
  stop(): void {
    this.fresh = false;
  }

  /** True when reads can be answered (loaded, and no announcement can have been missed). */
  get available(): boolean {
    return this.loaded && this.fresh;
  }

  /** Throws STORE_UNAVAILABLE unless reads can be answered. */
  check(): void {
    if (!this.loaded) throw new SwarmError('STORE_UNAVAILABLE', `state store unavailable: the ${this.options.what} is not loaded yet`);
    if (!this.fresh) throw new SwarmError('STORE_UNAVAILABLE', `state store unavailable: lost contact with the database (${this.options.where}); waiting for it to come back`);
  }

  /** Re-reads everything after announcements may have been missed; retried while the listener is up. */
  private resync(): void {
    if (this.resyncing) return;
    const { listener, logger, what } = this.options;
    this.resyncing = this.options
      .reread()
      .then(() => {
        this.fresh = listener.connected;
        logger.info(`${what} re-read after a lost connection`);
      })
      .catch((err: unknown) => {
        logger.warn({ err: (err as Error).message }, `could not re-read the ${what}; retrying`);
        setTimeout(() => listener.connected && !this.fresh && this.resync(), 500).unref();
      })
      .finally(() => (this.resyncing = undefined));
  }
}
