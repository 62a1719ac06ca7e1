/**
 * The dashboard's pages, rendered on the server as plain HTML: no inline script or style (the CSP allows
 * neither), every value that comes from a user or a workspace (names, reasons, logs, audit events)
 * escaped, and no credential anywhere but the session's own CSRF token in the forms that need it.
 *
 * What a workspace shows is a view of the instance record with the fields a person needs, not the record
 * itself: provider references and endpoints stay on the server. The same view goes to the live updates,
 * which the client script renders exactly as rowHtml() does here.
 */
import type { ProviderType, VSCodeInstance } from '../../providers/provider.js';
import type { AuditEvent } from '../audit/audit-log.js';
import { escapeHtml } from '../gateway/pages.js';
import type { HealthCheck } from '../health/health-monitor.js';
import type { WhoAmI } from '../tenancy/authorized-swarm.js';
import { ownerOf } from '../tenancy/quotas.js';

/** What the list shows about one workspace, also sent as JSON to the live updates. */
export interface InstanceView {
  id: string;
  name: string;
  provider: ProviderType;
  status: VSCodeInstance['status'];
  statusReason?: string;
  health: VSCodeInstance['health'];
  healthReason?: string;
  lastActivity?: { at: string; source: string };
  /** The earliest time it stops for idleness (editor heartbeats push it later); null when it never does or is not running. */
  idleStopAt: string | null;
  lease?: { until: string; holder?: string };
  /** Shown to admins, who see every owner's workspaces. */
  owner?: string;
}

/** What the list page's live part shows: the workspaces and the caller's quota usage. */
export interface ListView {
  instances: InstanceView[];
  usage: UsageView;
}

export interface UsageView {
  instances: number;
  cpu: number;
  memoryMb: number;
  limits: { instances?: number; cpu?: number; memoryMb?: number };
}

const RUNNING_LIKE = new Set(['running', 'starting']);

export function instanceView(instance: VSCodeInstance, idleTimeoutMinutes: number, withOwner: boolean): InstanceView {
  const lastSign = instance.lastActivity ? Date.parse(instance.lastActivity.at) : Date.parse(instance.updatedAt);
  const leaseUntil = instance.lease ? Date.parse(instance.lease.until) : 0;
  const idleStopAt = instance.status === 'running' && idleTimeoutMinutes > 0 ? new Date(Math.max(lastSign, leaseUntil) + idleTimeoutMinutes * 60_000).toISOString() : null;
  return {
    id: instance.id,
    name: instance.name,
    provider: instance.providerType,
    status: instance.status,
    ...(instance.statusReason ? { statusReason: instance.statusReason } : {}),
    health: instance.health,
    ...(instance.healthReason ? { healthReason: instance.healthReason } : {}),
    ...(instance.lastActivity ? { lastActivity: { at: instance.lastActivity.at, source: instance.lastActivity.source } } : {}),
    idleStopAt,
    ...(instance.lease ? { lease: { until: instance.lease.until, ...(instance.lease.holder ? { holder: instance.lease.holder } : {}) } } : {}),
    ...(withOwner ? { owner: ownerOf(instance) } : {}),
  };
}

export function usageView(who: WhoAmI): UsageView {
  const { instances, cpu, memoryMb } = who.limits;
  return {
    instances: who.usage.instances,
    cpu: who.usage.cpu,
    memoryMb: who.usage.memoryMb,
    limits: { ...(instances !== undefined ? { instances } : {}), ...(cpu !== undefined ? { cpu } : {}), ...(memoryMb !== undefined ? { memoryMb } : {}) },
  };
}

// ---- the frame ----

export interface PageFrame {
  title: string;
  /** The signed-in principal, for the header; absent on the sign-in page. */
  signedIn?: { principalId: string; role: string; csrf: string };
  /** A message to show above the content: the outcome of the last action. */
  notice?: { kind: 'ok' | 'error'; text: string };
  /** Whether the client script subscribes to live updates on this page. */
  live?: boolean;
}

