/**
 * Idle stop and warm capacity on the real engine and real code-server.
 */
import http from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { IdleMonitor } from '../../src/activity/idle-monitor.js';
import { createSwarm, startSwarmServices, type SwarmServices } from '../../src/controller/create-swarm.js';
import { waitUntil } from '../../src/timing/wait-until.js';
import { cleanUp, containersNamed, makeStateDir, testConfig } from '../helpers/docker.js';

/** One request through the gateway, the way a browser that is already signed in makes it. */
function viaGateway(port: number, id: string, path: string, cookie?: string): Promise<{ status: number; setCookie?: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, path, headers: { host: `${id}.localhost:${port}`, ...(cookie ? { cookie } : {}) } }, (res) => {
      res.resume();
      res.on('end', () => resolve({ status: res.statusCode ?? 0, ...(res.headers['set-cookie'] ? { setCookie: res.headers['set-cookie'][0]!.split(';')[0]! } : {}) }));
    });
    req.on('error', reject);
    req.end();
  });
}

describe('idle stop', () => {
  const PREFIX = 'e2e-idle';
  let stateDir: string;
  let services: SwarmServices;

  beforeAll(async () => {
    await cleanUp(PREFIX);
    stateDir = await makeStateDir(PREFIX);
    // The monitor's own timer is effectively off: the test drives sweeps itself.
    const config = testConfig(stateDir, { idle: { checkIntervalMs: 3_600_000 } });
    services = await startSwarmServices(createSwarm(config));
  });
  afterAll(async () => {
    await services?.close();
    await cleanUp(PREFIX, stateDir);
  });

  it('stops an unused instance with the reason, and keeps one with traffic and one with a lease', async () => {
    const { controller, gateway } = services;
    const port = controller.access!.port;
    const timeout = 3 / 60; // three seconds
    const [unused, busy, leased, never] = await Promise.all(
      ['unused', 'busy', 'leased', 'never'].map((n) =>
        controller.createInstance({ name: `${PREFIX}-${n}`, idleTimeoutMinutes: n === 'never' ? 0 : timeout }),
      ),
    );
    expect(gateway).toBeDefined();
    // The busy one is opened in a "browser": exchange the link, then keep requesting.
    const signIn = await viaGateway(port, busy!.instance.id, new URL(busy!.access!.accessUrl).pathname + new URL(busy!.access!.accessUrl).search);
    expect(signIn.status).toBe(302);
    const cookie = signIn.setCookie!;
    await controller.keepAlive(leased!.instance.id, 1, 'e2e assistant');

    const monitor = new IdleMonitor({ controller, activity: controller.activity, checkIntervalMs: 3_600_000 });
    const started = Date.now();
    while (Date.now() - started < 4_500) {
      expect((await viaGateway(port, busy!.instance.id, '/healthz', cookie)).status).toBe(200);
      await new Promise((r) => setTimeout(r, 500));
    }
    const report = await monitor.sweep();
    expect(report.stopped.map((s) => s.instanceId)).toEqual([unused!.instance.id]);

    const stopped = await controller.getInstance(unused!.instance.id);
    expect(stopped.status).toBe('stopped');
    expect(stopped.lastStop).toMatchObject({ by: 'idle', reason: expect.stringMatching(/^idle: no editor heartbeat, gateway traffic or lease for \d+ s \(timeout 0\.05 min/) });
    expect(stopped.statusReason).toBe(stopped.lastStop!.reason);

    const busyNow = await controller.getInstance(busy!.instance.id);
    expect(busyNow.status).toBe('running');
    expect(busyNow.lastActivity?.source).toMatch(/gateway|heartbeat/);
    expect((await controller.getInstance(leased!.instance.id)).status).toBe('running');
    expect((await controller.getInstance(leased!.instance.id)).lease?.holder).toBe('e2e assistant');
    expect((await controller.getInstance(never!.instance.id)).status).toBe('running');

    // Without traffic, the busy one goes too on a later sweep; the lease still holds the other.
    await new Promise((r) => setTimeout(r, 3_500));
    expect((await monitor.sweep()).stopped.map((s) => s.instanceId)).toEqual([busy!.instance.id]);
    expect((await controller.getInstance(leased!.instance.id)).status).toBe('running');
  });

  it('starts a stopped instance when its owner comes back through the gateway', async () => {
    const { controller } = services;
    const port = controller.access!.port;
    const [instance] = controller.registry.findByName(`${PREFIX}-unused`);
    expect(instance!.status).toBe('stopped');
    const link = await controller.issueAccessLink(instance!.id);
    const signIn = await viaGateway(port, instance!.id, new URL(link.accessUrl).pathname + new URL(link.accessUrl).search);
    expect(signIn.status).toBe(302);
    expect((await viaGateway(port, instance!.id, '/healthz', signIn.setCookie)).status).toBe(200);
    expect(controller.registry.get(instance!.id)?.status).toBe('running');
  });
});

describe('warm capacity', () => {
  const PREFIX = 'e2e-warm';
  let stateDir: string;
  let services: SwarmServices;

  beforeAll(async () => {
    await cleanUp(PREFIX);
    await cleanUp('warm-');
    stateDir = await makeStateDir(PREFIX);
    const config = testConfig(stateDir, { warm: [{ provider: 'docker', size: 1 }] });
    services = await startSwarmServices(createSwarm(config));
  });
  afterAll(async () => {
    await services?.close();
    await cleanUp(PREFIX, stateDir);
    await cleanUp('warm-');
  });

  it('serves a matching create from the buffer, refills it, and keeps the buffer out of listings and counts', async () => {
    const { controller } = services;
    await waitUntil(async () => (controller.getSwarmStatus().warm[0]?.ready === 1 ? true : undefined), { timeoutMs: 60_000, what: 'warm buffer' });
    expect(controller.getSwarmStatus()).toMatchObject({ total: 0, warm: [{ size: 1, ready: 1 }] });
    expect(await controller.listInstances()).toEqual([]);
    const member = controller.registry.list().find((i) => i.warmPool)!;

    const claimed = await controller.createInstance({ name: `${PREFIX}-alice`, metadata: { owner: 'alice' } });
    expect(claimed).toMatchObject({ created: true, fromWarmPool: true, instance: { id: member.id, name: `${PREFIX}-alice`, status: 'running' } });
    expect(claimed.instance.warmPool).toBeUndefined();
    expect(claimed.instance.config.metadata).toEqual({ owner: 'alice' });
    expect(claimed.access?.accessUrl).toContain(member.id);

    // The buffer refills in the background, and the claimed one now counts.
    await waitUntil(async () => (controller.getSwarmStatus().warm[0]?.ready === 1 ? true : undefined), { timeoutMs: 60_000, what: 'refill' });
    expect(controller.getSwarmStatus().total).toBe(1);
    expect((await controller.listInstances()).map((i) => i.name)).toEqual([`${PREFIX}-alice`]);
    expect((await controller.listInstances({ includeWarm: true })).length).toBe(2);

    // A create the buffer cannot serve (its own env) starts its own instance.
    const own = await controller.createInstance({ name: `${PREFIX}-bob`, env: { TEAM: 'b' } });
    expect(own.fromWarmPool).toBe(false);
    expect((await containersNamed(`${PREFIX}-bob`)).length).toBe(1);
    expect(controller.getSwarmStatus().warm[0]).toMatchObject({ ready: 1 });
  });
});
