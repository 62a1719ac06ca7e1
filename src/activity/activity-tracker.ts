/**
 * Signs of use seen in this process (gateway traffic, starts), kept in memory because they arrive on
 * every request. The idle monitor folds them into the registry on each sweep, so a restart loses at most
 * one sweep's worth.
 */
export type ActivitySource = 'heartbeat' | 'gateway' | 'lease' | 'start' | 'create';

export interface ActivitySign {
  at: number;
  source: ActivitySource;
}

export class ActivityTracker {
  private readonly seen = new Map<string, ActivitySign>();

  constructor(private readonly now: () => number = Date.now) {}

  touch(instanceId: string, source: ActivitySource, at = this.now()): void {
    const current = this.seen.get(instanceId);
    if (!current || current.at < at) this.seen.set(instanceId, { at, source });
  }

  last(instanceId: string): ActivitySign | undefined {
    return this.seen.get(instanceId);
  }

  forget(instanceId: string): void {
    this.seen.delete(instanceId);
  }
}