export function layout(frame: PageFrame, body: string): string {
  const who = frame.signedIn;
  const header = who
    ? `<header><a href="/" class="home">vscode-swarm</a><span class="who">${escapeHtml(who.principalId)} (${escapeHtml(who.role)})</span>${postForm('/logout', who.csrf, {}, 'Sign out', 'link')}</header>`
    : `<header><span class="home">vscode-swarm</span></header>`;
  const notice = frame.notice ? `<p class="notice ${frame.notice.kind}" role="status">${escapeHtml(frame.notice.text)}</p>` : '';
  const csrf = who ? ` data-csrf="${escapeHtml(who.csrf)}"` : '';
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>${escapeHtml(frame.title)} · vscode-swarm</title>
<link rel="stylesheet" href="/static/dashboard.css"><script src="/static/dashboard.js" defer></script></head>
<body${csrf}${frame.live ? ' data-live="/events"' : ''}>${header}<main>${notice}${body}</main></body></html>
`;
}

/** A one-button POST form carrying the session's CSRF token and the given hidden fields. */
export function postForm(action: string, csrf: string, fields: Record<string, string>, label: string, kind = ''): string {
  const hidden = Object.entries({ csrf, ...fields })
    .map(([name, value]) => `<input type="hidden" name="${escapeHtml(name)}" value="${escapeHtml(value)}">`)
    .join('');
  return `<form method="post" action="${escapeHtml(action)}" class="inline">${hidden}<button type="submit"${kind ? ` class="${escapeHtml(kind)}"` : ''}>${escapeHtml(label)}</button></form>`;
}

// ---- pages ----

/** The sign-in page: the API token form, and with `oauthIssuer` a "Sign in with <issuer>" link first. */
export function loginPage(message?: string, oauthIssuer?: string): string {
  const oauth = oauthIssuer ? `<p class="oauth"><a class="button" href="/oauth/start">Sign in with ${escapeHtml(oauthIssuer)}</a></p>\n<p class="hint">Or with an API token:</p>\n` : '';
  return layout(
    { title: 'Sign in', ...(message ? { notice: { kind: 'error', text: message } } : {}) },
    `<h1>Sign in</h1>
${oauth}<form method="post" action="/login" class="login">
<label>API token <input type="password" name="token" autocomplete="off" required></label>
<p class="hint">A <code>vss_…</code> token (<code>vscode-swarm tokens create</code>), or the local administrator's credential in <code>&lt;stateDir&gt;/mcp-http.token</code>.</p>
<button type="submit">Sign in</button></form>`,
  );
}

/**
 * After an OAuth sign-in: a page of the dashboard's own that moves straight on to `to` (a meta refresh,
 * which the CSP allows), so that the next request starts on this site and carries the SameSite=Strict
 * session cookie, which a redirect chain begun at the issuer's site would not.
 */
export function continuePage(to: string): string {
  const target = escapeHtml(to);
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="0;url=${target}">
<title>Signed in · vscode-swarm</title><link rel="stylesheet" href="/static/dashboard.css"></head>
<body><header><span class="home">vscode-swarm</span></header><main><p class="notice ok" role="status">Signed in. <a href="${target}">Continue to your workspaces</a>.</p></main></body></html>
`;
}

export interface ListPageInput {
  frame: PageFrame & { signedIn: NonNullable<PageFrame['signedIn']> };
  list: ListView;
  providers: ProviderType[];
  showOwner: boolean;
}

export function listPage({ frame, list, providers, showOwner }: ListPageInput): string {
  const { csrf } = frame.signedIn;
  const rows = list.instances.map((i) => rowHtml(i, csrf)).join('');
  const options = providers.map((p) => `<option value="${escapeHtml(p)}">${escapeHtml(p)}</option>`).join('');
  return layout(
    { ...frame, live: true },
    `<h1>Workspaces</h1>
<p id="usage" class="usage">${usageHtml(list.usage)}</p>
<table id="workspaces"${showOwner ? ' data-owner="1"' : ''}><thead><tr><th>Name</th>${showOwner ? '<th>Owner</th>' : ''}<th>Provider</th><th>Status</th><th>Health</th><th>Last activity</th><th>Idle stop</th><th>Lease</th><th>Actions</th></tr></thead>
<tbody>${rows}</tbody></table>
<p id="empty" class="empty"${rows ? ' hidden' : ''}>No workspaces yet.</p>
<h2>New workspace</h2>
<form method="post" action="/actions/create" class="create"><input type="hidden" name="csrf" value="${escapeHtml(csrf)}">
<label>Name <input name="name" required maxlength="63" autocomplete="off"></label>
<label>Provider <select name="provider">${options}</select></label>
<button type="submit">Create</button></form>`,
  );
}

export function usageHtml(usage: UsageView): string {
  const of = (n: number, limit: number | undefined, unit: string): string => `${n}${limit !== undefined ? ` of ${limit}` : ''}${unit}`;
  return `Usage: ${escapeHtml(of(usage.instances, usage.limits.instances, ' workspaces'))}, ${escapeHtml(of(usage.cpu, usage.limits.cpu, ' CPU'))}, ${escapeHtml(of(usage.memoryMb, usage.limits.memoryMb, ' MiB'))}`;
}

