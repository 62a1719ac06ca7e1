/**
 * The PostgreSQL schema, as an ordered list of migrations applied at start. Several controllers may start
 * at once: each runs the whole check-and-apply inside one transaction holding a transaction-scoped
 * advisory lock, so the second waits for the first to commit and then finds every migration recorded in
 * `schema_migrations`; each migration is applied exactly once, and a failing one leaves nothing behind.
 *
 * Migrations are append-only: a released id is never edited or reordered; a change is a new migration.
 */
import type { Logger } from '../../logger.js';
import { SwarmError } from '../../errors.js';
import { isUnavailableError, type Queryable, type StorePool } from './pool.js';

export interface Migration {
  /** Sortable and unique: `0001-name`. */
  id: string;
  sql: string;
}

/** The advisory lock key that serialises migrations across controllers ("vss-migr" as 8 bytes). */
export const MIGRATION_LOCK_KEY = '8535148443127589490';

export const MIGRATIONS: readonly Migration[] = [
  {
    id: '0001-core',
    sql: `
      -- Every write takes a fresh value from one sequence: versions rise across rows, deletes included, so a
      -- cache can order any two changes it hears about.
      CREATE SEQUENCE instance_version_seq;
      CREATE TABLE instances (
        id text PRIMARY KEY,
        owner text NOT NULL,
        name text NOT NULL,
        provider text NOT NULL,
        status text NOT NULL,
        warm_pool text,
        data jsonb NOT NULL,
        version bigint NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now()
      );
      -- Names are unique per owner among live workspaces: a record being deleted and warm-buffer members
      -- (which belong to nobody until claimed) do not count.
      CREATE UNIQUE INDEX instances_live_owner_name ON instances (owner, name) WHERE status <> 'deleting' AND warm_pool IS NULL;
      CREATE INDEX instances_provider ON instances (provider);

      CREATE TABLE principals (
        id text PRIMARY KEY,
        data jsonb NOT NULL,
        version bigint NOT NULL DEFAULT 1,
        updated_at timestamptz NOT NULL DEFAULT now()
      );
      -- Only hashes of tokens are stored; the token itself is shown once to its holder.
      CREATE TABLE tokens (
        id text PRIMARY KEY,
        principal_id text NOT NULL REFERENCES principals (id) ON DELETE CASCADE,
        hash text NOT NULL UNIQUE,
        data jsonb NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        expires_at timestamptz,
        revoked_at timestamptz
      );
      CREATE TABLE audit_events (
        seq bigserial PRIMARY KEY,
        at timestamptz NOT NULL DEFAULT now(),
        actor text,
        action text NOT NULL,
        subject text,
        outcome text,
        data jsonb NOT NULL
      );
      CREATE INDEX audit_events_at ON audit_events (at);
      CREATE TABLE health_history (
        instance_id text NOT NULL,
        at timestamptz NOT NULL DEFAULT now(),
        data jsonb NOT NULL,
        PRIMARY KEY (instance_id, at)
      );
      CREATE TABLE migrations (
        id text PRIMARY KEY,
        instance_id text NOT NULL,
        status text NOT NULL,
        data jsonb NOT NULL,
        version bigint NOT NULL DEFAULT 1,
        updated_at timestamptz NOT NULL DEFAULT now()
      );
      CREATE INDEX migrations_instance ON migrations (instance_id);
      -- An access link is single-use: the row is the proof it was spent, on whichever controller.
      CREATE TABLE spent_links (
        link_hash text PRIMARY KEY,
        spent_at timestamptz NOT NULL DEFAULT now(),
        expires_at timestamptz NOT NULL
      );
      CREATE TABLE warm_members (
        instance_id text PRIMARY KEY,
        pool_key text NOT NULL,
        claimed_by text,
        updated_at timestamptz NOT NULL DEFAULT now()
      );
      CREATE INDEX warm_members_pool ON warm_members (pool_key);
      -- Leadership for work that must run once; the fencing token only ever grows (a release expires the
      -- row instead of deleting it).
      CREATE TABLE leases (
        name text PRIMARY KEY,
        holder text NOT NULL,
        fencing_token bigint NOT NULL,
        expires_at timestamptz NOT NULL
      );
    `,
  },
  {
    id: '0002-tenancy',
    sql: `
      -- Principals and tokens take their versions from one sequence, so a cache orders any two changes.
      CREATE SEQUENCE tenancy_version_seq;
      ALTER TABLE principals ALTER COLUMN version SET DEFAULT nextval('tenancy_version_seq');
      ALTER TABLE tokens ADD COLUMN version bigint NOT NULL DEFAULT nextval('tenancy_version_seq');
      -- A spent one-time link is keyed by its id (the signed token's jti, not a secret); rows past the
      -- link's expiry are pruned (the link would be refused as expired anyway).
      ALTER TABLE spent_links RENAME COLUMN link_hash TO link_id;
      CREATE INDEX spent_links_expires ON spent_links (expires_at);
    `,
  },
  {
    id: '0003-audit',
    sql: `
      -- The audit trail (src/store/postgres/audit-log.ts): the whole CloudEvent in data, the filtered fields beside it.
      ALTER TABLE audit_events ADD COLUMN event_id text, ADD COLUMN type text, ADD COLUMN owner text;
      CREATE UNIQUE INDEX audit_events_event_id ON audit_events (event_id);
      CREATE INDEX audit_events_subject ON audit_events (subject, seq);
      CREATE INDEX audit_events_actor ON audit_events (actor, seq);
      -- Append-only: events are never changed; they only leave by retention.
      CREATE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'audit_events is append-only'; END
      $$;
      CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();
      -- One row per webhook: the seq of the last event it delivered (or passed over). A controller delivers
      -- for a webhook only while it holds this row's lock (FOR UPDATE SKIP LOCKED), so each event goes out once.
      CREATE TABLE audit_webhook_cursors (
        -- sha256 of the URL (which may carry credentials), and the name it is logged under.
        hook text PRIMARY KEY,
        name text NOT NULL,
        seq bigint NOT NULL,
        delivered bigint NOT NULL DEFAULT 0,
        updated_at timestamptz NOT NULL DEFAULT now()
      );
    `,
  },
  {
    id: '0004-instance-writer',
    sql: `
      -- The process (pool.ts PROCESS_ID) that last wrote each record: while no session of that name is open,
      -- a record it left in a transitional status is nobody's work in flight (a controller killed mid-create).
      ALTER TABLE instances ADD COLUMN written_by text;
    `,
  },
  {
    id: '0005-documents',
    sql: `
      -- JSON documents by kind and id (store/documents.ts): health records per instance, migration journals.
      -- written_by is the process (pool.ts PROCESS_ID) that last wrote one: while no session of that name is
      -- open, a migration it left unfinished is nobody's work in flight and another controller settles it.
      CREATE TABLE documents (
        kind text NOT NULL,
        id text NOT NULL,
        data jsonb NOT NULL,
        written_by text NOT NULL,
        updated_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (kind, id)
      );
    `,
  },
  {
    id: '0006-gateway-key',
    sql: `
      -- Secrets every controller on the database shares (store/postgres/gateway-key.ts): the gateway's
      -- signing seed, so a link one controller hands out opens through every controller's gateway.
      CREATE TABLE swarm_secrets (
        name text PRIMARY KEY,
        value bytea NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now()
      );
    `,
  },
  {
    id: '0007-drop-unused',
    sql: `
      -- Made by 0001 ahead of the code and never written: health records and migration journals live in
      -- documents (0005), warm membership is the instances row's warm_pool (a claim rewrites that row under
      -- its lock). Dropped so the schema shows only where state really is.
      DROP TABLE health_history;
      DROP TABLE migrations;
      DROP TABLE warm_members;
    `,
  },
];

