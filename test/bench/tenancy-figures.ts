/**
 * What tenancy costs, each beside a baseline doing the same work in the same run:
 *   - an MCP read tool call as a member principal (createMcpServer: AuthorizedSwarm, one audit event per
 *     call, made durable by the next group commit: a read's reply does not wait for the fsync, a change's
 *     does) vs an McpServer with the same tool, schema and output calling the controller directly;
 *     the same server with the audit log turned off (events still built, not written) is measured in the
 *     same rounds, so the figure splits into what authorization costs and what the fsync'ed write costs;
 *   - the audit log's durable append throughput (test/bench/audit-figures.ts, wired in here);
 *   - the gateway's sign-in failure bookkeeping (FailureLimiter: retryAfter, then fail) for an address
 *     it has not seen yet, with 100,000 addresses already tracked vs 10: the insert path, beside the
 *     bench's existing limiter figure, which measures addresses already in the table.
 * No Docker: the controller has no providers, and the instance the tool reads is a registry record.
 */
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { InMemoryTransport } from '@modelcontextprotocol/sdk/inMemory.js';
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { readFile, realpath, rm } from 'node:fs/promises';
import os from 'node:os';
import type { VSCodeInstance } from '../../providers/provider.js';
import { SwarmController } from '../../src/controller/swarm-controller.js';
import { FailureLimiter } from '../../src/gateway/failure-limiter.js';
import { createMcpServer } from '../../src/mcp/server.js';
import { InstanceOutputSchema, describeInstance, instanceIdInput } from '../../src/mcp/tool-support.js';
import { InstanceRegistry } from '../../src/registry/instance-registry.js';
import { Authenticator } from '../../src/tenancy/authenticate.js';
import type { PrincipalActor } from '../../src/tenancy/identity.js';
import { PACKAGE_VERSION } from '../../src/version.js';
import { makeStateDir, testConfig, TEST_IMAGE } from '../helpers/docker.js';
import { auditFigures } from './audit-figures.js';
import { figure, median, percentile, spread, type Figure } from './figures.js';

/** Figure names (their fixed part), for the bench's --only filter. */
export const TENANCY_FIG = {
  mcp: 'MCP read tool call with authorization + audit',
  mcpNoAudit: 'MCP tool call with authorization, audit off',
  audit: 'audit record, durable events/s',
  limiterFresh: 'gateway sign-in-failure handling, fresh address',
} as const;

const TOOL = 'get_swarm_instance';
const MEMBER = 'bench-member';

// ---- MCP tool call: authorization and audit vs direct ----

interface McpSide {
  label: string;
  client: Client;
  close: () => Promise<void>;
  /** Every timed call, ms. */
  calls: number[];
  /** The median of each round, ms. */
  roundMedians: number[];
}

/** A controller without providers on its own state folder, with a member principal owning one registry record. */
async function memberRig(label: string, auditEnabled: boolean): Promise<{ controller: SwarmController; actor: PrincipalActor; instanceId: string; stateDir: string }> {
  const stateDir = await makeStateDir(label);
  const config = testConfig(stateDir, { audit: { enabled: auditEnabled }, idle: { enabled: false }, health: { enabled: false } });
  const registry = new InstanceRegistry({ stateDir });
  const controller = new SwarmController({ config, registry, providers: {}, lockStateDir: false });
  await controller.initialize();
  await controller.principals.addPrincipal({ id: MEMBER, role: 'member' });
  const { token } = await controller.principals.createToken({ principalId: MEMBER, name: 'bench' });
  const actor = await new Authenticator(controller.principals).authenticate(token, 'mcp-http');
  const id = `${MEMBER}-ws`;
  const at = new Date().toISOString();
  const record: VSCodeInstance = {
    id, name: id, providerType: 'docker', status: 'running', health: 'healthy', owner: MEMBER,
    config: { name: id, image: TEST_IMAGE, resources: { cpu: 1, memoryMb: 2048 } },
    endpoint: { url: 'http://127.0.0.1:9', host: '127.0.0.1', port: 9 },
    providerRef: {}, createdAt: at, updatedAt: at,
  };
  await registry.register(record);
  return { controller, actor, instanceId: id, stateDir };
}

