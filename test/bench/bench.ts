/**
 * npm run bench [-- --json] [-- --runs N] [-- --instances N]
 *
 * Each figure is measured beside a baseline in the same run, so that a noisy shared machine moves both:
 *   - registry load of N instance files: InstanceRegistry.load() vs a bare readdir + readFile + JSON.parse;
 *   - registry list over them: list() vs a bare filter over an array of the same records;
 *   - Docker create-to-running: SwarmController.createInstance (editor answering /healthz) vs a raw
 *     `docker run` of the same image polled until /healthz answers, alternated run by run.
 * Medians and ratios are printed as a table or, with --json, as JSON; the JSON is also kept in
 * test-artifacts/bench.json.
 */
import { execFile } from 'node:child_process';
import { mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { parseArgs, promisify } from 'node:util';
import { DEFAULT_NETWORK } from '../../providers/docker/docker-provider.js';
import type { VSCodeInstance } from '../../providers/provider.js';
import { createSwarm } from '../../src/controller/create-swarm.js';
import { InstanceRegistry } from '../../src/registry/instance-registry.js';
import { waitUntil } from '../../src/timing/wait-until.js';
import { TEST_IMAGE, cleanUp, httpStatus, makeStateDir, testConfig } from '../helpers/docker.js';

const run = promisify(execFile);

interface Figure {
  name: string;
  unit: 'ms';
  runs: number;
  median: number;
  baselineName: string;
  baselineMedian: number;
  /** median / baselineMedian: how many times the baseline's cost ours is. */
  ratio: number;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: { json: { type: 'boolean' }, runs: { type: 'string' }, instances: { type: 'string' }, 'skip-docker': { type: 'boolean' } },
  });
  const runs = Number(values.runs ?? 5);
  const count = Number(values.instances ?? 10_000);
  const figures: Figure[] = [];

  figures.push(...(await registryFigures(count, runs)));
  if (!values['skip-docker']) figures.push(await dockerFigure(runs));

  const table = [
    ['figure', 'runs', 'median ms', 'baseline', 'baseline ms', 'ratio'],
    ...figures.map((f) => [f.name, String(f.runs), f.median.toFixed(2), f.baselineName, f.baselineMedian.toFixed(2), `${f.ratio.toFixed(2)}x`]),
  ];
  const widths = table[0]!.map((_, c) => Math.max(...table.map((row) => row[c]!.length)));
  const lines = table.map((row) => row.map((cell, c) => cell.padEnd(widths[c]!)).join('  '));
  lines.splice(1, 0, widths.map((w) => '-'.repeat(w)).join('  '));
  const machine = { measuredAt: new Date().toISOString(), cpus: os.availableParallelism(), memoryGiB: Math.round(os.totalmem() / 2 ** 30), node: process.version, image: TEST_IMAGE };
  await mkdir('test-artifacts', { recursive: true });
  await writeFile('test-artifacts/bench.json', `${JSON.stringify({ machine, figures }, null, 2)}\n`);
  if (values.json) {
    process.stdout.write(`${JSON.stringify({ machine, figures }, null, 2)}\n`);
  } else {
    process.stdout.write(`${lines.join('\n')}\n\nmachine: ${JSON.stringify(machine)}\n`);
  }
}

