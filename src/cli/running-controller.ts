/**
 * How the CLI finds a controller that runs on its state directory: `up` writes `<stateDir>/controller.json`
 * (`{ pid, mcpUrl, startedAt }`, mode 0600) once its MCP HTTP server listens and removes it on shutdown.
 * A command then goes to that controller over MCP instead of starting a second one, which the state
 * directory's lock forbids. A lock held without a controller file (a stdio `serve`) is left to the lock's
 * own refusal.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { writeJsonAtomic } from '../state/atomic-file.js';
import { StateLock, isProcessAlive, type LockOwner } from '../state/state-lock.js';

export const CONTROLLER_FILE = 'controller.json';

export interface ControllerFile {
  pid: number;
  /** The MCP endpoint a local client reaches (a wildcard bind is written as loopback). */
  mcpUrl: string;
  startedAt: string;
}

export function controllerFilePath(stateDir: string): string {
  return path.join(stateDir, CONTROLLER_FILE);
}

/** Written by `up` once MCP over HTTP listens. */
export async function writeControllerFile(stateDir: string, mcpUrl: string): Promise<void> {
  const file: ControllerFile = { pid: process.pid, mcpUrl: localUrl(mcpUrl), startedAt: new Date().toISOString() };
  await writeJsonAtomic(controllerFilePath(stateDir), file);
}

/** Removed by `up` on shutdown; a file another process wrote meanwhile is left alone. */
export async function removeControllerFile(stateDir: string): Promise<void> {
  const current = await readJson<ControllerFile>(controllerFilePath(stateDir));
  if (current?.pid === process.pid) await fs.rm(controllerFilePath(stateDir), { force: true });
}

/**
 * The controller to talk to: the state directory's lock is held by a live process other than this one,
 * and controller.json names that process with an MCP URL. Otherwise undefined (no controller runs, or one
 * runs that serves no HTTP).
 */
export async function runningController(stateDir: string): Promise<ControllerFile | undefined> {
  const lock = await readJson<LockOwner>(new StateLock(stateDir).file);
  if (!lock || typeof lock.pid !== 'number' || lock.pid === process.pid || !isProcessAlive(lock.pid)) return undefined;
  const file = await readJson<ControllerFile>(controllerFilePath(stateDir));
  // Written by the very process that holds the lock: a file left by an earlier run names another pid.
  if (!file || file.pid !== lock.pid || typeof file.mcpUrl !== 'string') return undefined;
  return file;
}

/** A wildcard bind (0.0.0.0, ::) is not an address to connect to, nor a Host header /mcp allows: use loopback. */
function localUrl(mcpUrl: string): string {
  const url = new URL(mcpUrl);
  if (url.hostname === '0.0.0.0') url.hostname = '127.0.0.1';
  else if (url.hostname === '[::]') url.hostname = '[::1]';
  return url.toString();
}

async function readJson<T>(file: string): Promise<T | undefined> {
  try {
    return JSON.parse(await fs.readFile(file, 'utf8')) as T;
  } catch {
    return undefined;
  }
}
