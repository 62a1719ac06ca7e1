/**
 * What a workspace archive holds, as a manifest of regular files with their sizes and SHA-256, so that a
 * migration can prove the target has every file of the source, byte for byte, before the source goes.
 *
 * Archives are streams, never whole buffers: a workspace can be far larger than the controller's memory.
 * Every copy goes through a guard that counts bytes and checks the size cap and the deadline on each
 * chunk, so an oversized or slow transfer stops at once instead of running on after its time.
 */
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream, promises as fs } from 'node:fs';
import { PassThrough, Readable, Transform, Writable, type TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import tar from 'tar-stream';
import { SwarmError } from '../errors.js';

export interface ManifestEntry {
  size: number;
  sha256: string;
}

/**
 * File name to entry. File names come from the workspace, so the object has no prototype: a file named
 * `__proto__` is an entry like any other (on a plain object the assignment would replace the prototype
 * and the file would vanish from the manifest), and `constructor` or `toString` is absent unless such a
 * file exists. Read it with `entryOf` (own properties only), never by plain indexing of another object.
 */
export type Manifest = Record<string, ManifestEntry>;

export function emptyManifest(): Manifest {
  return Object.create(null) as Manifest;
}

/** The entry of one file, or undefined: an own property of the manifest, whatever its prototype. */
export function entryOf(manifest: Manifest, name: string): ManifestEntry | undefined {
  return Object.hasOwn(manifest, name) ? manifest[name] : undefined;
}

/** The manifest of an archive, read as it streams; with limits, the copy stops at the cap or the deadline. */
export async function manifestOf(archive: Buffer | Readable, limits?: TransferLimits): Promise<Manifest> {
  const source = Buffer.isBuffer(archive) ? Readable.from([archive]) : archive;
  const { sink, manifest } = manifestSink();
  if (limits) await pipeline(source, transferGuard(limits), sink);
  else await pipeline(source, sink);
  return manifest;
}

/** A writable that takes a tar stream and fills `manifest` (complete when the writable finishes). */
function manifestSink(): { sink: Writable; manifest: Manifest } {
  const extract = tar.extract();
  const manifest = emptyManifest();
  const done = new Promise<void>((resolve, reject) => {
    extract.on('entry', (header, stream, next) => {
      const name = header.name.replace(/^(\.\/)+/, '').replace(/\/+$/, '');
      if (header.type !== 'file' || !name) {
        stream.on('end', next).resume();
        return;
      }
      const hash = createHash('sha256');
      let size = 0;
      stream.on('data', (data: unknown) => {
        const chunk = data as Buffer;
        hash.update(chunk);
        size += chunk.length;
      });
      stream.on('end', () => {
        Object.defineProperty(manifest, name, { value: { size, sha256: hash.digest('hex') }, enumerable: true, writable: true, configurable: true });
        next();
      });
      stream.on('error', reject);
    });
    extract.on('finish', resolve);
    extract.on('error', reject);
  });
  // The sink finishes only when every entry has been hashed.
  const sink = new Writable({
    write(chunk: Buffer, _encoding, callback) {
      if (extract.write(chunk)) callback();
      else extract.once('drain', () => callback());
    },
    final(callback) {
      extract.end(Buffer.alloc(0));
      done.then(() => callback(), (err: Error) => callback(err));
    },
    destroy(err, callback) {
      extract.destroy(err ?? undefined);
      callback(err);
    },
  });
  done.catch((err: Error) => sink.destroy(err));
  return { sink, manifest };
}

export interface TransferLimits {
  /** Refuse (CONFLICT) an archive larger than this. */
  maxBytes: number;
  /** Epoch ms after which the copy stops (TIMEOUT). */
  deadline?: number;
  now?: () => number;
  /** Named in the errors, e.g. "the workspace of alice-1a2b". */
  what: string;
}

/** A pass-through that counts bytes and, on every chunk, enforces the size cap and the deadline. */
export function transferGuard(limits: TransferLimits): Transform {
  const now = limits.now ?? Date.now;
  let bytes = 0;
  return new Transform({
    transform(chunk: Buffer, _encoding, callback: TransformCallback) {
      bytes += chunk.length;
      if (bytes > limits.maxBytes) {
        callback(new SwarmError('CONFLICT', `${limits.what} is larger than the ${limits.maxBytes} bytes a transfer may carry; stopped after ${bytes} bytes`));
      } else if (limits.deadline !== undefined && now() > limits.deadline) {
        callback(new SwarmError('TIMEOUT', `${limits.what}: the transfer's time ran out (deadline ${new Date(limits.deadline).toISOString()}) after ${bytes} bytes`));
      } else callback(null, chunk);
    },
  });
}

export interface SpooledArchive {
  file: string;
  bytes: number;
  manifest: Manifest;
}

/**
 * Copies an archive stream to a file (created 0600, fsynced) while computing its manifest, within the
 * limits: memory stays bounded whatever the workspace's size, and the file can be read again (an import
 * retried, a final copy) without going back to the source. A failed copy removes the partial file.
 */
export async function spoolArchive(archive: Readable, file: string, limits: TransferLimits): Promise<SpooledArchive> {
  const { sink, manifest } = manifestSink();
  const out = createWriteStream(file, { mode: 0o600, flags: 'w' });
  const toFile = new PassThrough();
  const toManifest = new PassThrough();
  let bytes = 0;
  const tee = new Writable({
    write(chunk: Buffer, _encoding, callback) {
      bytes += chunk.length;
      let waiting = 2;
      const one = (): void => void (--waiting === 0 && callback());
      if (toFile.write(chunk)) one();
      else toFile.once('drain', one);
      if (toManifest.write(chunk)) one();
      else toManifest.once('drain', one);
    },
    final(callback) {
      toFile.end();
      toManifest.end();
      callback();
    },
  });
  try {
    await Promise.all([pipeline(archive, transferGuard(limits), tee), pipeline(toFile, out), pipeline(toManifest, sink)]);
    const handle = await fs.open(file, 'r');
    await handle.sync().finally(() => handle.close());
  } catch (err) {
    for (const s of [toFile, toManifest, out, sink, archive]) s.destroy();
    await fs.rm(file, { force: true });
    throw err;
  }
  return { file, bytes, manifest };
}

/** The spooled archive as a stream again. */
export function openSpooled(spooled: Pick<SpooledArchive, 'file'>): Readable {
  return createReadStream(spooled.file);
}

/** Files of `expected` missing from or different in `actual`; empty when every file arrived intact. */
export function manifestDifferences(expected: Manifest, actual: Manifest): string[] {
  const problems: string[] = [];
  for (const [name, entry] of Object.entries(expected)) {
    const got = entryOf(actual, name);
    if (!got) problems.push(`${name}: missing`);
    else if (got.sha256 !== entry.sha256) problems.push(`${name}: content differs (${entry.size} vs ${got.size} bytes)`);
  }
  return problems;
}

export function totalBytes(manifest: Manifest): number {
  return Object.values(manifest).reduce((sum, e) => sum + e.size, 0);
}