/** The baseline: the same tool name, input schema and output, straight to the controller (no AuthorizedSwarm, no audit). */
function directServer(controller: SwarmController): McpServer {
  const server = new McpServer({ name: 'vscode-swarm-direct', version: PACKAGE_VERSION });
  server.registerTool(
    TOOL,
    {
      title: 'Get a workspace',
      description: 'Shows one workspace as its provider sees it now: status and why, endpoint, resources, image.',
      inputSchema: { instanceId: instanceIdInput },
      outputSchema: { instance: InstanceOutputSchema },
      annotations: { readOnlyHint: true, openWorldHint: false },
    },
    async ({ instanceId }) => {
      const instance = await controller.getInstance(instanceId);
      return { content: [{ type: 'text', text: describeInstance(instance) }], structuredContent: { instance } };
    },
  );
  return server;
}

/** A v1 server (directServer) or the v2 one (createMcpServer): both take an in-memory transport. */
async function connect(label: string, server: { connect(transport: InMemoryTransport): Promise<void>; close(): Promise<void> }): Promise<McpSide> {
  const [clientSide, serverSide] = InMemoryTransport.createLinkedPair();
  await server.connect(serverSide);
  const client = new Client({ name: `bench-${label}`, version: '1.0.0' });
  await client.connect(clientSide);
  await client.listTools(); // both clients validate structured output against the listed schema
  return { label, client, close: () => client.close().then(() => server.close()), calls: [], roundMedians: [] };
}

async function callTimed(side: McpSide, instanceId: string): Promise<number> {
  const start = performance.now();
  const result = await side.client.callTool({ name: TOOL, arguments: { instanceId } });
  const ms = performance.now() - start;
  if (result.isError || (result.structuredContent as { instance?: { id?: string } } | undefined)?.instance?.id !== instanceId) {
    throw new Error(`${side.label}: ${TOOL} did not return ${instanceId}: ${JSON.stringify(result.content).slice(0, 300)}`);
  }
  return ms;
}

/** "ext4 on /dev/vda": the file system and device that hold a folder, from /proc/mounts (Linux). */
export async function diskOf(dir: string): Promise<string> {
  try {
    const real = await realpath(dir);
    let best: { point: string; device: string; type: string } | undefined;
    for (const line of (await readFile('/proc/mounts', 'utf8')).split('\n')) {
      const [device, rawPoint, type] = line.split(' ');
      if (!device || !rawPoint || !type) continue;
      const point = rawPoint.replace(/\\040/g, ' ');
      const inside = real === point || real.startsWith(point.endsWith('/') ? point : `${point}/`);
      if (inside && (!best || point.length >= best.point.length)) best = { point, device, type };
    }
    return best ? `${best.type} on ${best.device}` : 'unknown disk';
  } catch {
    return 'unknown disk (no /proc/mounts)';
  }
}

/**
 * `rounds` rounds of `perRound` sequential calls on each side, the order rotated each round, after an
 * untimed warm-up. Each call through createMcpServer records one audit event (a read does not wait for its fsync).
 */
