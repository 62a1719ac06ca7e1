/**
 * Atomic JSON files: write a temp file in the same folder, fsync it, rename it over the target, fsync the
 * folder. A reader sees the old content or the new, never a torn write; the temp file is removed on failure.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { crashPoint } from '../crash/crash-points.js';

const TEMP_MARK = '.tmp-';

export async function writeFileAtomic(target: string, data: string | Uint8Array): Promise<void> {
  const dir = path.dirname(target);
  const temp = path.join(dir, `${TEMP_MARK}${path.basename(target)}.${randomBytes(6).toString('hex')}`);
  let handle: fs.FileHandle | undefined;
  try {
    handle = await fs.open(temp, 'wx', 0o600);
    await handle.writeFile(data);
    crashPoint('state.after-write');
    await handle.sync();
    crashPoint('state.after-fsync');
    await handle.close();
    handle = undefined;
    await fs.rename(temp, target);
    crashPoint('state.after-rename');
  } catch (err) {
    await handle?.close().catch(() => undefined);
    await fs.rm(temp, { force: true }).catch(() => undefined);
    throw err;
  }
  await syncDirectory(dir);
}

export async function writeJsonAtomic(target: string, value: unknown): Promise<void> {
  await writeFileAtomic(target, `${JSON.stringify(value, null, 2)}\n`);
}

/** Temp files left by a process killed mid-write; safe to delete at start-up. */
export function isTempFile(name: string): boolean {
  return name.startsWith(TEMP_MARK);
}

/** fsync a folder, so that a file made or renamed in it survives a crash. */
export async function syncDirectory(dir: string): Promise<void> {
  const handle = await fs.open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}
