/**
 * Signing in to the dashboard through an OAuth issuer, end to end: a real oidc-provider on loopback
 * (test/helpers/oidc.ts: authorization code with PKCE for the dashboard's client), the real controller
 * and gateway on the real engine with the real code-server image, and real Chromium.
 *
 * What it proves: the sign-in page offers "Sign in with <issuer>"; alice, whose subject maps to the
 * member `alice`, signs in at the issuer in Chromium and sees her workspaces and not bob's, and no token
 * is kept in the page or a cookie; from the list she opens a workspace and the VS Code workbench renders
 * through the gateway. A subject mapped to no principal, a token minted for another audience, a callback
 * without state, one replayed, one finished in another browser, one claiming another issuer (RFC 9207
 * `iss`) and a code replayed under a fresh state are each refused with a clear page, an audit event and
 * no session. Screenshots go to test-artifacts/dashboard/; with UPDATE_README_SCREENSHOT=1 the list is
 * also written to docs/dashboard.png for the README.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { Browser, BrowserContext, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { VSCodeInstance } from '../../providers/provider.js';
import type { SwarmConfig } from '../../src/config.js';
import { createSwarm, startSwarmServices, type SwarmServices } from '../../src/controller/create-swarm.js';
import type { SwarmController } from '../../src/controller/swarm-controller.js';
import { OAUTH_COOKIE, SESSION_COOKIE, startDashboardFor, type Dashboard } from '../../src/dashboard/server.js';
import { createLogger } from '../../src/logger.js';
import { Authenticator } from '../../src/tenancy/authenticate.js';
import { AuthorizedSwarm } from '../../src/tenancy/authorized-swarm.js';
import { launchChromium } from '../helpers/browser.js';
import { cleanUp, makeStateDir, testConfig } from '../helpers/docker.js';
import { REPO_ROOT } from '../helpers/mcp.js';
import { CLIENT_SECRET, DASHBOARD_CLIENT_ID, signingKey, startAuthServer, type AuthServer } from '../helpers/oidc.js';
import { freePort } from '../helpers/ports.js';

const PREFIX = 'e2e-dash-oauth';
const ARTIFACTS = path.join(REPO_ROOT, 'test-artifacts', 'dashboard');
const README_SCREENSHOT = path.join(REPO_ROOT, 'docs', 'dashboard.png');
const ALICE = 'alice@idp.test';
const BOB = 'bob@idp.test';
const MALLORY = 'mallory@idp.test';
/** A JWT's shape: no page or cookie may hold one. */
const JWT_SHAPE = /eyJ[\w-]{8,}\.eyJ[\w-]{8,}\./;

/** A tiny cookie jar for the raw flows: every cookie any response set, sent on every request (all are on 127.0.0.1). */
class Jar {
  readonly cookies = new Map<string, string>();
  take(response: Response): void {
    for (const line of response.headers.getSetCookie()) {
      const [pair] = line.split(';');
      const eq = pair!.indexOf('=');
      const name = pair!.slice(0, eq).trim();
      const value = pair!.slice(eq + 1).trim();
      if (value === '' || /max-age=0/i.test(line)) this.cookies.delete(name);
      else this.cookies.set(name, value);
    }
  }
  header(): string {
    return [...this.cookies].map(([n, v]) => `${n}=${v}`).join('; ');
  }
}

