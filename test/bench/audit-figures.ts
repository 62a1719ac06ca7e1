/**
 * The audit log's durable throughput: `AuditLog.record` with N concurrent recorders (group commit: one
 * write and one fsync per batch) beside the naive durable log, a loop of appendFile + fsync per event,
 * measured in the same runs, alternated, on the same disk. A loop of appendFile without fsync is reported
 * beside it for reference (what durability costs at all). Each run writes to a fresh folder.
 */
import { randomUUID } from 'node:crypto';
import { mkdtemp, open, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { AuditConfigSchema, AuditLog, type AuditEventInput } from '../../src/audit/audit-log.js';
import { figure, percentile, spread, type Figure } from './figures.js';

export interface AuditFiguresOptions {
  events: number;
  concurrency: number;
  /** Alternated runs of each; default 3. */
  runs?: number;
  /** Where the runs write (a real disk: fsync on tmpfs proves nothing); default the OS temp folder. */
  dir?: string;
}

interface Run {
  rate: number;
  writes?: number;
  fsyncs?: number;
  p50?: number;
  p99?: number;
}

const INPUT: AuditEventInput = {
  type: 'dev.vscode-swarm.instance.create',
  action: 'create_swarm_instance',
  actor: { type: 'principal', id: 'alice', credentialId: 'tok-1', door: 'mcp-http' },
  outcome: 'ok',
  subject: 'alice-1',
  owner: 'alice',
  request: { name: 'alice-1', image: 'codercom/code-server:latest', env: { GITHUB_TOKEN: 'x' } },
};

/** The same line the log would write, built per event as the log does. */
function naiveLine(): string {
  return `${JSON.stringify({ specversion: '1.0', id: randomUUID(), source: 'urn:vscode-swarm', time: new Date().toISOString(), datacontenttype: 'application/json', ...INPUT })}\n`;
}

async function ours(root: string, events: number, concurrency: number): Promise<Run> {
  const log = new AuditLog({ dir: await mkdtemp(path.join(root, 'ours-')), config: AuditConfigSchema.parse({}) });
  await log.open();
  const latencies: number[] = [];
  let next = 0;
  const recorder = async (): Promise<void> => {
    while (next < events) {
      next++;
      const start = performance.now();
      await log.record(INPUT);
      latencies.push(performance.now() - start);
    }
  };
  const start = performance.now();
  await Promise.all(Array.from({ length: concurrency }, recorder));
  const seconds = (performance.now() - start) / 1000;
  const { writes, fsyncs } = log.stats();
  await log.close();
  latencies.sort((a, b) => a - b);
  return { rate: events / seconds, writes, fsyncs, p50: percentile(latencies, 0.5), p99: percentile(latencies, 0.99) };
}

async function naive(root: string, events: number, fsync: boolean): Promise<Run> {
  const handle = await open(path.join(await mkdtemp(path.join(root, fsync ? 'fsync-' : 'nofsync-')), 'events.jsonl'), 'a', 0o600);
  try {
    const start = performance.now();
    for (let i = 0; i < events; i++) {
      await handle.appendFile(naiveLine());
      if (fsync) await handle.sync();
    }
    return { rate: events / ((performance.now() - start) / 1000) };
  } finally {
    await handle.close();
  }
}

export async function auditFigures(opts: AuditFiguresOptions): Promise<Figure[]> {
  const runs = opts.runs ?? 3;
  const root = await mkdtemp(path.join(opts.dir ?? os.tmpdir(), 'vscode-swarm-audit-bench-'));
  const a: Run[] = [];
  const b: Run[] = [];
  const c: Run[] = [];
  try {
    for (let run = 0; run < runs; run++) {
      // Alternate who goes first, so that a noisy machine moves both.
      if (run % 2 === 0) {
        a.push(await ours(root, opts.events, opts.concurrency));
        b.push(await naive(root, opts.events, true));
      } else {
        b.push(await naive(root, opts.events, true));
        a.push(await ours(root, opts.events, opts.concurrency));
      }
      c.push(await naive(root, opts.events, false));
    }
  } finally {
    await rm(root, { recursive: true, force: true });
  }
  const rates = a.map((r) => r.rate);
  const mid = [...a].sort((x, y) => x.rate - y.rate)[Math.floor(a.length / 2)]!;
  const durable = figure(`audit record, durable events/s (${opts.concurrency} concurrent recorders)`, rates, 'loop of appendFile + fsync per event', b.map((r) => r.rate), 'req/s');
  const reference = figure(`audit record, durable events/s (${opts.concurrency} concurrent) vs no durability (reference)`, rates, 'loop of appendFile, no fsync', c.map((r) => r.rate), 'req/s');
  durable.spread = reference.spread = spread(rates);
  durable.baselineSpread = spread(b.map((r) => r.rate));
  reference.baselineSpread = spread(c.map((r) => r.rate));
  durable.detail = `${opts.events} events a run; median run: ${mid.writes} writes, ${mid.fsyncs} fsyncs, record latency p50 ${mid.p50!.toFixed(2)} ms, p99 ${mid.p99!.toFixed(2)} ms`;
  reference.detail = 'reference only, no goal: the share of a non-durable append rate that durable, group-committed records reach';
  // Group commit pays off with concurrency; a lone recorder should merely not lose to the loop by much.
  const goal = opts.concurrency >= 8 ? 5 : 0.8;
  durable.goal = `events/s ≥ ${goal}x the fsync-per-event loop`;
  durable.meetsGoal = durable.ratio >= goal;
  return [durable, reference];
}
