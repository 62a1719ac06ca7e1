/**
 * The dashboard's pages (src/dashboard/views.ts) with hostile values everywhere a user or a workspace
 * supplies text: names, reasons, log lines, audit reasons, health reasons. Nothing comes out as markup;
 * no page has inline script, an inline style or an event handler attribute; the view of an instance keeps
 * provider references and endpoints on the server; the health chart is plain SVG with one bar per check.
 */
import { describe, expect, it } from 'vitest';
import type { VSCodeInstance } from '../../providers/provider.js';
import type { AuditEvent } from '../../src/audit/audit-log.js';
import { CLIENT_SCRIPT } from '../../src/dashboard/assets.js';
import { confirmDeletePage, healthChart, instanceView, listPage, loginPage, rowHtml, workspacePage } from '../../src/dashboard/views.js';
import type { HealthCheck } from '../../src/health/health-monitor.js';

const EVIL = `<script>alert(1)</script><img src=x onerror=alert(2)>"'&`;
const AT = '2026-03-01T12:00:00.000Z';

function instance(extra: Partial<VSCodeInstance> = {}): VSCodeInstance {
  return {
    id: 'i-0123456789ab',
    name: 'web',
    providerType: 'docker',
    status: 'running',
    statusReason: EVIL,
    health: 'degraded',
    healthReason: EVIL,
    config: { image: 'img:1', resources: { cpu: 1, memoryMb: 1024 } } as VSCodeInstance['config'],
    endpoint: { url: 'http://10.0.0.5:8080', host: '10.0.0.5', port: 8080 },
    providerRef: { containerId: 'secret-container-ref' },
    createdAt: AT,
    updatedAt: AT,
    lastActivity: { at: AT, source: 'gateway' },
    lease: { until: '2026-03-01T13:00:00.000Z', holder: EVIL },
    owner: 'alice',
    ...extra,
  };
}

const check = (status: HealthCheck['status'], n: number): HealthCheck => ({
  instanceId: 'i-0123456789ab',
  at: new Date(Date.parse(AT) + n * 60_000).toISOString(),
  status,
  reason: `${EVIL} #${n}`,
  checks: { provider: 'pass', status: 'pass', connectivity: status === 'healthy' ? 'pass' : 'fail', resources: 'pass' },
  latencyMs: 10 * (n + 1),
});

const frame = { title: 'Workspaces', signedIn: { principalId: 'alice', role: 'member', csrf: 'csrf-token-value' } };

