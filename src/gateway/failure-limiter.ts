/**
 * Counts failed authentications per client in a sliding minute; past the limit the client is refused
 * (429) until its oldest counted failure ages out. A client is an IPv4 address or an IPv6 /64 (one
 * subscriber usually holds a whole /64, so counting single IPv6 addresses would count nothing).
 *
 * Every operation is O(1), whatever the number of clients tracked: each client keeps a ring of its last
 * `maxPerMinute` failure times (blocked exactly when the oldest of them is less than a minute old), and
 * the clients are a Map for lookup threaded on a list in least-recently-failed order, so the one to forget
 * when the table is full is always the list's head. Nothing ever scans the table or a client's history.
 */
import net from 'node:net';

const WINDOW_MS = 60_000;

interface Entry {
  key: string;
  /** The last failure times, at most maxPerMinute of them; once full, `cursor` is the oldest. */
  times: number[];
  cursor: number;
  /** Neighbours in least-recently-failed order. */
  older?: Entry;
  newer?: Entry;
}

export class FailureLimiter {
  private readonly entries = new Map<string, Entry>();
  /** The least and the most recently failing clients. */
  private oldest?: Entry;
  private newest?: Entry;

  constructor(
    private readonly maxPerMinute: number,
    private readonly now: () => number = Date.now,
    /** Clients remembered at most; the one whose last failure is oldest is forgotten first. */
    private readonly maxTracked = 10_000,
  ) {
    if (!(Number.isInteger(maxPerMinute) && maxPerMinute >= 1)) throw new RangeError(`maxPerMinute: expected an integer ≥ 1 (got ${maxPerMinute})`);
    if (!(Number.isInteger(maxTracked) && maxTracked >= 1)) throw new RangeError(`maxTracked: expected an integer ≥ 1 (got ${maxTracked})`);
  }

  /** Seconds until the client at this address may try again, or 0 when it may now. */
  retryAfter(address: string): number {
    const entry = this.entries.get(addressKey(address));
    if (!entry) return 0;
    const now = this.now();
    const { times, cursor } = entry;
    const latest = times[(cursor + times.length - 1) % times.length]!;
    if (latest <= now - WINDOW_MS) {
      this.forget(entry); // nothing left in the window: forget it now rather than at eviction
      return 0;
    }
    if (times.length < this.maxPerMinute) return 0;
    const first = times[cursor]!;
    if (first <= now - WINDOW_MS) return 0;
    return Math.max(1, Math.ceil((first + WINDOW_MS - now) / 1000));
  }

  /** Counts one failed authentication from this address. */
  fail(address: string): void {
    const key = addressKey(address);
    const now = this.now();
    let entry = this.entries.get(key);
    if (entry) {
      this.unlink(entry);
    } else {
      if (this.entries.size >= this.maxTracked) this.forget(this.oldest!);
      entry = { key, times: [], cursor: 0 };
      this.entries.set(key, entry);
    }
    if (entry.times.length < this.maxPerMinute) {
      entry.times.push(now);
    } else {
      entry.times[entry.cursor] = now;
      entry.cursor = (entry.cursor + 1) % this.maxPerMinute;
    }
    // Appended as the most recently failing.
    entry.older = this.newest;
    entry.newer = undefined;
    if (this.newest) this.newest.newer = entry;
    else this.oldest = entry;
    this.newest = entry;
  }

  /** Clients currently remembered. */
  get size(): number {
    return this.entries.size;
  }

  private forget(entry: Entry): void {
    this.unlink(entry);
    this.entries.delete(entry.key);
  }

  private unlink(entry: Entry): void {
    if (entry.older) entry.older.newer = entry.newer;
    else this.oldest = entry.newer;
    if (entry.newer) entry.newer.older = entry.older;
    else this.newest = entry.older;
    entry.older = entry.newer = undefined;
  }
}

/**
 * Who an address stands for: an IPv4 address as it is (also when written IPv4-mapped, `::ffff:a.b.c.d`),
 * an IPv6 address as its /64 (`2001:db8:0:1::/64`); anything else as it is.
 */
export function addressKey(address: string): string {
  if (!address.includes(':')) return address; // IPv4 (or not an address at all)
  const percent = address.indexOf('%');
  const bare = percent === -1 ? address : address.slice(0, percent); // a zone index names no other host
  if (!net.isIPv6(bare)) return address;
  const groups = ipv6Groups(bare.toLowerCase());
  if (groups[0] === 0 && groups[1] === 0 && groups[2] === 0 && groups[3] === 0 && groups[4] === 0 && groups[5] === 0xffff) {
    return `${groups[6]! >> 8}.${groups[6]! & 0xff}.${groups[7]! >> 8}.${groups[7]! & 0xff}`;
  }
  return `${groups[0]!.toString(16)}:${groups[1]!.toString(16)}:${groups[2]!.toString(16)}:${groups[3]!.toString(16)}::/64`;
}

/** The eight 16-bit groups of a valid, lower-case IPv6 address: `::` expanded, a dotted IPv4 tail as two groups. */
function ipv6Groups(text: string): number[] {
  const parts = (s: string): number[] => {
    const out: number[] = [];
    if (!s) return out;
    for (const part of s.split(':')) {
      if (part.includes('.')) {
        const [a, b, c, d] = part.split('.').map(Number) as [number, number, number, number];
        out.push((a << 8) | b, (c << 8) | d);
      } else {
        out.push(parseInt(part, 16));
      }
    }
    return out;
  };
  const gap = text.indexOf('::');
  if (gap === -1) return parts(text);
  const head = parts(text.slice(0, gap));
  const tail = parts(text.slice(gap + 2));
  while (head.length + tail.length < 8) head.push(0);
  for (const group of tail) head.push(group);
  return head;
}
