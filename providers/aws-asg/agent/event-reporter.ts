/**
 * Tells the central controller what the host did on its own (an idle stop, a drain): a JSON POST to
 * --controller-url with the agent's bearer token, retried a few times, never fatal. Without a URL the
 * events are only logged.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { silentLogger, type Logger } from '../../../src/logger.js';
import type { AgentEvent } from './agent-protocol.js';

export interface EventReporterOptions {
  url?: string;
  token: string;
  logger?: Logger;
  attempts?: number;
  timeoutMs?: number;
  retryDelayMs?: number;
}

export class EventReporter {
  private readonly logger: Logger;
  private readonly pending = new Set<Promise<boolean>>();

  constructor(private readonly options: EventReporterOptions) {
    this.logger = (options.logger ?? silentLogger()).child({ component: 'agent-events' });
  }

  /** Sends one event; true once the controller answered 2xx. Failures are logged, never thrown. */
  report(event: AgentEvent): Promise<boolean> {
    const sending = this.send(event);
    this.pending.add(sending);
    void sending.finally(() => this.pending.delete(sending));
    return sending;
  }

  /** Waits for events still being sent (on shutdown). */
  async settle(): Promise<void> {
    await Promise.allSettled([...this.pending]);
  }

  private async send(event: AgentEvent): Promise<boolean> {
    const { url } = this.options;
    this.logger.info({ event }, 'host event');
    if (!url) return false;
    const attempts = this.options.attempts ?? 4;
    let last = '';
    for (let attempt = 1; attempt <= attempts; attempt++) {
      const abort = new AbortController();
      const timer = setTimeout(() => abort.abort(), this.options.timeoutMs ?? 5_000);
      try {
        const res = await fetch(url, {
          method: 'POST',
          headers: { 'content-type': 'application/json', authorization: `Bearer ${this.options.token}` },
          body: JSON.stringify(event),
          signal: abort.signal,
        });
        await res.body?.cancel();
        if (res.ok) return true;
        last = `HTTP ${res.status}`;
        if (res.status >= 400 && res.status < 500 && res.status !== 429) break; // refused: retrying will not help
      } catch (err) {
        last = (err as Error).message;
      } finally {
        clearTimeout(timer);
      }
      if (attempt < attempts) await sleep((this.options.retryDelayMs ?? 250) * 2 ** (attempt - 1));
    }
    this.logger.warn({ type: event.type, url, error: last }, 'could not report a host event to the controller');
    return false;
  }
}
