/**
 * What every instance store must do, run against each one (the JSON-file InstanceRegistry and the
 * PostgreSQL store): the controller may be given either and must not tell them apart in these cases.
 * Behaviour only one store has (the PostgreSQL name constraint, its cache across controllers) is tested
 * beside that store, not here.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { VSCodeInstance } from '../../providers/provider.js';
import { SwarmError } from '../../src/errors.js';
import type { InstanceStore } from '../../src/store/index.js';

export interface StoreHarness {
  store: InstanceStore;
  /** A second store over the same persistence, loaded (a restarted or another controller). */
  reopen(): Promise<InstanceStore>;
  /** Ends both stores and removes what the harness made. */
  close(): Promise<void>;
}

export function contractInstance(id: string, extra: Partial<VSCodeInstance> = {}): VSCodeInstance {
  return {
    id,
    name: id,
    providerType: 'docker',
    status: 'running',
    health: 'unknown',
    config: { name: id, image: 'codercom/code-server:4.99.3', resources: { cpu: 1, memoryMb: 1024 }, metadata: { team: 'red' } },
    providerRef: { container: `c-${id}` },
    createdAt: new Date(Date.UTC(2026, 0, 1)).toISOString(),
    updatedAt: new Date(Date.UTC(2026, 0, 1)).toISOString(),
    ...extra,
  };
}

export function describeInstanceStoreContract(label: string, makeHarness: () => Promise<StoreHarness>): void {
  describe(`instance store contract: ${label}`, () => {
    let h: StoreHarness;
    let store: InstanceStore;
    beforeEach(async () => {
      h = await makeHarness();
      store = h.store;
    });
    afterEach(() => h.close());

    it('registers, reads back, and survives a reopen', async () => {
      const created = await store.register(contractInstance('alpha'));
      expect(created).toMatchObject({ id: 'alpha', name: 'alpha', status: 'running' });
      expect(Object.isFrozen(created)).toBe(true);
      expect(store.get('alpha')).toEqual(created);
      expect(store.require('alpha').providerRef).toEqual({ container: 'c-alpha' });
      const again = await h.reopen();
      expect(again.get('alpha')).toEqual(created);
    });

    it('refuses a second record with the same id (CONFLICT) and an invalid record (INVALID_INPUT)', async () => {
      await store.register(contractInstance('alpha'));
      await expect(store.register(contractInstance('alpha', { name: 'other' }))).rejects.toMatchObject({ code: 'CONFLICT', field: 'id' });
      await expect(store.register(contractInstance('beta', { status: 'exploded' as never }))).rejects.toMatchObject({ code: 'INVALID_INPUT', field: 'status' });
      expect(store.get('beta')).toBeUndefined();
    });

    it('updates by patch and by function, stamps updatedAt, and persists', async () => {
      await store.register(contractInstance('alpha'));
      const stopped = await store.update('alpha', { status: 'stopped', statusReason: 'stopped by request' });
      expect(stopped).toMatchObject({ status: 'stopped', statusReason: 'stopped by request' });
      expect(stopped.updatedAt).not.toBe(contractInstance('alpha').updatedAt);
      const renamed = await store.update('alpha', (now) => ({ ...now, name: 'renamed', accessEpoch: (now.accessEpoch ?? 0) + 1 }));
      expect(renamed).toMatchObject({ name: 'renamed', accessEpoch: 1, status: 'stopped' });
      const again = await h.reopen();
      expect(again.require('alpha')).toMatchObject({ name: 'renamed', accessEpoch: 1, status: 'stopped', statusReason: 'stopped by request' });
    });

    it('refuses an update of an unknown instance (NOT_FOUND) and an invalid change (INVALID_INPUT, unchanged)', async () => {
      await expect(store.update('ghost', { status: 'stopped' })).rejects.toMatchObject({ code: 'NOT_FOUND' });
      await store.register(contractInstance('alpha'));
      await expect(store.update('alpha', { status: 'bogus' as never })).rejects.toMatchObject({ code: 'INVALID_INPUT', field: 'status' });
      expect(store.require('alpha').status).toBe('running');
      expect(() => store.require('ghost')).toThrow(SwarmError);
      expect(() => store.get('Not An Id')).toThrow(/instanceId/);
    });

    it('applies concurrent function updates of one instance one after another', async () => {
      await store.register(contractInstance('alpha', { accessEpoch: 0 }));
      await Promise.all(Array.from({ length: 20 }, () => store.update('alpha', (now) => ({ ...now, accessEpoch: (now.accessEpoch ?? 0) + 1 }))));
      expect(store.require('alpha').accessEpoch).toBe(20);
      expect((await h.reopen()).require('alpha').accessEpoch).toBe(20);
    });

    it('lists sorted by creation, filtered by provider and status, and finds by name and metadata', async () => {
      await store.register(contractInstance('c-late', { createdAt: '2026-03-01T00:00:00.000Z', providerType: 'fly' }));
      await store.register(contractInstance('a-early', { createdAt: '2026-01-01T00:00:00.000Z', status: 'stopped' }));
      await store.register(
        contractInstance('b-mid', {
          createdAt: '2026-02-01T00:00:00.000Z',
          config: { name: 'b-mid', image: 'codercom/code-server:4.99.3', resources: { cpu: 1, memoryMb: 1024 }, metadata: { team: 'blue' } },
        }),
      );
      expect(store.list().map((i) => i.id)).toEqual(['a-early', 'b-mid', 'c-late']);
      expect(store.list({ providerType: 'fly' }).map((i) => i.id)).toEqual(['c-late']);
      expect(store.list({ status: ['running'] }).map((i) => i.id)).toEqual(['b-mid', 'c-late']);
      expect(store.findByName('*-e?rly').map((i) => i.id)).toEqual(['a-early']);
      expect(store.findByName(/^[bc]-/).map((i) => i.id)).toEqual(['b-mid', 'c-late']);
      expect(store.findByMetadata('team', 'blue').map((i) => i.id)).toEqual(['b-mid']);
      expect(store.findByMetadata('team').map((i) => i.id)).toEqual(['a-early', 'b-mid', 'c-late']);
      expect(store.findByMetadata('nothing')).toEqual([]);
    });

    it('removes (true once, then false), for good', async () => {
      await store.register(contractInstance('alpha'));
      await store.register(contractInstance('beta'));
      expect(await store.remove('alpha')).toBe(true);
      expect(await store.remove('alpha')).toBe(false);
      expect(store.get('alpha')).toBeUndefined();
      await store.flush();
      const again = await h.reopen();
      expect(again.list().map((i) => i.id)).toEqual(['beta']);
      // The id is free again.
      await expect(store.register(contractInstance('alpha', { name: 'alpha-2' }))).resolves.toMatchObject({ name: 'alpha-2' });
    });
  });
}
