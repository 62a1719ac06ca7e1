/**
 * Fault injection on the real engine: the editor hung or killed inside its container, the container
 * stopped, paused and removed behind the controller's back. A definite finding (stopped, gone) counts on
 * the first check; a flaky one (no answer) on the second. Each is repaired with the reason recorded; one
 * that cannot be repaired ends failed, with why.
 */
import { httpStatus } from '../../src/timing/http-probe.js';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createSwarm } from '../../src/controller/create-swarm.js';
import type { SwarmController } from '../../src/controller/swarm-controller.js';
import { HealthMonitor } from '../../src/health/health-monitor.js';
import { waitUntil } from '../../src/timing/wait-until.js';
import { cleanUp, containersNamed, docker, makeStateDir, testConfig } from '../helpers/docker.js';

const PREFIX = 'e2e-health';

async function containerOf(name: string) {
  const [info] = await containersNamed(name);
  return docker.getContainer(info!.Id);
}

/** Runs a command in the container as the editor's user; `kill -STOP -1` there freezes every editor process (not init). */
async function execIn(name: string, cmd: string[]): Promise<void> {
  const exec = await (await containerOf(name)).exec({ Cmd: cmd, User: 'coder' });
  await exec.start({ hijack: true, stdin: false }).then((s) => new Promise((r) => s.on('end', r).resume()));
}

describe('health monitor', () => {
  let stateDir: string;
  let controller: SwarmController;
  let health: HealthMonitor;

  beforeAll(async () => {
    await cleanUp(PREFIX);
    stateDir = await makeStateDir(PREFIX);
    const config = testConfig(stateDir, {
      exec: { enabled: true },
      health: { failureThreshold: 2, timeoutMs: 1_000, backoffMs: 0, maxAttempts: 2, intervalMs: 3_600_000 },
    });
    controller = createSwarm(config);
    await controller.initialize();
    health = new HealthMonitor({ controller, stateDir, config: config.health });
  });
  afterAll(async () => {
    await health?.stop();
    await controller?.close();
    await cleanUp(PREFIX, stateDir);
  });

  const make = async (suffix: string) => (await controller.createInstance({ name: `${PREFIX}-${suffix}` })).instance;

  it('a healthy instance is healthy, and one bad answer is not a failure (nor reported as healthy)', async () => {
    const inst = await make('flap');
    expect(await health.checkAndRecover(inst.id)).toMatchObject({ status: 'healthy', checks: { provider: 'pass', status: 'pass', connectivity: 'pass' } });
    await execIn(`${PREFIX}-flap`, ['sh', '-c', 'kill -STOP -1']);
    // The fault is in place once the editor stops answering (seen once in CI: one more 200 right after the
    // signal, under load); the monitor's finding is what is tested, not how fast SIGSTOP lands.
    await waitUntil(async () => ((await httpStatus(`${inst.endpoint!.url}/healthz`, 300)) === 0 ? true : undefined), { timeoutMs: 15_000, intervalMs: 100, what: 'the stopped editor to stop answering' });
    const first = await health.checkAndRecover(inst.id);
    expect(first.status).toBe('unknown');
    expect(first.reason).toMatch(/connectivity: .* \(1 of 2 failed checks before it counts\)/);
    expect(first.action).toBeUndefined();
    await execIn(`${PREFIX}-flap`, ['sh', '-c', 'kill -CONT -1']);
    expect((await health.checkAndRecover(inst.id)).status).toBe('healthy');
  });

  // [what, inject, finding, repair, checks until it counts]
  const faults: [string, (name: string) => Promise<void>, RegExp, RegExp, number][] = [
    ['the editor hung inside its container', (n) => execIn(n, ['sh', '-c', 'kill -STOP -1']), /^connectivity/, /^restart/, 2],
    [
      'the editor killed inside its container',
      async (n) => {
        await execIn(n, ['pkill', '-KILL', '-f', 'entry.js']);
        // The container ends a moment after its editor: the fault is in place once it has.
        const container = await containerOf(n);
        await waitUntil(async () => ((await container.inspect()).State.Running ? undefined : true), { timeoutMs: 10_000, what: 'the container to end' });
      },
      /^status: expected running, found stopped/,
      /^restart/,
      1,
    ],
    ['the container stopped behind its back', async (n) => void (await (await containerOf(n)).stop({ t: 1 })), /^status: expected running, found stopped/, /^restart/, 1],
    ['the container paused behind its back', async (n) => void (await (await containerOf(n)).pause()), /paused outside vscode-swarm/, /^restart/, 1],
    ['the container removed behind its back', async (n) => void (await (await containerOf(n)).remove({ force: true })), /^missing/, /^recreate/, 1],
  ];

  it.each(faults)('%s: found (within the checks it takes to count) and repaired, with the reason recorded', async (label, inject, finding, action, checks) => {
    const suffix = label.split(' ').slice(-3).join('-').replace(/[^a-z-]/g, '');
    const inst = await make(suffix);
    await controller.executeCommand(inst.id, 'echo kept > survives.txt');
    await inject(`${PREFIX}-${suffix}`);

    for (let i = 1; i < checks; i++) {
      const early = await health.checkAndRecover(inst.id);
      expect(early).toMatchObject({ status: 'unknown', reason: expect.stringMatching(finding) });
      expect(early.action).toBeUndefined();
    }
    const second = await health.checkAndRecover(inst.id);
    expect(second.status).toBe('unhealthy');
    expect(second.reason).toMatch(finding);
    expect(second.reason).not.toMatch(/before it counts/);
    expect(second.action).toMatch(new RegExp(`${action.source}: done`));

    const after = await health.checkAndRecover(inst.id);
    expect(after.status).toBe('healthy');
    const record = controller.registry.get(inst.id)!;
    expect(record).toMatchObject({ status: 'running', health: 'healthy' });
    expect(record.statusReason).toMatch(new RegExp(`^health: ${action.source.slice(1)} \\(attempt 1\\) because `));
    expect((await controller.executeCommand(inst.id, 'cat survives.txt')).stdout).toBe('kept\n');

    const persisted = JSON.parse(await readFile(path.join(stateDir, 'health', `${inst.id}.json`), 'utf8'));
    expect(persisted.history.map((c: { status: string }) => c.status).slice(-2)).toEqual(['unhealthy', 'healthy']);
  });

  it('gives up loudly after the maximum attempts, marking the instance failed with why', async () => {
    const inst = await make('doomed');
    // Make it unrepairable: its recorded image no longer exists, and its container is gone.
    await controller.registry.update(inst.id, (r) => ({ ...r, config: { ...r.config, image: 'vscode-swarm/removed-image:0' } }));
    await (await containerOf(`${PREFIX}-doomed`)).remove({ force: true });

    const actions: (string | undefined)[] = [];
    for (let i = 0; i < 6; i++) actions.push((await health.checkAndRecover(inst.id)).action);
    expect(actions.filter((a) => a?.startsWith('recreate: failed')).length).toBe(2);
    expect(actions).toContain('gave up');
    const record = controller.registry.get(inst.id)!;
    expect(record.status).toBe('failed');
    expect(record.statusReason).toMatch(/^health: gave up after 2 recovery attempts; last finding: missing/);
    expect(record.health).toBe('unhealthy');
    // A sweep leaves it alone from now on.
    expect((await health.sweep()).map((c) => c.reason).join()).not.toMatch(/missing/);
  });
});
