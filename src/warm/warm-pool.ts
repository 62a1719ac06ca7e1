/**
 * Warm capacity: ready, unassigned instances kept per provider, image and size, so that a create that
 * matches is served by renaming one instead of starting one. Members are ordinary registry records
 * marked with `warmPool`; they belong to nobody, are hidden from listings and counts, and are never
 * stopped for idleness. The pool refills itself in the background after every claim.
 */
import type { ProviderType, Resources, VSCodeInstance } from '../../providers/provider.js';
import { silentLogger, type Logger } from '../logger.js';
import type { InstanceStore } from '../store/instance-store.js';

export interface WarmSpec {
  key: string;
  provider: ProviderType;
  image: string;
  resources: Resources;
  size: number;
}

export interface WarmStatus extends WarmSpec {
  ready: number;
  warming: number;
}

export interface WarmPoolDeps {
  registry: InstanceStore;
  /** Creates one member for the spec (registered with `warmPool: spec.key`). */
  createMember: (spec: WarmSpec) => Promise<void>;
  /** Removes a member that is surplus or broken. */
  deleteMember: (instanceId: string) => Promise<void>;
  /** False while this controller must not refill (another controller leads a shared store); default always. */
  mayAct?: () => boolean;
  logger?: Logger;
}

const WARMING: ReadonlySet<string> = new Set(['creating', 'starting']);

export function warmKey(provider: ProviderType, image: string, resources: Resources): string {
  return `${provider}|${image}|${resources.cpu}|${resources.memoryMb}`;
}

export class WarmPool {
  private readonly specs: WarmSpec[];
  private readonly taken = new Set<string>();
  private readonly logger: Logger;
  private refilling?: Promise<void>;
  private again = false;
  private closed = false;

  constructor(
    specs: Omit<WarmSpec, 'key'>[],
    private readonly deps: WarmPoolDeps,
  ) {
    this.specs = specs.filter((s) => s.size > 0).map((s) => ({ ...s, key: warmKey(s.provider, s.image, s.resources) }));
    this.logger = (deps.logger ?? silentLogger()).child({ component: 'warm-pool' });
  }

  get enabled(): boolean {
    return this.specs.length > 0;
  }

  /**
   * Takes a ready member that matches, or returns undefined. Synchronous, so two concurrent claims can
   * never take the same member; call `release` if the claim falls through and `settle` once it is done.
   */
  take(provider: ProviderType, image: string, resources: Resources): Readonly<VSCodeInstance> | undefined {
    const key = warmKey(provider, image, resources);
    this.forgetClaimedElsewhere();
    const member = this.deps.registry
      .list({ providerType: provider, status: 'running' })
      .find((i) => i.warmPool === key && !this.taken.has(i.id));
    if (member) this.taken.add(member.id);
    return member;
  }

  release(instanceId: string): void {
    this.taken.delete(instanceId);
  }

  settle(instanceId: string): void {
    this.taken.delete(instanceId);
    this.refill();
  }

  /** Brings every buffer to its size in the background; concurrent calls coalesce. */
  refill(): Promise<void> {
    if (this.closed || !this.enabled || !(this.deps.mayAct?.() ?? true)) return Promise.resolve();
    if (this.refilling) {
      this.again = true;
      return this.refilling;
    }
    this.refilling = (async () => {
      do {
        this.again = false;
        for (const spec of this.specs) await this.fill(spec);
      } while (this.again && !this.closed);
    })()
      .catch((err) => this.logger.warn({ err: (err as Error).message }, 'warm buffer refill failed; will retry on the next claim or sweep'))
      .finally(() => {
        this.refilling = undefined;
      });
    return this.refilling;
  }

  status(): WarmStatus[] {
    return this.specs.map((spec) => {
      const members = this.members(spec.key);
      return {
        ...spec,
        ready: members.filter((m) => m.status === 'running' && !this.taken.has(m.id)).length,
        warming: members.filter((m) => WARMING.has(m.status)).length,
      };
    });
  }

  close(): void {
    this.closed = true;
  }

  /** Drops taken ids that are no longer members at all: claimed by another controller sharing the store. */
  private forgetClaimedElsewhere(): void {
    for (const id of this.taken) if (!this.deps.registry.get(id)?.warmPool) this.taken.delete(id);
  }

  private members(key: string): Readonly<VSCodeInstance>[] {
    return this.deps.registry.list().filter((i) => i.warmPool === key);
  }

  private async fill(spec: WarmSpec): Promise<void> {
    const members = this.members(spec.key);
    for (const broken of members.filter((m) => !WARMING.has(m.status) && m.status !== 'running')) {
      this.logger.info({ instanceId: broken.id, status: broken.status }, 'dropping a warm member that is not running');
      await this.deps.deleteMember(broken.id).catch(() => undefined);
    }
    const usable = members.filter((m) => (WARMING.has(m.status) || m.status === 'running') && !this.taken.has(m.id));
    for (const surplus of usable.slice(spec.size)) await this.deps.deleteMember(surplus.id).catch(() => undefined);
    for (let have = Math.min(usable.length, spec.size); have < spec.size && !this.closed; have++) {
      await this.deps.createMember(spec);
    }
  }
}
