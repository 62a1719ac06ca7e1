/**
 * What a workspace archive holds, as a manifest of regular files with their sizes and SHA-256, so that a
 * migration can prove the target has every file of the source, byte for byte, before the source goes.
 */
import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import tar from 'tar-stream';

export interface ManifestEntry {
  size: number;
  sha256: string;
}

export type Manifest = Record<string, ManifestEntry>;

export async function manifestOf(archive: Buffer): Promise<Manifest> {
  const extract = tar.extract();
  const manifest: Manifest = {};
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
        manifest[name] = { size, sha256: hash.digest('hex') };
        next();
      });
      stream.on('error', reject);
    });
    extract.on('finish', resolve);
    extract.on('error', reject);
  });
  Readable.from([archive]).pipe(extract);
  await done;
  return manifest;
}

/** Files of `expected` missing from or different in `actual`; empty when every file arrived intact. */
export function manifestDifferences(expected: Manifest, actual: Manifest): string[] {
  const problems: string[] = [];
  for (const [name, entry] of Object.entries(expected)) {
    const got = actual[name];
    if (!got) problems.push(`${name}: missing`);
    else if (got.sha256 !== entry.sha256) problems.push(`${name}: content differs (${entry.size} vs ${got.size} bytes)`);
  }
  return problems;
}

export function totalBytes(manifest: Manifest): number {
  return Object.values(manifest).reduce((sum, e) => sum + e.size, 0);
}
