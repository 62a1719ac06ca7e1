/**
 * The SwarmController as a library, on the real engine: one workspace per name under concurrency,
 * serialised operations, and an engine that is not there.
 */
import { readdir } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createSwarm } from '../../src/controller/create-swarm.js';
import type { SwarmController } from '../../src/controller/swarm-controller.js';
import { cleanUp, containersNamed, makeStateDir, testConfig } from '../helpers/docker.js';

const PREFIX = 'e2e-ctl';

describe('SwarmController on the real engine', () => {
  let stateDir: string;
  let controller: SwarmController;

  beforeAll(async () => {
    await cleanUp(PREFIX);
    stateDir = await makeStateDir(PREFIX);
    controller = createSwarm(testConfig(stateDir, { exec: { enabled: true } }));
    await controller.initialize();
  });
  afterAll(async () => {
    await controller?.close();
    await cleanUp(PREFIX, stateDir);
  });

  it('gives two concurrent creates of one name one workspace', async () => {
    const name = `${PREFIX}-twin`;
    const [a, b, c] = await Promise.all([
      controller.createInstance({ name }),
      controller.createInstance({ name }),
      controller.createInstance({ name, resources: { cpu: 2 } }),
    ]);
    expect(new Set([a.instance.id, b.instance.id, c.instance.id]).size).toBe(1);
    expect([a, b, c].filter((r) => r.created).length).toBe(1);
    expect((await containersNamed(name)).length).toBe(1);
    expect(await readdir(path.join(stateDir, 'instances'))).toEqual([`${a.instance.id}.json`]);
  });

  it('serialises operations on one instance: a stop issued during a start waits for it', async () => {
    const [{ instance }] = [await controller.createInstance({ name: `${PREFIX}-twin` })];
    await controller.stopInstance(instance.id);
    const order: string[] = [];
    await Promise.all([
      controller.startInstance(instance.id).then((i) => order.push(`start:${i.status}`)),
      controller.stopInstance(instance.id).then((i) => order.push(`stop:${i.status}`)),
    ]);
    expect(order).toEqual(['start:running', 'stop:stopped']);
    expect((await controller.getInstance(instance.id)).status).toBe('stopped');
  });

  it('refuses bad operations without changing anything', async () => {
    const before = JSON.stringify(controller.registry.list());
    await expect(controller.deleteInstance('no-such-thing')).rejects.toMatchObject({ code: 'NOT_FOUND' });
    await expect(controller.stopInstance('../../etc/passwd')).rejects.toMatchObject({ code: 'INVALID_INPUT', field: 'instanceId' });
    await expect(controller.createInstance({ name: `${PREFIX}-cpu`, resources: { cpu: 4096 } })).rejects.toMatchObject({ code: 'INVALID_INPUT' });
    await expect(controller.createInstance({ name: `${PREFIX}-img`, image: 'vscode-swarm/does-not-exist:1' })).rejects.toMatchObject({
      code: 'PROVIDER_ERROR',
      message: expect.stringMatching(/not present on the Docker engine and pulling is turned off/),
    });
    const [twin] = controller.registry.list();
    await expect(controller.executeCommand(twin!.id, 'id')).rejects.toMatchObject({ code: 'CONFLICT' }); // it is stopped
    expect(JSON.stringify(controller.registry.list())).toBe(before);
    expect(await containersNamed(`${PREFIX}-img`)).toEqual([]);
    expect(await containersNamed(`${PREFIX}-cpu`)).toEqual([]);
  });
});

describe('SwarmController without a Docker engine', () => {
  it('starts, reports the provider unavailable with what to do, and refuses creates cleanly', async () => {
    const stateDir = await makeStateDir(`${PREFIX}-noengine`);
    try {
      const controller = createSwarm(testConfig(stateDir, { providers: { docker: { dockerHost: 'unix:///nonexistent/docker.sock' } } }));
      const init = await controller.initialize();
      expect(init.unavailable).toEqual([
        expect.objectContaining({ type: 'docker', state: 'unavailable', reason: expect.stringMatching(/cannot reach the Docker engine at unix:\/\/\/nonexistent\/docker.sock.*Start the engine/) }),
      ]);
      await expect(controller.createInstance({ name: `${PREFIX}-nope` })).rejects.toMatchObject({
        code: 'PROVIDER_UNAVAILABLE',
        message: expect.stringMatching(/cannot reach the Docker engine/),
      });
      expect(controller.getSwarmStatus().total).toBe(0);
      expect(await readdir(path.join(stateDir, 'instances'))).toEqual([]);
      await controller.close();
    } finally {
      await cleanUp(`${PREFIX}-noengine`, stateDir);
    }
  });
});
