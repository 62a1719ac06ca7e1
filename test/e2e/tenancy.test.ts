/**
 * Tenancy end to end, on the real engine, over the real doors: four principals (an admin, two members, a
 * viewer) and a few more, each with its own API token and the real SDK client over MCP HTTP.
 *
 * What it proves: members create workspaces (names unique per owner) and a viewer cannot; every tool that
 * takes an instance id, enumerated from tools/list, is refused on another member's workspace exactly as
 * on one that does not exist, and changes nothing in the registry or the engine; lists show each member
 * only their own; a viewer's quota holds and a viewer may read but not change her workspace; bad
 * credentials get 401 invalid_token without the credential echoed; a browser signed in to one workspace
 * cannot use its session on another; twenty concurrent creates against a quota of three make exactly three
 * workspaces; each call is exactly one audit event, and a member's view of the trail holds only her own;
 * and no token or workspace secret is written where it should not be (state folder, database, debug logs).
 *
 * All of it twice: with the state in the state folder's files, and in a real PostgreSQL (principals,
 * tokens, instances and the audit trail in its tables, read from there where the test reads the store).
 * The light stand-in image serves every workspace but the one opened in Chromium (a real code-server);
 * one Chromium serves both variants.
 */
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import type { Tool } from '@modelcontextprotocol/sdk/types.js';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { readFile, readdir, stat } from 'node:fs/promises';
import path from 'node:path';
import { Writable } from 'node:stream';
import type { Browser } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { VSCodeInstance } from '../../providers/provider.js';
import { LABEL_INSTANCE, LABEL_MANAGED, LABEL_NAME } from '../../providers/docker/docker-mapping.js';
import type { AuditEvent } from '../../src/audit/audit-log.js';
import type { SwarmConfig } from '../../src/config.js';
import { createSwarm, startSwarmServices, type SwarmServices } from '../../src/controller/create-swarm.js';
import type { SwarmController } from '../../src/controller/swarm-controller.js';
import { createLogger } from '../../src/logger.js';
import { startMcpHttp } from '../../src/mcp/http.js';
import { TOOL_OPERATIONS } from '../../src/mcp/server.js';
import { MIGRATION_STEPS, MigrationSchema } from '../../src/migration/migration-manager.js';
import { FileDocumentStore, PgDocumentStore, StorePool } from '../../src/store/index.js';
import { GATEWAY_SEED_NAME } from '../../src/store/postgres/gateway-key.js';
import { Authenticator } from '../../src/tenancy/authenticate.js';
import { AuthorizedSwarm } from '../../src/tenancy/authorized-swarm.js';
import { OPERATIONS, ROLE_SCOPES, type Role, type Scope } from '../../src/tenancy/identity.js';
import type { QuotaLimits } from '../../src/tenancy/quotas.js';
import { launchChromium } from '../helpers/browser.js';
import { cleanUp, containersNamed, docker, makeStateDir, testConfig } from '../helpers/docker.js';
import { swarmViolations } from '../helpers/invariants.js';
import { databaseRows, queryDatabase, startPostgres, type TestPostgres } from '../helpers/postgres.js';
import { ensureStandinImage } from '../helpers/standin-image.js';
import { attemptTool, connectMcpHttp, describeOutcome, engineSnapshot, filesUnder, needlesIn, openPrincipalStore, tokenParts, type CallOutcome } from '../helpers/tenancy.js';

const STORES = ['files', 'postgres'] as const;
const DAY_MS = 86_400_000;
const TOKEN_IN_TEXT = /vss_t[0-9a-f]{12}_[A-Za-z0-9_-]{43}/;
const INITIALIZE = { jsonrpc: '2.0', id: 1, method: 'initialize', params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 'tenancy-raw', version: '1.0.0' } } };

interface Caller {
  id: string;
  role: Role;
  token: string;
  tokenId: string;
  client: Client;
}

type JsonSchema = { type?: string | string[]; enum?: unknown[]; const?: unknown; minimum?: number; exclusiveMinimum?: number; maximum?: number; properties?: Record<string, JsonSchema>; required?: string[] };

// One Chromium for both variants, launched by the first test that needs it.
let browser: Browser | undefined;
afterAll(async () => {
  await browser?.close().catch(() => undefined);
});

