/**
 * The principal store (src/tenancy/principals.ts) on real files in a throw-away state folder: the local
 * admin that always exists, principals, and API tokens from the moment they are shown (once) to the
 * moment they stop working (revoked, expired, principal disabled, role narrowed). Every refusal is
 * UNAUTHENTICATED and never repeats the credential; the file holds hashes only, mode 0600; a corrupt
 * file is refused and left as it was; a reopened store is the same store. The clock is injected, so
 * expiry and the once-a-minute last-use write are checked without waiting.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { SwarmError } from '../../src/errors.js';
import { Authenticator } from '../../src/tenancy/authenticate.js';
import { LOCAL_ADMIN_ID, SCOPES } from '../../src/tenancy/identity.js';
import { LOCAL_CREDENTIAL_FILE, LOCAL_CREDENTIAL_ID, PrincipalStore } from '../../src/tenancy/principals.js';

const TOKEN = /^vss_(t[0-9a-f]{12})_([A-Za-z0-9_-]{43})$/;
const START = Date.parse('2026-03-01T12:00:00.000Z');

/** A clock the test moves by hand. */
class Clock {
  ms = START;
  readonly now = (): Date => new Date(this.ms);
  advance(ms: number): void {
    this.ms += ms;
  }
}

const dirs: string[] = [];
const opened: PrincipalStore[] = [];

async function stateDir(): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'principals-test-'));
  dirs.push(dir);
  return dir;
}

async function openStore(dir: string, clock = new Clock()): Promise<PrincipalStore> {
  const store = new PrincipalStore({ stateDir: dir, now: clock.now });
  await store.open();
  opened.push(store);
  return store;
}

/** The SwarmError a call fails with; fails the test when it does not fail. */
function refusal(work: () => unknown): SwarmError {
  try {
    work();
  } catch (err) {
    expect(err).toBeInstanceOf(SwarmError);
    return err as SwarmError;
  }
  throw new Error('expected the call to be refused, but it succeeded');
}

async function asyncRefusal(work: () => Promise<unknown>): Promise<SwarmError> {
  try {
    await work();
  } catch (err) {
    expect(err).toBeInstanceOf(SwarmError);
    return err as SwarmError;
  }
  throw new Error('expected the call to be refused, but it succeeded');
}

function principalsFile(dir: string): string {
  return path.join(dir, 'principals.json');
}

afterEach(async () => {
  // Closed first: a pending last-use write would otherwise re-create a removed folder.
  await Promise.all(opened.splice(0).map((s) => s.close()));
  await Promise.all(dirs.splice(0).map((d) => rm(d, { recursive: true, force: true })));
});

