/**
 * Token buckets keyed by (machine or app, action), the shape of the Machines API's documented limits:
 * about 1 request per second per action per Machine with bursts of 3, and a looser limit for reads.
 */
export interface BucketLimit {
  perSecond: number;
  burst: number;
}

export interface RateLimitOptions {
  /** Mutating actions (create, start, stop, update, destroy, exec, volume changes); default 1/s, burst 3. */
  action?: Partial<BucketLimit>;
  /** Reads (get, list, wait); default 5/s, burst 10. */
  read?: Partial<BucketLimit>;
}

export class RateLimiter {
  private readonly buckets = new Map<string, { tokens: number; at: number }>();
  private readonly action: BucketLimit;
  private readonly read: BucketLimit;

  constructor(options: RateLimitOptions = {}) {
    this.action = { perSecond: 1, burst: 3, ...options.action };
    this.read = { perSecond: 5, burst: 10, ...options.read };
  }

  /** Takes a token; returns 0 when allowed, else the seconds until one is free (for Retry-After). */
  take(key: string, kind: 'action' | 'read', now = Date.now()): number {
    const limit = kind === 'read' ? this.read : this.action;
    const bucket = this.buckets.get(key) ?? { tokens: limit.burst, at: now };
    bucket.tokens = Math.min(limit.burst, bucket.tokens + ((now - bucket.at) / 1000) * limit.perSecond);
    bucket.at = now;
    this.buckets.set(key, bucket);
    if (bucket.tokens >= 1) {
      bucket.tokens -= 1;
      return 0;
    }
    return (1 - bucket.tokens) / limit.perSecond;
  }
}
