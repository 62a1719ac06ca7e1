/**
 * The dashboard's sessions (src/dashboard/sessions.ts) over a real principal store in a throw-away state
 * folder: a session acts as its principal with its credential's scopes, and ends on the next request once
 * the token is revoked or expires, the principal is disabled, or the session itself expires; a demoted
 * principal's scopes narrow at once. CSRF tokens are per session and compared exactly.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { DashboardSessions } from '../../src/dashboard/sessions.js';
import { Authenticator } from '../../src/tenancy/authenticate.js';
import { PrincipalStore } from '../../src/tenancy/principals.js';

const HOUR_MS = 3_600_000;
const dirs: string[] = [];
const stores: PrincipalStore[] = [];

afterEach(async () => {
  for (const s of stores.splice(0)) await s.close();
  for (const d of dirs.splice(0)) await rm(d, { recursive: true, force: true });
});

async function setUp(): Promise<{ store: PrincipalStore; auth: Authenticator; clock: { ms: number }; sessions: DashboardSessions }> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'dashboard-sessions-'));
  dirs.push(dir);
  const clock = { ms: Date.parse('2026-03-01T12:00:00.000Z') };
  const store = new PrincipalStore({ stateDir: dir, now: () => new Date(clock.ms) });
  await store.open();
  stores.push(store);
  const sessions = new DashboardSessions({ principals: store, ttlMs: 12 * HOUR_MS, now: () => clock.ms });
  return { store, auth: new Authenticator(store), clock, sessions };
}

/** Expects the work to be refused as UNAUTHENTICATED with a message matching `message`. */
function expectEnded(work: () => unknown, message: RegExp): void {
  expect(work).toThrowError(expect.objectContaining({ name: 'SwarmError', code: 'UNAUTHENTICATED', message: expect.stringMatching(message) }));
}

describe('dashboard sessions', () => {
  it('acts as the principal with its credential’s scopes, through the dashboard door', async () => {
    const { store, auth, sessions } = await setUp();
    await store.addPrincipal({ id: 'alice', role: 'member' });
    const { token, info } = await store.createToken({ principalId: 'alice', name: 'read only', scopes: ['swarm:read'] });
    const session = sessions.create(await auth.authenticate(token, 'dashboard'));
    const { actor } = sessions.resume(session.id);
    expect(actor).toEqual({ kind: 'principal', principalId: 'alice', role: 'member', scopes: ['swarm:read'], credentialId: info.id, door: 'dashboard' });
    expect(JSON.stringify(session)).not.toContain(token.slice(4));
    expect(session.id).not.toBe(session.csrfToken);
    expect(session.id).toMatch(/^[A-Za-z0-9_-]{43}$/);
  });

  it('ends on the next request once the token is revoked, and stays ended', async () => {
    const { store, auth, sessions } = await setUp();
    await store.addPrincipal({ id: 'alice', role: 'member' });
    const { token, info } = await store.createToken({ principalId: 'alice', name: 'dash' });
    const session = sessions.create(await auth.authenticate(token, 'dashboard'));
    sessions.resume(session.id);
    await store.revokeToken(info.id);
    expectEnded(() => sessions.resume(session.id), /was revoked/);
    expectEnded(() => sessions.resume(session.id), /not signed in/);
    expect(sessions.size).toBe(0);
  });

  it('ends when the principal is disabled, the token expires or the session expires', async () => {
    const { store, auth, clock, sessions } = await setUp();
    const longSessions = new DashboardSessions({ principals: store, ttlMs: 72 * HOUR_MS, now: () => clock.ms });
    await store.addPrincipal({ id: 'bob', role: 'member' });
    await store.addPrincipal({ id: 'carol', role: 'member' });
    const bob = sessions.create(await auth.authenticate((await store.createToken({ principalId: 'bob', name: 'b' })).token, 'dashboard'));
    const carol = longSessions.create(await auth.authenticate((await store.createToken({ principalId: 'carol', name: 'c', expiresInDays: 1 })).token, 'dashboard'));
    const local = sessions.create(await auth.authenticate(store.localToken(), 'dashboard'));
    await store.updatePrincipal('bob', { disabled: true });
    expectEnded(() => sessions.resume(bob.id), /bob is disabled/);
    clock.ms += 11 * HOUR_MS;
    expect(sessions.resume(local.id).actor.principalId).toBe('local-admin');
    clock.ms += 2 * HOUR_MS; // the session's 12 hours are over
    expectEnded(() => sessions.resume(local.id), /session expired/);
    expect(longSessions.resume(carol.id).actor.principalId).toBe('carol');
    clock.ms += 11 * HOUR_MS; // carol's token lasted a day; her 72-hour session would go on
    expectEnded(() => longSessions.resume(carol.id), /^token t[0-9a-f]{12} expired at /);
  });

  it('narrows the scopes at once when the principal is demoted', async () => {
    const { store, auth, sessions } = await setUp();
    await store.addPrincipal({ id: 'dora', role: 'member' });
    const session = sessions.create(await auth.authenticate((await store.createToken({ principalId: 'dora', name: 'd' })).token, 'dashboard'));
    expect(sessions.resume(session.id).actor.scopes).toEqual(['swarm:read', 'swarm:write', 'swarm:exec']);
    await store.updatePrincipal('dora', { role: 'viewer' });
    expect(sessions.resume(session.id).actor).toMatchObject({ role: 'viewer', scopes: ['swarm:read'] });
  });

  it('checks the CSRF token exactly and per session', async () => {
    const { store, auth, sessions } = await setUp();
    const one = sessions.create(await auth.authenticate(store.localToken(), 'dashboard'));
    const two = sessions.create(await auth.authenticate(store.localToken(), 'dashboard'));
    expect(sessions.checkCsrf(one, one.csrfToken)).toBe(true);
    expect(sessions.checkCsrf(one, two.csrfToken)).toBe(false);
    expect(sessions.checkCsrf(one, `${one.csrfToken}x`)).toBe(false);
    expect(sessions.checkCsrf(one, one.csrfToken.slice(0, -1))).toBe(false);
    expect(sessions.checkCsrf(one, '')).toBe(false);
    expect(sessions.checkCsrf(one, undefined)).toBe(false);
    expect(sessions.checkCsrf(one, [one.csrfToken])).toBe(false);
  });

  it('refuses an unknown or missing session id, and an OAuth actor it cannot re-check', async () => {
    const { sessions } = await setUp();
    expectEnded(() => sessions.resume(undefined), /not signed in/);
    expectEnded(() => sessions.resume('made-up'), /not signed in/);
    expectEnded(() => sessions.create({ kind: 'principal', principalId: 'x', role: 'member', scopes: ['swarm:read'], credentialId: 'jwt:abc', door: 'dashboard' }), /OAuth sign-in/);
  });
});
