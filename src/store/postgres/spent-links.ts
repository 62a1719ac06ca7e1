/**
 * Spent one-time access links in PostgreSQL, so a link spent through one controller's gateway cannot be
 * spent again through another's. The row is the proof: the link id is the primary key and a spend is
 * `INSERT … ON CONFLICT DO NOTHING`, so of two controllers spending one link at once exactly one inserts.
 *
 * Rows past their link's expiry are pruned (at most once a minute per controller): the link would be
 * refused as expired before it got here. A database that cannot be reached is STORE_UNAVAILABLE, and the
 * gateway refuses the link: not knowing whether it was spent is the unsafe side.
 */
import type { TokenClaims } from '../../gateway/access-tokens.js';
import type { SpentLinkStore } from '../../gateway/access-links.js';
import { silentLogger, type Logger } from '../../logger.js';
import type { StorePool } from './pool.js';

const PRUNE_EVERY_MS = 60_000;

export interface PgSpentLinksOptions {
  pool: StorePool;
  logger?: Logger;
  /** The clock expiries are compared with (ms), as for the file store. */
  now?: () => number;
}

export class PgSpentLinks implements SpentLinkStore {
  private readonly pool: StorePool;
  private readonly logger: Logger;
  private readonly now: () => number;
  private lastPrune = 0;

  constructor(options: PgSpentLinksOptions) {
    this.pool = options.pool;
    this.logger = (options.logger ?? silentLogger()).child({ component: 'pg-spent-links' });
    this.now = options.now ?? Date.now;
  }

  /** Marks a link spent; false when it already was, on any controller. */
  async spend(claims: TokenClaims): Promise<boolean> {
    this.prune();
    const { rowCount } = await this.pool.query(
      `INSERT INTO spent_links (link_id, expires_at) VALUES ($1, to_timestamp($2::double precision / 1000)) ON CONFLICT (link_id) DO NOTHING`,
      [claims.jti, claims.expiresAt],
    );
    return rowCount === 1;
  }

  /** Removes rows whose links have expired; in the background, a failure only logged. */
  private prune(): void {
    const now = this.now();
    if (now - this.lastPrune < PRUNE_EVERY_MS) return;
    this.lastPrune = now;
    this.pool
      .query('DELETE FROM spent_links WHERE expires_at <= to_timestamp($1::double precision / 1000)', [now])
      .then(({ rowCount }) => rowCount && this.logger.debug({ pruned: rowCount }, 'expired spent links pruned'))
      .catch((err: unknown) => this.logger.warn({ err: (err as Error).message }, 'could not prune expired spent links'));
  }
}
