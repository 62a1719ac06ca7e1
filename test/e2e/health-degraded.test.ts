/**
 * The health monitor's "degraded" findings on the real engine, with the light stand-in editor: an editor
 * whose /healthz answers slower than `slowMs`, and a workspace whose memory sits above
 * `memoryDegradedRatio` of its limit (read through the real `docker stats` path of the Docker provider).
 * Degraded is reported with what is wrong, repairs nothing, and turns back to healthy once the cause goes.
 *
 * Slow: the editor process (the container's init, busybox httpd) is frozen from the host with SIGSTOP;
 * the monitor's /healthz request is taken in by the kernel and waits unread. Once the container's network
 * namespace shows it waiting (so the hold is measured from the request, not guessed), the process is held
 * for HOLD_MS more and resumed, and the answer comes HOLD_MS late.
 * Memory: a process inside the 256 MiB container fills a 224 MiB buffer and holds it.
 */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createSwarm } from '../../src/controller/create-swarm.js';
import type { SwarmController } from '../../src/controller/swarm-controller.js';
import { HealthMonitor, type HealthCheck } from '../../src/health/health-monitor.js';
import { waitUntil } from '../../src/timing/wait-until.js';
import { cleanUp, containersNamed, docker, makeStateDir, testConfig } from '../helpers/docker.js';
import { ensureStandinImage } from '../helpers/standin-image.js';

const PREFIX = 'e2e-hdeg';
const SLOW_MS = 1_000;
/** How long the editor stays frozen once the probe's connection is queued: well past SLOW_MS, well within the timeout. */
const HOLD_MS = 2_500;
const TIMEOUT_MS = 10_000;
const MEMORY_RATIO = 0.8;
const LIMIT_MB = 256;
const HOG_MB = 224; // 87.5% of the limit before anything else in the container counts

async function containerOf(name: string) {
  const [info] = await containersNamed(name);
  if (!info) throw new Error(`no container for ${name}`);
  return docker.getContainer(info.Id);
}

/** Starts a command inside the container and returns without waiting for it (it may run for long). */
async function startIn(name: string, command: string): Promise<void> {
  const exec = await (await containerOf(name)).exec({ Cmd: ['sh', '-c', command] });
  await exec.start({ Detach: true });
}

/**
 * Whether a request is waiting, unread, at the editor's port inside the container: a socket on :8080 in
 * the container's network namespace (read through its init's /proc) with bytes in its receive queue, or
 * a listening socket with a connection in its accept queue. Seen from the server's side, this holds for
 * a new connection and for a kept-alive one alike (the client side cannot tell a reused socket's new
 * request from an idle one).
 */
async function requestWaitingAtEditor(initPid: number): Promise<boolean> {
  const tables = await Promise.all(['tcp', 'tcp6'].map((t) => readFile(`/proc/${initPid}/net/${t}`, 'utf8').catch(() => '')));
  return tables
    .flatMap((table) => table.split('\n').slice(1))
    .map((line) => line.trim().split(/\s+/))
    .some((cols) => cols[1]?.endsWith(':1F90') && Number.parseInt(cols[4]?.split(':')[1] ?? '0', 16) > 0);
}

/** The process state letter from /proc/<pid>/stat: 'T' once a SIGSTOP has taken effect. */
async function processState(pid: number): Promise<string> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
  return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0]!;
}

/** Host pids of every process in the container (the editor and any child still finishing a request). */
async function processesOf(name: string): Promise<number[]> {
  const top = await (await containerOf(name)).top({ ps_args: '-o pid' });
  return top.Processes.map((row: string[]) => Number(row[0]));
}

/** Sends a signal to processes that may have ended meanwhile. */
function signal(pids: number[], sig: NodeJS.Signals): void {
  for (const pid of pids) {
    try {
      process.kill(pid, sig);
    } catch {
      // ESRCH: gone (a child that finished its request, or a container a repair replaced)
    }
  }
}