export async function mcpAuthorizationFigures(rounds: number, perRound = 200): Promise<Figure[]> {
  const rigs: Awaited<ReturnType<typeof memberRig>>[] = [];
  const sides: McpSide[] = [];
  try {
    const audited = await memberRig('bench-tenancy-audit', true);
    rigs.push(audited);
    const unaudited = await memberRig('bench-tenancy-noaudit', false);
    rigs.push(unaudited);
    const direct = await connect('direct', directServer(audited.controller));
    sides.push(direct);
    const withAudit = await connect('authorized', createMcpServer({ controller: audited.controller, actor: audited.actor }).server);
    sides.push(withAudit);
    const noAudit = await connect('authorized-no-audit', createMcpServer({ controller: unaudited.controller, actor: unaudited.actor }).server);
    sides.push(noAudit);
    const instanceOf = (side: McpSide): string => (side === noAudit ? unaudited.instanceId : audited.instanceId);

    const warmUp = Math.max(50, perRound >> 1);
    for (const side of sides) for (let i = 0; i < warmUp; i++) await callTimed(side, instanceOf(side));
    await audited.controller.audit.query({ limit: 1 }); // the warm-up's events written before counting
    const before = audited.controller.audit.stats();
    for (let r = 0; r < rounds; r++) {
      const order = [...sides.slice(r % sides.length), ...sides.slice(0, r % sides.length)];
      for (const side of order) {
        const round: number[] = [];
        for (let i = 0; i < perRound; i++) round.push(await callTimed(side, instanceOf(side)));
        side.calls.push(...round);
        side.roundMedians.push(median(round));
      }
    }
    await audited.controller.audit.query({ limit: 1 }); // waits for the last group commit
    const after = audited.controller.audit.stats();
    const events = after.events - before.events;
    const fsyncs = after.fsyncs - before.fsyncs;
    if (events !== rounds * perRound) throw new Error(`expected ${rounds * perRound} audit events from the timed calls, got ${events}`);
    if (unaudited.controller.audit.stats().events !== 0) throw new Error('the audit-off controller recorded audit events');

    const disk = `${os.tmpdir()}: ${await diskOf(audited.stateDir)}`;
    const p90 = (calls: number[]): number => percentile([...calls].sort((a, b) => a - b), 0.9);
    const pair = (name: string, ours: McpSide, goal: boolean, note: string): Figure => {
      const f = figure(name, ours.calls, `McpServer, same tool/schema/output, controller called directly`, direct.calls);
      const added = f.median - f.baselineMedian;
      const oursP90 = p90(ours.calls);
      const baseP90 = p90(direct.calls);
      return {
        ...f,
        ...(goal ? { goal: 'ratio ≤ 1.1 and < 1 ms added at p50', meetsGoal: f.ratio <= 1.1 && added < 1 } : {}),
        p50: f.median,
        baselineP50: f.baselineMedian,
        added,
        spread: spread(ours.roundMedians),
        baselineSpread: spread(direct.roundMedians),
        detail:
          `${TOOL} as a member (${ours.calls.length} calls each, ${rounds} rounds of ${perRound}, alternated); ` +
          `p50 ${f.median.toFixed(3)} vs ${f.baselineMedian.toFixed(3)} ms (added ${added.toFixed(3)} ms), ` +
          `p90 ${oursP90.toFixed(3)} vs ${baseP90.toFixed(3)} ms (ratio ${(oursP90 / baseP90).toFixed(2)}x); ` +
          `round p50s ${spread(ours.roundMedians).map((v) => v.toFixed(3)).join('–')} vs ${spread(direct.roundMedians).map((v) => v.toFixed(3)).join('–')} ms; ${note}`,
      };
    };
    return [
      pair(`${TENANCY_FIG.mcp} vs direct (audit on ${disk})`, withAudit, true, `${events} audit events, ${fsyncs} fsyncs in the timed calls (group commits; replies to reads do not wait for them)`),
      pair(`${TENANCY_FIG.mcpNoAudit} vs direct`, noAudit, false, 'audit.enabled false (the event is still built, not written): what authorization adds without the fsync (no goal; splits the figure above)'),
    ];
  } finally {
    for (const side of sides) await side.close().catch(() => undefined);
    for (const rig of rigs) {
      await rig.controller.close().catch(() => undefined);
      await rm(rig.stateDir, { recursive: true, force: true });
    }
  }
}

// ---- audit append throughput ----

/** The audit log's figures (test/bench/audit-figures.ts): many concurrent recorders (group commit) and a lone one. */
export async function auditThroughputFigures(runs: number): Promise<Figure[]> {
  const disk = `${os.tmpdir()}: ${await diskOf(os.tmpdir())}`;
  const figures = [...(await auditFigures({ events: 2_000, concurrency: 16, runs })), ...(await auditFigures({ events: 300, concurrency: 1, runs }))];
  // Their names carry the events/s; the disk they were measured on belongs beside them too.
  return figures.map((f) => ({ ...f, detail: `${f.detail ?? ''}; on ${disk}`.replace(/^; /, '') }));
}

// ---- failure limiter: a fresh address at 10 vs 100,000 tracked ----

/** Distinct addresses, a quarter of them IPv6 (counted per /64), from a namespace (first octet / second group). */
function addresses(n: number, space: number): string[] {
  return Array.from({ length: n }, (_, i) =>
    i % 4 === 3 ? `2001:db8:${space.toString(16)}${(i >> 16).toString(16)}:${(i & 0xffff).toString(16)}::${i % 7}` : `${space}.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`,
  );
}