describe.each(STORES)('tenancy end to end on the %s store: principals over MCP HTTP, the gateway in Chromium, quotas, the audit trail', (store) => {
  // One prefix per variant, neither a prefix of the other: one variant's cleanup never touches the other's workspaces.
  const PREFIX = store === 'files' ? 'e2e-tenancy-fs' : 'e2e-tenancy-pg';
  let stateDir: string;
  let database: TestPostgres | undefined;
  let config: SwarmConfig;
  let controller: SwarmController;
  let services: SwarmServices;
  let mcp: Awaited<ReturnType<typeof startMcpHttp>>;
  let standin: string;
  let local: Client;
  let tools: Tool[];
  let logText = '';
  const callers = new Map<string, Caller>();
  const clients: Client[] = [];
  /** Every credential used in this file, by label: none may be written anywhere but where it must be. */
  const secrets = new Map<string, string>();
  const envSecret = `env-secret-${randomBytes(18).toString('hex')}`;
  let expiredToken: string;
  // Workspaces made in the first test.
  let editor: VSCodeInstance;
  let aliceShared: VSCodeInstance;
  let bobShared: VSCodeInstance;
  let bobSecret: VSCodeInstance;
  const migrationOf = new Map<string, string>(); // instance id -> a migration record of it

  const caller = (id: string): Caller => callers.get(id) ?? expect.unreachable(`no caller ${id}`);
  const hasTool = (name: string): boolean => tools.some((t) => t.name === name);

  function remember(label: string, token: string): void {
    secrets.set(`${label} token`, token);
    if (TOKEN_IN_TEXT.test(token)) secrets.set(`${label} token's secret`, tokenParts(token).secret);
  }

  function ok(outcome: CallOutcome, what: string): Record<string, unknown> {
    if (outcome.kind !== 'ok') expect.unreachable(`${what}: ${describeOutcome(outcome)}`);
    return outcome.result.structuredContent ?? {};
  }

  /** A principal with a token of its role's scopes: through the admin MCP tools when they exist, else the store. */
  async function enrol(id: string, role: Role, quotas?: QuotaLimits): Promise<Caller> {
    let token: string;
    if (hasTool('add_principal') && hasTool('create_token')) {
      ok(await attemptTool(local, 'add_principal', { id, role, ...(quotas ? { quotas } : {}) }), `add_principal ${id}`);
      const made = await attemptTool(local, 'create_token', { principalId: id, name: `${id}-e2e` });
      ok(made, `create_token ${id}`);
      token = TOKEN_IN_TEXT.exec(JSON.stringify(made.kind === 'ok' ? made.result : ''))?.[0] ?? expect.unreachable('create_token returned no token');
    } else {
      await controller.principals.addPrincipal({ id, role, ...(quotas ? { quotas } : {}) });
      token = (await controller.principals.createToken({ principalId: id, name: `${id}-e2e` })).token;
    }
    remember(id, token);
    const client = await connectMcpHttp(mcp.url, token, id);
    clients.push(client);
    const made = { id, role, token, tokenId: tokenParts(token).id, client };
    callers.set(id, made);
    return made;
  }

  async function create(who: Caller, request: Record<string, unknown>): Promise<VSCodeInstance> {
    const result = ok(await attemptTool(who.client, 'create_swarm_instance', request), `${who.id} create ${String(request.name)}`);
    return result.instance as VSCodeInstance;
  }

  /** The scope a tool needs, from the one table the HTTP door and the domain layer both read. */
  function scopeOf(tool: string): Scope {
    if (!Object.hasOwn(TOOL_OPERATIONS, tool)) expect.unreachable(`tool ${tool} is not in TOOL_OPERATIONS`);
    return OPERATIONS[TOOL_OPERATIONS[tool as keyof typeof TOOL_OPERATIONS]].scope;
  }

  const props = (tool: Tool): Record<string, JsonSchema> => (tool.inputSchema.properties ?? {}) as Record<string, JsonSchema>;
  const requires = (tool: Tool, name: string): boolean => (tool.inputSchema.required ?? []).includes(name);

  /** A value its schema accepts, for a required argument (the id arguments are set by the caller). */
  function sample(schema: JsonSchema): unknown {
    if (schema.enum?.length) return schema.enum[0];
    if (schema.const !== undefined) return schema.const;
    const type = Array.isArray(schema.type) ? schema.type[0] : schema.type;
    if (type === 'boolean') return false;
    if (type === 'number' || type === 'integer') {
      const low = schema.minimum ?? (schema.exclusiveMinimum !== undefined ? schema.exclusiveMinimum + 1 : 1);
      return Math.min(Math.max(low, 1), schema.maximum ?? Number.MAX_SAFE_INTEGER);
    }
    if (type === 'string') return 'id';
    if (type === 'array') return [];
    return {};
  }

  /**
   * Arguments a tool accepts besides the ids: every required one from its schema, plus what makes the
   * request meaningful where nothing is required (an update must change something; a migration is not waited for).
   */
  function argsFor(tool: Tool): Record<string, unknown> {
    const args: Record<string, unknown> = {};
    for (const [name, schema] of Object.entries(props(tool))) if (requires(tool, name) && name !== 'instanceId' && name !== 'migrationId') args[name] = sample(schema);
    if (tool.name === 'update_swarm_instance') args.idleTimeoutMinutes = 30;
    if (tool.name === 'start_migration') args.wait = false;
    return args;
  }

  /** A result with the records of the caller's own actions (audit events she caused) left out, at any depth. */
  function withoutOwnActions(value: unknown, principalId: string): unknown {
    const own = (v: unknown): boolean => typeof v === 'object' && v !== null && (v as { actor?: { id?: unknown } }).actor?.id === principalId;
    if (Array.isArray(value)) return value.filter((v) => !own(v)).map((v) => withoutOwnActions(v, principalId));
    if (typeof value === 'object' && value !== null) return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, withoutOwnActions(v, principalId)]));
    return value;
  }

  /** An error message with the id it names replaced, so that two ids' messages can be compared. */
  const shape = (text: string, id: string): string => text.split(id).join('<id>');

  /** The instance records where this variant keeps them: the registry files, or the `instances` rows (with their versions). */
  async function storedRecords(): Promise<unknown[]> {
    if (database) return queryDatabase(database.url, 'SELECT id, version, data FROM instances ORDER BY id');
    const dir = path.join(stateDir, 'instances');
    const names = existsSync(dir) ? (await readdir(dir)).sort() : [];
    return Promise.all(names.map(async (name) => ({ name, data: JSON.parse(await readFile(path.join(dir, name), 'utf8')) as unknown })));
  }

  async function snapshot(): Promise<unknown> {
    const registry = structuredClone(controller.registry.list()).sort((a, b) => a.id.localeCompare(b.id));
    return { registry, stored: await storedRecords(), engine: await engineSnapshot(config.swarmId!) };
  }

  async function rawPost(credential: string, body: unknown = INITIALIZE): Promise<{ status: number; challenge: string; body: string }> {
    const res = await fetch(mcp.url, {
      method: 'POST',
      headers: { authorization: `Bearer ${credential}`, 'content-type': 'application/json', accept: 'application/json, text/event-stream' },
      body: JSON.stringify(body),
    });
    return { status: res.status, challenge: res.headers.get('www-authenticate') ?? '', body: await res.text() };
  }

  /** A member's view of the audit trail: list_audit_events when it exists, else the same AuthorizedSwarm call the tool makes. */
  async function auditViewOf(who: Caller): Promise<AuditEvent[]> {
    if (hasTool('list_audit_events')) {
      const result = ok(await attemptTool(who.client, 'list_audit_events', { limit: 10_000 }), `${who.id} list_audit_events`);
      const events = result.events;
      expect(Array.isArray(events), JSON.stringify(result).slice(0, 300)).toBe(true);
      return events as AuditEvent[];
    }
    const actor = await new Authenticator(controller.principals).authenticate(who.token, 'mcp-http');
    return new AuthorizedSwarm({ controller, migrations: services.migrations }, actor).auditEvents({ limit: 10_000 });
  }

  /** A finished migration's record, as the migration manager leaves one, for tools that take a migration id. */
  async function recordMigration(instance: VSCodeInstance): Promise<string> {
    const id = `mig-${randomBytes(6).toString('hex')}`;
    const at = new Date().toISOString();
    const migration = MigrationSchema.parse({
      id,
      instanceId: instance.id,
      instanceName: instance.name,
      source: 'docker',
      target: 'fly',
      strategy: 'stop-and-recreate',
      status: 'failed',
      reason: 'fly is not enabled here; recorded by the tenancy test',
      createdAt: at,
      updatedAt: at,
      deadline: at,
      sourceWasRunning: true,
      steps: MIGRATION_STEPS.map((name, i) => ({ name, status: i === 0 ? 'completed' : i === 1 ? 'failed' : 'pending' })),
    });
    // Written where the migration manager keeps its records: the state folder's files, or the `documents` table.
    if (!database) {
      await new FileDocumentStore(stateDir).put('migrations', id, migration);
      return id;
    }
    const pool = new StorePool({ databaseUrl: database.url });
    try {
      await new PgDocumentStore({ pool }).put('migrations', id, migration);
    } finally {
      await pool.close();
    }
    return id;
  }

  beforeAll(async () => {
    await cleanUp(PREFIX);
    stateDir = await makeStateDir(PREFIX);
    if (store === 'postgres') database = await startPostgres();
    standin = await ensureStandinImage();
    // erin's token was made two days ago to last one day, by the store the controller opens below.
    const past = await openPrincipalStore({ stateDir, ...(database ? { databaseUrl: database.url } : {}), now: () => new Date(Date.now() - 2 * DAY_MS) });
    await past.store.addPrincipal({ id: 'erin', role: 'member' });
    expiredToken = (await past.store.createToken({ principalId: 'erin', name: 'made two days ago', expiresInDays: 1 })).token;
    await past.close();
    remember('erin (expired)', expiredToken);

    const sink = new Writable({
      write(chunk: Buffer, _encoding, done) {
        logText += chunk.toString('utf8');
        done();
      },
    });
    const logger = createLogger('debug', sink);
    // Nothing changes the registry behind the test's back: no idle stops, no health sweep while it runs.
    config = testConfig(stateDir, {
      exec: { enabled: true },
      idle: { enabled: false },
      health: { intervalMs: 3_600_000, autoRecover: false },
      ...(database ? { store: { databaseUrl: database.url } } : {}),
    });
    controller = createSwarm(config, { logger });
    services = await startSwarmServices(controller, logger);
    mcp = await startMcpHttp({ controller, ...(services.health ? { health: services.health } : {}), migrations: services.migrations, host: '127.0.0.1', port: 0, stateDir, logger });
    remember('local admin', mcp.token);
    local = await connectMcpHttp(mcp.url, mcp.token, 'local-admin');
    clients.push(local);
    tools = (await local.listTools()).tools;

    await enrol('admin', 'admin');
    await enrol('alice', 'member');
    await enrol('bob', 'member');
    await enrol('vera', 'viewer');
    await enrol('carol', 'member', { instances: 3 });
    await enrol('dora', 'member');
  });

  afterAll(async () => {
    for (const client of clients) await client.close().catch(() => undefined);
    await mcp?.close();
    await services?.close();
    await cleanUp(PREFIX, stateDir);
    await database?.stop();
  });

  it('members create workspaces over MCP, names unique per owner; a viewer creates nothing', async () => {
    const [alice, bob, vera] = [caller('alice'), caller('bob'), caller('vera')];
    [editor, aliceShared, bobShared, bobSecret] = await Promise.all([
      create(alice, { name: `${PREFIX}-editor` }), // the real editor, opened in Chromium below
      create(alice, { name: `${PREFIX}-shared`, image: standin }),
      create(bob, { name: `${PREFIX}-shared`, image: standin }),
      create(bob, { name: `${PREFIX}-secret`, image: standin, env: { API_KEY: envSecret } }),
    ]);
    expect(aliceShared.id).not.toBe(bobShared.id);
    expect([editor, aliceShared, bobShared, bobSecret].map((i) => [i.name, i.owner, i.status])).toEqual([
      [`${PREFIX}-editor`, 'alice', 'running'],
      [`${PREFIX}-shared`, 'alice', 'running'],
      [`${PREFIX}-shared`, 'bob', 'running'],
      [`${PREFIX}-secret`, 'bob', 'running'],
    ]);
    expect((await containersNamed(`${PREFIX}-shared`)).map((c) => c.Labels[LABEL_INSTANCE]).sort()).toEqual([aliceShared.id, bobShared.id].sort());

    const refused = await attemptTool(vera.client, 'create_swarm_instance', { name: `${PREFIX}-vera-own`, image: standin });
    expect(refused, describeOutcome(refused)).toMatchObject({ kind: 'http', status: 403, message: expect.stringContaining('swarm:write') });
    expect(controller.registry.list().filter((i) => i.name === `${PREFIX}-vera-own`)).toEqual([]);
    expect(await containersNamed(`${PREFIX}-vera-own`)).toEqual([]);
  });

  it("refuses every instance tool on another member's workspace exactly as on a missing one, and changes nothing", async () => {
    const [alice, bob, vera] = [caller('alice'), caller('bob'), caller('vera')];
    // fork_instance's optional instanceId is the source to copy, not a filter: it acts on that instance.
    const actsOn = (t: Tool): boolean => requires(t, 'instanceId') || t.name === 'fork_instance';
    const onInstance = tools.filter(actsOn);
    const filteringByInstance = tools.filter((t) => 'instanceId' in props(t) && !actsOn(t));
    const onMigration = tools.filter((t) => requires(t, 'migrationId'));
    // The enumeration found the tools it is meant to (a guard against an empty sweep passing).
    expect(onInstance.map((t) => t.name)).toEqual(expect.arrayContaining(['get_swarm_instance', 'stop_swarm_instance', 'delete_swarm_instance', 'execute_command', 'get_instance_access_link']));
    expect(onMigration.map((t) => t.name)).toEqual(expect.arrayContaining(['get_migration_status', 'cancel_migration']));
    // No second provider runs here, so no migration can be started: each shared workspace gets the record a finished one leaves.
    migrationOf.set(aliceShared.id, await recordMigration(aliceShared));
    migrationOf.set(bobShared.id, await recordMigration(bobShared));

    const before = await snapshot();
    const missingId = `${PREFIX}-gone-${randomBytes(4).toString('hex')}`;
    const missingMigration = `mig-${randomBytes(6).toString('hex')}`;
    const sweeps: { who: Caller; target: VSCodeInstance }[] = [
      { who: alice, target: bobShared },
      { who: bob, target: aliceShared },
      { who: vera, target: aliceShared },
      { who: vera, target: bobShared },
    ];
    let calls = 0;
    for (const { who, target } of sweeps) {
      const scopes = ROLE_SCOPES[who.role];
      const expectDenied = (hidden: CallOutcome, missing: CallOutcome, tool: string, ids: [string, string]): void => {
        const what = `${who.id} ${tool} on ${ids[0]}`;
        const scope = scopeOf(tool);
        if (!scopes.includes(scope)) {
          // Refused at the door for the scope, whatever the id: nothing about the instance is told.
          for (const o of [hidden, missing]) expect(o, `${what}: ${describeOutcome(o)}`).toMatchObject({ kind: 'http', status: 403, message: expect.stringContaining(scope) });
          return;
        }
        expect(hidden.kind, `${what}: ${describeOutcome(hidden)}`).toBe('error');
        expect(missing.kind, `${who.id} ${tool} on a missing id: ${describeOutcome(missing)}`).toBe('error');
        const [hiddenText, missingText] = [hidden, missing].map((o) => (o.kind === 'error' ? o.text : ''));
        expect(hiddenText, what).toMatch(/^NOT_FOUND: /);
        expect(shape(hiddenText!, ids[0]), what).toBe(shape(missingText!, ids[1]));
      };

      for (const tool of onInstance) {
        const args = argsFor(tool);
        const hidden = await attemptTool(who.client, tool.name, { ...args, instanceId: target.id });
        const missing = await attemptTool(who.client, tool.name, { ...args, instanceId: missingId });
        expectDenied(hidden, missing, tool.name, [target.id, missingId]);
        calls += 2;
      }
      for (const tool of onMigration) {
        const migrationId = migrationOf.get(target.id)!;
        const args = argsFor(tool);
        const hidden = await attemptTool(who.client, tool.name, { ...args, migrationId });
        const missing = await attemptTool(who.client, tool.name, { ...args, migrationId: missingMigration });
        expectDenied(hidden, missing, tool.name, [migrationId, missingMigration]);
        calls += 2;
      }
      for (const tool of filteringByInstance) {
        // A filter by someone else's instance finds nothing of it; only records of the caller's own calls may name the id she sent.
        const result = ok(await attemptTool(who.client, tool.name, { ...argsFor(tool), instanceId: target.id }), `${who.id} ${tool.name}`);
        expect(JSON.stringify(withoutOwnActions(result, who.id)), `${who.id} ${tool.name}`).not.toContain(target.id);
        calls++;
      }
      // The instance resource reads the same way.
      const read = async (id: string): Promise<string> =>
        who.client.readResource({ uri: `swarm://instances/${id}` }).then(
          (r) => expect.unreachable(`${who.id} read ${id}: ${JSON.stringify(r).slice(0, 200)}`),
          (err: Error) => err.message,
        );
      const [hiddenRead, missingRead] = [await read(target.id), await read(missingId)];
      expect(hiddenRead).toContain('does not exist');
      expect(shape(hiddenRead, target.id)).toBe(shape(missingRead, missingId));
      calls += 2;
    }
    // Arguments the controller would refuse do not tell a hidden instance from a missing one either.
    const emptyPatch = [await attemptTool(alice.client, 'update_swarm_instance', { instanceId: bobShared.id }), await attemptTool(alice.client, 'update_swarm_instance', { instanceId: missingId })];
    expect(emptyPatch.map((o) => (o.kind === 'error' ? o.text : describeOutcome(o)))).toEqual([`NOT_FOUND: instance ${bobShared.id} does not exist`, `NOT_FOUND: instance ${missingId} does not exist`]);

    // One raw refusal, to see the challenge itself.
    const raw = await rawPost(vera.token, { jsonrpc: '2.0', id: 7, method: 'tools/call', params: { name: 'stop_swarm_instance', arguments: { instanceId: aliceShared.id } } });
    expect(raw.status).toBe(403);
    expect(raw.challenge).toMatch(/^Bearer /);
    expect(raw.challenge).toContain('error="insufficient_scope"');
    expect(raw.challenge).toContain('scope="swarm:write"');

    expect(calls).toBeGreaterThan(60);
    // Denied calls read nothing and write nothing: no field may differ, timestamps included.
    expect(await snapshot()).toEqual(before);
  });

  it('lists, status, migrations and resources show each member only their own; the admin sees all', async () => {
    const all = controller.registry.list().map((i) => i.id).sort();
    const expected: Record<string, { instances: string[]; migrations: string[] }> = {
      alice: { instances: [editor.id, aliceShared.id], migrations: [migrationOf.get(aliceShared.id)!] },
      bob: { instances: [bobShared.id, bobSecret.id], migrations: [migrationOf.get(bobShared.id)!] },
      vera: { instances: [], migrations: [] },
      admin: { instances: all, migrations: [...migrationOf.values()] },
    };
    expect(all).toEqual([editor.id, aliceShared.id, bobShared.id, bobSecret.id].sort());
    for (const [id, want] of Object.entries(expected)) {
      const who = caller(id);
      const listed = ok(await attemptTool(who.client, 'list_swarm_instances', {}), `${id} list`).instances as VSCodeInstance[];
      expect(listed.map((i) => i.id).sort(), `${id} list_swarm_instances`).toEqual([...want.instances].sort());
      const status = ok(await attemptTool(who.client, 'get_swarm_status', {}), `${id} status`);
      expect(status.total, `${id} get_swarm_status`).toBe(want.instances.length);
      const migrations = ok(await attemptTool(who.client, 'list_migrations', {}), `${id} migrations`).migrations as { id: string }[];
      expect(migrations.map((m) => m.id).sort(), `${id} list_migrations`).toEqual([...want.migrations].sort());
      const resources = (await who.client.listResources()).resources.map((r) => r.uri).filter((uri) => uri.startsWith('swarm://instances/'));
      expect(resources.sort(), `${id} resources/list`).toEqual(want.instances.map((i) => `swarm://instances/${i}`).sort());
    }
  });

  it("holds a viewer's quota, then lets her read but not change the workspace made for her", async () => {
    const [admin, vera] = [caller('admin'), caller('vera')];
    const name = `${PREFIX}-for-vera`;
    const over = await attemptTool(admin.client, 'create_swarm_instance', { name, owner: 'vera', image: standin });
    expect(over.kind === 'error' ? over.text : describeOutcome(over)).toBe('QUOTA_EXCEEDED: instances: vera may hold 0, holds 0 and asked for 1 more');
    expect(controller.registry.list().filter((i) => i.name === name)).toEqual([]);
    expect(await containersNamed(name)).toEqual([]);

    await controller.principals.updatePrincipal('vera', { quotas: { instances: 1, cpu: 2, memoryMb: 4096 } });
    const mine = await create(admin, { name, owner: 'vera', image: standin });
    expect(mine.owner).toBe('vera');

    expect((ok(await attemptTool(vera.client, 'get_swarm_instance', { instanceId: mine.id }), 'vera get').instance as VSCodeInstance).id).toBe(mine.id);
    const listed = ok(await attemptTool(vera.client, 'list_swarm_instances', {}), 'vera list').instances as VSCodeInstance[];
    expect(listed.map((i) => i.id)).toEqual([mine.id]);

    const before = await snapshot();
    const writes = tools.filter((t) => requires(t, 'instanceId') && !ROLE_SCOPES.viewer.includes(scopeOf(t.name)));
    expect(writes.map((t) => t.name)).toEqual(expect.arrayContaining(['stop_swarm_instance', 'delete_swarm_instance', 'update_swarm_instance', 'execute_command', 'get_instance_access_link']));
    for (const tool of writes) {
      const outcome = await attemptTool(vera.client, tool.name, { ...argsFor(tool), instanceId: mine.id });
      expect(outcome, `vera ${tool.name} on her own: ${describeOutcome(outcome)}`).toMatchObject({ kind: 'http', status: 403, message: expect.stringContaining(`FORBIDDEN: ${tool.name} needs the ${scopeOf(tool.name)} scope`) });
    }
    expect(await snapshot()).toEqual(before);
  });

  it('answers expired, revoked, truncated, forged and disabled credentials 401 invalid_token, never echoing them', async () => {
    const [alice, dora] = [caller('alice'), caller('dora')];
    const refusedWith = async (credential: string, label: string): Promise<string> => {
      const reply = await rawPost(credential);
      expect(reply.status, label).toBe(401);
      expect(reply.challenge, label).toMatch(/^Bearer /);
      expect(reply.challenge, label).toContain('error="invalid_token"');
      const secretPart = /^vss_t[0-9a-f]{12}_(.+)$/.exec(credential)?.[1] ?? credential;
      for (const needle of [credential, secretPart]) expect(`${reply.challenge}\n${reply.body}`, label).not.toContain(needle);
      return reply.challenge;
    };

    expect(await refusedWith(expiredToken, 'expired')).toContain(`token ${tokenParts(expiredToken).id} expired at`);

    // Revoked: it works, it is revoked, the very next request is refused.
    let second: string;
    if (hasTool('create_token')) {
      const made = await attemptTool(alice.client, 'create_token', { name: 'alice-second' });
      ok(made, 'alice create_token');
      second = TOKEN_IN_TEXT.exec(JSON.stringify(made.kind === 'ok' ? made.result : ''))?.[0] ?? expect.unreachable('no token');
    } else {
      second = (await controller.principals.createToken({ principalId: 'alice', name: 'alice-second' })).token;
    }
    remember('alice (revoked)', second);
    expect((await rawPost(second)).status).toBe(200);
    if (hasTool('revoke_token')) ok(await attemptTool(alice.client, 'revoke_token', { tokenId: tokenParts(second).id }), 'revoke_token');
    else await controller.principals.revokeToken(tokenParts(second).id);
    expect(await refusedWith(second, 'revoked')).toContain(`token ${tokenParts(second).id} was revoked`);

    await refusedWith(alice.token.slice(0, -6), 'truncated');
    await refusedWith(`vss_${alice.tokenId}_${randomBytes(32).toString('base64url')}`, 'forged');

    // Disabled: dora's token works, dora is disabled, her next request (an SDK client already connected) is refused.
    expect(ok(await attemptTool(dora.client, 'list_swarm_instances', {}), 'dora list').count).toBe(0);
    await controller.principals.updatePrincipal('dora', { disabled: true });
    expect(await attemptTool(dora.client, 'list_swarm_instances', {})).toMatchObject({ kind: 'http', status: 401 });
    expect(await refusedWith(dora.token, 'disabled')).toContain('principal dora is disabled');
    // Alice's own token was never affected.
    expect((await rawPost(alice.token)).status).toBe(200);
  });

  it("opens alice's editor in Chromium; her session does not open bob's workspace, nor does a link she asks for", async () => {
    const alice = caller('alice');
    const link = ok(await attemptTool(alice.client, 'get_instance_access_link', { instanceId: editor.id }), 'access link') as { url: string; accessUrl: string };
    browser ??= await launchChromium();
    const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    const page = await context.newPage();
    const response = await page.goto(link.accessUrl, { waitUntil: 'domcontentloaded' });
    expect(response?.status()).toBe(200);
    expect(page.url()).not.toContain('swarm_token');
    await page.locator('.monaco-workbench').waitFor({ timeout: 120_000 });
    const session = (await context.cookies()).find((c) => c.name === 'swarm_session');
    expect(session).toMatchObject({ httpOnly: true, domain: `${editor.id}.localhost` });

    const forBob = await attemptTool(alice.client, 'get_instance_access_link', { instanceId: bobShared.id });
    expect(forBob.kind === 'error' ? forBob.text : describeOutcome(forBob)).toBe(`NOT_FOUND: instance ${bobShared.id} does not exist`);

    // Alice's session cookie, planted for bob's host: the gateway refuses it.
    const bobUrl = new URL(bobShared.url!);
    await context.addCookies([{ name: 'swarm_session', value: session!.value, domain: bobUrl.hostname, path: '/', httpOnly: true }]);
    const other = await page.goto(bobUrl.href, { waitUntil: 'domcontentloaded' });
    expect(other?.status()).not.toBe(200);
    expect(other?.status()).toBe(403);
    expect(await page.content()).toContain('This session is for another workspace');
    await context.close();
  });

  it('admits exactly three of twenty concurrent creates against a quota of three, and leaks nothing', async () => {
    const carol = caller('carol');
    const names = Array.from({ length: 20 }, (_, i) => `${PREFIX}-burst-${String(i).padStart(2, '0')}`);
    const outcomes = await Promise.all(names.map((name) => attemptTool(carol.client, 'create_swarm_instance', { name, image: standin })));
    const made = outcomes.flatMap((o) => (o.kind === 'ok' ? [(o.result.structuredContent!.instance as VSCodeInstance).id] : []));
    const refused = outcomes.flatMap((o) => (o.kind === 'error' ? [o.text] : []));
    expect(made.length, outcomes.map(describeOutcome).join('\n')).toBe(3);
    expect(refused.length).toBe(17);
    for (const text of refused) expect(text).toMatch(/^QUOTA_EXCEEDED: instances: carol may hold 3, holds 3 and asked for 1 more$/);

    const records = controller.registry.list().filter((i) => i.owner === 'carol');
    expect(records.map((i) => i.id).sort()).toEqual([...made].sort());
    expect(records.every((i) => i.status === 'running')).toBe(true);
    const containers = await containersNamed(`${PREFIX}-burst-`);
    expect(containers.map((c) => c.Labels[LABEL_INSTANCE]).sort()).toEqual([...made].sort());
    const { Volumes } = await docker.listVolumes({ filters: { label: [`${LABEL_MANAGED}=true`] } });
    const volumes = (Volumes ?? []).filter((v) => v.Labels?.[LABEL_NAME]?.startsWith(`${PREFIX}-burst-`));
    expect(volumes.map((v) => v.Labels[LABEL_INSTANCE]).sort()).toEqual([...made].sort());
    expect(await swarmViolations({ stateDir, swarmId: config.swarmId!, ...(database ? { databaseUrl: database.url } : {}) })).toEqual([]);
  });

  it('records each call as exactly one audit event with the right actor, credential, door and outcome', async () => {
    const [alice, vera, admin] = [caller('alice'), caller('vera'), caller('admin')];
    const seen = new Set((await controller.audit.query({ limit: 10_000 })).map((e) => e.id));
    const missingId = `${PREFIX}-gone-${randomBytes(4).toString('hex')}`;
    const started = Date.now();
    ok(await attemptTool(alice.client, 'get_swarm_instance', { instanceId: aliceShared.id }), 'alice get own');
    expect(await attemptTool(alice.client, 'get_swarm_instance', { instanceId: bobShared.id })).toMatchObject({ kind: 'error' });
    expect(await attemptTool(alice.client, 'get_swarm_instance', { instanceId: missingId })).toMatchObject({ kind: 'error' });
    ok(await attemptTool(alice.client, 'stop_swarm_instance', { instanceId: aliceShared.id }), 'alice stop own');
    expect(await attemptTool(vera.client, 'stop_swarm_instance', { instanceId: aliceShared.id })).toMatchObject({ kind: 'http', status: 403 });
    const ended = Date.now();

    const fresh = (await controller.audit.query({ limit: 10_000 })).filter((e) => !seen.has(e.id) && e.actor.type === 'principal');
    const as = (who: Caller) => ({ type: 'principal', id: who.id, credentialId: who.tokenId, door: 'mcp-http' });
    expect(fresh.map((e) => ({ actor: e.actor, type: e.type, action: e.action, outcome: e.outcome, subject: e.subject, owner: e.owner, code: e.code }))).toEqual([
      { actor: as(alice), type: 'dev.vscode-swarm.instance.get', action: 'instance.get', outcome: 'ok', subject: aliceShared.id, owner: 'alice', code: undefined },
      { actor: as(alice), type: 'dev.vscode-swarm.instance.get', action: 'instance.get', outcome: 'denied', subject: bobShared.id, owner: 'bob', code: 'NOT_FOUND' },
      { actor: as(alice), type: 'dev.vscode-swarm.instance.get', action: 'instance.get', outcome: 'failed', subject: missingId, owner: undefined, code: 'NOT_FOUND' },
      { actor: as(alice), type: 'dev.vscode-swarm.instance.stop', action: 'instance.stop', outcome: 'ok', subject: aliceShared.id, owner: 'alice', code: undefined },
      { actor: as(vera), type: 'dev.vscode-swarm.instance.stop', action: 'instance.stop', outcome: 'denied', subject: aliceShared.id, owner: 'alice', code: 'FORBIDDEN' },
    ]);
    for (const e of fresh) {
      expect(e).toMatchObject({ specversion: '1.0', source: config.audit.source, datacontenttype: 'application/json' });
      expect(e.id).toMatch(/^[0-9a-f-]{36}$/);
      expect(Date.parse(e.time)).toBeGreaterThanOrEqual(started - 1);
      expect(Date.parse(e.time)).toBeLessThanOrEqual(ended + 1);
    }
    expect(new Set(fresh.map((e) => e.id)).size).toBe(fresh.length);

    // Alice's view: only events by her or about her workspaces, vera's attempt on hers among them; her
    // probe of bob's workspace reads exactly like her probe of a missing one.
    const view = await auditViewOf(alice);
    const offending = view.filter((e) => e.actor.id !== 'alice' && e.owner !== 'alice');
    expect(offending.map((e) => `${e.actor.id} ${e.action} ${e.subject}`)).toEqual([]);
    const inView = new Map(view.map((e) => [e.id, e]));
    for (const e of fresh) expect(inView.has(e.id), `${e.actor.id} ${e.action} ${e.subject}`).toBe(true);
    const probe = (e: AuditEvent, id: string) => ({ ...e, id: '', time: '', subject: shape(e.subject ?? '', id), reason: shape(e.reason ?? '', id), request: undefined });
    expect(probe(inView.get(fresh[1]!.id)!, bobShared.id)).toEqual(probe(inView.get(fresh[2]!.id)!, missingId));
    // Nor do the owner and outcome filters tell them apart (checked on the AuthorizedSwarm every door's listing calls).
    const aliceSwarm = new AuthorizedSwarm({ controller, migrations: services.migrations }, await new Authenticator(controller.principals).authenticate(alice.token, 'mcp-http'));
    const filteredIds = async (query: { owner?: string; outcome?: 'denied' | 'failed' }): Promise<string[]> => (await aliceSwarm.auditEvents({ ...query, limit: 10_000 })).map((e) => e.id);
    expect(await filteredIds({ owner: 'bob' })).toEqual([]);
    expect(await filteredIds({ outcome: 'denied' })).not.toContain(fresh[1]!.id);
    expect(await filteredIds({ outcome: 'failed' })).toEqual(expect.arrayContaining([fresh[1]!.id, fresh[2]!.id]));
    expect(await filteredIds({ outcome: 'denied' })).toContain(fresh[4]!.id); // vera's attempt on alice's workspace
    // Bob's probes of alice's workspaces are hers to see; nothing tells her who owns what she may not see.
    expect(view.filter((e) => e.owner !== undefined && e.owner !== 'alice').map((e) => `${e.actor.id} ${e.action} ${e.subject} owner ${e.owner}`)).toEqual([]);

    // The admin's view holds every one of them, bob's and vera's included.
    const adminView = new Set((await auditViewOf(admin)).map((e) => e.id));
    for (const e of fresh) expect(adminView.has(e.id)).toBe(true);
    expect((await controller.audit.query({ limit: 10_000, actorId: 'bob' })).every((e) => adminView.has(e.id))).toBe(true);
  });

  it('writes no token and no workspace secret anywhere it should not, the store and logs at debug level included', async () => {
    // Every token was used above; the env secret went in with bob's create. Let the store write last-use times.
    await controller.principals.close();
    const needles = new Map([...secrets, ['API_KEY env value', envSecret]]);
    expect(needles.size).toBeGreaterThanOrEqual(17);
    const files = await filesUnder(stateDir);
    // Where secrets must live: the local credential (a file of this controller in both variants) and the
    // gateway's signing key (a file, or with PostgreSQL a row every controller shares).
    const holders = new Set(['mcp-http.token', ...(database ? [] : [path.join('gateway', 'ed25519.key')])]);
    expect(files).toEqual(expect.arrayContaining([...holders]));
    // The rest of the state, by where it is: the state folder's files, and with PostgreSQL every table's rows.
    const stored = new Map<string, string>();
    for (const file of files) if (!holders.has(file)) stored.set(file, await readFile(path.join(stateDir, file), 'latin1'));
    if (database) for (const row of await databaseRows(database.url)) stored.set(`database: ${row.where}`, row.text);
    // The registry keeps a workspace's env (it is the workspace's configuration, replayed on every re-create):
    // bob's record, the one place the env value may be; principals and tokens, hashes only; the audit trail.
    const bobRecord = database ? `database: instances ${bobSecret.id}` : path.join('instances', `${bobSecret.id}.json`);
    const principalPlaces = [...stored.keys()].filter((where) => (database ? /^database: (principals|tokens) / : /^principals\.json$/).test(where));
    const auditPlaces = [...stored.keys()].filter((where) => where.startsWith(database ? 'database: audit_events ' : `audit${path.sep}`));
    expect(stored.has(bobRecord), bobRecord).toBe(true);
    expect(principalPlaces.length).toBeGreaterThan(0);
    expect(auditPlaces.length).toBeGreaterThan(0);
    if (database) {
      // The database is the store: the state folder holds none of the registry, the principals, the audit
      // trail, the migration records or the gateway's key, which are rows.
      const inFolder = ['principals.json', path.join('gateway', 'ed25519.key'), ...['instances', 'audit', 'migrations'].map((dir) => `${dir}${path.sep}`)];
      expect(files.filter((f) => inFolder.some((place) => f === place || (place.endsWith(path.sep) && f.startsWith(place))))).toEqual([]);
      expect(stored.has(`database: swarm_secrets ${GATEWAY_SEED_NAME}`)).toBe(true);
    } else {
      expect(((await stat(path.join(stateDir, bobRecord))).mode & 0o077).toString(8)).toBe('0');
    }
    // The scan finds what is there: the local credential file holds the local admin's token, bob's record the env value.
    expect(needlesIn(await readFile(path.join(stateDir, 'mcp-http.token'), 'latin1'), needles)).toEqual(['local admin token']);
    expect(needlesIn(stored.get(bobRecord)!, needles)).toEqual(['API_KEY env value']);
    for (const holder of holders) expect(((await stat(path.join(stateDir, holder))).mode & 0o077).toString(8), `${holder} mode`).toBe('0');
    const found: string[] = [];
    for (const [where, text] of stored) {
      const allowed = where === bobRecord ? ['API_KEY env value'] : [];
      for (const hit of needlesIn(text, needles)) if (!allowed.includes(hit)) found.push(`${where}: ${hit}`);
    }
    expect(found).toEqual([]);
    // The principals' store holds the tokens' ids and hashes only.
    const principals = principalPlaces.map((where) => stored.get(where)!).join('\n');
    expect(principals).toContain(caller('alice').tokenId);
    expect(needlesIn(principals, needles)).toEqual([]);
    // The logs (the controller's, the gateway's and the MCP door's, at debug level) were captured, and hold none of it.
    expect(logText).toContain('"msg":"tool refused"');
    expect(logText).toContain('"msg":"access link exchanged for a session"');
    expect(needlesIn(logText, needles)).toEqual([]);
  });
});