describe('principal store: principals', () => {
  it('has the local admin after open, and refuses to disable or demote it', async () => {
    const dir = await stateDir();
    const store = await openStore(dir);
    const admin = store.requirePrincipal(LOCAL_ADMIN_ID);
    expect(admin).toMatchObject({ id: LOCAL_ADMIN_ID, role: 'admin', kind: 'person' });
    expect(admin.disabled).toBeUndefined();
    const before = await readFile(principalsFile(dir), 'utf8');

    const disable = await asyncRefusal(() => store.updatePrincipal(LOCAL_ADMIN_ID, { disabled: true }));
    expect(disable.code).toBe('INVALID_INPUT');
    expect(disable.field).toBe('principalId');
    expect(disable.message).toContain('local admin cannot be disabled or demoted');
    for (const role of ['member', 'viewer'] as const) {
      const demote = await asyncRefusal(() => store.updatePrincipal(LOCAL_ADMIN_ID, { role }));
      expect(demote.code).toBe('INVALID_INPUT');
    }

    expect(store.requirePrincipal(LOCAL_ADMIN_ID)).toEqual(admin);
    expect(await readFile(principalsFile(dir), 'utf8')).toBe(before);
    // Still allowed: giving it its own quotas, or "re-enabling" it.
    const updated = await store.updatePrincipal(LOCAL_ADMIN_ID, { disabled: false, role: 'admin', quotas: { instances: 50 } });
    expect(updated).toMatchObject({ role: 'admin', quotas: { instances: 50 } });
    expect(updated.disabled).toBeUndefined();
  });

  it('adds, lists and updates principals, and refuses a second one with the same id', async () => {
    const clock = new Clock();
    const store = await openStore(await stateDir(), clock);
    const bob = await store.addPrincipal({ id: 'bob', role: 'viewer', kind: 'service', name: 'CI job' });
    const alice = await store.addPrincipal({ id: 'alice' });
    expect(alice).toEqual({ id: 'alice', name: 'alice', kind: 'person', role: 'member', createdAt: new Date(START).toISOString() });
    expect(bob).toMatchObject({ id: 'bob', name: 'CI job', kind: 'service', role: 'viewer' });
    expect(store.listPrincipals().map((p) => p.id)).toEqual(['alice', 'bob', LOCAL_ADMIN_ID]);

    const again = await asyncRefusal(() => store.addPrincipal({ id: 'alice', role: 'admin' }));
    expect(again.code).toBe('CONFLICT');
    expect(again.message).toContain('alice');
    expect(store.requirePrincipal('alice').role).toBe('member');

    const changed = await store.updatePrincipal('alice', { role: 'admin', quotas: { cpu: 4, perProvider: { docker: { instances: 2 } } } });
    expect(changed).toMatchObject({ id: 'alice', role: 'admin', quotas: { cpu: 4, perProvider: { docker: { instances: 2 } } } });
    expect((await store.updatePrincipal('alice', { disabled: true })).disabled).toBe(true);
    expect(store.getPrincipal('alice')?.disabled).toBe(true);
    expect((await store.updatePrincipal('alice', { disabled: false })).disabled).toBeUndefined();
    // The role and quotas survived the disable and enable.
    expect(store.getPrincipal('alice')).toMatchObject({ role: 'admin', quotas: { cpu: 4 } });

    const missing = await asyncRefusal(() => store.updatePrincipal('nobody', { disabled: true }));
    expect(missing.code).toBe('NOT_FOUND');
    expect(missing.message).toContain('nobody');
  });
});