async function registryFigures(count: number, runs: number): Promise<Figure[]> {
  const stateDir = await makeStateDir('bench-registry');
  try {
    const dir = path.join(stateDir, 'instances');
    await mkdir(dir, { recursive: true });
    const at = new Date().toISOString();
    const statuses = ['running', 'stopped', 'failed'] as const;
    for (let start = 0; start < count; start += 500) {
      await Promise.all(
        Array.from({ length: Math.min(500, count - start) }, (_, k) => {
          const n = start + k;
          const id = `bench-${n.toString(36)}`;
          const record: VSCodeInstance = {
            id, name: id, providerType: 'docker', status: statuses[n % 3]!, health: 'unknown',
            config: { name: id, image: 'codercom/code-server:4.99.3', resources: { cpu: 1, memoryMb: 2048 }, metadata: { owner: `user-${n % 97}` } },
            endpoint: { url: `http://127.0.0.1:${20000 + (n % 40000)}`, host: '127.0.0.1', port: 20000 + (n % 40000) },
            providerRef: { containerId: n.toString(16).padStart(64, '0'), volume: `vscode-swarm-${id}-workspace` },
            createdAt: at, updatedAt: at,
          };
          return writeFile(path.join(dir, `${id}.json`), JSON.stringify(record, null, 2));
        }),
      );
    }

    const loadOurs: number[] = [];
    const loadBase: number[] = [];
    let registry!: InstanceRegistry;
    let plain: VSCodeInstance[] = [];
    for (let r = 0; r < runs; r++) {
      loadBase.push(await time(async () => {
        const names = await readdir(dir);
        plain = [];
        for (let i = 0; i < names.length; i += 64) {
          plain.push(...(await Promise.all(names.slice(i, i + 64).map(async (n) => JSON.parse(await readFile(path.join(dir, n), 'utf8')) as VSCodeInstance))));
        }
      }));
      loadOurs.push(await time(async () => {
        registry = new InstanceRegistry({ stateDir });
        const report = await registry.load();
        if (report.loaded !== count) throw new Error(`loaded ${report.loaded} of ${count}`);
      }));
    }

    const listOurs: number[] = [];
    const listBase: number[] = [];
    for (let r = 0; r < runs * 4; r++) {
      listBase.push(await time(async () => void plain.filter((i) => i.providerType === 'docker' && i.status === 'running')));
      listOurs.push(await time(async () => void registry.list({ providerType: 'docker', status: 'running' })));
    }
    return [
      figure(`registry load (${count} files)`, loadOurs, 'readdir+readFile+JSON.parse', loadBase),
      figure(`registry list (${count}, filtered)`, listOurs, 'Array.filter', listBase),
    ];
  } finally {
    await rm(stateDir, { recursive: true, force: true });
  }
}

async function dockerFigure(runs: number): Promise<Figure> {
  const prefix = 'bench-docker';
  await cleanUp(prefix);
  const stateDir = await makeStateDir(prefix);
  const controller = createSwarm(testConfig(stateDir));
  await controller.initialize();
  const ours: number[] = [];
  const raw: number[] = [];
  try {
    for (let r = 0; r < runs; r++) {
      raw.push(await rawDockerRun());
      let id = '';
      ours.push(await time(async () => {
        id = (await controller.createInstance({ name: `${prefix}-${r}` })).instance.id;
      }));
      await controller.deleteInstance(id);
    }
  } finally {
    await controller.close();
    await cleanUp(prefix, stateDir);
  }
  return figure('docker create-to-running', ours, 'raw docker run to /healthz 200', raw);
}

/** `docker run` of the same image with the same arguments, until /healthz answers; removal not timed. */
async function rawDockerRun(): Promise<number> {
  let container = '';
  const ms = await time(async () => {
    const { stdout } = await run('docker', ['run', '-d', '--network', DEFAULT_NETWORK, TEST_IMAGE, '--auth', 'none', '--disable-telemetry', '/home/coder/project']);
    container = stdout.trim();
    const { stdout: ip } = await run('docker', ['inspect', '-f', `{{(index .NetworkSettings.Networks "${DEFAULT_NETWORK}").IPAddress}}`, container]);
    const url = `http://${ip.trim()}:8080/healthz`;
    await waitUntil(async () => ((await httpStatus(url)) === 200 ? true : undefined), { timeoutMs: 60_000, intervalMs: 50, what: 'raw docker run' });
  });
  await run('docker', ['rm', '-f', container]);
  return ms;
}

async function time(fn: () => Promise<void>): Promise<number> {
  const start = performance.now();
  await fn();
  return performance.now() - start;
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

function figure(name: string, ours: number[], baselineName: string, baseline: number[]): Figure {
  const m = median(ours);
  const b = median(baseline);
  return { name, unit: 'ms', runs: ours.length, median: m, baselineName, baselineMedian: b, ratio: m / b };
}

main().catch((err: unknown) => {
  process.stderr.write(`bench failed: ${err instanceof Error ? err.stack : String(err)}\n`);
  process.exitCode = 1;
});
