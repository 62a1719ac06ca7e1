/**
 * A generated corpus of bad input against every MCP tool the server lists, over a real MCP client, a
 * real controller (gateway, health monitor, migration manager, exec on) and real containers (the
 * light stand-in image). Cases come from each tool's advertised JSON Schema: wrong types, out-of-range
 * and non-finite numbers, evil strings, hostile record keys, huge arrays, deep nesting, missing and
 * unknown keys. Which cases must be refused, and which field the refusal must name, is decided from the
 * schema (plus the few rules a schema cannot say: a docker instance's CPU bounds, ids that do not
 * exist, a NUL in an environment value). Every refusal must start with a stable code, name the field
 * for INVALID_INPUT, and leave the state directory byte for byte and the engine's containers and
 * volumes as they were. Cases that are valid input run only where running them is harmless, and must
 * succeed without touching any other instance.
 */
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { InMemoryTransport } from '@modelcontextprotocol/sdk/inMemory.js';
import type { CallToolResult, Tool } from '@modelcontextprotocol/sdk/types.js';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { readFile, readdir } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { INSTANCE_ID_PATTERN, INSTANCE_NAME_PATTERN, type VSCodeInstance } from '../../providers/provider.js';
import { LABEL_MANAGED, LABEL_SWARM } from '../../providers/docker/docker-mapping.js';
import { startSwarmServices, createSwarm, type SwarmServices } from '../../src/controller/create-swarm.js';
import { fieldPath } from '../../src/controller/parse-input.js';
import { ERROR_CODES } from '../../src/errors.js';
import { createMcpServer } from '../../src/mcp/server.js';
import { cleanUp, docker, makeStateDir, testConfig } from '../helpers/docker.js';
import {
  BOOLEAN_CANDIDATES,
  EVIL_STRINGS,
  HOSTILE_KEYS,
  HOST_MARKER,
  enumNearMisses,
  firstViolation,
  numberCandidates,
  objectWithKey,
  typeType,
  wrongTypes,
  type Candidate,
  type JsonSchema,
} from '../helpers/evil-values.js';
import { STANDIN_IMAGE, ensureStandinImage } from '../helpers/standin-image.js';

const PREFIX = 'badin';
const EXEC_TIMEOUT_MS = 10_000;
const MIGRATION_ID_PATTERN = /^mig-[a-z0-9]{8,32}$/;

type Expectation =
  | { kind: 'invalid'; field: string }
  | { kind: 'refused'; codes: readonly string[] }
  /** Valid input: the same outcome as the tool's base arguments, touching at most the base instance. */
  | { kind: 'as-base' };

interface Case {
  tool: string;
  label: string;
  args: Record<string, unknown>;
  expect: Expectation;
  /** Extra check of a valid case's result. */
  check?: (result: ToolResult) => void | Promise<void>;
}

type ToolResult = CallToolResult & { structuredContent?: Record<string, unknown> };

interface Snapshot {
  files: Map<string, string>;
  engine: Map<string, string>;
}

