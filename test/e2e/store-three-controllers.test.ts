/**
 * Issue 12's "done when": three controllers as separate processes (`up`) on one real PostgreSQL, sharing
 * the gateway's signing secret as several controllers of one swarm must.
 *
 *  - 100 concurrent creates over MCP spread across them, some with the same names, by an admin and by a
 *    member whose quota is 20 workspaces: no twin (one record per owner and name, one container per
 *    record), no leaked container, and the member holds exactly 20 — never more, though 30 distinct names
 *    were asked for through three controllers at once.
 *  - Any controller's gateway opens any workspace in Chromium (real code-server): a workspace created
 *    through one controller, its link asked of a second, opened through the third's gateway; the link is
 *    spent everywhere once used (spent links live in the database).
 * Build first (`npm run build`): the controllers run dist/src/cli.js.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Browser } from 'playwright-core';
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { LABEL_INSTANCE, LABEL_MANAGED, LABEL_SWARM } from '../../providers/docker/docker-mapping.js';
import { waitUntil } from '../../src/timing/wait-until.js';
import { launchChromium } from '../helpers/browser.js';
import { startControllerRig, type ControllerProcess, type ControllerRig } from '../helpers/controller-process.js';
import { TEST_IMAGE, docker } from '../helpers/docker.js';
import { callTool, type ToolResult } from '../helpers/mcp.js';
import { STANDIN_IMAGE } from '../helpers/standin-image.js';
import { connectMcpHttp } from '../helpers/tenancy.js';

const PREFIX = 'e2e-three';
const SWARM_ID = 'e2e-three-swarm';
const SECRET = 'e2e-three-gateway-secret-shared-by-all-controllers';
const MEMBER_LIMIT = 20;

let rig: ControllerRig;
let browser: Browser | undefined;
const memberClients: Client[] = [];

beforeAll(async () => {
  rig = await startControllerRig(PREFIX);
  for (const label of ['a', 'b', 'c']) {
    await rig.start(label, {
      swarmId: SWARM_ID,
      store: { databaseUrl: rig.server.url },
      gateway: { secret: SECRET },
      providers: { docker: { image: STANDIN_IMAGE, pullImages: false, stopTimeoutSeconds: 1 } },
      health: { intervalMs: 5_000 },
      idle: { enabled: false },
    });
  }
}, 240_000);

afterAll(async () => {
  if (process.env.THREE_TEST_LOGS) for (const c of rig.controllers) console.error(c.label, JSON.stringify(c.logs().filter((l) => Number(l.level) >= 40).slice(0, 20)));
  for (const c of memberClients) await c.close().catch(() => undefined);
  await browser?.close();
  await rig?.close();
}, 180_000);

function instanceOf(result: ToolResult): { id: string; name: string; owner?: string } {
  return (result.structuredContent as { instance: { id: string; name: string; owner?: string } }).instance;
}

function textOf(result: ToolResult): string {
  return (result.content as { type: string; text?: string }[]).map((c) => c.text ?? '').join('\n');
}

describe('three controller processes on one PostgreSQL', () => {
  it('100 concurrent creates spread across them, some with the same names: no twin, no leak, no quota overshoot', async () => {
    const [a] = rig.controllers;
    const added = await callTool(a!.mcp, 'add_principal', { id: 'member-q', role: 'member', quotas: { instances: MEMBER_LIMIT, cpu: 1_000, memoryMb: 10_000_000 } }); // only the count binds
    expect(added.isError, textOf(added)).toBeFalsy();
    const made = await callTool(a!.mcp, 'create_token', { principalId: 'member-q', name: 'three-controllers' });
    expect(made.isError, textOf(made)).toBeFalsy();
    const token = (made.structuredContent as { token: string }).token;
    // The principal and its token were written through A; B and C know them once they hear of it.
    for (const c of rig.controllers) {
      const client = await waitUntil(() => connectMcpHttp(c.mcpUrl, token, `member-${c.label}`).catch(() => undefined), { timeoutMs: 10_000, intervalMs: 100, what: `controller ${c.label} accepting the new token` });
      memberClients.push(client);
    }

    // 40 by the member over 30 names (10 asked twice), 60 by the admins over 45 names (15 asked twice).
    const calls = Array.from({ length: 100 }, (_, n) => {
      const via = n % 3;
      if (n < 40) return { who: 'member', name: `${PREFIX}-m${n % 30}`, client: memberClients[via]! };
      const k = n - 40;
      return { who: 'admin', name: `${PREFIX}-a${k % 45}`, client: rig.controllers[via]!.mcp };
    });
    const results = await Promise.all(calls.map((c) => callTool(c.client, 'create_swarm_instance', { name: c.name })));

    const unexpected = results.map((r, n) => ({ r, c: calls[n]! })).filter(({ r, c }) => r.isError && !(c.who === 'member' && /quota/i.test(textOf(r))));
    expect(unexpected.map(({ r, c }) => `${c.who} ${c.name}: ${textOf(r)}`)).toEqual([]);
    const memberIds = new Set(results.flatMap((r, n) => (calls[n]!.who === 'member' && !r.isError ? [instanceOf(r).id] : [])));
    const adminIds = new Set(results.flatMap((r, n) => (calls[n]!.who === 'admin' && !r.isError ? [instanceOf(r).id] : [])));
    expect(memberIds.size).toBe(MEMBER_LIMIT); // the quota, neither more nor less (30 names were asked for)
    expect(adminIds.size).toBe(45);
    // The same name asked twice by one owner is one workspace, whichever controllers were asked.
    for (const [n, r] of results.entries()) {
      if (r.isError) continue;
      const twin = results.findIndex((other, m) => m !== n && !other.isError && calls[m]!.who === calls[n]!.who && calls[m]!.name === calls[n]!.name);
      if (twin >= 0) expect(instanceOf(results[twin]!).id).toBe(instanceOf(r).id);
    }

    // The database: one live record per owner and name, the member's count at its limit, every record settled.
    const { rows: twins } = await rig.pool.query("SELECT owner, name, count(*) FROM instances WHERE name LIKE $1 GROUP BY owner, name HAVING count(*) > 1", [`${PREFIX}-%`]);
    expect(twins).toEqual([]);
    const { rows } = await rig.pool.query<{ id: string; owner: string; status: string }>("SELECT id, owner, data->>'status' AS status FROM instances WHERE name LIKE $1", [`${PREFIX}-%`]);
    expect(rows.filter((r) => r.owner === 'member-q').map((r) => r.id).sort()).toEqual([...memberIds].sort());
    expect(rows.map((r) => r.status).filter((s) => s !== 'running')).toEqual([]);
    expect(rows).toHaveLength(MEMBER_LIMIT + 45);

    // The engine: one container per record, none for anything else (nothing leaked by a refused or duplicate create).
    const containers = await docker.listContainers({ all: true, filters: { label: [`${LABEL_MANAGED}=true`, `${LABEL_SWARM}=${SWARM_ID}`] } });
    const byInstance = new Map<string, number>();
    for (const c of containers) byInstance.set(c.Labels[LABEL_INSTANCE]!, (byInstance.get(c.Labels[LABEL_INSTANCE]!) ?? 0) + 1);
    expect([...byInstance.keys()].sort()).toEqual(rows.map((r) => r.id).sort());
    expect([...byInstance.values()].filter((n) => n !== 1)).toEqual([]);
  }, 600_000);

  it("any controller's gateway opens any workspace in Chromium; a link is spent for all of them", async () => {
    const [a, b, c] = rig.controllers;
    const created = await callTool(a!.mcp, 'create_swarm_instance', { name: `${PREFIX}-editor`, image: TEST_IMAGE });
    expect(created.isError, textOf(created)).toBeFalsy();
    const id = instanceOf(created).id;
    // Asked of B, opened through C's gateway: only the port differs between the controllers' links.
    const portOf = async (controller: ControllerProcess): Promise<string> => {
      const r = await callTool(controller.mcp, 'get_instance_access_link', { instanceId: id });
      expect(r.isError, textOf(r)).toBeFalsy();
      return new URL((r.structuredContent as { accessUrl: string }).accessUrl).port;
    };
    const link = await callTool(b!.mcp, 'get_instance_access_link', { instanceId: id });
    expect(link.isError, textOf(link)).toBeFalsy();
    const fromB = new URL((link.structuredContent as { accessUrl: string }).accessUrl);
    const throughC = new URL(fromB);
    throughC.port = await portOf(c!);
    expect(throughC.port).not.toBe(fromB.port);

    browser = await launchChromium();
    const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    const page = await context.newPage();
    const response = await page.goto(throughC.toString(), { waitUntil: 'domcontentloaded' });
    expect(response?.status()).toBe(200);
    await page.locator('.monaco-workbench').waitFor({ timeout: 90_000 });
    await page.screenshot({ path: 'test-artifacts/three-controllers-workbench.png' }).catch(() => undefined);

    // The same one-time link, spent through C, is refused through A's gateway (and B's, which made it).
    for (const controller of [a!, b!]) {
      const again = new URL(fromB);
      again.port = await portOf(controller);
      const fresh = await browser.newContext(); // no session cookie: only the link could let it in
      const replay = await (await fresh.newPage()).goto(again.toString(), { waitUntil: 'domcontentloaded' });
      expect(replay?.status(), `replayed link through ${controller.label}`).toBe(401);
      expect(await replay?.text()).toContain('already been used');
      await fresh.close();
    }
  }, 300_000);
});