/** One workspace's row; the client script builds the same from the live JSON (dashboard.js renderRow). */
export function rowHtml(i: InstanceView, csrf: string): string {
  const cell = (field: string, text: string, title?: string): string => `<td data-field="${field}"${title ? ` title="${escapeHtml(title)}"` : ''}>${escapeHtml(text)}</td>`;
  const fields = { instanceId: i.id };
  const actions = [
    postForm('/actions/open', csrf, fields, 'Open'),
    RUNNING_LIKE.has(i.status) ? postForm('/actions/stop', csrf, fields, 'Stop') : postForm('/actions/start', csrf, fields, 'Start'),
    `<form method="post" action="/actions/keep-alive" class="inline"><input type="hidden" name="csrf" value="${escapeHtml(csrf)}"><input type="hidden" name="instanceId" value="${escapeHtml(i.id)}"><input type="number" name="minutes" value="60" min="1" max="1440" aria-label="minutes"><button type="submit">Keep alive</button></form>`,
    `<a class="danger" href="/w/${encodeURIComponent(i.id)}/delete">Delete</a>`,
  ].join(' ');
  return `<tr data-id="${escapeHtml(i.id)}"><td data-field="name"><a href="/w/${encodeURIComponent(i.id)}">${escapeHtml(i.name)}</a></td>${i.owner !== undefined ? cell('owner', i.owner) : ''}${cell('provider', i.provider)}${cell('status', i.status, i.statusReason)}${cell('health', i.health, i.healthReason)}${cell('lastActivity', lastActivityText(i))}${cell('idleStopAt', i.idleStopAt ?? '—')}${cell('lease', leaseText(i), i.lease?.holder)}<td class="actions">${actions}</td></tr>`;
}

const lastActivityText = (i: InstanceView): string => (i.lastActivity ? `${i.lastActivity.at} (${i.lastActivity.source})` : '—');
const leaseText = (i: InstanceView): string => (i.lease ? `until ${i.lease.until}` : '—');

export interface WorkspacePageInput {
  frame: PageFrame & { signedIn: NonNullable<PageFrame['signedIn']> };
  instance: InstanceView;
  health: { history: HealthCheck[] } | { error: string };
  logs: { lines: string[]; truncated: boolean } | { error: string };
  audit: AuditEvent[] | { error: string };
}

export function workspacePage({ frame, instance: i, health, logs, audit }: WorkspacePageInput): string {
  const { csrf } = frame.signedIn;
  const facts: [string, string][] = [
    ['Id', i.id],
    ['Provider', i.provider],
    ['Status', i.statusReason ? `${i.status} (${i.statusReason})` : i.status],
    ['Health', i.healthReason ? `${i.health} (${i.healthReason})` : i.health],
    ['Last activity', lastActivityText(i)],
    ['Idle stop', i.idleStopAt ?? '—'],
    ['Lease', i.lease ? `until ${i.lease.until}${i.lease.holder ? ` (${i.lease.holder})` : ''}` : '—'],
    ...(i.owner !== undefined ? [['Owner', i.owner] as [string, string]] : []),
  ];
  const failed = (part: { error: string }): string => `<p class="notice error">${escapeHtml(part.error)}</p>`;
  const healthHtml = 'error' in health ? failed(health) : healthChart(health.history);
  const logsHtml = 'error' in logs ? failed(logs) : `<pre class="logs">${escapeHtml(logs.lines.join('\n')) || '(no output)'}</pre>${logs.truncated ? '<p class="hint">Older lines left out.</p>' : ''}`;
  const auditHtml = Array.isArray(audit)
    ? `<table class="audit"><thead><tr><th>Time</th><th>Action</th><th>Actor</th><th>Outcome</th><th>Reason</th></tr></thead><tbody>${audit
        .slice()
        .reverse()
        .map((e) => `<tr><td>${escapeHtml(e.time)}</td><td>${escapeHtml(e.action)}</td><td>${escapeHtml(`${e.actor.id}${e.actor.door ? ` (${e.actor.door})` : ''}`)}</td><td>${escapeHtml(e.outcome)}${e.code ? ` ${escapeHtml(e.code)}` : ''}</td><td>${escapeHtml(e.reason ?? '')}</td></tr>`)
        .join('')}</tbody></table>`
    : failed(audit);
  return layout(
    { ...frame, title: i.name },
    `<h1>${escapeHtml(i.name)}</h1>
<dl class="facts">${facts.map(([k, v]) => `<dt>${escapeHtml(k)}</dt><dd>${escapeHtml(v)}</dd>`).join('')}</dl>
<p class="actions">${postForm('/actions/open', csrf, { instanceId: i.id }, 'Open')} ${RUNNING_LIKE.has(i.status) ? postForm('/actions/stop', csrf, { instanceId: i.id, back: 'workspace' }, 'Stop') : postForm('/actions/start', csrf, { instanceId: i.id, back: 'workspace' }, 'Start')} <a class="danger" href="/w/${encodeURIComponent(i.id)}/delete">Delete</a></p>
<h2>Health</h2>${healthHtml}
<h2>Recent logs</h2>${logsHtml}
<h2>Audit events</h2>${auditHtml}`,
  );
}