describe('health monitor: degraded, not unhealthy', () => {
  let stateDir: string;
  let controller: SwarmController;
  let health: HealthMonitor;

  beforeAll(async () => {
    await cleanUp(PREFIX);
    const standin = await ensureStandinImage();
    stateDir = await makeStateDir(PREFIX);
    const config = testConfig(stateDir, {
      idle: { enabled: false },
      providers: { docker: { image: standin } },
      // autoRecover on (the default): a degraded instance must still not be touched.
      health: { autoRecover: true, slowMs: SLOW_MS, timeoutMs: TIMEOUT_MS, memoryDegradedRatio: MEMORY_RATIO, failureThreshold: 2, backoffMs: 0, intervalMs: 3_600_000 },
    });
    expect(config.health.autoRecover).toBe(true);
    controller = createSwarm(config);
    await controller.initialize();
    health = new HealthMonitor({ controller, stateDir, config: config.health });
  });
  afterAll(async () => {
    await health?.stop();
    await controller?.close();
    await cleanUp(PREFIX, stateDir);
  });

  const make = async (suffix: string) =>
    (await controller.createInstance({ name: `${PREFIX}-${suffix}`, resources: { cpu: 0.5, memoryMb: LIMIT_MB } })).instance;

  /** The first check: healthy (waited for, since a loaded machine may make one answer slow). */
  const healthyNow = (id: string): Promise<HealthCheck> =>
    waitUntil(async () => {
      const c = await health.checkAndRecover(id);
      return c.status === 'healthy' ? c : undefined;
    }, { timeoutMs: 30_000, intervalMs: 200, what: `${id} healthy` });

  /** What must not change while an instance is only degraded: same container, not restarted, still running. */
  const fingerprint = async (name: string) => {
    const { Id, State, RestartCount } = await (await containerOf(name)).inspect();
    return { Id, StartedAt: State.StartedAt, Running: State.Running, RestartCount };
  };

  /** The persisted history: degraded somewhere, healthy at the end, never unhealthy nor a repair in between. */
  const expectPersistedHistory = async (id: string): Promise<void> => {
    const { history } = JSON.parse(await readFile(path.join(stateDir, 'health', `${id}.json`), 'utf8')) as { history: HealthCheck[] };
    const statuses = history.map((c) => c.status);
    expect(statuses).toContain('degraded');
    expect(statuses.at(-1)).toBe('healthy');
    expect(statuses.filter((s) => s !== 'healthy' && s !== 'degraded')).toEqual([]);
    expect(history.filter((c) => c.action !== undefined)).toEqual([]);
  };

  it(`an editor answering /healthz slower than slowMs is degraded, naming the latency; nothing is repaired`, async () => {
    const inst = await make('slow');
    const name = `${PREFIX}-slow`;
    expect(await healthyNow(inst.id)).toMatchObject({ checks: { connectivity: 'pass' } });
    const before = await fingerprint(name);
    const pids = await processesOf(name);
    const initPid = (await (await containerOf(name)).inspect()).State.Pid;
    expect(pids).toContain(initPid);
    expect(await requestWaitingAtEditor(initPid)).toBe(false);

    signal(pids, 'SIGSTOP');
    let check: HealthCheck;
    try {
      // A signal takes effect when its process next runs (it may be waiting for its CPU quota): only once
      // every process of the container is stopped can no request be answered. A stopped editor forks nothing new.
      await waitUntil(
        async () => ((await Promise.all(pids.map((p) => processState(p).catch(() => 'gone')))).every((s) => s === 'T' || s === 'gone') ? true : undefined),
        { timeoutMs: 10_000, intervalMs: 10, what: 'every process of the editor stopped' },
      );
      let settled: string | undefined;
      const checking = health.checkAndRecover(inst.id);
      checking.then(
        (c) => void (settled = JSON.stringify(c)),
        (err: Error) => void (settled = err.message),
      );
      await waitUntil(
        async () => {
          if (settled) throw new Error(`the check finished before its /healthz request was seen queued at the frozen editor: ${settled}`);
          return (await requestWaitingAtEditor(initPid)) ? true : undefined;
        },
        { timeoutMs: 30_000, intervalMs: 20, what: "the monitor's /healthz request queued at the frozen editor" },
      );
      await sleep(HOLD_MS);
      signal(pids, 'SIGCONT');
      check = await checking;
    } finally {
      signal(pids, 'SIGCONT'); // harmless when resumed already
    }

    expect(check.status).toBe('degraded');
    expect(check.reason).toMatch(/^connectivity: \/healthz took \d+ ms$/);
    const took = Number(/took (\d+) ms/.exec(check.reason)![1]);
    expect(took).toBeGreaterThanOrEqual(HOLD_MS);
    expect(check.latencyMs).toBe(took);
    expect(check.checks).toEqual({ provider: 'pass', status: 'pass', connectivity: 'pass', resources: 'pass' });
    expect(check.action).toBeUndefined();
    expect(controller.registry.get(inst.id)).toMatchObject({ status: 'running', health: 'degraded', healthReason: check.reason });
    expect(await fingerprint(name)).toEqual(before);

    // The cause gone (the editor answers at once again): healthy, with a pass on every check.
    const after = await healthyNow(inst.id);
    expect(after).toMatchObject({ reason: 'all checks passed', checks: { provider: 'pass', status: 'pass', connectivity: 'pass', resources: 'pass' } });
    expect(after.latencyMs).toBeLessThanOrEqual(SLOW_MS);
    expect(after.action).toBeUndefined();
    expect(controller.registry.get(inst.id)).toMatchObject({ status: 'running', health: 'healthy' });
    expect(await fingerprint(name)).toEqual(before);
    await expectPersistedHistory(inst.id);
  });

  it('memory above memoryDegradedRatio of the limit is degraded with resources failing; nothing is repaired', async () => {
    const inst = await make('mem');
    const name = `${PREFIX}-mem`;
    const provider = await controller.providerOf(inst.id);
    const first = await healthyNow(inst.id);
    expect(first).toMatchObject({ checks: { resources: 'pass' } });
    expect(first.memoryRatio).toBeLessThan(MEMORY_RATIO);
    const before = await fingerprint(name);

    // dd fills one 224 MiB buffer from /dev/zero, then blocks writing it into a pipe nobody reads: it holds it.
    await startIn(name, `dd if=/dev/zero bs=${HOG_MB}M count=1 2>/dev/null | sleep 3600`);
    const stats = await waitUntil(async () => {
      const s = await provider.getInstanceStats!(inst.id);
      return s.memoryBytes / s.memoryLimitBytes > MEMORY_RATIO ? s : undefined;
    }, { timeoutMs: 60_000, intervalMs: 250, what: `memory above ${MEMORY_RATIO * 100}% of the limit` });
    expect(stats.memoryLimitBytes).toBe(LIMIT_MB * 2 ** 20);

    const check = await health.checkAndRecover(inst.id);
    expect(check.status).toBe('degraded');
    expect(check.reason).toMatch(/^resources: memory at \d+% of its limit$/);
    const percent = Number(/at (\d+)%/.exec(check.reason)![1]);
    expect(percent).toBeGreaterThan(MEMORY_RATIO * 100);
    expect(percent).toBeLessThanOrEqual(100);
    expect(check.memoryRatio).toBeGreaterThan(MEMORY_RATIO);
    expect(check.checks).toEqual({ provider: 'pass', status: 'pass', connectivity: 'pass', resources: 'fail' });
    expect(check.action).toBeUndefined();
    expect(controller.registry.get(inst.id)).toMatchObject({ status: 'running', health: 'degraded', healthReason: check.reason });

    // The scheduled path too: a sweep (with autoRecover on) reports it degraded and repairs nothing.
    const swept = (await health.sweep()).find((c) => c.instanceId === inst.id);
    expect(swept).toMatchObject({ status: 'degraded', reason: expect.stringMatching(/^resources: memory at/), checks: { resources: 'fail' } });
    expect(swept!.action).toBeUndefined();
    expect(await fingerprint(name)).toEqual(before);
    expect((await health.history(inst.id)).recoveryAttempts).toBe(0);

    // The cause gone (the process ended, its memory freed): healthy again.
    await startIn(name, 'killall dd sleep');
    const after = await healthyNow(inst.id);
    expect(after).toMatchObject({ reason: 'all checks passed', checks: { provider: 'pass', status: 'pass', connectivity: 'pass', resources: 'pass' } });
    expect(after.memoryRatio).toBeLessThanOrEqual(MEMORY_RATIO);
    expect(controller.registry.get(inst.id)).toMatchObject({ status: 'running', health: 'healthy' });
    expect(await fingerprint(name)).toEqual(before);
    await expectPersistedHistory(inst.id);
  });
});
