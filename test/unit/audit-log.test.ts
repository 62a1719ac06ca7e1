/**
 * The audit log on real files: durable group-committed appends in call order, queries, torn last lines,
 * retention (and what webhook cursors hold), and secrets that never reach the file.
 */
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  AuditConfigSchema,
  AuditLog,
  dayFileName,
  noopAuditSink,
  type AuditConfig,
  type AuditEvent,
  type AuditEventInput,
} from '../../src/audit/audit-log.js';
import { isSwarmError } from '../../src/errors.js';
import { redactString } from '../../src/logger.js';

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const alice = { type: 'principal', id: 'alice', door: 'mcp-http' } as const;
const bob = { type: 'principal', id: 'bob', credentialId: 'tok-1', door: 'cli' } as const;
const system = { type: 'system', id: 'health-monitor', door: 'system' } as const;

function input(over: Partial<AuditEventInput> = {}): AuditEventInput {
  return { type: 'dev.vscode-swarm.instance.create', action: 'create_swarm_instance', actor: alice, outcome: 'ok', ...over };
}

/** A clock the test moves. */
function clock(start: string): { now: () => Date; set: (iso: string) => void } {
  let t = new Date(start);
  return { now: () => t, set: (iso) => (t = new Date(iso)) };
}

let dir: string;
let logs: AuditLog[];

async function openLog(config: Partial<AuditConfig> = {}, now?: () => Date, holds?: () => string[]): Promise<AuditLog> {
  const log = new AuditLog({ dir, config: AuditConfigSchema.parse(config), ...(now ? { now } : {}), ...(holds ? { holds } : {}) });
  await log.open();
  logs.push(log);
  return log;
}

async function rawLines(day: string): Promise<string[]> {
  return (await fs.readFile(path.join(dir, dayFileName(day)), 'utf8')).split('\n').filter((l) => l !== '');
}

beforeEach(async () => {
  dir = path.join(await fs.mkdtemp(path.join(os.tmpdir(), 'vscode-swarm-audit-')), 'audit');
  logs = [];
});

afterEach(async () => {
  for (const log of logs) await log.close();
  await fs.rm(path.dirname(dir), { recursive: true, force: true });
});

