/**
 * Against a real Fly.io organisation, only when FLY_API_TOKEN and VSCODE_SWARM_FLY_LIVE_APP are set.
 * It creates one small workspace Machine in that app, checks its lifecycle and deletes it.
 * VSCODE_SWARM_FLY_LIVE_IMAGE (default codercom/code-server:4.99.3) and VSCODE_SWARM_FLY_LIVE_REGION
 * (default iad) choose what and where. Reaching the editor needs the org's private network, so readiness
 * is not awaited here.
 */
import { describe, expect, it } from 'vitest';
import { FlyProvider } from '../../providers/fly/fly-provider.js';

const token = process.env.FLY_API_TOKEN;
const app = process.env.VSCODE_SWARM_FLY_LIVE_APP;
const live = Boolean(token && app);

describe.skipIf(!live)('fly provider against the real Machines API', () => {
  const provider = new FlyProvider({
    app: app ?? 'unset',
    region: process.env.VSCODE_SWARM_FLY_LIVE_REGION ?? 'iad',
    defaultImage: process.env.VSCODE_SWARM_FLY_LIVE_IMAGE ?? 'codercom/code-server:4.99.3',
    readinessPath: null,
  });
  const id = `live-${Date.now().toString(36)}`;

  it('connects, creates, stops, starts and deletes one machine', async () => {
    await provider.initialize();
    let deleted: boolean | undefined;
    const image = process.env.VSCODE_SWARM_FLY_LIVE_IMAGE ?? 'codercom/code-server:4.99.3';
    try {
      const created = await provider.createInstance({ name: id, image, resources: { cpu: 1, memoryMb: 1024 } }, { instanceId: id });
      expect(created.status).toBe('running');
      // As Fly records the Machine: the size that was asked for.
      expect(created.config.resources).toEqual({ cpu: 1, memoryMb: 1024 });
      expect((await provider.stopInstance(id)).status).toBe('stopped');
      expect((await provider.startInstance(id)).status).toBe('running');
      // Exactly one Machine for the instance: none would mean the listing lost it, two a duplicate create.
      expect((await provider.listInstances({ name: id })).map((i) => i.id)).toEqual([id]);
    } finally {
      deleted = await provider.deleteInstance(id);
    }
    expect(deleted).toBe(true);
    expect(await provider.getInstance(id)).toBeNull();
    expect((await provider.listInstances()).map((i) => i.id)).not.toContain(id);
  }, 300_000);
});
