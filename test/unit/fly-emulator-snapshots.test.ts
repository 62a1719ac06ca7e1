/**
 * The Fly emulator's volume snapshots, straight through its HTTP API: an on-demand snapshot answers
 * without a body and shows in the volume's list as `pending`, then `created` with its size and digest;
 * it is a real copy of the volume's files at that moment (later changes are not in it); a volume made
 * with `snapshot_id` holds exactly those files, in a Machine that mounts it; what the API refuses
 * (an unknown or unfinished snapshot, a smaller volume, an unknown volume) it refuses with Fly's codes.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { waitUntil } from '../../src/timing/wait-until.js';
import { startFlyEmulator, type FlyEmulator } from '../emulators/fly/index.js';
import { ensureStandinImage } from '../helpers/standin-image.js';

const APP = 'fly-emu-snapshots';

describe('Fly emulator: volume snapshots', () => {
  let emulator: FlyEmulator;
  let image: string;

  async function api(method: string, path: string, body?: unknown): Promise<{ status: number; json: unknown; text: string }> {
    const res = await fetch(`${emulator.url}/v1/apps/${APP}${path}`, {
      method,
      headers: { Authorization: `Bearer ${emulator.token}`, 'Content-Type': 'application/json' },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    });
    const text = await res.text();
    return { status: res.status, text, json: text ? (JSON.parse(text) as unknown) : undefined };
  }

  async function ok<T>(method: string, path: string, body?: unknown): Promise<T> {
    const res = await api(method, path, body);
    expect(res.status, `${method} ${path}: ${res.text}`).toBe(200);
    return res.json as T;
  }

  /** A started Machine of the stand-in image with the volume at /data. */
  async function machineWith(volume: string): Promise<string> {
    const m = await ok<{ id: string }>('POST', '/machines', { region: 'iad', config: { image, guest: { cpu_kind: 'shared', cpus: 1, memory_mb: 256 }, mounts: [{ volume, path: '/data' }] } });
    await ok('GET', `/machines/${m.id}/wait?state=started&timeout=60`);
    return m.id;
  }

  async function sh(machine: string, command: string): Promise<string> {
    const res = await ok<{ exit_code: number; stdout: string; stderr: string }>('POST', `/machines/${machine}/exec`, { command: ['sh', '-c', command], timeout: 30 });
    expect(res.exit_code, res.stderr).toBe(0);
    return res.stdout;
  }

  type Snap = { id: string; size: number; digest: string; created_at: string; status: string; retention_days: number };

  beforeAll(async () => {
    image = await ensureStandinImage();
    emulator = await startFlyEmulator({ rateLimit: false, apps: [{ name: APP }], snapshotDelayMs: 500 });
  }, 120_000);

  afterAll(async () => {
    await emulator?.close();
  });

  it('takes a snapshot that is a real copy of the volume at that moment, and makes a new volume from it', async () => {
    const volume = await ok<{ id: string }>('POST', '/volumes', { name: 'data', region: 'iad', size_gb: 2 });
    const machine = await machineWith(volume.id);
    await sh(machine, 'mkdir -p /data/dir && printf "at the snapshot\\n" > /data/dir/a.txt && head -c 50000 /dev/urandom > /data/b.bin && chmod 600 /data/b.bin');
    const taken = await sh(machine, 'cd /data && find . -type f | sort | xargs sha256sum');

    const created = await api('POST', `/volumes/${volume.id}/snapshots`);
    expect(created.status).toBe(200);
    expect(created.text).toBe(''); // scheduled: the id is read from the list
    const [pending] = await ok<Snap[]>('GET', `/volumes/${volume.id}/snapshots`);
    expect(pending).toMatchObject({ status: 'pending', retention_days: 5 });
    expect(Object.keys(pending!).sort()).toEqual(['created_at', 'digest', 'id', 'retention_days', 'size', 'status']);
    expect(pending!.id).toMatch(/^vs_[a-z0-9]{16}$/);

    // Made from a snapshot still being taken: refused.
    const early = await api('POST', '/volumes', { name: 'early', region: 'iad', snapshot_id: pending!.id });
    expect(early.status).toBe(422);
    expect((early.json as { error: string }).error).toMatch(/is pending/);

    await sh(machine, 'printf "changed after" > /data/dir/a.txt && printf x > /data/later.txt');
    const ready = await waitUntil(async () => (await ok<Snap[]>('GET', `/volumes/${volume.id}/snapshots`)).find((s) => s.status === 'created'), { timeoutMs: 30_000, intervalMs: 100, what: 'snapshot created' });
    expect(ready.id).toBe(pending!.id);
    expect(ready.size).toBeGreaterThan(50_000);
    expect(ready.digest).toMatch(/^sha256:[0-9a-f]{64}$/);

    const smaller = await api('POST', '/volumes', { name: 'small', region: 'iad', size_gb: 1, snapshot_id: ready.id });
    expect(smaller.status).toBe(422);
    expect((await api('POST', '/volumes', { name: 'none', region: 'iad', snapshot_id: 'vs_0000000000000000' })).status).toBe(404);

    const restored = await ok<{ id: string; state: string; size_gb: number }>('POST', '/volumes', { name: 'restored', region: 'iad', snapshot_id: ready.id });
    expect(restored.size_gb).toBe(2);
    expect(['hydrating', 'created']).toContain(restored.state);
    const second = await machineWith(restored.id);
    expect(await sh(second, 'cd /data && find . -type f | sort | xargs sha256sum')).toBe(taken);
    expect(await sh(second, 'cat /data/dir/a.txt')).toBe('at the snapshot\n');
    expect(await sh(second, 'stat -c %a /data/b.bin')).toBe('600\n');
    expect((await ok<{ state: string }>('GET', `/volumes/${restored.id}`)).state).toBe('created');
    // The source is untouched by the copy, and the copy by the source.
    expect(await sh(machine, 'cat /data/dir/a.txt')).toBe('changed after');
    await sh(second, 'printf "fork only" > /data/dir/a.txt');
    expect(await sh(machine, 'cat /data/dir/a.txt')).toBe('changed after');
  }, 120_000);

  it('refuses snapshots of volumes that do not exist, and lists none for a fresh volume', async () => {
    expect((await api('POST', '/volumes/vol_doesnotexist0000/snapshots')).status).toBe(404);
    expect((await api('GET', '/volumes/vol_doesnotexist0000/snapshots')).status).toBe(404);
    const fresh = await ok<{ id: string }>('POST', '/volumes', { name: 'fresh', region: 'iad' });
    expect(await ok('GET', `/volumes/${fresh.id}/snapshots`)).toEqual([]);
  });
});
