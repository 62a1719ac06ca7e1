/**
 * The host agent's port pool on real files: distinct ports, exhaustion, release and reuse, persistence
 * across a restart, concurrent allocations, ports held by other processes, a damaged file.
 */
import { mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeEach, describe, expect, it } from 'vitest';
import { PortPool, parsePortRange, portFreeOn } from '../../providers/aws-asg/agent/port-pool.js';
import { SwarmError } from '../../src/errors.js';

const dirs: string[] = [];
let dir: string;
let file: string;

beforeEach(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'agent-ports-'));
  dirs.push(dir);
  file = path.join(dir, 'ports.json');
});
afterAll(async () => {
  await Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true })));
});

describe('PortPool', () => {
  it('gives each instance its own port, and the same one when asked again', async () => {
    const pool = new PortPool({ file, range: { first: 20000, last: 20002 } });
    const a = await pool.allocate('a');
    const b = await pool.allocate('b');
    expect(a).toBe(20000);
    expect(b).toBe(20001);
    expect(await pool.allocate('a')).toBe(a);
    expect(pool.used).toBe(2);
    expect(pool.portOf('b')).toBe(b);
    expect(pool.portOf('nobody')).toBeUndefined();
  });

  it('refuses clearly when every port is taken, and changes nothing', async () => {
    const pool = new PortPool({ file, range: { first: 20000, last: 20001 } });
    await pool.allocate('a');
    await pool.allocate('b');
    const err = await pool.allocate('c').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(SwarmError);
    expect(err).toMatchObject({ code: 'CONFLICT', details: { reason: 'PORTS_EXHAUSTED', range: '20000-20001', assigned: 2 } });
    expect((err as Error).message).toBe('port pool 20000-20001 is exhausted: 2 of 2 ports are assigned; delete an instance or widen --port-range');
    expect(pool.portOf('c')).toBeUndefined();
    expect(pool.used).toBe(2);
  });

  it('reuses a released port, but not at once while others are free', async () => {
    const pool = new PortPool({ file, range: { first: 20000, last: 20002 } });
    await pool.allocate('a'); // 20000
    await pool.allocate('b'); // 20001
    expect(await pool.release('a')).toBe(true);
    expect(await pool.release('a')).toBe(false);
    expect(await pool.allocate('c')).toBe(20002); // the freshly freed 20000 waits its turn
    expect(await pool.allocate('d')).toBe(20000);
    await expect(pool.allocate('e')).rejects.toMatchObject({ details: { reason: 'PORTS_EXHAUSTED' } });
  });

  it('persists every change atomically and reads it back after a restart', async () => {
    const pool = new PortPool({ file, range: { first: 21000, last: 21009 } });
    await pool.allocate('a');
    await pool.allocate('b');
    await pool.release('a');
    await pool.allocate('c');
    expect(JSON.parse(await readFile(file, 'utf8'))).toEqual({ range: { first: 21000, last: 21009 }, assignments: { b: 21001, c: 21002 } });
    expect((await readdir(dir)).filter((n) => n !== 'ports.json')).toEqual([]); // no temp files left

    const again = new PortPool({ file, range: { first: 21000, last: 21009 } });
    await again.load();
    expect(again.assignments()).toEqual({ b: 21001, c: 21002 });
    expect(await again.allocate('b')).toBe(21001);
    expect([21001, 21002]).not.toContain(await again.allocate('d'));
  });

  it('never hands one port to two instances allocating at the same time', async () => {
    // A slow probe keeps every allocation in flight at once.
    const pool = new PortPool({ file, range: { first: 22000, last: 22009 }, isFree: () => new Promise((r) => setTimeout(() => r(true), 5)) });
    const ids = Array.from({ length: 10 }, (_, i) => `w${i}`);
    const ports = await Promise.all(ids.map((id) => pool.allocate(id)));
    expect(new Set(ports).size).toBe(10);
    await expect(pool.allocate('w10')).rejects.toMatchObject({ code: 'CONFLICT' });
    const reread = new PortPool({ file, range: { first: 22000, last: 22009 } });
    await reread.load();
    expect(Object.keys(reread.assignments())).toHaveLength(10);
  });

  it('skips a port another process listens on', async () => {
    const squatter = net.createServer();
    await new Promise<void>((r) => squatter.listen(0, '127.0.0.1', () => r()));
    const busy = (squatter.address() as net.AddressInfo).port;
    try {
      const pool = new PortPool({ file, range: { first: busy, last: Math.min(busy + 1, 65_535) }, isFree: portFreeOn('127.0.0.1') });
      const port = await pool.allocate('a');
      expect(port).not.toBe(busy);
      const single = new PortPool({ file: path.join(dir, 'single.json'), range: { first: busy, last: busy }, isFree: portFreeOn('127.0.0.1') });
      await expect(single.allocate('b')).rejects.toThrow(/exhausted: 0 of 1 ports are assigned and 1 more are held by other processes/);
    } finally {
      squatter.close();
    }
  });

  it('records the port an adopted instance already holds, unless another has it', async () => {
    const pool = new PortPool({ file, range: { first: 23000, last: 23009 } });
    expect(await pool.claim('adopted', 23005)).toBe(true);
    expect(await pool.claim('other', 23005)).toBe(false);
    expect(pool.portOf('adopted')).toBe(23005);
  });

  it('sets a damaged file aside and starts empty', async () => {
    await writeFile(file, '{ not json');
    const pool = new PortPool({ file, range: { first: 24000, last: 24001 } });
    await pool.load();
    expect(pool.used).toBe(0);
    expect((await readdir(dir)).some((n) => n.startsWith('ports.json.unreadable-'))).toBe(true);
  });

  it('refuses an id that is not an instance id', async () => {
    const pool = new PortPool({ file, range: { first: 25000, last: 25001 } });
    await expect(pool.allocate('../x')).rejects.toMatchObject({ code: 'INVALID_INPUT', field: 'instanceId' });
  });
});

describe('parsePortRange', () => {
  it('reads ranges and single ports', () => {
    expect(parsePortRange('20000-20999')).toEqual({ first: 20000, last: 20999 });
    expect(parsePortRange(' 30000 ')).toEqual({ first: 30000, last: 30000 });
  });
  it('names the flag and what it expected', () => {
    expect(() => parsePortRange('20999-20000', '--port-range')).toThrow('--port-range: expected a port range such as 20000-20999 within 1-65535 (got "20999-20000")');
    expect(() => parsePortRange('0-10')).toThrow(/expected a port range/);
    expect(() => parsePortRange('1-70000')).toThrow(/expected a port range/);
    expect(() => parsePortRange('abc')).toThrow(/expected a port range/);
  });
});
