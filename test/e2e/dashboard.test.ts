/**
 * The dashboard end to end, on the real engine (the light stand-in image), the real controller and its
 * gateway, and real Chromium: two members, alice and bob, each with an API token.
 *
 * What it proves: alice signs in in Chromium and sees her workspace and not bob's; creates one through
 * the page, stops and starts it, and sees a change made through another door (the domain layer directly)
 * without reloading; the workspace page shows the health chart, logs and audit events; Open redirects to
 * a one-time link the gateway accepts; a delete goes through a confirmation page. Bob's session, posting
 * every action on alice's workspace, gets NOT_FOUND worded exactly as for a workspace that does not exist,
 * and nothing changes. A POST without the session's CSRF token, with another Origin, or with none, is
 * refused and changes nothing; a wrong Host is refused (421); every response carries the strict CSP and
 * no page has inline script (and Chromium reports no CSP violation); a revoked token's session is refused
 * on its next request and its live stream says so; no credential appears in any page served.
 * Screenshots go to test-artifacts/.
 */
import http from 'node:http';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import type { Browser, BrowserContext, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { VSCodeInstance } from '../../providers/provider.js';
import type { SwarmConfig } from '../../src/config.js';
import { createSwarm, startSwarmServices, type SwarmServices } from '../../src/controller/create-swarm.js';
import type { SwarmController } from '../../src/controller/swarm-controller.js';
import { CONTENT_SECURITY_POLICY, SESSION_COOKIE, startDashboardFor, type Dashboard } from '../../src/dashboard/server.js';
import { createLogger } from '../../src/logger.js';
import { Authenticator } from '../../src/tenancy/authenticate.js';
import { AuthorizedSwarm } from '../../src/tenancy/authorized-swarm.js';
import { launchChromium } from '../helpers/browser.js';
import { cleanUp, makeStateDir, testConfig } from '../helpers/docker.js';
import { REPO_ROOT } from '../helpers/mcp.js';
import { ensureStandinImage } from '../helpers/standin-image.js';
import { tokenParts } from '../helpers/tenancy.js';

const PREFIX = 'e2e-dash';
const ARTIFACTS = path.join(REPO_ROOT, 'test-artifacts');
const LIVE_TIMEOUT_MS = 20_000;

interface Reply {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
}

describe('dashboard end to end: sign-in, tenancy, CSRF, CSP, live updates in Chromium', () => {
  let stateDir: string;
  let config: SwarmConfig;
  let controller: SwarmController;
  let services: SwarmServices;
  let dashboard: Dashboard;
  let base: URL;
  let browser: Browser;
  let context: BrowserContext;
  let page: Page;
  const tokens = new Map<string, string>();
  /** Every body the dashboard served in this file, raw or to Chromium: none may hold a credential. */
  const served: { what: string; body: string }[] = [];
  const cspViolations: string[] = [];
  let aliceOne: VSCodeInstance;
  let bobOne: VSCodeInstance;
  let created: VSCodeInstance;

  const swarmAs = async (token: string): Promise<AuthorizedSwarm> =>
    new AuthorizedSwarm({ controller, ...(services.health ? { health: services.health } : {}), migrations: services.migrations }, await new Authenticator(controller.principals).authenticate(token, 'library'));

  /** One request to the dashboard, Host and Origin as given (fetch would not let the test set Host). */
  function raw(method: string, pathname: string, options: { host?: string; origin?: string; cookie?: string; form?: Record<string, string>; headers?: Record<string, string> } = {}): Promise<Reply> {
    const body = options.form ? new URLSearchParams(options.form).toString() : undefined;
    return new Promise((resolve, reject) => {
      const req = http.request(
        {
          host: '127.0.0.1',
          port: base.port,
          method,
          path: pathname,
          headers: {
            host: options.host ?? base.host,
            ...(options.origin ? { origin: options.origin } : {}),
            ...(options.cookie ? { cookie: options.cookie } : {}),
            ...options.headers,
            ...(body !== undefined ? { 'content-type': 'application/x-www-form-urlencoded', 'content-length': Buffer.byteLength(body) } : {}),
          },
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () => {
            const text = Buffer.concat(chunks).toString('utf8');
            served.push({ what: `${method} ${pathname}`, body: text });
            resolve({ status: res.statusCode ?? 0, headers: res.headers, body: text });
          });
        },
      );
      req.on('error', reject);
      req.end(body);
    });
  }

  /** Signs in over raw HTTP: the session cookie and the CSRF token from the list page. */
  async function signIn(token: string): Promise<{ cookie: string; csrf: string }> {
    const res = await raw('POST', '/login', { origin: base.origin, form: { token } });
    expect(res.status, res.body).toBe(303);
    const cookie = [res.headers['set-cookie'] ?? []].flat().find((c) => c.startsWith(`${SESSION_COOKIE}=`))?.split(';')[0] ?? expect.unreachable('no session cookie');
    const list = await raw('GET', '/', { cookie });
    expect(list.status).toBe(200);
    const csrf = /data-csrf="([^"]+)"/.exec(list.body)?.[1] ?? expect.unreachable('no CSRF token on the page');
    return { cookie, csrf };
  }

  /** The first `list` event of a session's live stream, parsed; the stream is closed after it. */
  function firstLiveList(cookie: string): Promise<{ instances: { id: string }[] }> {
    return new Promise((resolve, reject) => {
      const req = http.request({ host: '127.0.0.1', port: base.port, path: '/events', headers: { host: base.host, cookie } }, (res) => {
        let text = '';
        res.on('data', (c: Buffer) => {
          text += c.toString('utf8');
          const event = /event: list\ndata: (.*)\n\n/.exec(text);
          if (!event) return;
          served.push({ what: 'GET /events', body: text });
          req.destroy();
          resolve(JSON.parse(event[1]!) as { instances: { id: string }[] });
        });
      });
      req.on('error', reject);
      req.end();
    });
  }

  async function snapshot(): Promise<unknown> {
    return structuredClone(controller.registry.list()).sort((a, b) => a.id.localeCompare(b.id));
  }

  const statusCell = (id: string): string => `tr[data-id="${id}"] td[data-field="status"]`;

  /** Clicks a submit button or link and waits for the page it leads to (a POST answers 303 to the next page). */
  async function follow(selector: string, timeout = 120_000): Promise<void> {
    // waitForNavigation, not waitForURL: the next page often has the very address of this one.
    await Promise.all([page.waitForNavigation({ timeout }), page.click(selector)]);
  }

  beforeAll(async () => {
    await cleanUp(PREFIX);
    await mkdir(ARTIFACTS, { recursive: true });
    stateDir = await makeStateDir(PREFIX);
    const standin = await ensureStandinImage();
    config = testConfig(stateDir, {
      providers: { docker: { image: standin } },
      idle: { enabled: false },
      health: { intervalMs: 3_600_000, autoRecover: false },
      dashboard: { port: 0 },
    });
    const logger = createLogger('silent');
    controller = createSwarm(config, { logger });
    services = await startSwarmServices(controller, logger);
    dashboard = await startDashboardFor(services, config, { logger, pollMs: 500 });
    base = new URL(dashboard.url);
    tokens.set('local admin', controller.principals.localToken());
    for (const id of ['alice', 'bob']) {
      await controller.principals.addPrincipal({ id, role: 'member' });
      tokens.set(id, (await controller.principals.createToken({ principalId: id, name: `${id}-dashboard` })).token);
    }
    aliceOne = (await (await swarmAs(tokens.get('alice')!)).createInstance({ name: `${PREFIX}-alice` })).instance;
    bobOne = (await (await swarmAs(tokens.get('bob')!)).createInstance({ name: `${PREFIX}-bob` })).instance;

    browser = await launchChromium();
    context = await browser.newContext();
    page = await context.newPage();
    page.on('console', (m) => {
      if (/Content Security Policy|Refused to/i.test(m.text())) cspViolations.push(m.text());
    });
    page.on('response', (r) => {
      if (new URL(r.url()).origin !== base.origin) return;
      void r.text().then(
        (body) => served.push({ what: `chromium ${r.url()}`, body }),
        () => undefined, // a redirect or an open event stream has no body to read
      );
    });
  });

  afterAll(async () => {
    await browser?.close().catch(() => undefined);
    await dashboard?.close();
    await services?.close();
    await cleanUp(PREFIX, stateDir);
  });

  it('refuses a Host that is not its own (DNS rebinding) and answers its own names', async () => {
    const wrong = await raw('GET', '/', { host: `evil.example:${base.port}` });
    expect(wrong.status).toBe(421);
    expect((await raw('GET', '/', { host: `127.0.0.1:${Number(base.port) + 1}` })).status).toBe(421);
    for (const host of [`127.0.0.1:${base.port}`, `localhost:${base.port}`, `dashboard.localhost:${base.port}`]) expect((await raw('GET', '/', { host })).status, host).toBe(200);
  });

  it('sends the strict CSP and the other headers on every response, and no inline script', async () => {
    // The strict policy, with only the editors' gateway added to form-action (Open redirects there).
    expect(dashboard.contentSecurityPolicy).toBe(CONTENT_SECURITY_POLICY.replace("form-action 'self'", `form-action 'self' http://*.localhost:${new URL(aliceOne.url!).port}`));
    for (const p of ['/', '/login', '/static/dashboard.js', '/static/dashboard.css', '/nope']) {
      const res = await raw('GET', p);
      expect(res.headers['content-security-policy'], p).toBe(dashboard.contentSecurityPolicy);
      expect(res.headers['x-content-type-options'], p).toBe('nosniff');
      expect(res.headers['referrer-policy'], p).toBe('no-referrer');
    }
    const { cookie } = await signIn(tokens.get('alice')!);
    const list = await raw('GET', '/', { cookie });
    expect(list.headers['cache-control']).toBe('no-store');
    const scripts = list.body.match(/<script\b[^>]*>[\s\S]*?<\/script>/gi) ?? [];
    expect(scripts).toEqual(['<script src="/static/dashboard.js" defer></script>']);
    expect(list.body).not.toMatch(/<style\b|\sstyle="/i);
  });

  it('signs alice in through Chromium and shows her workspace and not bob’s', async () => {
    await page.goto(dashboard.url);
    await page.fill('input[name="token"]', tokens.get('alice')!);
    await follow('form.login button');
    expect(page.url()).toBe(dashboard.url);
    await page.waitForSelector(`tr[data-id="${aliceOne.id}"]`);
    const cookies = await context.cookies();
    const session = cookies.find((c) => c.name === SESSION_COOKIE) ?? expect.unreachable('no session cookie in Chromium');
    expect(session).toMatchObject({ httpOnly: true, sameSite: 'Strict', path: '/', domain: '127.0.0.1' });
    expect(session.expires).toBeGreaterThan(Date.now() / 1000);
    const table = (await page.textContent('#workspaces')) ?? '';
    expect(table).toContain(`${PREFIX}-alice`);
    expect(table).not.toContain(`${PREFIX}-bob`);
    expect(await page.locator(`tr[data-id="${bobOne.id}"]`).count()).toBe(0);
    expect(await page.textContent('#usage')).toMatch(/Usage: 1 of 10 workspaces/);
    await page.screenshot({ path: path.join(ARTIFACTS, 'dashboard-list.png'), fullPage: true });
  });

  it('creates a workspace and stops and starts it through the page', async () => {
    await page.fill('form.create input[name="name"]', `${PREFIX}-made`);
    await follow('form.create button');
    await expect.poll(() => page.textContent('.notice'), { timeout: LIVE_TIMEOUT_MS }).toContain(`Created ${PREFIX}-made`);
    created = controller.registry.list().find((i) => i.name === `${PREFIX}-made`) ?? expect.unreachable('not in the registry');
    expect(created.owner).toBe('alice');
    expect(await page.textContent(statusCell(created.id))).toBe('running');

    await follow(`tr[data-id="${created.id}"] form[action="/actions/stop"] button`);
    expect(controller.registry.get(created.id)?.status).toBe('stopped');
    await expect.poll(() => page.textContent(statusCell(created.id)), { timeout: LIVE_TIMEOUT_MS }).toBe('stopped');

    await follow(`tr[data-id="${created.id}"] form[action="/actions/start"] button`);
    expect(controller.registry.get(created.id)?.status).toBe('running');
    await expect.poll(() => page.textContent(statusCell(created.id)), { timeout: LIVE_TIMEOUT_MS }).toBe('running');
  });

  it('updates the list live, without reloading, when a workspace changes through another door', async () => {
    await page.evaluate('window.__notReloaded = 42');
    await (await swarmAs(tokens.get('alice')!)).stopInstance(aliceOne.id);
    await expect.poll(() => page.textContent(statusCell(aliceOne.id)), { timeout: LIVE_TIMEOUT_MS }).toBe('stopped');
    await (await swarmAs(tokens.get('alice')!)).startInstance(aliceOne.id);
    await expect.poll(() => page.textContent(statusCell(aliceOne.id)), { timeout: LIVE_TIMEOUT_MS }).toBe('running');
    // A lease taken elsewhere shows too.
    await (await swarmAs(tokens.get('alice')!)).keepAlive(aliceOne.id, 30);
    await expect.poll(() => page.textContent(`tr[data-id="${aliceOne.id}"] td[data-field="lease"]`), { timeout: LIVE_TIMEOUT_MS }).toMatch(/^until 20/);
    expect(await page.evaluate('window.__notReloaded')).toBe(42);
  });

  it('shows a workspace’s health chart, recent logs and audit events', async () => {
    await page.goto(new URL(`/w/${created.id}`, base).toString());
    expect(await page.locator('svg.health-chart rect[data-status]').count()).toBeGreaterThan(0);
    expect(await page.locator('pre.logs').count()).toBe(1);
    const audit = (await page.textContent('table.audit')) ?? '';
    expect(audit).toContain('instance.stop');
    expect(audit).toContain('instance.create');
    expect(audit).toContain('alice (dashboard)');
    await page.screenshot({ path: path.join(ARTIFACTS, 'dashboard-workspace.png'), fullPage: true });
  });

  it('opens a workspace with a fresh one-time link the gateway accepts', async () => {
    const { cookie, csrf } = await signIn(tokens.get('alice')!);
    const res = await raw('POST', '/actions/open', { origin: base.origin, cookie, form: { csrf, instanceId: aliceOne.id } });
    expect(res.status, res.body).toBe(303);
    const link = new URL(res.headers.location ?? expect.unreachable('no Location'));
    expect(link.hostname).toBe(`${aliceOne.id}.localhost`);
    expect(link.searchParams.get('swarm_token')).toBeTruthy();
    const gateway = await new Promise<{ status: number; cookie?: string }>((resolve, reject) => {
      const req = http.request({ host: '127.0.0.1', port: link.port, path: link.pathname + link.search, headers: { host: link.host } }, (r) => {
        r.resume();
        r.on('end', () => resolve({ status: r.statusCode ?? 0, ...(r.headers['set-cookie'] ? { cookie: r.headers['set-cookie'][0]!.split(';')[0]! } : {}) }));
      });
      req.on('error', reject);
      req.end();
    });
    expect(gateway.status).toBe(302);
    expect(gateway.cookie).toBeTruthy();
    // The secret was in the redirect alice asked for, and is in no page.
    const secret = link.searchParams.get('swarm_token')!;
    expect((await raw('GET', '/', { cookie })).body).not.toContain(secret);
    expect((await raw('GET', `/w/${aliceOne.id}`, { cookie })).body).not.toContain(secret);
  });

  it('gives bob NOT_FOUND for every action on alice’s workspace, worded as for a missing one, and changes nothing', async () => {
    const { cookie, csrf } = await signIn(tokens.get('bob')!);
    expect((await firstLiveList(cookie)).instances.map((i) => i.id)).toEqual([bobOne.id]);
    const before = await snapshot();
    const missing = 'i-000000000000';
    const forms: Record<string, Record<string, string>> = {
      open: {},
      start: {},
      stop: {},
      'keep-alive': { minutes: '30' },
      delete: { confirm: 'yes' },
    };
    for (const [action, extra] of Object.entries(forms)) {
      const theirs = await raw('POST', `/actions/${action}`, { origin: base.origin, cookie, form: { csrf, instanceId: aliceOne.id, ...extra } });
      const none = await raw('POST', `/actions/${action}`, { origin: base.origin, cookie, form: { csrf, instanceId: missing, ...extra } });
      expect(theirs.status, `${action}: ${theirs.body.slice(0, 300)}`).toBe(404);
      expect(theirs.body).toContain(`NOT_FOUND: instance ${aliceOne.id} does not exist`);
      expect(theirs.body.split(aliceOne.id).join('<id>')).toBe(none.body.split(missing).join('<id>'));
      expect(theirs.headers.location).toBeUndefined();
    }
    for (const p of ['', '/delete']) {
      const theirs = await raw('GET', `/w/${aliceOne.id}${p}`, { cookie });
      const none = await raw('GET', `/w/${missing}${p}`, { cookie });
      expect(theirs.status, p).toBe(404);
      expect(theirs.body.split(aliceOne.id).join('<id>')).toBe(none.body.split(missing).join('<id>'));
    }
    expect(await snapshot()).toEqual(before);
    const denied = await controller.audit.query({ actorId: 'bob', outcome: 'denied', subject: aliceOne.id });
    expect(denied.map((e) => e.action).sort()).toEqual(['instance.access-link', 'instance.delete', 'instance.get', 'instance.get', 'instance.keep-alive', 'instance.start', 'instance.stop']);
    expect(denied.every((e) => e.actor.door === 'dashboard')).toBe(true);
  });

  it('shows an admin every owner’s workspaces, with their owners', async () => {
    const { cookie } = await signIn(tokens.get('local admin')!);
    const list = await raw('GET', '/', { cookie });
    for (const [instance, owner] of [[aliceOne, 'alice'], [bobOne, 'bob']] as const) {
      const row = new RegExp(`<tr data-id="${instance.id}">.*?</tr>`).exec(list.body)?.[0] ?? expect.unreachable(`no row for ${instance.id}`);
      expect(row).toContain(`<td data-field="owner">${owner}</td>`);
    }
    expect((await firstLiveList(cookie)).instances.map((i) => i.id)).toEqual(expect.arrayContaining([aliceOne.id, bobOne.id]));
  });

  it('refuses a POST without the session’s CSRF token, from another Origin or with none, and changes nothing', async () => {
    const { cookie, csrf } = await signIn(tokens.get('alice')!);
    const before = await snapshot();
    const stop = { instanceId: aliceOne.id };
    const attempts: [string, Reply][] = [
      ['no CSRF token', await raw('POST', '/actions/stop', { origin: base.origin, cookie, form: stop })],
      ['a wrong CSRF token', await raw('POST', '/actions/stop', { origin: base.origin, cookie, form: { ...stop, csrf: `${csrf.slice(0, -2)}xx` } })],
      ['another Origin', await raw('POST', '/actions/stop', { origin: 'http://evil.example', cookie, form: { ...stop, csrf } })],
      ['no Origin', await raw('POST', '/actions/stop', { cookie, form: { ...stop, csrf } })],
      ['a null Origin from another site', await raw('POST', '/actions/stop', { origin: 'null', headers: { 'sec-fetch-site': 'cross-site' }, cookie, form: { ...stop, csrf } })],
      ['a null Origin alone', await raw('POST', '/actions/stop', { origin: 'null', cookie, form: { ...stop, csrf } })],
      ['a GET', await raw('GET', `/actions/stop?instanceId=${aliceOne.id}&csrf=${csrf}`, { cookie })],
    ];
    for (const [what, res] of attempts) {
      expect([403, 404], `${what}: ${res.status} ${res.body.slice(0, 200)}`).toContain(res.status);
      expect(res.headers.location, what).toBeUndefined();
    }
    expect(attempts.slice(0, -1).map(([, r]) => r.status)).toEqual([403, 403, 403, 403, 403, 403]);
    expect(await snapshot()).toEqual(before);
    expect(controller.registry.get(aliceOne.id)?.status).toBe('running');
    // A sign-in from another origin is refused too (login CSRF).
    expect((await raw('POST', '/login', { origin: 'http://evil.example', form: { token: tokens.get('alice')! } })).status).toBe(403);
  });

  it('deletes only after the confirmation page', async () => {
    await page.goto(dashboard.url);
    await follow(`tr[data-id="${created.id}"] a.danger`);
    expect(page.url()).toBe(new URL(`/w/${created.id}/delete`, base).toString());
    expect(controller.registry.get(created.id)).toBeDefined();
    expect(await page.textContent('h1')).toBe(`Delete ${PREFIX}-made?`);
    await follow('form[action="/actions/delete"] button');
    expect(page.url()).toBe(dashboard.url);
    expect(controller.registry.get(created.id)).toBeUndefined();
    await expect.poll(() => page.locator(`tr[data-id="${created.id}"]`).count(), { timeout: LIVE_TIMEOUT_MS }).toBe(0);
  });

  it('refuses a revoked token’s session on its next request, and its live page goes back to sign-in', async () => {
    const spare = await controller.principals.createToken({ principalId: 'alice', name: 'spare' });
    tokens.set('alice spare', spare.token);
    const raws = await signIn(spare.token);
    // The browser's session rides on alice's first token; revoke both, one through the raw session.
    await controller.principals.revokeToken(spare.info.id);
    const next = await raw('GET', '/', { cookie: raws.cookie });
    expect(next.status).toBe(401);
    expect(next.body).toContain(`token ${spare.info.id} was revoked`);
    expect(next.headers['set-cookie']?.[0]).toMatch(new RegExp(`^${SESSION_COOKIE}=;.*Max-Age=0`));
    expect((await raw('POST', '/actions/stop', { origin: base.origin, cookie: raws.cookie, form: { csrf: raws.csrf, instanceId: aliceOne.id } })).status).toBe(401);
    expect(controller.registry.get(aliceOne.id)?.status).toBe('running');

    await page.goto(dashboard.url);
    await page.waitForSelector(`tr[data-id="${aliceOne.id}"]`);
    await controller.principals.revokeToken(tokenParts(tokens.get('alice')!).id);
    await page.waitForSelector('form.login', { timeout: LIVE_TIMEOUT_MS });
    expect(await page.textContent('.notice')).toContain('Signed out');
  });

  it('served no credential in any page, and Chromium saw no CSP violation', async () => {
    await new Promise((r) => setTimeout(r, 200)); // the last response bodies are read asynchronously
    expect(served.length).toBeGreaterThan(20);
    const needles = new Map<string, string>();
    for (const [label, token] of tokens) {
      needles.set(`${label} token`, token);
      if (token.startsWith('vss_')) needles.set(`${label} secret`, tokenParts(token).secret);
    }
    for (const { what, body } of served) for (const [label, needle] of needles) expect(body.includes(needle), `${label} in ${what}`).toBe(false);
    expect(cspViolations).toEqual([]);
  });
});