/**
 * One limiter built once with 100,000 addresses (room for everything, so nothing is evicted), and for
 * each run a new one with 10. A run is `perRun` addresses neither has seen, each handled as a failed
 * sign-in is (retryAfter, then fail: a lookup miss and an insert); every run brings its own never-seen
 * addresses, so the large table grows by `runs x perRun` over the figure (kept below the size at which
 * V8 would grow the Map's storage, so no run pays for that). Runs are short (a fraction of a
 * millisecond), so that most are not interrupted on a busy machine; the sides alternate run by run.
 * Nothing is deleted: a Map that has entries deleted keeps their slots until it is rebuilt, which would
 * measure V8's clean-up rather than the limiter.
 */
export async function limiterFreshAddressFigure(runs: number, perRun = 200): Promise<Figure> {
  const total = Math.min(Math.max(runs, 5) * 24, 150); // ≤ 30,000 fresh addresses: 100,000 + 30,000 < 131,072 slots
  const fresh = addresses(total * perRun, 172);
  const tracked = addresses(100_000, 10);
  const few = addresses(10, 10);
  const many = new FailureLimiter(20, Date.now, tracked.length + fresh.length);
  for (const a of tracked) many.fail(a);
  // One more pass, so that the table's entries have left the young generation (see limiterFigure in bench.ts).
  for (const a of tracked) if (many.retryAfter(a) >= 0) many.fail(a);
  if (many.size !== tracked.length) throw new Error(`limiter tracks ${many.size} of ${tracked.length}`);
  const small = (): FailureLimiter => {
    const limiter = new FailureLimiter(20, Date.now, few.length + perRun);
    for (const a of few) limiter.fail(a);
    return limiter;
  };
  const run = (limiter: FailureLimiter, batch: string[]): number => {
    const before = limiter.size;
    let refused = 0;
    const start = performance.now();
    for (const address of batch) {
      if (limiter.retryAfter(address)) refused++;
      limiter.fail(address);
    }
    const elapsed = performance.now() - start;
    if (refused !== 0 || limiter.size !== before + batch.length) throw new Error(`fresh addresses: ${refused} refused, ${limiter.size} tracked (expected 0 and ${before + batch.length})`);
    return (elapsed * 1000) / batch.length;
  };
  const warmUp = addresses(perRun, 192);
  for (let w = 0; w < 20; w++) run(small(), warmUp); // untimed warm-up (JIT) on throw-away tables
  const ours: number[] = [];
  const base: number[] = [];
  for (let r = 0; r < total; r++) {
    const batch = fresh.slice(r * perRun, (r + 1) * perRun);
    const limiter = small();
    if (r % 2) {
      ours.push(run(many, batch));
      base.push(run(limiter, batch));
    } else {
      base.push(run(limiter, batch));
      ours.push(run(many, batch));
    }
  }
  const f = figure(`${TENANCY_FIG.limiterFresh} (µs per op, 100,000 addresses tracked)`, ours, 'the same with 10 addresses tracked', base, 'µs');
  const mean = (values: number[]): string => ((values.reduce((a, b) => a + b, 0) / values.length) * 1000).toFixed(0);
  const quartiles = (values: number[]): string => {
    const sorted = [...values].sort((a, b) => a - b);
    return `${(percentile(sorted, 0.25) * 1000).toFixed(0)}–${(percentile(sorted, 0.75) * 1000).toFixed(0)}`;
  };
  return {
    ...f,
    goal: 'per-op cost at 100,000 tracked ≈ at 10 (O(1)): ratio ≤ 2',
    meetsGoal: f.ratio <= 2,
    spread: spread(ours),
    baselineSpread: spread(base),
    detail:
      `${perRun} never-seen addresses per run (retryAfter miss + fail insert, no eviction), ${total} runs each; ` +
      `${(f.median * 1000).toFixed(0)} vs ${(f.baselineMedian * 1000).toFixed(0)} ns per op (median run); per-run interquartile ${quartiles(ours)} vs ${quartiles(base)} ns; ` +
      `mean ${mean(ours)} vs ${mean(base)} ns (every pause included); the large table grew to ${many.size.toLocaleString('en-US')}`,
  };
}