export interface MigrationReport {
  applied: string[];
  alreadyApplied: number;
}

/**
 * Applies the migrations not yet recorded, in order, in one transaction under the advisory lock. A
 * database with migrations this build does not know (a newer controller ran) is refused: this build
 * would not understand its schema.
 */
export async function migrate(pool: StorePool, logger?: Logger, migrations: readonly Migration[] = MIGRATIONS): Promise<MigrationReport> {
  checkOrder(migrations);
  const report = await pool.transaction(async (client) => {
    await client.query('SELECT pg_advisory_xact_lock($1::bigint)', [MIGRATION_LOCK_KEY]);
    await client.query('CREATE TABLE IF NOT EXISTS schema_migrations (id text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())');
    const done = new Set((await client.query<{ id: string }>('SELECT id FROM schema_migrations')).rows.map((r) => r.id));
    const known = new Set(migrations.map((m) => m.id));
    const unknown = [...done].filter((id) => !known.has(id));
    if (unknown.length) {
      throw new SwarmError('STATE_ERROR', `the database has schema migrations this version does not know (${unknown.sort().join(', ')}): a newer vscode-swarm migrated it`);
    }
    const applied: string[] = [];
    for (const m of migrations) {
      if (done.has(m.id)) continue;
      await apply(client, m);
      applied.push(m.id);
    }
    return { applied, alreadyApplied: done.size };
  });
  if (report.applied.length) logger?.info({ applied: report.applied }, 'schema migrations applied');
  return report;
}

async function apply(client: Queryable, m: Migration): Promise<void> {
  try {
    await client.query(m.sql);
  } catch (err) {
    if (isUnavailableError(err)) throw err;
    throw new SwarmError('STATE_ERROR', `schema migration ${m.id} failed: ${(err as Error).message}`, { cause: err });
  }
  await client.query('INSERT INTO schema_migrations (id) VALUES ($1)', [m.id]);
}

function checkOrder(migrations: readonly Migration[]): void {
  for (let i = 1; i < migrations.length; i++) {
    if (migrations[i - 1]!.id >= migrations[i]!.id) {
      throw new SwarmError('INTERNAL', `schema migrations out of order: ${migrations[i - 1]!.id} before ${migrations[i]!.id}`);
    }
  }
}
