/**
 * A random secret kept in a file of the state directory: read when it holds at least `bytes` bytes,
 * else made once (base64url text, mode 0600, folder 0700). The gateway's signing key and the MCP HTTP
 * bearer token both live this way.
 */
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { writeFileAtomic } from './atomic-file.js';

export async function readOrCreateSecret(file: string, bytes: number): Promise<Buffer> {
  try {
    const existing = Buffer.from((await fs.readFile(file, 'utf8')).trim(), 'base64url');
    if (existing.length >= bytes) return existing;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  await fs.mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
  const secret = randomBytes(bytes);
  await writeFileAtomic(file, secret.toString('base64url'));
  return secret;
}