/** Markup that must never come from data: script elements other than the one external script, handlers, inline style. */
function inlineRisks(html: string): string[] {
  const found: string[] = [];
  const scripts = html.match(/<script\b[^>]*>/gi) ?? [];
  for (const s of scripts) if (s !== '<script src="/static/dashboard.js" defer>') found.push(s);
  if (/<script\b[^>]*>[^<]+<\/script>/i.test(html)) found.push('inline script body');
  // Only real tags count (escaped text has no '<'), and in them only the markup, not the quoted values (escaped '"' cannot end them).
  for (const tag of (html.match(/<[a-z][^>]*>/gi) ?? []).map((t) => t.replace(/"[^"]*"/g, '""'))) {
    if (/\son[a-z]+\s*=/i.test(tag)) found.push(`event handler attribute in ${tag}`);
    if (/\sstyle\s*=/i.test(tag) || /^<style\b/i.test(tag)) found.push(`inline style in ${tag}`);
    if (/javascript:/i.test(tag)) found.push(`javascript: URL in ${tag}`);
  }
  return found;
}

describe('dashboard views', () => {
  it('shows what a person needs about a workspace and keeps provider details on the server', () => {
    const view = instanceView(instance(), 15, false);
    expect(view).toEqual({
      id: 'i-0123456789ab',
      name: 'web',
      provider: 'docker',
      status: 'running',
      statusReason: EVIL,
      health: 'degraded',
      healthReason: EVIL,
      lastActivity: { at: AT, source: 'gateway' },
      // the lease ends after the last activity: the idle timeout counts from its end
      idleStopAt: '2026-03-01T13:15:00.000Z',
      lease: { until: '2026-03-01T13:00:00.000Z', holder: EVIL },
    });
    expect(JSON.stringify(view)).not.toContain('secret-container-ref');
    expect(JSON.stringify(view)).not.toContain('10.0.0.5');
    expect(instanceView(instance(), 0, true)).toMatchObject({ idleStopAt: null, owner: 'alice' });
    expect(instanceView(instance({ status: 'stopped' }), 15, false).idleStopAt).toBeNull();
    const { owner: _, ...unowned } = instance();
    expect(instanceView(unowned, 15, true).owner).toBe('local-admin');
  });

  it('escapes every user-supplied value in the list, the workspace page and the confirmation', () => {
    const view = instanceView(instance({ name: 'web' }), 15, true);
    const evilView = { ...view, name: EVIL, owner: EVIL };
    const audit = [{ specversion: '1.0', id: 'e1', source: 's', time: AT, datacontenttype: 'application/json', type: 't', action: 'instance.start', actor: { type: 'principal', id: EVIL, door: 'dashboard' }, outcome: 'denied', code: 'NOT_FOUND', reason: EVIL } as AuditEvent];
    const pages = [
      listPage({ frame, list: { instances: [evilView], usage: { instances: 1, cpu: 1, memoryMb: 1024, limits: { instances: 10 } } }, providers: ['docker'], showOwner: true }),
      workspacePage({ frame, instance: evilView, health: { history: [check('healthy', 0), check('unhealthy', 1)] }, logs: { lines: [EVIL, 'second line'], truncated: true }, audit }),
      workspacePage({ frame, instance: evilView, health: { error: EVIL }, logs: { error: EVIL }, audit: { error: EVIL } }),
      confirmDeletePage(frame, evilView),
      loginPage(EVIL),
    ];
    for (const html of pages) {
      expect(html).not.toContain('<script>alert');
      expect(html).not.toContain('<img');
      expect(inlineRisks(html)).toEqual([]);
      expect(html).toContain('&lt;script&gt;alert(1)&lt;/script&gt;');
    }
    expect(pages[0]).toContain('Usage: 1 of 10 workspaces, 1 CPU, 1024 MiB');
    expect(pages[1]).toContain('second line');
  });

  it('puts the session’s CSRF token in every action form and sends deletes through a confirmation page', () => {
    const row = rowHtml(instanceView(instance(), 15, false), 'csrf-token-value');
    const forms = row.match(/<form\b[\s\S]*?<\/form>/g) ?? [];
    expect(forms.map((f) => /action="([^"]+)"/.exec(f)?.[1])).toEqual(['/actions/open', '/actions/stop', '/actions/keep-alive']);
    for (const f of forms) {
      expect(f).toContain('method="post"');
      expect(f).toContain('<input type="hidden" name="csrf" value="csrf-token-value">');
    }
    expect(row).toContain('href="/w/i-0123456789ab/delete"');
    expect(rowHtml(instanceView(instance({ status: 'stopped' }), 15, false), 'c')).toContain('action="/actions/start"');
    const confirm = confirmDeletePage(frame, instanceView(instance(), 15, false));
    expect(confirm).toContain('<input type="hidden" name="confirm" value="yes">');
    expect(confirm).toContain('action="/actions/delete"');
  });

  it('draws the health history as one SVG bar per check, coloured by status, with the reasons as tooltips', () => {
    const history = [check('healthy', 0), check('degraded', 1), check('unhealthy', 2), check('recovering', 3)];
    const svg = healthChart(history);
    expect(svg.startsWith('<svg')).toBe(true);
    expect((svg.match(/<rect /g) ?? []).length).toBe(4);
    expect([...svg.matchAll(/data-status="([a-z]+)"/g)].map((m) => m[1])).toEqual(['healthy', 'degraded', 'unhealthy', 'recovering']);
    expect(svg).toContain('<polyline');
    expect(svg).toContain('&lt;script&gt;alert(1)&lt;/script&gt;');
    expect(inlineRisks(svg)).toEqual([]);
    const heights = [...svg.matchAll(/<rect [^>]*height="([0-9.]+)"/g)].map((m) => Number(m[1]));
    expect(heights[0]).toBeGreaterThan(heights[1]!);
    expect(heights[1]).toBeGreaterThan(heights[2]!);
    expect(healthChart([])).not.toContain('<svg');
  });

  it('renders live updates with textContent only', () => {
    expect(CLIENT_SCRIPT).not.toMatch(/innerHTML|outerHTML|insertAdjacentHTML|document\.write|eval\(/);
    expect(CLIENT_SCRIPT).toContain("new EventSource(live)");
  });
});
