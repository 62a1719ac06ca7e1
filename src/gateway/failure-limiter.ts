/**
 * Counts failed authentications per client address in a sliding minute; past the limit the address is
 * refused (429) until its oldest failure ages out. Memory is bounded: idle addresses are dropped.
 */
const WINDOW_MS = 60_000;
const MAX_TRACKED = 10_000;

export class FailureLimiter {
  private readonly failures = new Map<string, number[]>();

  constructor(
    private readonly maxPerMinute: number,
    private readonly now: () => number = Date.now,
  ) {}

  /** Seconds until the address may try again, or 0 when it may now. */
  retryAfter(address: string): number {
    const recent = this.recent(address);
    if (recent.length < this.maxPerMinute) return 0;
    return Math.max(1, Math.ceil((recent[0]! + WINDOW_MS - this.now()) / 1000));
  }

  fail(address: string): void {
    const recent = this.recent(address);
    recent.push(this.now());
    this.failures.set(address, recent);
    if (this.failures.size > MAX_TRACKED) this.sweep();
  }

  private recent(address: string): number[] {
    const cutoff = this.now() - WINDOW_MS;
    return (this.failures.get(address) ?? []).filter((t) => t > cutoff);
  }

  private sweep(): void {
    const cutoff = this.now() - WINDOW_MS;
    for (const [address, times] of this.failures) if (!times.some((t) => t > cutoff)) this.failures.delete(address);
  }
}
