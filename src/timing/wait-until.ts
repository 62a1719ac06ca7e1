/**
 * Polls a check until it yields a value, the deadline passes, or the signal aborts. The one polling loop
 * of the project: readiness probes, state waits and tests all use it.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { SwarmError } from '../errors.js';

export interface WaitOptions {
  timeoutMs: number;
  intervalMs?: number;
  signal?: AbortSignal;
  /** Names what was awaited, for the timeout message. */
  what: string;
}

/**
 * Calls `check` until it returns something other than undefined. A check may throw to stop waiting
 * early (a container that exited will never become ready).
 */
export async function waitUntil<T>(check: () => Promise<T | undefined>, options: WaitOptions): Promise<T> {
  const deadline = Date.now() + options.timeoutMs;
  const interval = options.intervalMs ?? 100;
  for (;;) {
    options.signal?.throwIfAborted();
    const value = await check();
    if (value !== undefined) return value;
    if (Date.now() >= deadline) {
      throw new SwarmError('TIMEOUT', `${options.what}: not ready after ${options.timeoutMs} ms`);
    }
    await sleep(Math.min(interval, Math.max(0, deadline - Date.now())), undefined, { signal: options.signal });
  }
}