export function confirmDeletePage(frame: PageFrame & { signedIn: NonNullable<PageFrame['signedIn']> }, instance: InstanceView): string {
  return layout(
    { ...frame, title: `Delete ${instance.name}` },
    `<h1>Delete ${escapeHtml(instance.name)}?</h1>
<p>The workspace <strong>${escapeHtml(instance.name)}</strong> (${escapeHtml(instance.id)}) and its files are removed. This cannot be undone.</p>
<p>${postForm('/actions/delete', frame.signedIn.csrf, { instanceId: instance.id, confirm: 'yes' }, 'Delete it', 'danger')} <a href="/">Cancel</a></p>`,
  );
}

export function errorPage(frame: PageFrame, message: string): string {
  return layout({ ...frame, notice: { kind: 'error', text: message } }, `<p><a href="/">Back to the workspaces</a></p>`);
}

// ---- the health chart ----

const LEVEL: Record<HealthCheck['status'], number> = { healthy: 3, degraded: 2, recovering: 1, unhealthy: 0, unknown: 0 };
const COLOUR: Record<HealthCheck['status'], string> = { healthy: '#2e7d32', degraded: '#f9a825', recovering: '#1565c0', unhealthy: '#c62828', unknown: '#757575' };

/**
 * The health history as an SVG: one column per check, its height the health level and its colour the
 * status, with its time and reason as a tooltip; a line over it shows the editor's latency where measured.
 * Presentation attributes only (no style attributes: the CSP forbids inline style).
 */
export function healthChart(history: readonly HealthCheck[]): string {
  if (!history.length) return '<p class="hint">No health checks recorded yet.</p>';
  const width = 600;
  const height = 160;
  const pad = 20;
  const step = (width - 2 * pad) / history.length;
  const barWidth = Math.min(24, Math.max(2, step * 0.7));
  const levelHeight = (height - 2 * pad) / 3;
  const maxLatency = Math.max(1, ...history.map((c) => c.latencyMs ?? 0));
  const bars = history
    .map((c, n) => {
      const h = Math.max(4, LEVEL[c.status] * levelHeight);
      const x = pad + n * step;
      const title = `${c.at}: ${c.status} — ${c.reason}${c.latencyMs !== undefined ? ` (${c.latencyMs} ms)` : ''}`;
      return `<rect x="${x.toFixed(1)}" y="${(height - pad - h).toFixed(1)}" width="${barWidth.toFixed(1)}" height="${h.toFixed(1)}" fill="${COLOUR[c.status]}" data-status="${c.status}"><title>${escapeHtml(title)}</title></rect>`;
    })
    .join('');
  const points = history
    .map((c, n) => (c.latencyMs === undefined ? undefined : `${(pad + n * step + barWidth / 2).toFixed(1)},${(height - pad - (c.latencyMs / maxLatency) * (height - 2 * pad)).toFixed(1)}`))
    .filter((p): p is string => p !== undefined);
  const line = points.length > 1 ? `<polyline points="${points.join(' ')}" fill="none" stroke="#424242" stroke-width="1.5"><title>editor latency, up to ${maxLatency} ms</title></polyline>` : '';
  const first = history[0]!.at;
  const last = history[history.length - 1]!.at;
  return `<svg class="health-chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 ${width} ${height}" width="${width}" height="${height}" role="img" aria-label="health history: ${history.length} checks">
<line x1="${pad}" y1="${height - pad}" x2="${width - pad}" y2="${height - pad}" stroke="#9e9e9e"/>
${bars}${line}
<text x="${pad}" y="${height - 4}" font-size="10" fill="#616161">${escapeHtml(first)}</text><text x="${width - pad}" y="${height - 4}" font-size="10" fill="#616161" text-anchor="end">${escapeHtml(last)}</text>
<text x="${pad}" y="12" font-size="10" fill="#616161">height and colour: health (green healthy, amber degraded, blue recovering, red unhealthy); line: editor latency</text></svg>`;
}
