/**
 * The documents of ../documents.ts in PostgreSQL (table `documents`, migration 0005-documents), so every
 * controller on one database sees the same health records and migration journals. Each row records the
 * process that last wrote it (`written_by`, pool.ts PROCESS_ID): while that process has a session open the
 * document may be its work in flight; once none is left, it is an orphan another controller may settle.
 *
 * "Is the writer still connected" is one test for every table that records a writer (instances,
 * documents): orphanedIds below, which PgInstanceStore.orphanedWrites uses too.
 */
import { silentLogger, type Logger } from '../../logger.js';
import { checkDocumentId, type DocumentKind, type DocumentStore, type StoredDocument } from '../documents.js';
import { APPLICATION_PREFIX, PROCESS_ID, type Queryable, type StorePool } from './pool.js';

/** The tables whose rows record their writer in `written_by`. */
export type WrittenTable = 'instances' | 'documents';

/**
 * Ids of rows of `table` matching `where` whose last writer is another process than `self` and has no
 * session on the database now (pg_stat_activity has none named `vscode-swarm/<writer>`): a controller that
 * died, or one cut off from the database (whose writes fail anyway). `where` is SQL over the row `t`, its
 * parameters numbered from $3 ($1 and $2 are taken); `values` fill them.
 */
export async function orphanedIds(
  db: Queryable,
  table: WrittenTable,
  where: string,
  values: unknown[],
  self: string = PROCESS_ID,
): Promise<Set<string>> {
  const { rows } = await db.query<{ id: string }>(
    `SELECT t.id FROM ${table} t WHERE (${where}) AND t.written_by IS NOT NULL AND t.written_by <> $1
       AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.application_name = $2 || t.written_by)`,
    [self, APPLICATION_PREFIX, ...values],
  );
  return new Set(rows.map((r) => r.id));
}

export interface PgDocumentStoreOptions {
  /** The caller's pool (the instance store's, in a controller); not closed here. */
  pool: StorePool;
  logger?: Logger;
  /** The writer recorded on writes (default PROCESS_ID, the name this process's sessions carry); a test seam. */
  processId?: string;
}

interface Row {
  id: string;
  data: unknown;
  written_by: string;
}

export class PgDocumentStore implements DocumentStore {
  readonly shared = true;
  private readonly pool: StorePool;
  private readonly logger: Logger;
  private readonly processId: string;

  constructor(options: PgDocumentStoreOptions) {
    this.pool = options.pool;
    this.logger = (options.logger ?? silentLogger()).child({ component: 'pg-documents' });
    this.processId = options.processId ?? PROCESS_ID;
  }

  async get(kind: DocumentKind, id: string): Promise<StoredDocument | undefined> {
    checkDocumentId(kind, id);
    const { rows } = await this.pool.query<Row>('SELECT id, data, written_by FROM documents WHERE kind = $1 AND id = $2', [kind, id]);
    const row = rows[0];
    return row ? { id: row.id, doc: row.data, writer: row.written_by } : undefined;
  }

  async put(kind: DocumentKind, id: string, doc: unknown): Promise<void> {
    checkDocumentId(kind, id);
    await this.pool.query(
      `INSERT INTO documents (kind, id, data, written_by) VALUES ($1, $2, $3, $4)
         ON CONFLICT (kind, id) DO UPDATE SET data = EXCLUDED.data, written_by = EXCLUDED.written_by, updated_at = now()`,
      // As text: pg would send a top-level array as a PostgreSQL array, not as JSON.
      [kind, id, JSON.stringify(doc), this.processId],
    );
  }

  async remove(kind: DocumentKind, id: string): Promise<boolean> {
    checkDocumentId(kind, id);
    const { rowCount } = await this.pool.query('DELETE FROM documents WHERE kind = $1 AND id = $2', [kind, id]);
    return (rowCount ?? 0) > 0;
  }

  async list(kind: DocumentKind): Promise<StoredDocument[]> {
    const { rows } = await this.pool.query<Row>('SELECT id, data, written_by FROM documents WHERE kind = $1', [kind]);
    const out: StoredDocument[] = [];
    for (const row of rows) {
      try {
        checkDocumentId(kind, row.id);
        out.push({ id: row.id, doc: row.data, writer: row.written_by });
      } catch (err) {
        this.logger.warn({ kind, id: row.id, err: (err as Error).message }, 'document with a bad id skipped');
      }
    }
    return out;
  }

  async orphaned(kind: DocumentKind): Promise<Set<string>> {
    return orphanedIds(this.pool, 'documents', 't.kind = $3', [kind], this.processId);
  }

  async claim(kind: DocumentKind, id: string, from: string | undefined): Promise<boolean> {
    checkDocumentId(kind, id);
    if (from === undefined) return false;
    // Only the first controller to get here finds the old writer still recorded.
    const { rowCount } = await this.pool.query(
      'UPDATE documents SET written_by = $4, updated_at = now() WHERE kind = $1 AND id = $2 AND written_by = $3',
      [kind, id, from, this.processId],
    );
    return (rowCount ?? 0) > 0;
  }
}
