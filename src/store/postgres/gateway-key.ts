/**
 * The gateway's signing seed kept in PostgreSQL (table `swarm_secrets`, migration 0006-gateway-key), for
 * controllers that share a database and configure no `gateway.secret`: each would otherwise make its own
 * seed in its own state directory, and a link one controller hands out would not open through another's
 * gateway. A configured secret still wins (AccessLinks then never asks this store; nothing is stored).
 *
 * The first controller stores its initial seed with `INSERT … ON CONFLICT DO NOTHING` and then reads the
 * row back, so of controllers starting at once one insert wins and every one of them signs with that seed.
 * The initial seed is the state directory's file seed when it has one (a single controller moved onto the
 * database keeps its outstanding links valid), else a new random one (loadOrCreateSigningKey decides).
 * The seed is never logged. The schema must be migrated first: createSwarm's principal store migrates in
 * the controller's initialize() before AccessLinks asks.
 */
import { SwarmError } from '../../errors.js';
import type { SigningSeedStore } from '../../gateway/access-tokens.js';
import { silentLogger, type Logger } from '../../logger.js';
import type { Queryable, StorePool } from './pool.js';

/** The row that holds the gateway's Ed25519 seed. */
export const GATEWAY_SEED_NAME = 'gateway-ed25519-seed';

export interface PgSigningSeedOptions {
  pool: StorePool;
  logger?: Logger;
}

export class PgSigningSeed implements SigningSeedStore {
  private readonly pool: StorePool;
  private readonly logger: Logger;

  constructor(options: PgSigningSeedOptions) {
    this.pool = options.pool;
    this.logger = (options.logger ?? silentLogger()).child({ component: 'pg-gateway-key' });
  }

  /** The shared seed; `initial()` is asked for (and offered) only while the database holds none. */
  async seed(initial: () => Promise<Buffer>): Promise<Buffer> {
    const stored = await readGatewaySeed(this.pool);
    if (stored) return stored;
    const offered = await initial();
    const created = await insertGatewaySeed(this.pool, offered);
    const agreed = await readGatewaySeed(this.pool);
    if (!agreed) throw new SwarmError('STATE_ERROR', `gateway key: the row ${GATEWAY_SEED_NAME} of swarm_secrets in ${this.pool.where} vanished right after it was written`);
    this.logger.info({ created, where: this.pool.where }, created ? 'gateway signing key stored in the database' : 'gateway signing key taken from the database');
    return agreed;
  }
}

/** The stored seed, or undefined when there is none; a row that is not 32 bytes is STATE_ERROR (never replaced silently). */
export async function readGatewaySeed(db: Queryable): Promise<Buffer | undefined> {
  const { rows } = await db.query<{ value: Buffer }>('SELECT value FROM swarm_secrets WHERE name = $1', [GATEWAY_SEED_NAME]);
  const value = rows[0]?.value;
  if (!value) return undefined;
  if (value.length !== 32) throw new SwarmError('STATE_ERROR', `gateway key: swarm_secrets row ${GATEWAY_SEED_NAME}: expected a 32-byte Ed25519 seed (got ${value.length} bytes)`);
  return value;
}

/** Stores `seed` unless a seed is stored already; true when this call stored it. */
export async function insertGatewaySeed(db: Queryable, seed: Buffer): Promise<boolean> {
  checkSeed(seed);
  const { rowCount } = await db.query('INSERT INTO swarm_secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING', [GATEWAY_SEED_NAME, seed]);
  return rowCount === 1;
}

/** Stores `seed` in place of any stored one (`store import`): links signed with the old seed stop opening. */
export async function replaceGatewaySeed(db: Queryable, seed: Buffer): Promise<void> {
  checkSeed(seed);
  await db.query('INSERT INTO swarm_secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value, created_at = now()', [GATEWAY_SEED_NAME, seed]);
}

function checkSeed(seed: Buffer): void {
  if (seed.length !== 32) throw new SwarmError('INVALID_INPUT', `gateway key: expected a 32-byte Ed25519 seed (got ${seed.length} bytes)`);
}