describe('principal store: tokens', () => {
  it('shows a token once as vss_<id>_<secret>; the file holds only its hash, mode 0600', async () => {
    const dir = await stateDir();
    const store = await openStore(dir);
    await store.addPrincipal({ id: 'alice' });
    const { token, info } = await store.createToken({ principalId: 'alice', name: 'laptop' });
    const match = TOKEN.exec(token);
    expect(match, token).not.toBeNull();
    const [, id, secret] = match!;
    expect(info).toMatchObject({ id, principalId: 'alice', name: 'laptop', scopes: ['swarm:read', 'swarm:write', 'swarm:exec'] });
    expect(info).not.toHaveProperty('hash');
    expect(JSON.stringify(store.listTokens('alice'))).not.toContain(secret);
    expect(store.getToken(id!)).toEqual(info);

    const text = await readFile(principalsFile(dir), 'utf8');
    expect(text).not.toContain(secret);
    expect(text).not.toContain(token);
    const stored = (JSON.parse(text) as { tokens: { id: string; hash: string }[] }).tokens;
    expect(stored).toEqual([expect.objectContaining({ id, hash: createHash('sha256').update(secret!).digest('hex') })]);
    expect((await stat(principalsFile(dir))).mode & 0o777).toBe(0o600);
    expect((await stat(path.join(dir, LOCAL_CREDENTIAL_FILE))).mode & 0o777).toBe(0o600);
  });

  it('authenticates a token until it is revoked, then refuses it on the very next call', async () => {
    const store = await openStore(await stateDir());
    await store.addPrincipal({ id: 'alice' });
    const { token, info } = await store.createToken({ principalId: 'alice', name: 'agent', scopes: ['swarm:read', 'swarm:exec'] });
    const ok = store.authenticate(token);
    expect(ok.principal.id).toBe('alice');
    expect(ok.credentialId).toBe(info.id);
    expect(ok.scopes).toEqual(['swarm:read', 'swarm:exec']);

    const revoked = await store.revokeToken(info.id);
    expect(revoked.revokedAt).toBeDefined();
    const err = refusal(() => store.authenticate(token));
    expect(err.code).toBe('UNAUTHENTICATED');
    expect(err.message).toContain('revoked');
    expect(err.message).not.toContain(token.slice(18));
    // Revoking again changes nothing; an unknown id is NOT_FOUND.
    expect(await store.revokeToken(info.id)).toEqual(revoked);
    expect((await asyncRefusal(() => store.revokeToken('t000000000000'))).code).toBe('NOT_FOUND');
  });

  it('refuses a token once it has expired', async () => {
    const clock = new Clock();
    const store = await openStore(await stateDir(), clock);
    await store.addPrincipal({ id: 'alice' });
    const { token, info } = await store.createToken({ principalId: 'alice', name: 'short', expiresInDays: 1 });
    expect(info.expiresAt).toBe(new Date(START + 86_400_000).toISOString());
    clock.advance(86_400_000 - 1);
    expect(store.authenticate(token).principal.id).toBe('alice');
    clock.advance(1);
    const err = refusal(() => store.authenticate(token));
    expect(err.code).toBe('UNAUTHENTICATED');
    expect(err.message).toContain('expired');
  });

  it('refuses the tokens of a disabled principal, and takes them back when it is enabled again', async () => {
    const store = await openStore(await stateDir());
    await store.addPrincipal({ id: 'alice' });
    const { token } = await store.createToken({ principalId: 'alice', name: 'laptop' });
    await store.updatePrincipal('alice', { disabled: true });
    const err = refusal(() => store.authenticate(token));
    expect(err.code).toBe('UNAUTHENTICATED');
    expect(err.message).toContain('disabled');
    await store.updatePrincipal('alice', { disabled: false });
    expect(store.authenticate(token).principal.id).toBe('alice');
  });

  it('refuses truncated, forged, random and empty credentials without repeating them', async () => {
    const store = await openStore(await stateDir());
    await store.addPrincipal({ id: 'alice' });
    const { token, info } = await store.createToken({ principalId: 'alice', name: 'laptop' });
    const authenticator = new Authenticator(store);
    const forgedSecret = randomBytes(32).toString('base64url');
    const cases: Record<string, string> = {
      truncated: token.slice(0, -1),
      'cut in half': token.slice(0, token.length >> 1),
      'one character changed': `${token.slice(0, -1)}${token.endsWith('A') ? 'B' : 'A'}`,
      forged: `vss_${info.id}_${forgedSecret}`,
      'unknown id': `vss_t${'0'.repeat(12)}_${token.slice(-43)}`,
      random: randomBytes(32).toString('base64url'),
      'local credential, truncated': store.localToken().slice(0, -1),
      'with a trailing newline': `${token}\n`,
      empty: '',
    };
    for (const [label, credential] of Object.entries(cases)) {
      const err = refusal(() => store.authenticate(credential));
      expect(err.code, label).toBe('UNAUTHENTICATED');
      const viaDoor = await asyncRefusal(() => authenticator.authenticate(credential, 'mcp-http'));
      expect(viaDoor.code, label).toBe('UNAUTHENTICATED');
      for (const message of [err.message, viaDoor.message, JSON.stringify(err.toJSON())]) {
        if (credential) expect(message, label).not.toContain(credential.trim());
        expect(message, label).not.toContain(token.slice(-43));
        expect(message, label).not.toContain(forgedSecret);
      }
    }
    // The real one still works after all that.
    expect(store.authenticate(token).principal.id).toBe('alice');
  });

  it('refuses scopes beyond the role at create, naming scopes', async () => {
    const store = await openStore(await stateDir());
    await store.addPrincipal({ id: 'val', role: 'viewer' });
    await store.addPrincipal({ id: 'mo', role: 'member' });
    const viewer = await asyncRefusal(() => store.createToken({ principalId: 'val', name: 'too much', scopes: ['swarm:read', 'swarm:write'] }));
    expect(viewer.code).toBe('INVALID_INPUT');
    expect(viewer.field).toBe('scopes');
    expect(viewer.message).toMatch(/^scopes: /);
    expect(viewer.message).toContain('swarm:write');
    const member = await asyncRefusal(() => store.createToken({ principalId: 'mo', name: 'admin?', scopes: ['swarm:admin'] }));
    expect(member.code).toBe('INVALID_INPUT');
    expect(member.field).toBe('scopes');
    expect(store.listTokens()).toEqual([]);
  });

  it("gives a viewer's token only swarm:read in force, also when its principal is demoted after the token was made", async () => {
    const store = await openStore(await stateDir());
    const authenticator = new Authenticator(store);
    await store.addPrincipal({ id: 'val', role: 'viewer' });
    const { token: viewerToken, info } = await store.createToken({ principalId: 'val', name: 'read only' });
    expect(info.scopes).toEqual(['swarm:read']);
    expect(store.authenticate(viewerToken).scopes).toEqual(['swarm:read']);
    expect((await authenticator.authenticate(viewerToken, 'mcp-http')).scopes).toEqual(['swarm:read']);

    await store.addPrincipal({ id: 'mo', role: 'member' });
    const { token: memberToken } = await store.createToken({ principalId: 'mo', name: 'full' });
    expect(store.authenticate(memberToken).scopes).toEqual(['swarm:read', 'swarm:write', 'swarm:exec']);
    await store.updatePrincipal('mo', { role: 'viewer' });
    expect(store.authenticate(memberToken).scopes).toEqual(['swarm:read']);
    const actor = await authenticator.authenticate(memberToken, 'cli');
    expect(actor).toMatchObject({ principalId: 'mo', role: 'viewer', scopes: ['swarm:read'], door: 'cli' });
  });

  it('writes lastUsedAt at most once a minute per token', async () => {
    const dir = await stateDir();
    const clock = new Clock();
    const store = await openStore(dir, clock);
    await store.addPrincipal({ id: 'alice' });
    const { token, info } = await store.createToken({ principalId: 'alice', name: 'busy' });
    const onDisk = async (): Promise<{ inode: number; lastUsedAt?: string }> => {
      const tokens = (JSON.parse(await readFile(principalsFile(dir), 'utf8')) as { tokens: { id: string; lastUsedAt?: string }[] }).tokens;
      return { inode: (await stat(principalsFile(dir))).ino, lastUsedAt: tokens.find((t) => t.id === info.id)?.lastUsedAt };
    };

    store.authenticate(token);
    const first = new Date(START).toISOString();
    expect(store.getToken(info.id)?.lastUsedAt).toBe(first);
    await store.close(); // flushes the pending last-use write
    const written = await onDisk();
    expect(written.lastUsedAt).toBe(first);

    // Many uses within the minute: no new value and no write at all (every write replaces the file).
    for (let s = 1; s < 60; s++) {
      clock.ms = START + s * 1000;
      store.authenticate(token);
    }
    clock.ms = START + 59_999;
    store.authenticate(token);
    expect(store.getToken(info.id)?.lastUsedAt).toBe(first);
    await store.close();
    expect(await onDisk()).toEqual(written);

    clock.ms = START + 60_000;
    store.authenticate(token);
    const second = new Date(START + 60_000).toISOString();
    expect(store.getToken(info.id)?.lastUsedAt).toBe(second);
    await store.close();
    const rewritten = await onDisk();
    expect(rewritten.lastUsedAt).toBe(second);
    expect(rewritten.inode).not.toBe(written.inode);
  });
});

