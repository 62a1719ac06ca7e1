/**
 * The one door to PostgreSQL: a pg Pool that turns "the server is gone" into a SwarmError the controller
 * can act on (STORE_UNAVAILABLE: stop acting, answer clearly, retry later) instead of a driver error, and
 * that never lets the database password reach a log line or an error message.
 *
 * Errors the server itself raises (a constraint, a serialization failure) come back as pg's DatabaseError
 * with its SQLSTATE `code`, so callers can map them (a unique violation to CONFLICT, for one).
 */
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { SwarmError } from '../../errors.js';
import { redactString, silentLogger, type Logger } from '../../logger.js';


/** This process among the controllers sharing a database: the writer recorded on its writes. */
export const PROCESS_ID = randomBytes(6).toString('hex');
/** The sessions of process X are named `vscode-swarm/X` (under PostgreSQL's 63-character limit). */
export const APPLICATION_PREFIX = 'vscode-swarm/';
export interface StorePoolOptions {
  databaseUrl: string;
  logger?: Logger;
  /** Connections at most (default 10). */
  max?: number;
  /** How long a connection attempt may take before the store counts as unavailable (default 5 s). */
  connectTimeoutMs?: number;
  /** How long one query may wait for its answer before the store counts as unavailable (default 30 s). */
  queryTimeoutMs?: number;
}

/** What can run a query: the pool or a client inside a transaction. */
export interface Queryable {
  query<R extends pg.QueryResultRow = pg.QueryResultRow>(text: string, values?: unknown[]): Promise<pg.QueryResult<R>>;
}

/** Node socket errors and pg's own messages that mean the server cannot be reached or went away. */
const GONE_ERRNO = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EPIPE', 'ENOTFOUND', 'EHOSTUNREACH', 'ENETUNREACH', 'EAI_AGAIN', 'ECONNABORTED']);
const GONE_MESSAGE = /connection terminated|timeout exceeded when trying to connect|query read timeout|connection timeout|client has encountered a connection error|not queryable|cannot use a pool after calling end/i;
/** SQLSTATE: 08 connection exceptions; 57P01-57P03 admin/crash shutdown, cannot connect now; 53300 too many connections. */
const GONE_SQLSTATE = /^(08...|57P0[123]|53300)$/;

/** True when an error means the server is unreachable, not that it refused the statement. */
export function isUnavailableError(err: unknown): boolean {
  if (err instanceof SwarmError) return err.code === 'STORE_UNAVAILABLE';
  if (!(err instanceof Error)) return false;
  const code = (err as { code?: unknown }).code;
  if (typeof code === 'string' && (GONE_ERRNO.has(code) || GONE_SQLSTATE.test(code))) return true;
  if (err instanceof AggregateError && err.errors.some(isUnavailableError)) return true;
  return GONE_MESSAGE.test(err.message);
}

/** The URL with its password replaced, for messages and logs. */
export function redactDatabaseUrl(url: string): string {
  try {
    const parsed = new URL(url);
    if (parsed.password) parsed.password = 'redacted';
    return parsed.toString();
  } catch {
    return redactString(url);
  }
}

export class StorePool {
  private readonly pool: pg.Pool;
  private readonly logger: Logger;
  private readonly password: string;
  /** The server as `host:port/database`, for messages. */
  readonly where: string;
  readonly config: pg.ClientConfig;
  private closed = false;