describe('AuditLog', () => {
  it('appends a well-formed event durably to the day file, mode 0600 in a 0700 folder', async () => {
    const c = clock('2025-03-04T05:06:07.000Z');
    const log = await openLog({ source: 'urn:test' }, c.now);
    const event = await log.record(input({ subject: 'alice-1', owner: 'alice', request: { name: 'one' } }));
    expect(event).toMatchObject({
      specversion: '1.0',
      source: 'urn:test',
      time: '2025-03-04T05:06:07.000Z',
      datacontenttype: 'application/json',
      type: 'dev.vscode-swarm.instance.create',
      subject: 'alice-1',
      request: { name: 'one' },
    });
    expect(event.id).toMatch(UUID);
    // Durable before record resolved: the line is there when we look, without closing the log.
    expect((await rawLines('2025-03-04')).map((l) => JSON.parse(l))).toEqual([event]);
    expect((await fs.stat(path.join(dir, dayFileName('2025-03-04')))).mode & 0o777).toBe(0o600);
    expect((await fs.stat(dir)).mode & 0o777).toBe(0o700);
  });

  it('writes many concurrent records in call order with far fewer writes and fsyncs than events', async () => {
    const log = await openLog();
    const n = 300;
    const events = await Promise.all(Array.from({ length: n }, (_, i) => log.record(input({ subject: `i-${i}` }))));
    const day = events[0]!.time.slice(0, 10);
    const lines = (await rawLines(day)).map((l) => JSON.parse(l));
    expect(lines.map((e) => e.subject)).toEqual(Array.from({ length: n }, (_, i) => `i-${i}`));
    expect(lines.map((e) => e.id)).toEqual(events.map((e) => e.id));
    const stats = log.stats();
    expect(stats.events).toBe(n);
    expect(stats.writes).toBeLessThanOrEqual(n / 10);
    expect(stats.fsyncs).toBeLessThanOrEqual(n / 10);
    expect(stats.fsyncs).toBeGreaterThanOrEqual(stats.writes);
  });

  it('answers queries by time range, subject, actor, type prefix, owner, outcome and visibility; limit keeps the newest', async () => {
    const c = clock('2025-01-01T10:00:00.000Z');
    const log = await openLog({}, c.now);
    const plan: Array<[string, Partial<AuditEventInput>]> = [
      ['2025-01-01T10:00:00.000Z', { subject: 'alice-1', owner: 'alice' }],
      ['2025-01-01T23:59:59.000Z', { type: 'dev.vscode-swarm.instance.stop', action: 'idle.stop', actor: system, subject: 'alice-1', owner: 'alice' }],
      ['2025-01-02T08:00:00.000Z', { actor: bob, subject: 'bob-1', owner: 'bob' }],
      ['2025-01-02T09:00:00.000Z', { actor: bob, subject: 'alice-1', owner: 'alice', outcome: 'denied', code: 'FORBIDDEN' }],
      ['2025-01-03T12:00:00.000Z', { type: 'dev.vscode-swarm.token.revoke', action: 'revoke_token', subject: 'tok-1' }],
      ['2025-01-03T13:00:00.000Z', { actor: system, subject: 'bob-1', owner: 'bob', outcome: 'failed', code: 'PROVIDER_ERROR' }],
    ];
    const recorded: AuditEvent[] = [];
    for (const [time, over] of plan) {
      c.set(time);
      recorded.push(await log.record(input(over)));
    }
    const ids = (events: { id: string }[]): number[] => events.map((e) => recorded.findIndex((r) => r.id === e.id));
    expect(await fs.readdir(dir)).toEqual(['events-2025-01-01.jsonl', 'events-2025-01-02.jsonl', 'events-2025-01-03.jsonl']);

    expect(ids(await log.query())).toEqual([0, 1, 2, 3, 4, 5]);
    expect(ids(await log.query({ since: '2025-01-01T23:59:59Z', until: '2025-01-03T12:00:00Z' }))).toEqual([1, 2, 3]);
    expect(ids(await log.query({ subject: 'alice-1' }))).toEqual([0, 1, 3]);
    expect(ids(await log.query({ actorId: 'bob' }))).toEqual([2, 3]);
    expect(ids(await log.query({ type: 'dev.vscode-swarm.instance.*' }))).toEqual([0, 1, 2, 3, 5]);
    expect(ids(await log.query({ type: 'dev.vscode-swarm.instance.stop' }))).toEqual([1]);
    expect(ids(await log.query({ type: 'dev.vscode-swarm.instance' }))).toEqual([]);
    expect(ids(await log.query({ owner: 'bob' }))).toEqual([2, 5]);
    expect(ids(await log.query({ outcome: 'denied' }))).toEqual([3]);
    // bob sees what he did (2, 3) and what happened to what he owns (2, 5).
    expect(ids(await log.query({ visibleTo: { principalId: 'bob' } }))).toEqual([2, 3, 5]);
    expect(ids(await log.query({ limit: 2 }))).toEqual([4, 5]);
    expect(ids(await log.query({ limit: 2, subject: 'alice-1' }))).toEqual([1, 3]);
    expect(ids(await log.query({ owner: 'alice', outcome: 'ok', since: '2025-01-01T12:00:00Z' }))).toEqual([1]);

    await expect(log.query({ limit: 10_001 })).rejects.toSatisfy((err) => isSwarmError(err, 'INVALID_INPUT') && /limit/.test((err as Error).message));
    await expect(log.query({ since: 'yesterday' })).rejects.toSatisfy((err) => isSwarmError(err, 'INVALID_INPUT') && /since/.test((err as Error).message));
  });

  it('skips a torn last line and starts the next append on a fresh line', async () => {
    const c = clock('2025-02-02T02:00:00.000Z');
    const first = await openLog({}, c.now);
    const a = await first.record(input({ subject: 'a' }));
    await first.close();
    const file = path.join(dir, dayFileName('2025-02-02'));
    await fs.appendFile(file, '{"specversion":"1.0","id":"torn-eve');

    const second = await openLog({}, c.now);
    expect((await second.query()).map((e) => e.id)).toEqual([a.id]);
    const b = await second.record(input({ subject: 'b' }));
    const lines = await rawLines('2025-02-02');
    expect(lines).toHaveLength(3);
    expect(lines[1]).toBe('{"specversion":"1.0","id":"torn-eve');
    expect(JSON.parse(lines[2]!)).toEqual(b);
    expect((await second.query()).map((e) => e.id)).toEqual([a.id, b.id]);
    // Other junk in the middle of a file does not break reading either.
    await fs.appendFile(file, 'not json\n[1,2]\n{"id":3}\n');
    expect((await second.query()).map((e) => e.id)).toEqual([a.id, b.id]);
  });

  it('prunes day files past retention at open, except from the oldest file a hold names on', async () => {
    const c = clock('2025-01-01T12:00:00.000Z');
    const writer = await openLog({ retentionDays: 30 }, c.now);
    for (const day of ['2025-01-01', '2025-02-10', '2025-03-01', '2025-03-20', '2025-04-05']) {
      c.set(`${day}T12:00:00.000Z`);
      await writer.record(input({ subject: day }));
    }
    await writer.close();

    // 2025-04-05 minus 30 days is 2025-03-06: older files go, unless held.
    const held = await openLog({ retentionDays: 30 }, c.now, () => ['events-2025-02-10.jsonl']);
    expect((await fs.readdir(dir)).sort()).toEqual(['events-2025-02-10.jsonl', 'events-2025-03-01.jsonl', 'events-2025-03-20.jsonl', 'events-2025-04-05.jsonl']);
    await held.close();

    const free = await openLog({ retentionDays: 30 }, c.now);
    expect((await fs.readdir(dir)).sort()).toEqual(['events-2025-03-20.jsonl', 'events-2025-04-05.jsonl']);
    expect((await free.query()).map((e) => e.subject)).toEqual(['2025-03-20', '2025-04-05']);
    c.set('2025-05-01T00:00:00.000Z'); // cutoff 2025-04-01
    expect(await free.prune()).toEqual(['events-2025-03-20.jsonl']);
  });

  it('keeps env values, vss_ tokens, bearer values and URL token parameters out of the file', async () => {
    const c = clock('2025-06-01T00:00:00.000Z');
    const log = await openLog({}, c.now);
    const secrets = ['env-value-secret-1', 'deep-env-value-2', 'vss_AbCdEfGhIjKlMnOpQrStUv-_0123', 'bearer-value-xyz-123', 'url-token-value-456', 'vss_ReasonTokenValue0123456789'];
    await log.record(
      input({
        reason: `rejected credential ${secrets[5]}`,
        request: {
          name: 'alice-1',
          env: { GITHUB_PAT: secrets[0], PLAIN: 'plain-value' },
          nested: [{ config: { environment: { DB_URL: secrets[1] } } }],
          note: `pasted ${secrets[2]} by mistake`,
          headers: { 'x-forwarded': `Bearer ${secrets[3]}` },
          callback: `https://hooks.example/cb?access_token=${secrets[4]}&keep=yes`,
        },
      }),
    );
    const raw = await fs.readFile(path.join(dir, dayFileName('2025-06-01')), 'utf8');
    for (const secret of [...secrets, 'plain-value']) expect(raw).not.toContain(secret);
    const [event] = await log.query();
    expect(event!.request).toEqual({
      name: 'alice-1',
      env: { GITHUB_PAT: '[redacted]', PLAIN: '[redacted]' },
      nested: [{ config: { environment: { DB_URL: '[redacted]' } } }],
      note: 'pasted [redacted] by mistake',
      headers: { 'x-forwarded': 'Bearer [redacted]' },
      callback: 'https://hooks.example/cb?access_token=[redacted]&keep=yes',
    });
    expect(event!.reason).toBe('rejected credential [redacted]');
    // The same pattern covers log lines, and leaves words that only start alike alone.
    expect(redactString(`token ${secrets[2]}.`)).toBe('token [redacted].');
    expect(redactString('the vss_ prefix and vss_short stay')).toBe('the vss_ prefix and vss_short stay');
  });

  it('rejects malformed events naming the field, and fails records after close', async () => {
    const log = await openLog();
    await expect(log.record(input({ outcome: 'maybe' as never }))).rejects.toSatisfy((err) => isSwarmError(err, 'INVALID_INPUT') && (err as { field?: string }).field === 'audit.outcome');
    await expect(log.record(input({ actor: { ...alice, id: '' } }))).rejects.toSatisfy((err) => isSwarmError(err, 'INVALID_INPUT') && (err as { field?: string }).field === 'audit.actor.id');
    await log.close();
    await expect(log.record(input())).rejects.toSatisfy((err) => isSwarmError(err, 'STATE_ERROR'));
  });

  it('records nothing when disabled or through the no-op sink, yet answers well-formed events', async () => {
    const log = await openLog({ enabled: false });
    const event = await log.record(input());
    expect(event.id).toMatch(UUID);
    const noop = await noopAuditSink.record(input({ request: { env: { A: 'value-a' } } }));
    expect(noop).toMatchObject({ specversion: '1.0', source: 'urn:vscode-swarm', request: { env: { A: '[redacted]' } } });
    await expect(fs.readdir(dir)).rejects.toMatchObject({ code: 'ENOENT' });
  });

  it('fills config defaults and rejects what is malformed, naming the field', () => {
    expect(AuditConfigSchema.parse({})).toEqual({ enabled: true, retentionDays: 90, source: 'urn:vscode-swarm', webhooks: [] });
    expect(AuditConfigSchema.parse({ webhooks: [{ url: 'https://siem.example/in', secret: '0123456789abcdef' }] }).webhooks[0]).toEqual({
      url: 'https://siem.example/in',
      secret: '0123456789abcdef',
      maxAttempts: 0,
    });
    const issues = (value: unknown): string[] => (AuditConfigSchema.safeParse(value).error?.issues ?? []).map((i) => i.path.join('.'));
    expect(issues({ retentionDays: 0 })).toEqual(['retentionDays']);
    expect(issues({ extra: 1 })).toEqual(['']);
    expect(issues({ webhooks: [{ url: 'ftp://x.example/', secret: '0123456789abcdef' }] })).toEqual(['webhooks.0.url']);
    expect(issues({ webhooks: [{ url: 'https://x.example/', secret: 'short' }] })).toEqual(['webhooks.0.secret']);
    expect(issues({ webhooks: [{ url: 'https://x.example/' }] })).toEqual(['webhooks.0.secret']);
    expect(issues({ webhooks: [{ url: 'https://x.example/', secretEnv: 'AUDIT_HOOK_KEY' }] })).toEqual([]);
  });
});
