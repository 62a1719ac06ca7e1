/**
 * Loopback addresses for emulated EC2 hosts. Linux routes all of 127.0.0.0/8 to `lo`, so every host can bind
 * its own address (127.0.0.2, 127.0.0.3, …) and the agents can all use the same ports, as on real hosts.
 * The lowest free address is handed out, and a released one is reused.
 */
export interface LoopbackPoolOptions {
  /** First address handed out; default 127.0.0.2. */
  first?: string;
  /** How many addresses the pool may hand out; default 250. */
  size?: number;
}

export class LoopbackPool {
  private readonly base: number;
  private readonly size: number;
  private readonly used = new Set<number>();

  constructor(options: LoopbackPoolOptions = {}) {
    this.base = toInt(options.first ?? '127.0.0.2');
    this.size = options.size ?? 250;
    if ((this.base >>> 24) !== 127) throw new Error(`loopback pool: ${options.first} is not in 127.0.0.0/8`);
    if (((this.base + this.size - 1) >>> 24) !== 127) throw new Error('loopback pool: the range leaves 127.0.0.0/8');
  }

  /** The lowest free address; throws when all are taken. */
  allocate(): string {
    for (let i = 0; i < this.size; i++) {
      if (this.used.has(i)) continue;
      const value = this.base + i;
      // Skip x.x.x.0 and x.x.x.255 so addresses look like ordinary host addresses.
      if ((value & 0xff) === 0 || (value & 0xff) === 0xff) continue;
      this.used.add(i);
      return toDotted(value);
    }
    throw new Error(`loopback pool: all ${this.size} addresses are in use`);
  }

  release(address: string): void {
    this.used.delete(toInt(address) - this.base);
  }

  inUse(): string[] {
    return [...this.used].sort((a, b) => a - b).map((i) => toDotted(this.base + i));
  }
}

function toInt(address: string): number {
  const parts = address.split('.').map(Number);
  if (parts.length !== 4 || parts.some((p) => !Number.isInteger(p) || p < 0 || p > 255)) throw new Error(`not an IPv4 address: ${address}`);
  return ((parts[0]! << 24) | (parts[1]! << 16) | (parts[2]! << 8) | parts[3]!) >>> 0;
}

function toDotted(value: number): string {
  return [value >>> 24, (value >>> 16) & 0xff, (value >>> 8) & 0xff, value & 0xff].join('.');
}
