import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { VSCodeInstance } from '../../providers/provider.js';
import { SwarmError } from '../../src/errors.js';
import { InstanceRegistry } from '../../src/registry/instance-registry.js';

function instance(id: string, extra: Partial<VSCodeInstance> = {}): VSCodeInstance {
  return {
    id,
    name: id,
    providerType: 'docker',
    status: 'running',
    health: 'unknown',
    config: { name: id, image: 'codercom/code-server:4.99.3', resources: { cpu: 1, memoryMb: 1024 } },
    providerRef: {},
    createdAt: new Date(2026, 0, 1).toISOString(),
    updatedAt: new Date(2026, 0, 1).toISOString(),
    ...extra,
  };
}

describe('InstanceRegistry', () => {
  let dir: string;
  let registry: InstanceRegistry;

  beforeEach(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'registry-'));
    registry = new InstanceRegistry({ stateDir: dir });
    await registry.load();
  });
  afterEach(() => rm(dir, { recursive: true, force: true }));

  it('writes one JSON file per instance and reads them back in a new registry', async () => {
    await registry.register(instance('alpha'));
    await registry.register(instance('beta', { status: 'stopped' }));
    const onDisk = JSON.parse(await readFile(path.join(dir, 'instances', 'alpha.json'), 'utf8'));
    expect(onDisk).toMatchObject({ id: 'alpha', status: 'running' });

    const again = new InstanceRegistry({ stateDir: dir });
    const report = await again.load();
    expect(report).toMatchObject({ loaded: 2, setAside: [] });
    expect(again.get('beta')?.status).toBe('stopped');
  });

  it('updates and removes, keeping the file in step', async () => {
    await registry.register(instance('alpha'));
    const updated = await registry.update('alpha', { status: 'stopped', statusReason: 'stopped by request' });
    expect(updated.status).toBe('stopped');
    expect(JSON.parse(await readFile(registry.fileOf('alpha'), 'utf8')).statusReason).toBe('stopped by request');
    expect(await registry.remove('alpha')).toBe(true);
    expect(await registry.remove('alpha')).toBe(false);
    expect(await readdir(path.join(dir, 'instances'))).toEqual([]);
  });

  it('hands out frozen records, so state changes only through update()', async () => {
    const record = await registry.register(instance('alpha'));
    expect(() => {
      (record as VSCodeInstance).status = 'failed';
    }).toThrow();
    expect(registry.get('alpha')?.status).toBe('running');
  });

  it('converges on the last of many overlapping updates', async () => {
    await registry.register(instance('alpha'));
    await Promise.all(Array.from({ length: 25 }, (_, n) => registry.update('alpha', { statusReason: `update ${n}` })));
    const onDisk = JSON.parse(await readFile(registry.fileOf('alpha'), 'utf8'));
    expect(onDisk.statusReason).toBe('update 24');
    expect((await readdir(path.join(dir, 'instances'))).filter((f) => f.startsWith('.tmp-'))).toEqual([]);
  });

  it('lists by provider and status, counts by provider, finds by name glob and metadata', async () => {
    await registry.register(instance('web-1', { config: { name: 'web-1', image: 'a/b:1', resources: { cpu: 1, memoryMb: 512 }, metadata: { owner: 'ann' } } }));
    await registry.register(instance('web-2', { status: 'stopped' }));
    await registry.register(instance('db-1', { providerType: 'fly', config: { name: 'db-1', image: 'a/b:1', resources: { cpu: 1, memoryMb: 512 }, metadata: { owner: 'bob' } } }));
    expect(registry.list({ providerType: 'docker' }).map((i) => i.id)).toEqual(['web-1', 'web-2']);
    expect(registry.list({ status: ['stopped'] }).map((i) => i.id)).toEqual(['web-2']);
    expect(registry.countByProvider()).toEqual({ docker: 2, fly: 1 });
    expect(registry.findByName('web-*').map((i) => i.id)).toEqual(['web-1', 'web-2']);
    expect(registry.findByName(/^db/).map((i) => i.id)).toEqual(['db-1']);
    expect(registry.findByMetadata('owner').map((i) => i.id).sort()).toEqual(['db-1', 'web-1']);
    expect(registry.findByMetadata('owner', 'bob').map((i) => i.id)).toEqual(['db-1']);
  });

  it.each(['../etc', 'a/b', 'x\0y', 'UPPER', '-lead', 'a'.repeat(64), ''])('rejects the id %j before it becomes a file name', async (bad) => {
    await expect(registry.register(instance(bad))).rejects.toMatchObject({ code: 'INVALID_INPUT', field: 'id' });
    expect(() => registry.get(bad)).toThrow(SwarmError);
    expect(await readdir(path.join(dir, 'instances'))).toEqual([]);
  });

  it('refuses a second registration of the same id', async () => {
    await registry.register(instance('alpha'));
    await expect(registry.register(instance('alpha'))).rejects.toMatchObject({ code: 'CONFLICT' });
  });

  it('sets aside files it cannot use, with the reason, and loads the rest', async () => {
    await registry.register(instance('good'));
    const instances = path.join(dir, 'instances');
    await writeFile(path.join(instances, 'torn.json'), '{"id": "torn", "name":');
    await writeFile(path.join(instances, 'wrongid.json'), JSON.stringify(instance('other')));
    await writeFile(path.join(instances, 'badstatus.json'), JSON.stringify({ ...instance('badstatus'), status: 'exploded' }));
    await writeFile(path.join(instances, 'Bad Name.json'), JSON.stringify(instance('good')));
    await writeFile(path.join(instances, '.tmp-good.json.abc123'), 'half a write');

    const again = new InstanceRegistry({ stateDir: dir });
    const report = await again.load();
    expect(report.loaded).toBe(1);
    expect(report.removedTemp).toBe(1);
    const reasons = Object.fromEntries(report.setAside.map((s) => [path.basename(s.file).split('.json')[0], s.reason]));
    expect(reasons.torn).toMatch(/unreadable/);
    expect(reasons.wrongid).toMatch(/does not match/);
    expect(reasons.badstatus).toMatch(/status/);
    expect(reasons['Bad Name']).toMatch(/not a valid instance id/);
    expect(await readdir(instances)).toEqual(['good.json']);
    expect((await readdir(path.join(dir, 'quarantine'))).length).toBe(4);
  });

  it('leaves memory unchanged when a write fails', async () => {
    await registry.register(instance('alpha'));
    await rm(path.join(dir, 'instances'), { recursive: true });
    await writeFile(path.join(dir, 'instances'), 'not a folder'); // every write now fails
    await expect(registry.update('alpha', { status: 'stopped' })).rejects.toMatchObject({ code: 'STATE_ERROR' });
    expect(registry.get('alpha')?.status).toBe('running');
  });
});