describe('principal store: the file', () => {
  const corruptions: Record<string, (valid: string) => string> = {
    'not JSON': () => '{"version": 1, "principals": [',
    truncated: (valid) => valid.slice(0, Math.floor(valid.length * 0.6)),
    'another version': (valid) => valid.replace('"version": 1', '"version": 2'),
    'a token without its hash': (valid) => valid.replace(/"hash": "[0-9a-f]{64}"/, '"hash": "not-a-hash"'),
    'an unknown role': (valid) => valid.replace('"role": "member"', '"role": "owner"'),
    'an empty file': () => '',
  };

  for (const [label, corrupt] of Object.entries(corruptions)) {
    it(`refuses to open a principals.json with ${label} (STATE_ERROR naming the file) and leaves it as it was`, async () => {
      const dir = await stateDir();
      const store = await openStore(dir);
      await store.addPrincipal({ id: 'alice' });
      await store.createToken({ principalId: 'alice', name: 'laptop' });
      await store.close();
      const bad = corrupt(await readFile(principalsFile(dir), 'utf8'));
      await writeFile(principalsFile(dir), bad, { mode: 0o600 });

      const err = await asyncRefusal(() => new PrincipalStore({ stateDir: dir }).open());
      expect(err.code).toBe('STATE_ERROR');
      expect(err.message).toContain(principalsFile(dir));
      expect(await readFile(principalsFile(dir), 'utf8')).toBe(bad);
    });
  }

  it('reopens as the same store: principals, tokens (revoked ones stay revoked) and the local credential', async () => {
    const dir = await stateDir();
    const store = await openStore(dir);
    await store.addPrincipal({ id: 'alice', quotas: { instances: 3 }, subjects: ['auth0|alice'] });
    await store.addPrincipal({ id: 'bob', role: 'viewer' });
    await store.updatePrincipal('bob', { disabled: true });
    const kept = await store.createToken({ principalId: 'alice', name: 'kept', expiresInDays: 30 });
    const dropped = await store.createToken({ principalId: 'alice', name: 'dropped' });
    await store.revokeToken(dropped.info.id);
    store.authenticate(kept.token);
    await store.close();

    const reopened = await openStore(dir);
    expect(reopened.listPrincipals()).toEqual(store.listPrincipals());
    expect(reopened.listTokens()).toEqual(store.listTokens());
    expect(reopened.localToken()).toBe(store.localToken());
    expect(reopened.authenticate(kept.token).credentialId).toBe(kept.info.id);
    expect(refusal(() => reopened.authenticate(dropped.token)).code).toBe('UNAUTHENTICATED');
    expect(reopened.principalForSubject('auth0|alice')?.id).toBe('alice');
  });

  it('authenticates the text of the local credential file as the local admin with every scope', async () => {
    const dir = await stateDir();
    const store = await openStore(dir);
    const credential = (await readFile(path.join(dir, LOCAL_CREDENTIAL_FILE), 'utf8')).trim();
    expect(credential.length).toBeGreaterThanOrEqual(32);
    expect(credential).toBe(store.localToken());
    const found = store.authenticate(credential);
    expect(found.principal.id).toBe(LOCAL_ADMIN_ID);
    expect(found.credentialId).toBe(LOCAL_CREDENTIAL_ID);
    expect(found.scopes).toEqual([...SCOPES]);
    const actor = await new Authenticator(store).authenticate(credential, 'cli');
    expect(actor).toEqual({ kind: 'principal', principalId: LOCAL_ADMIN_ID, role: 'admin', scopes: [...SCOPES], credentialId: LOCAL_CREDENTIAL_ID, door: 'cli' });
    // A second store on the same folder keeps the same credential rather than making a new one.
    expect((await openStore(dir)).authenticate(credential).principal.id).toBe(LOCAL_ADMIN_ID);
  });
});