describe('bad input over every MCP tool', () => {
  let stateDir: string;
  let services: SwarmServices;
  let client: Client;
  let closeServer: () => Promise<void>;
  let running: VSCodeInstance;
  let stopped: VSCodeInstance;
  let swarmId: string;
  let limits: { minCpu: number; maxCpu: number; minMemoryMb: number; maxMemoryMb: number };
  const rejections: unknown[] = [];
  const onRejection = (reason: unknown): void => void rejections.push(reason);

  const call = async (tool: string, args: Record<string, unknown>): Promise<ToolResult> =>
    (await client.callTool({ name: tool, arguments: args }, undefined, { timeout: 120_000 })) as ToolResult;
  const textOf = (r: ToolResult): string => (r.content as { type: string; text?: string }[]).map((c) => c.text ?? '').join('\n');

  beforeAll(async () => {
    process.on('unhandledRejection', onRejection);
    await ensureStandinImage();
    stateDir = await makeStateDir(PREFIX);
    const config = testConfig(stateDir, {
      defaults: { cpu: 0.5, memoryMb: 256 },
      providers: { docker: { image: STANDIN_IMAGE, readinessTimeoutMs: 60_000 } },
      exec: { enabled: true, timeoutMs: EXEC_TIMEOUT_MS },
      idle: { enabled: false },
      // Present and answering the tools, but no sweep in the middle of the corpus.
      health: { enabled: true, intervalMs: 3_600_000, autoRecover: false },
    });
    swarmId = config.swarmId;
    services = await startSwarmServices(createSwarm(config));
    const { server, close } = createMcpServer({
      controller: services.controller,
      migrations: services.migrations,
      ...(services.health ? { health: services.health } : {}),
    });
    closeServer = close;
    const [clientSide, serverSide] = InMemoryTransport.createLinkedPair();
    await server.connect(serverSide);
    client = new Client({ name: 'bad-input', version: '1.0.0' });
    await client.connect(clientSide);

    const make = async (name: string): Promise<VSCodeInstance> => {
      const r = await call('create_swarm_instance', { name });
      expect(r.isError, textOf(r)).toBeFalsy();
      return r.structuredContent!.instance as VSCodeInstance;
    };
    running = await make(`${PREFIX}-running`);
    stopped = await make(`${PREFIX}-stopped`);
    const stop = await call('stop_swarm_instance', { instanceId: stopped.id, force: true });
    expect(stop.isError, textOf(stop)).toBeFalsy();
    stopped = stop.structuredContent!.instance as VSCodeInstance;
    const status = await call('get_swarm_status', {});
    const docker = (status.structuredContent!.providers as { type: string; capabilities?: { resourceLimits: typeof limits } }[]).find((p) => p.type === 'docker');
    limits = docker!.capabilities!.resourceLimits;
  });

  afterAll(async () => {
    await client?.close().catch(() => undefined);
    await closeServer?.().catch(() => undefined);
    await services?.close().catch(() => undefined);
    // Everything this suite made carries its swarm's label (its own state directory).
    if (swarmId) await removeSwarm(swarmId);
    await cleanUp(PREFIX, stateDir);
    process.off('unhandledRejection', onRejection);
  });

  /**
   * Every file of the state directory by SHA-256, and this swarm's containers (id, state, labels) and
   * volumes. The audit trail is left out: a refused call is recorded there on purpose (one event each).
   */
  async function snapshot(): Promise<Snapshot> {
    const label = [`${LABEL_MANAGED}=true`, `${LABEL_SWARM}=${swarmId}`];
    const [entries, containers, { Volumes }] = await Promise.all([
      readdir(stateDir, { recursive: true, withFileTypes: true }),
      docker.listContainers({ all: true, filters: { label } }),
      docker.listVolumes({ filters: { label } }),
    ]);
    const hashed = await Promise.all(
      entries
        .filter((e) => e.isFile())
        .map(async (e) => {
          const full = path.join(e.parentPath ?? (e as unknown as { path: string }).path, e.name);
          const hash = await readFile(full).then((data) => createHash('sha256').update(data).digest('hex'), () => 'unreadable');
          return [path.relative(stateDir, full), hash] as const;
        }),
    );
    const engine = new Map<string, string>();
    for (const c of containers) engine.set(`container ${c.Id}`, `${c.State} ${JSON.stringify(Object.entries(c.Labels).sort())}`);
    for (const v of Volumes ?? []) engine.set(`volume ${v.Name}`, JSON.stringify(Object.entries(v.Labels ?? {}).sort()));
    return { files: new Map(hashed.filter(([rel]) => !rel.startsWith(`audit${path.sep}`))), engine };
  }

  /** What differs between two snapshots, except what `allowed` says a valid call may touch. */
  function differences(before: Snapshot, after: Snapshot, allowed: (key: string) => boolean = () => false): string[] {
    const out: string[] = [];
    for (const [kind, a, b] of [['file', before.files, after.files], ['engine', before.engine, after.engine]] as const) {
      for (const key of new Set([...a.keys(), ...b.keys()])) {
        if (a.get(key) !== b.get(key) && !allowed(key)) out.push(`${kind} ${key} ${a.has(key) ? (b.has(key) ? 'changed' : 'removed') : 'added'}`);
      }
    }
    return out;
  }

  // ---- the generator ----

  /** Base arguments: a valid value for every required property (the running instance where one is named). */
  function baseArgs(tool: Tool): Record<string, unknown> {
    const schema = tool.inputSchema as JsonSchema;
    // An update needs something to change, or every case would be refused for that before its own field.
    const base: Record<string, unknown> = tool.name === 'update_swarm_instance' ? { idleTimeoutMinutes: 15 } : {};
    for (const key of schema.required ?? []) base[key] = baseValue(key, schema.properties![key]!);
    return base;
  }

  function baseValue(key: string, schema: JsonSchema): unknown {
    if (key === 'instanceId') return running.id;
    if (key === 'migrationId') return 'mig-0123456789ab';
    if (key === 'name') return `${PREFIX}-never-made`;
    if (key === 'command') return 'true';
    if (schema.enum) return schema.enum.find((v) => v !== 'docker') ?? schema.enum[0]; // a target other than where it is
    if (typeType(schema) === 'number' || typeType(schema) === 'integer') return Math.max(1, schema.minimum ?? 1);
    if (typeType(schema) === 'boolean') return false;
    if (typeType(schema) === 'string') return 'x';
    return {};
  }

  /**
   * The rules beyond the schema, for a value the schema accepts: what the controller must still refuse
   * (or undefined: valid input). Keyed by the field's role, never by tool.
   */
  function semantic(tool: Tool, where: PropertyKey[], value: unknown, args: Record<string, unknown>): Expectation | undefined {
    const key = String(where[0]);
    const field = fieldPath(where);
    const schema = tool.inputSchema as JsonSchema;
    const s = typeof value === 'string' ? value : undefined;
    const referencesInstance = schema.required?.includes('instanceId');
    if (where.length === 1 && key === 'instanceId' && s !== undefined) {
      if (!INSTANCE_ID_PATTERN.test(s)) return { kind: 'invalid', field };
      if (referencesInstance && s !== running.id && s !== stopped.id) return { kind: 'refused', codes: ['NOT_FOUND'] };
    }
    if (key === 'migrationId' && s !== undefined) return MIGRATION_ID_PATTERN.test(s) ? { kind: 'refused', codes: ['NOT_FOUND'] } : { kind: 'invalid', field };
    if (key === 'since' && s !== undefined && Number.isNaN(Date.parse(s))) return { kind: 'invalid', field };
    if (key === 'region') return { kind: 'invalid', field }; // docker has one place
    if (key === 'command' && s !== undefined && (s.trim() === '' || s.includes('\0'))) return { kind: 'invalid', field };
    if (key === 'timeoutMs' && 'command' in args && typeof value === 'number' && value > EXEC_TIMEOUT_MS) return { kind: 'invalid', field };
    if (key === 'holder' && s !== undefined && /\p{Cc}/u.test(s)) return { kind: 'invalid', field };
    if (key === 'target') return value === running.providerType ? { kind: 'invalid', field } : { kind: 'refused', codes: ['PROVIDER_UNKNOWN'] };
    if (key === 'resources' && where[1] === 'cpu' && typeof value === 'number' && (value < limits.minCpu || value > limits.maxCpu)) return { kind: 'invalid', field };
    if (key === 'resources' && where[1] === 'memoryMb' && typeof value === 'number' && (value < limits.minMemoryMb || value > limits.maxMemoryMb)) {
      return { kind: 'invalid', field };
    }
    if ((key === 'env' || key === 'metadata') && where.length === 2) {
      if (where[1] === '__proto__') return { kind: 'invalid', field };
      if (typeof value === 'string' && value.includes('\0')) return { kind: 'invalid', field };
    }
    if ((key === 'env' && where.length === 1 && isRecord(value) && Object.keys(value).length > 128) || (key === 'metadata' && where.length === 1 && isRecord(value) && Object.keys(value).length > 64)) {
      return { kind: 'invalid', field };
    }
    return undefined;
  }

  /** The expectation for args that differ from the base at `where`: the schema first, then the rules beyond it. */
  function expectationFor(tool: Tool, args: Record<string, unknown>, where: PropertyKey[], value: unknown): Expectation {
    const violation = firstViolation(tool.inputSchema as JsonSchema, args);
    if (violation) return { kind: 'invalid', field: fieldPath(violation) };
    // Objects (resources, env, metadata): the rules apply to the whole and to each entry.
    if (isRecord(value) && where.length === 1) {
      const whole = semantic(tool, where, value, args);
      if (whole) return whole;
      for (const [k, v] of Object.entries(value)) {
        const entry = semantic(tool, [...where, k], v, args);
        if (entry) return entry;
      }
      return { kind: 'as-base' };
    }
    return semantic(tool, where, value, args) ?? { kind: 'as-base' };
  }

  function candidatesFor(schema: JsonSchema, first: boolean): Candidate[] {
    const type = schema.anyOf ? 'union' : typeType(schema);
    const out: Candidate[] = [];
    if (schema.enum) out.push(...enumNearMisses(schema.enum), ...EVIL_STRINGS.filter((c) => ['NUL inside', '100 KB string', 'empty', '__proto__'].includes(c.label)));
    else if (type === 'string' || type === 'union') out.push(...EVIL_STRINGS);
    if (type === 'number' || type === 'integer') out.push(...numberCandidates(schema));
    if (type === 'boolean') out.push(...BOOLEAN_CANDIDATES);
    if (type === 'union') {
      out.push({ label: 'array with a bad item', value: ['running', 'RUNNING'] });
      out.push({ label: 'array of 10^5 valid items', value: Array.from({ length: 100_000 }, () => 'running') });
    }
    out.push(...wrongTypes(type === 'union' ? 'none' : type ?? 'none', first));
    return out;
  }

  /** Cases for one object-valued property: its own fields, unknown fields, and record keys and values. */
  function recordCases(schema: JsonSchema, name: string): (Candidate & { field?: string })[] {
    const out: (Candidate & { field?: string })[] = [];
    if (schema.properties) {
      for (const [field, fieldSchema] of Object.entries(schema.properties)) {
        for (const c of candidatesFor(fieldSchema, false)) out.push({ label: `.${field} ${c.label}`, value: { [field]: c.value } });
      }
      // Unknown keys are refused at every level, whatever the schema says about them.
      // Where the object has required fields, the first of them missing is named first (the schema's order).
      out.push({ label: 'unknown nested field', value: { cpuCount: 1 }, ...(schema.required?.length ? {} : { field: `${name}.cpuCount` }) });
      out.push({ label: 'nested __proto__', value: objectWithKey('__proto__', { cpu: 1 }), field: `${name}.__proto__` });
    }
    if (schema.additionalProperties !== undefined || schema.propertyNames) {
      for (const k of HOSTILE_KEYS) out.push({ label: `key ${k.label}`, value: objectWithKey(String(k.value), 'v') });
      const valueKey = name === 'env' ? 'SAFE_KEY' : 'safe-key';
      for (const c of EVIL_STRINGS.filter((e) => ['NUL inside', '100 KB string', 'control characters', 'RTL override'].includes(e.label))) {
        out.push({ label: `value ${c.label}`, value: { [valueKey]: c.value } });
      }
      for (const c of wrongTypes('string', false)) out.push({ label: `value ${c.label}`, value: { [valueKey]: c.value } });
      out.push({ label: 'value nested 10^4 deep', value: { [valueKey]: wrongTypes('string', true).at(-1)!.value } });
      out.push({ label: '10^5 keys', value: Object.fromEntries(Array.from({ length: 100_000 }, (_, i) => [`K${i}`, 'v'])) });
    }
    return out;
  }

  function generate(tool: Tool): Case[] {
    const schema = tool.inputSchema as JsonSchema;
    const base = baseArgs(tool);
    const cases: Case[] = [];
    const add = (label: string, args: Record<string, unknown>, where: PropertyKey[], value: unknown): void => {
      cases.push({ tool: tool.name, label, args, expect: expectationFor(tool, args, where, value) });
    };
    let first = true;
    for (const [key, propSchema] of Object.entries(schema.properties ?? {})) {
      for (const c of candidatesFor(propSchema, first)) add(`${key}: ${c.label}`, { ...base, [key]: c.value }, [key], c.value);
      if (typeType(propSchema) === 'object') {
        for (const c of recordCases(propSchema, key)) {
          if (c.field) cases.push({ tool: tool.name, label: `${key} ${c.label}`, args: { ...base, [key]: c.value }, expect: { kind: 'invalid', field: c.field } });
          else add(`${key} ${c.label}`, { ...base, [key]: c.value }, [key], c.value);
        }
      }
      if (schema.required?.includes(key)) {
        const { [key]: _gone, ...rest } = base;
        cases.push({ tool: tool.name, label: `${key}: missing`, args: rest, expect: { kind: 'invalid', field: key } });
      }
      first = false;
    }
    for (const extra of ['evil', 'constructor', 'prototype', 'toString', 'hasOwnProperty']) {
      cases.push({ tool: tool.name, label: `unknown key ${extra}`, args: { ...base, [extra]: 1 }, expect: { kind: 'invalid', field: extra } });
    }
    // The JSON-RPC layer drops a top-level __proto__ before any tool sees it: the call is the base call.
    cases.push({ tool: tool.name, label: 'top-level __proto__ key', args: { ...base, ...objectWithKey('__proto__', { instanceId: 'x' }) }, expect: { kind: 'as-base' } });
    if (schema.required?.includes('instanceId')) {
      cases.push({ tool: tool.name, label: 'instanceId of nothing', args: { ...base, instanceId: `${PREFIX}-gone-00000000` }, expect: { kind: 'refused', codes: ['NOT_FOUND'] } });
    }
    return cases;
  }

  /** A tool whose base call is harmless to run: read-only, or non-destructive on an existing instance. */
  function harmless(tool: Tool): boolean {
    return tool.annotations?.readOnlyHint === true || (tool.annotations?.destructiveHint === false && 'instanceId' in baseArgs(tool));
  }

  it('refuses every bad input with a stable code, names the field, and changes nothing', async () => {
    const { tools } = await client.listTools();
    expect(tools.length).toBeGreaterThanOrEqual(14);
    const byTool = new Map(tools.map((t) => [t.name, t]));
    const cases = tools.flatMap(generate);

    // Hand-written cases the generator cannot phrase: a valid look-alike, metacharacters the shell
    // inside the workspace must see (and the host never), limits from the configuration.
    const extra: Case[] = [
      { tool: 'execute_command', label: 'timeoutMs above the configured limit', args: { instanceId: running.id, command: 'true', timeoutMs: EXEC_TIMEOUT_MS + 1 }, expect: { kind: 'invalid', field: 'timeoutMs' } },
      { tool: 'execute_command', label: 'timeoutMs of an hour', args: { instanceId: running.id, command: 'true', timeoutMs: 3_600_000 }, expect: { kind: 'invalid', field: 'timeoutMs' } },
      { tool: 'execute_command', label: 'a stopped instance', args: { instanceId: stopped.id, command: 'true' }, expect: { kind: 'refused', codes: ['CONFLICT'] } },
      { tool: 'keep_instance_alive', label: 'holder with a NUL', args: { instanceId: running.id, minutes: 5, holder: 'a\0b' }, expect: { kind: 'invalid', field: 'holder' } },
      { tool: 'update_swarm_instance', label: 'no change at all', args: { instanceId: running.id }, expect: { kind: 'invalid', field: 'patch' } },
      { tool: 'update_swarm_instance', label: 'a stopped instance, cpu beyond the host', args: { instanceId: stopped.id, resources: { cpu: limits.maxCpu + 1 } }, expect: { kind: 'invalid', field: 'resources.cpu' } },
      { tool: 'create_swarm_instance', label: 'existing name with a bad field', args: { name: running.name, resources: { cpu: 'many' } }, expect: { kind: 'invalid', field: 'resources.cpu' } },
      { tool: 'create_migration_plan', label: 'to where it already is', args: { instanceId: running.id, target: running.providerType }, expect: { kind: 'invalid', field: 'target' } },
      { tool: 'start_migration', label: 'to where it already is', args: { instanceId: running.id, target: running.providerType }, expect: { kind: 'invalid', field: 'target' } },
      { tool: 'start_migration', label: 'timeoutMs below a second', args: { instanceId: running.id, target: 'fly', timeoutMs: 999 }, expect: { kind: 'invalid', field: 'timeoutMs' } },
      { tool: 'get_instance_logs', label: 'a stopped instance with a bad tail', args: { instanceId: stopped.id, tail: 0 }, expect: { kind: 'invalid', field: 'tail' } },
      { tool: 'check_instance_health', label: 'historyLimit 0 returns no history', args: { instanceId: running.id, historyLimit: 0 }, expect: { kind: 'as-base' },
        check: (r) => expect(r.structuredContent!.history).toEqual([]) },
      { tool: 'list_swarm_instances', label: 'metadataKey toString matches nothing', args: { metadataKey: 'toString' }, expect: { kind: 'as-base' },
        check: (r) => expect(r.structuredContent!.count).toBe(0) },
    ];
    const all = [...cases, ...extra.filter((c) => byTool.has(c.tool))];

    const baseOutcome = new Map<string, string>();
    const counts = new Map<string, { refused: number; valid: number; skipped: number }>();
    const failures: string[] = [];
    let before = await snapshot();
    for (const c of all) {
      const tool = byTool.get(c.tool)!;
      const count = counts.get(c.tool) ?? { refused: 0, valid: 0, skipped: 0 };
      counts.set(c.tool, count);
      if (c.expect.kind === 'as-base') {
        // Valid input: run it only where that is harmless, and compare with the base call.
        if (!harmless(tool)) {
          count.skipped++;
          continue;
        }
        if (!baseOutcome.has(c.tool)) {
          const r = await call(c.tool, baseArgs(tool));
          baseOutcome.set(c.tool, r.isError ? textOf(r).split(':')[0]! : 'ok');
          before = await snapshot();
        }
      }
      const what = `${c.tool} [${c.label}]`;
      let result: ToolResult;
      try {
        result = await call(c.tool, c.args);
      } catch (err) {
        failures.push(`${what}: the call itself failed: ${(err as Error).message.slice(0, 300)}`);
        before = await snapshot();
        continue;
      }
      const text = textOf(result);
      const after = await snapshot();
      const shown = JSON.stringify(text.slice(0, 240));
      if (c.expect.kind === 'as-base') {
        count.valid++;
        const expected = baseOutcome.get(c.tool)!;
        const got = result.isError ? text.split(':')[0]! : 'ok';
        if (got !== expected) failures.push(`${what}: valid input should end like the base call (${expected}), got ${shown}`);
        if (got === 'INTERNAL') failures.push(`${what}: internal error: ${shown}`);
        // A valid create_snapshot writes its snapshot folder: that is the call's own effect, not a stray change.
        const mine = (key: string): boolean =>
          (key.includes(running.id) && key.startsWith('instances/')) || key === `health/${running.id}.json` || (tool.name === 'create_snapshot' && key.startsWith('snapshots/'));
        const changed = differences(before, after, mine);
        if (changed.length) failures.push(`${what}: a valid call changed what it does not own: ${changed.join('; ')}`);
        if (c.check) {
          try {
            await c.check(result);
          } catch (err) {
            failures.push(`${what}: ${(err as Error).message.slice(0, 300)}`);
          }
        }
        before = after;
        continue;
      }
      count.refused++;
      if (!result.isError) {
        failures.push(`${what}: accepted, expected ${c.expect.kind === 'invalid' ? `INVALID_INPUT naming ${c.expect.field}` : c.expect.codes.join('|')}; got ${shown}`);
      } else {
        const code = text.split(':')[0]!;
        if (!(code in ERROR_CODES)) failures.push(`${what}: the text does not start with a stable code: ${shown}`);
        if (code === 'INTERNAL') failures.push(`${what}: internal error for bad input: ${shown}`);
        if (c.expect.kind === 'invalid' && !text.startsWith(`INVALID_INPUT: ${c.expect.field}: expected `)) {
          failures.push(`${what}: expected "INVALID_INPUT: ${c.expect.field}: expected ...", got ${shown}`);
        }
        if (c.expect.kind === 'refused' && !c.expect.codes.includes(code)) failures.push(`${what}: expected ${c.expect.codes.join('|')}, got ${shown}`);
        // A clear message: one line, no invisible or control characters echoed back, not the 100 KB input.
        if (/[\p{Cc}\p{Cf}\p{Cs}]/u.test(text)) failures.push(`${what}: the message carries control or invisible characters: ${shown}`);
        if (text.length > 2_000) failures.push(`${what}: the message is ${text.length} characters long`);
      }
      const changed = differences(before, after);
      if (changed.length) failures.push(`${what}: a refused call changed state: ${changed.join('; ')}`);
      before = after;
    }

    const rows = [...counts].map(([tool, n]) => `  ${tool.padEnd(26)} ${String(n.refused).padStart(5)} ${String(n.valid).padStart(6)} ${String(n.skipped).padStart(8)}`);
    const refused = [...counts.values()].reduce((s, n) => s + n.refused, 0);
    const valid = [...counts.values()].reduce((s, n) => s + n.valid, 0);
    console.error(
      [`bad-input corpus: ${refused} refused cases, ${valid} valid cases run (valid input is not counted as bad input)`, `  ${'tool'.padEnd(26)} refused  valid  skipped`, ...rows].join('\n'),
    );
    if (failures.length) console.error(`${failures.length} failures:\n${failures.join('\n')}`);
    expect(failures).toEqual([]);
    // The server survived all of it and still holds exactly the two workspaces.
    const status = await call('get_swarm_status', {});
    expect(status.structuredContent).toMatchObject({ total: 2, byStatus: { running: 1, stopped: 1 } });
    expect(new Set(counts.keys())).toEqual(new Set(tools.map((t) => t.name)));
    for (const [tool, n] of counts) expect(n.refused, tool).toBeGreaterThan(0);
    expect(refused).toBeGreaterThanOrEqual(200);
    expect(existsSync(HOST_MARKER), 'a shell on the host ran a metacharacter case').toBe(false);
    expect(rejections).toEqual([]);
  });

  it('a valid look-alike name is a new workspace that leaves the others alone', async () => {
    const before = await snapshot();
    for (const name of [running.name.toUpperCase(), 'constructor']) {
      const created = await call('create_swarm_instance', { name });
      expect(created.isError, textOf(created)).toBeFalsy();
      expect(created.structuredContent).toMatchObject({ created: true });
      const made = created.structuredContent!.instance as VSCodeInstance;
      expect(made.id).not.toBe(running.id);
      const removed = await call('delete_swarm_instance', { instanceId: made.id });
      expect(removed.isError, textOf(removed)).toBeFalsy();
    }
    expect(differences(before, await snapshot())).toEqual([]);
  });

  it('metadata keys named after Object.prototype are data, found only where they are set', async () => {
    const metadata = { constructor: 'c', prototype: 'p', toString: 't', hasOwnProperty: 'h' };
    const before = await snapshot();
    const updated = await call('update_swarm_instance', { instanceId: running.id, metadata });
    expect(updated.isError, textOf(updated)).toBeFalsy();
    expect(updated.structuredContent).toMatchObject({ updateMode: 'none', instance: { config: { metadata } } });
    const record = JSON.parse(await readFile(path.join(stateDir, 'instances', `${running.id}.json`), 'utf8')) as VSCodeInstance;
    expect(record.config.metadata).toEqual(metadata);
    expect(differences(before, await snapshot(), (key) => key === `instances/${running.id}.json`)).toEqual([]);
    for (const key of Object.keys(metadata)) {
      const list = await call('list_swarm_instances', { metadataKey: key });
      expect((list.structuredContent!.instances as VSCodeInstance[]).map((i) => i.id), key).toEqual([running.id]);
    }
  });

  it('shell metacharacters reach the shell inside the workspace, never one on the host', async () => {
    const r = await call('execute_command', { instanceId: running.id, command: `echo "$(echo inside)" \`echo ticks\`; touch ${HOST_MARKER}; ls ${HOST_MARKER}` });
    expect(r.isError, textOf(r)).toBeFalsy();
    expect(r.structuredContent).toMatchObject({ exitCode: 0 });
    expect(r.structuredContent!.stdout).toContain('inside ticks');
    expect(existsSync(HOST_MARKER)).toBe(false);
    for (const name of [`$(touch ${HOST_MARKER})`, `x; touch ${HOST_MARKER}`]) {
      expect(textOf(await call('create_swarm_instance', { name }))).toMatch(/^INVALID_INPUT: name: expected /);
    }
    expect(existsSync(HOST_MARKER)).toBe(false);
    expect(INSTANCE_NAME_PATTERN.test('constructor')).toBe(true);
  });
});

function isRecord(value: unknown): value is Record<string, unknown> {
  return value !== null && typeof value === 'object' && !Array.isArray(value);
}

async function removeSwarm(swarmId: string): Promise<void> {
  const label = [`${LABEL_MANAGED}=true`, `${LABEL_SWARM}=${swarmId}`];
  for (const c of await docker.listContainers({ all: true, filters: { label } })) {
    await docker.getContainer(c.Id).remove({ force: true }).catch(() => undefined);
  }
  const { Volumes } = await docker.listVolumes({ filters: { label } });
  for (const v of Volumes ?? []) await docker.getVolume(v.Name).remove().catch(() => undefined);
}
