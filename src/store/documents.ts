/**
 * JSON documents by kind and id: the state the health monitor (a health record per instance) and the
 * migration manager (a journal per migration) keep beside the instance records. Two implementations, as
 * for instances: the files of the state directory (one controller, the embedded default) and PostgreSQL
 * (./postgres/documents.ts: every controller on one database sees the same documents).
 *
 * The file layout is exactly what the services wrote before this interface existed,
 * `<stateDir>/<kind>/<id>.json` written atomically, so existing state directories keep working unchanged.
 * Ids are checked per kind before they name anything (a file, a row): no path traversal, no stray keys.
 *
 * The store keeps documents as they are given; what a document must look like is its service's business
 * (it parses what it reads with its own schema).
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { invalidInput } from '../errors.js';
import { silentLogger, type Logger } from '../logger.js';
import { isTempFile, writeJsonAtomic } from '../state/atomic-file.js';
import { checkInstanceId } from './records.js';

/** The kinds of documents kept, named as their folders in the state directory. */
export const DOCUMENT_KINDS = ['health', 'migrations'] as const;
export type DocumentKind = (typeof DOCUMENT_KINDS)[number];

/** A migration's id: `mig-` and 8 to 32 lower-case letters and digits. */
export const MIGRATION_ID = /^mig-[a-z0-9]{8,32}$/;

export function checkMigrationId(id: string): void {
  if (typeof id !== 'string' || !MIGRATION_ID.test(id)) throw invalidInput('migrationId', 'an id like mig-0123456789ab', id);
}

/** Refuses an unknown kind, or an id its kind does not allow (INVALID_INPUT naming the field). */
export function checkDocumentId(kind: DocumentKind, id: string): void {
  if (kind === 'health') checkInstanceId(id);
  else if (kind === 'migrations') checkMigrationId(id);
  else throw invalidInput('kind', DOCUMENT_KINDS.join(' or '), kind);
}

export interface StoredDocument {
  id: string;
  doc: unknown;
  /** The process that last wrote it (PostgreSQL; see pool.ts PROCESS_ID); absent for the files. */
  writer?: string;
}

export interface DocumentStore {
  /** True when other controllers read and write the same documents (PostgreSQL). */
  readonly shared: boolean;
  /** The document, or undefined when there is none; a document that cannot be read is an error. */
  get(kind: DocumentKind, id: string): Promise<StoredDocument | undefined>;
  /** Writes the whole document (made durable before it resolves), recording this process as its writer. */
  put(kind: DocumentKind, id: string, doc: unknown): Promise<void>;
  /** Forgets a document; false when it was not there. */
  remove(kind: DocumentKind, id: string): Promise<boolean>;
  /** Every document of a kind, in no particular order; unreadable ones are skipped (and logged). */
  list(kind: DocumentKind): Promise<StoredDocument[]>;
  /**
   * Ids of documents last written by another process that has no session on the database now (a
   * controller that died): nobody is working on them. Always empty for a store only this process uses.
   */
  orphaned(kind: DocumentKind): Promise<Set<string>>;
  /**
   * Makes this process the writer of a document `from` wrote, unless someone else did so first: true for
   * exactly one of the controllers that try. Trivially true for a store only this process uses.
   */
  claim(kind: DocumentKind, id: string, from: string | undefined): Promise<boolean>;
}

/** The files: `<stateDir>/<kind>/<id>.json`, as the health monitor and the migration manager always wrote them. */
export class FileDocumentStore implements DocumentStore {
  readonly shared = false;
  private readonly logger: Logger;

  constructor(
    private readonly stateDir: string,
    logger?: Logger,
  ) {
    this.logger = (logger ?? silentLogger()).child({ component: 'documents' });
  }

  async get(kind: DocumentKind, id: string): Promise<StoredDocument | undefined> {
    let text: string;
    try {
      text = await fs.readFile(this.file(kind, id), 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw err;
    }
    return { id, doc: JSON.parse(text) as unknown };
  }

  async put(kind: DocumentKind, id: string, doc: unknown): Promise<void> {
    const file = this.file(kind, id);
    await fs.mkdir(path.dirname(file), { recursive: true });
    await writeJsonAtomic(file, doc);
  }

  async remove(kind: DocumentKind, id: string): Promise<boolean> {
    const file = this.file(kind, id);
    try {
      await fs.unlink(file);
      return true;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
      throw err;
    }
  }

  async list(kind: DocumentKind): Promise<StoredDocument[]> {
    const dir = this.folder(kind);
    let names: string[];
    try {
      names = await fs.readdir(dir);
    } catch {
      return [];
    }
    const out: StoredDocument[] = [];
    for (const name of names) {
      // Temp files of interrupted writes and anything else kept in the folder (spooled archives) are not documents.
      if (!name.endsWith('.json') || isTempFile(name)) continue;
      const id = name.slice(0, -'.json'.length);
      try {
        checkDocumentId(kind, id);
        out.push({ id, doc: JSON.parse(await fs.readFile(path.join(dir, name), 'utf8')) as unknown });
      } catch (err) {
        this.logger.warn({ kind, file: name, err: (err as Error).message }, 'unreadable document skipped');
      }
    }
    return out;
  }

  async orphaned(): Promise<Set<string>> {
    return new Set();
  }

  async claim(kind: DocumentKind, id: string): Promise<boolean> {
    checkDocumentId(kind, id);
    return true;
  }

  private folder(kind: DocumentKind): string {
    if (!DOCUMENT_KINDS.includes(kind)) throw invalidInput('kind', DOCUMENT_KINDS.join(' or '), kind);
    return path.join(this.stateDir, kind);
  }

  private file(kind: DocumentKind, id: string): string {
    checkDocumentId(kind, id); // before the id becomes a file name
    return path.join(this.folder(kind), `${id}.json`);
  }
}