describe('dashboard sign-in through an OAuth issuer, and opening a workspace, in Chromium', () => {
  let stateDir: string;
  let config: SwarmConfig;
  let controller: SwarmController;
  let services: SwarmServices;
  let dashboard: Dashboard;
  let issuer: AuthServer;
  let base: URL;
  let browser: Browser;
  let context: BrowserContext;
  let page: Page;
  let aliceOne: VSCodeInstance;
  let aliceTwo: VSCodeInstance;
  let bobOne: VSCodeInstance;

  const swarmAs = async (principalId: string): Promise<AuthorizedSwarm> => {
    const { token } = await controller.principals.createToken({ principalId, name: `${principalId}-setup` });
    return new AuthorizedSwarm({ controller, ...(services.health ? { health: services.health } : {}), migrations: services.migrations }, await new Authenticator(controller.principals).authenticate(token, 'library'));
  };

  /** The denied sign-ins recorded so far. */
  const deniedSignIns = async (): Promise<string[]> =>
    (await controller.audit.query({ actorId: 'anonymous', outcome: 'denied', type: 'dev.vscode-swarm.auth.authenticate' })).map((e) => e.reason ?? '');

  /**
   * A sign-in at the issuer without a browser, up to the callback URL it sends back (not requested):
   * /oauth/start on the dashboard, then the issuer's redirects, the subject form and the consent step.
   */
  async function callbackUrlFor(subject: string, jar: Jar): Promise<string> {
    // A fresh session at the issuer each time, so that it asks who signs in (and no earlier subject is reused).
    const issuerJar = new Jar();
    const jarFor = (u: string): Jar => (u.startsWith(`${issuer.issuer}/`) ? issuerJar : jar);
    let url = new URL('/oauth/start', base).toString();
    let body: string | undefined;
    for (let hop = 0; hop < 20; hop++) {
      const response = await fetch(url, {
        method: body === undefined ? 'GET' : 'POST',
        redirect: 'manual',
        headers: { cookie: jarFor(url).header(), ...(body !== undefined ? { 'content-type': 'application/x-www-form-urlencoded' } : {}) },
        ...(body !== undefined ? { body } : {}),
      });
      jarFor(url).take(response);
      body = undefined;
      const location = response.headers.get('location');
      if (location) {
        await response.body?.cancel();
        const next = new URL(location, url).toString();
        if (next.startsWith(new URL('/oauth/callback', base).toString())) return next;
        url = next;
        continue;
      }
      const text = await response.text();
      expect(response.status, `${url}: ${text.slice(0, 300)}`).toBe(200);
      expect(text, url).toContain('name="subject"');
      body = new URLSearchParams({ subject }).toString(); // the issuer's sign-in form posts to itself
    }
    throw new Error('the sign-in did not come back to the dashboard');
  }

  /** GET of a callback URL with the jar's cookies: status, body, and the session cookie if one was set. */
  async function callback(url: string, jar: Jar): Promise<{ status: number; body: string; session: string | undefined }> {
    const response = await fetch(url, { redirect: 'manual', headers: { cookie: jar.header() } });
    const session = response.headers
      .getSetCookie()
      .find((c) => c.startsWith(`${SESSION_COOKIE}=`) && !/max-age=0/i.test(c))
      ?.split(';')[0];
    jar.take(response);
    return { status: response.status, body: await response.text(), session };
  }

  /** In Chromium: from the sign-in page through the issuer's form, as `subject`. */
  async function signInWithIssuer(on: Page, subject: string): Promise<void> {
    await on.goto(dashboard.url);
    await Promise.all([on.waitForURL(`${issuer.issuer}/interaction/**`), on.click('a[href="/oauth/start"]')]);
    await on.fill('input[name="subject"]', subject);
    await Promise.all([on.waitForURL(`${base.origin}/**`), on.click('button[type="submit"]')]);
    await on.waitForLoadState('load');
  }

  beforeAll(async () => {
    await cleanUp(PREFIX);
    await mkdir(ARTIFACTS, { recursive: true });
    stateDir = await makeStateDir(PREFIX);
    const port = await freePort();
    const dashboardUrl = `http://127.0.0.1:${port}/`;
    issuer = await startAuthServer({ signingKey: await signingKey(), resources: [dashboardUrl], dashboardRedirectUris: [`${dashboardUrl}oauth/callback`] });
    const clientSecretFile = path.join(stateDir, 'dashboard-client-secret');
    await writeFile(clientSecretFile, `${CLIENT_SECRET}\n`, { mode: 0o600 });
    config = testConfig(stateDir, {
      idle: { enabled: false },
      health: { intervalMs: 3_600_000, autoRecover: false },
      oauth: { issuer: issuer.issuer },
      dashboard: { port, oauth: { clientId: DASHBOARD_CLIENT_ID, clientSecretFile } },
    });
    const logger = createLogger('silent');
    controller = createSwarm(config, { logger });
    services = await startSwarmServices(controller, logger);
    dashboard = await startDashboardFor(services, config, { logger, pollMs: 500 });
    base = new URL(dashboard.url);
    expect(dashboard.url).toBe(dashboardUrl);
    await controller.principals.addPrincipal({ id: 'alice', role: 'member', subjects: [ALICE] });
    await controller.principals.addPrincipal({ id: 'bob', role: 'member', subjects: [BOB] });
    const alice = await swarmAs('alice');
    [aliceOne, aliceTwo] = await Promise.all([alice.createInstance({ name: `${PREFIX}-alice` }), alice.createInstance({ name: `${PREFIX}-alice-docs` })]).then((r) => r.map((x) => x.instance));
    await alice.stopInstance(aliceTwo.id);
    bobOne = (await (await swarmAs('bob')).createInstance({ name: `${PREFIX}-bob` })).instance;

    browser = await launchChromium();
    context = await browser.newContext({ viewport: { width: 1100, height: 480 } });
    page = await context.newPage();
  }, 300_000);

  afterAll(async () => {
    await browser?.close().catch(() => undefined);
    await dashboard?.close();
    await services?.close();
    await issuer?.close();
    await cleanUp(PREFIX, stateDir);
  });

  it('offers "Sign in with <issuer>" on the sign-in page', async () => {
    const response = await fetch(new URL('/login', base));
    const html = await response.text();
    expect(response.status).toBe(200);
    expect(html).toContain(`<a class="button" href="/oauth/start">Sign in with ${issuer.issuer}</a>`);
    expect(html).toContain('name="token"'); // API tokens still work beside it
  });

  it('signs alice in through the issuer in Chromium; she sees only her workspaces, and no token is kept', async () => {
    const served: string[] = [];
    const keep = (r: import('playwright-core').Response): void => void r.text().then((b) => served.push(b), () => undefined);
    page.on('response', keep);
    await signInWithIssuer(page, ALICE);
    await page.waitForSelector(`tr[data-id="${aliceOne.id}"]`);
    expect(page.url()).toBe(dashboard.url);
    const table = (await page.textContent('#workspaces')) ?? '';
    expect(table).toContain(`${PREFIX}-alice`);
    expect(table).toContain(`${PREFIX}-alice-docs`);
    expect(table).not.toContain(`${PREFIX}-bob`);
    expect(await page.locator(`tr[data-id="${bobOne.id}"]`).count()).toBe(0);
    expect(await page.textContent('header .who')).toBe('alice (member)');

    const cookies = await context.cookies(dashboard.url);
    const session = cookies.find((c) => c.name === SESSION_COOKIE) ?? expect.unreachable('no session cookie');
    expect(session).toMatchObject({ httpOnly: true, sameSite: 'Strict', path: '/' });
    expect(cookies.find((c) => c.name === OAUTH_COOKIE)).toBeUndefined(); // the flow's binding is spent
    for (const c of await context.cookies()) expect(c.value, c.name).not.toMatch(JWT_SHAPE);
    const signedIn = dashboard.sessions.resume(session.value);
    expect(signedIn.actor).toMatchObject({ principalId: 'alice', role: 'member', door: 'dashboard', credentialId: expect.stringMatching(/^jwt:/) });
    expect(signedIn.session.subject).toBe(ALICE);
    await new Promise((r) => setTimeout(r, 200)); // response bodies are read asynchronously
    page.off('response', keep);
    expect(served.length).toBeGreaterThan(3);
    for (const body of served) expect(body).not.toMatch(JWT_SHAPE);

    await page.screenshot({ path: path.join(ARTIFACTS, 'oauth-list.png') });
    if (process.env.UPDATE_README_SCREENSHOT === '1') {
      await mkdir(path.dirname(README_SCREENSHOT), { recursive: true });
      await page.screenshot({ path: README_SCREENSHOT });
    }
  });

  it('opens a workspace from the dashboard, and the VS Code workbench renders', async () => {
    await page.goto(dashboard.url);
    await page.waitForSelector(`tr[data-id="${aliceOne.id}"]`);
    await Promise.all([page.waitForURL(`http://${aliceOne.id}.localhost:*/**`, { timeout: 60_000 }), page.click(`tr[data-id="${aliceOne.id}"] form[action="/actions/open"] button`)]);
    expect(page.url()).not.toContain('swarm_token'); // exchanged for the editor's cookie and dropped
    await page.locator('.monaco-workbench').waitFor({ timeout: 90_000 });
    await page.screenshot({ path: path.join(ARTIFACTS, 'oauth-workbench.png') });
  });

  it('refuses a subject mapped to no principal: a clear page, an audit event, no session', async () => {
    const other = await browser.newContext();
    const mallory = await other.newPage();
    const sessionsBefore = dashboard.sessions.size;
    const deniedBefore = (await deniedSignIns()).length;
    await signInWithIssuer(mallory, MALLORY);
    expect(await mallory.textContent('.notice')).toMatch(/Sign-in refused: the token's subject is not a principal here/);
    expect(await mallory.locator('a[href="/oauth/start"]').count()).toBe(1);
    expect((await other.cookies(dashboard.url)).map((c) => c.name)).not.toContain(SESSION_COOKIE);
    expect(dashboard.sessions.size).toBe(sessionsBefore);
    const denied = (await deniedSignIns()).slice(deniedBefore);
    expect(denied).toEqual([expect.stringMatching(/^OAuth sign-in through .*: the token's subject is not a principal here/)]);
    await mallory.screenshot({ path: path.join(ARTIFACTS, 'oauth-refused.png') });
    await other.close();
  });

  it('refuses a missing state, another browser’s callback, a wrong iss, a replayed callback and a replayed code', async () => {
    const jar = new Jar();
    const deniedBefore = (await deniedSignIns()).length;
    const sessionsBefore = dashboard.sessions.size;
    const refusals: [string, { status: number; body: string; session: string | undefined }, RegExp][] = [];

    refusals.push(['no state', await callback(new URL('/oauth/callback?code=made-up', base).toString(), jar), /the issuer’s answer has no state/]);

    const stolen = await callbackUrlFor(ALICE, new Jar()); // started by someone else's browser
    refusals.push(['another browser', await callback(stolen, jar), /started in another browser/]);

    const mixedUp = new URL(await callbackUrlFor(ALICE, jar));
    expect(mixedUp.searchParams.get('iss')).toBe(issuer.issuer);
    mixedUp.searchParams.set('iss', 'https://evil.example');
    refusals.push(['a wrong iss', await callback(mixedUp.toString(), jar), /wrong issuer: the answer comes from https:\/\/evil\.example/]);

    const good = await callbackUrlFor(BOB, jar);
    const accepted = await callback(good, jar);
    expect(accepted.status, accepted.body).toBe(200);
    expect(accepted.session).toBeTruthy();
    expect(accepted.body).toContain('Signed in.');
    const list = await fetch(base, { headers: { cookie: accepted.session! } });
    const listHtml = await list.text();
    expect(listHtml).toContain(`data-id="${bobOne.id}"`);
    expect(listHtml).not.toContain(`data-id="${aliceOne.id}"`);
    const sessionsAfterGood = dashboard.sessions.size;
    expect(sessionsAfterGood).toBe(sessionsBefore + 1);

    refusals.push(['the same callback again', await callback(good, jar), /state is unknown or already used/]);

    const fresh = new URL(await callbackUrlFor(BOB, jar));
    fresh.searchParams.set('code', new URL(good).searchParams.get('code')!);
    refusals.push(['a spent code under a fresh state', await callback(fresh.toString(), jar), /the issuer refused the code: invalid_grant/]);

    for (const [what, res, reason] of refusals) {
      expect(res.status, `${what}: ${res.body.slice(0, 300)}`).toBe(401);
      expect(res.body, what).toMatch(/Sign-in refused: /);
      expect(res.body, what).toMatch(reason);
      expect(res.session, what).toBeUndefined();
    }
    expect(dashboard.sessions.size).toBe(sessionsAfterGood);
    const denied = (await deniedSignIns()).slice(deniedBefore);
    expect(denied).toHaveLength(refusals.length);
    refusals.forEach(([what, , reason], i) => expect(denied[i], what).toMatch(reason));
  });

  it('refuses an access token minted for another audience', async () => {
    issuer.mintAudience.set(dashboard.url, 'https://elsewhere.example/');
    try {
      const jar = new Jar();
      const res = await callback(await callbackUrlFor(ALICE, jar), jar);
      expect(res.status).toBe(401);
      expect(res.body).toContain('Sign-in refused: wrong audience');
      expect(res.session).toBeUndefined();
      expect((await deniedSignIns()).at(-1)).toMatch(/wrong audience$/);
    } finally {
      issuer.mintAudience.delete(dashboard.url);
    }
  });

  it('re-checks an OAuth session on every request: it ends once the principal is disabled', async () => {
    const jar = new Jar();
    const { session } = await callback(await callbackUrlFor(BOB, jar), jar);
    expect((await fetch(base, { headers: { cookie: session! } })).status).toBe(200);
    await controller.principals.updatePrincipal('bob', { disabled: true });
    const after = await fetch(base, { headers: { cookie: session! } });
    expect(after.status).toBe(401);
    expect(await after.text()).toContain('Signed out: principal bob is disabled');
  });
});
