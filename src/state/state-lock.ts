/**
 * One controller per state directory: two would each believe their own in-memory registry. The lock is
 * a file holding the owner's pid; a lock whose owner is gone (killed, crashed) is taken over.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { SwarmError } from '../errors.js';

export interface LockOwner {
  pid: number;
  startedAt: string;
  command: string;
}

export class StateLock {
  private held = false;
  readonly file: string;

  constructor(stateDir: string) {
    this.file = path.join(stateDir, 'controller.lock');
  }

  async acquire(command = process.argv.slice(2).join(' ') || 'library'): Promise<void> {
    await fs.mkdir(path.dirname(this.file), { recursive: true });
    const owner: LockOwner = { pid: process.pid, startedAt: new Date().toISOString(), command };
    for (let attempt = 0; attempt < 2; attempt++) {
      try {
        await fs.writeFile(this.file, JSON.stringify(owner), { flag: 'wx', mode: 0o600 });
        this.held = true;
        return;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      }
      const current = await this.owner();
      if (current && current.pid !== process.pid && isProcessAlive(current.pid)) {
        throw new SwarmError(
          'CONFLICT',
          `another vscode-swarm controller (pid ${current.pid}, "${current.command}", since ${current.startedAt}) owns the state directory ${path.dirname(this.file)}; use its MCP tools or stop it first (if that process is not vscode-swarm, delete ${this.file})`,
        );
      }
      await fs.rm(this.file, { force: true }); // stale: its owner is gone
    }
    throw new SwarmError('CONFLICT', `could not take the lock ${this.file}; another controller is starting`);
  }

  async release(): Promise<void> {
    if (!this.held) return;
    this.held = false;
    const current = await this.owner();
    if (current?.pid === process.pid) await fs.rm(this.file, { force: true });
  }

  private async owner(): Promise<LockOwner | undefined> {
    try {
      return JSON.parse(await fs.readFile(this.file, 'utf8')) as LockOwner;
    } catch {
      return undefined;
    }
  }
}

/** Whether a process with this pid exists (one we may not signal still counts). */
export function isProcessAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}