  constructor(options: StorePoolOptions) {
    this.logger = (options.logger ?? silentLogger()).child({ component: 'store' });
    let parsed: URL;
    try {
      parsed = new URL(options.databaseUrl);
    } catch {
      throw new SwarmError('INVALID_INPUT', 'store.databaseUrl: expected a postgres:// URL', { field: 'store.databaseUrl' });
    }
    if (parsed.protocol !== 'postgres:' && parsed.protocol !== 'postgresql:') {
      throw new SwarmError('INVALID_INPUT', `store.databaseUrl: expected a postgres:// URL (got ${parsed.protocol}//…)`, { field: 'store.databaseUrl' });
    }
    this.password = decodeURIComponent(parsed.password);
    this.where = `${parsed.hostname}:${parsed.port || 5432}${parsed.pathname}`;
    this.config = {
      connectionString: options.databaseUrl,
      connectionTimeoutMillis: options.connectTimeoutMs ?? 5_000,
      query_timeout: options.queryTimeoutMs ?? 30_000,
      // Names this process to the server: a record's writer is alive while a session of its name is (see PgInstanceStore.orphanedWrites).
      application_name: `${APPLICATION_PREFIX}${PROCESS_ID}`,
    };
    this.pool = new pg.Pool({ ...this.config, max: options.max ?? 10 });
    // An idle connection the server drops emits here; unhandled it would end the process.
    this.pool.on('error', (err) => this.logger.warn({ err: this.clean(err.message), where: this.where }, 'idle database connection lost'));
  }

  async query<R extends pg.QueryResultRow = pg.QueryResultRow>(text: string, values?: unknown[]): Promise<pg.QueryResult<R>> {
    try {
      return await this.pool.query<R>(text, values);
    } catch (err) {
      throw this.translate(err);
    }
  }

  /**
   * Runs `work` inside BEGIN/COMMIT on one connection; ROLLBACK when it throws. Errors come back
   * translated (STORE_UNAVAILABLE when the server went away, whatever `work` threw otherwise).
   */
  async transaction<T>(work: (client: Queryable) => Promise<T>): Promise<T> {
    let client: pg.PoolClient;
    try {
      client = await this.pool.connect();
    } catch (err) {
      throw this.translate(err);
    }
    let broken = false;
    // The pool listens for errors on idle connections only: one that breaks while checked out and between
    // two queries (the transaction's work awaiting something else) would otherwise crash the process with an
    // unhandled 'error' event. Its next query fails, and the transaction with it.
    const onError = (err: Error): void => {
      broken = true;
      this.logger.warn({ err: this.clean(err.message), where: this.where }, 'database connection lost during a transaction');
    };
    client.on('error', onError);
    try {
      await client.query('BEGIN');
      const result = await work(client);
      await client.query('COMMIT');
      return result;
    } catch (err) {
      broken ||= isUnavailableError(err);
      if (!broken) await client.query('ROLLBACK').catch(() => (broken = true));
      throw this.translate(err);
    } finally {
      client.off('error', onError);
      // A connection that failed mid-transaction is not handed to the next caller.
      client.release(broken ? true : undefined);
    }
  }

  /** A new connection outside the pool (for LISTEN), with the same settings and the same error handling. */
  async connectClient(): Promise<pg.Client> {
    const client = new pg.Client(this.config);
    // Until the caller adds its own (before it uses the client), a connection lost early is logged, not fatal.
    client.on('error', (err) => this.logger.warn({ err: this.clean(err.message), where: this.where }, 'database connection lost'));
    try {
      await client.connect();
    } catch (err) {
      client.end().catch(() => undefined);
      throw this.translate(err);
    }
    return client;
  }

  /** The error to throw: STORE_UNAVAILABLE for a server that is gone; otherwise the original, its message cleaned. */
  translate(err: unknown): unknown {
    if (err instanceof SwarmError) return err;
    if (isUnavailableError(err) || this.closed) {
      const reason = err instanceof Error ? this.clean(err.message || (err as { code?: string }).code || err.name) : String(err);
      return new SwarmError('STORE_UNAVAILABLE', `state store unavailable: ${reason} (${this.where})`, { details: { where: this.where } });
    }
    if (err instanceof Error && this.password && err.message.includes(this.password)) err.message = this.clean(err.message);
    return err;
  }

  /** Text with the password (and any URL credentials) removed. */
  clean(text: string): string {
    const redacted = redactString(text);
    return this.password ? redacted.split(this.password).join('[redacted]') : redacted;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.pool.end();
  }
}
