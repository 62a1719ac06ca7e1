/**
 * The dashboard's only script and stylesheet, served from /static/ (the CSP allows scripts and styles
 * from the dashboard's own origin and nothing inline). Kept as text in a module so that they ship inside
 * the compiled package with nothing to copy or bundle.
 *
 * The script does one thing: on the list page it subscribes to /events (Server-Sent Events, the session
 * cookie authenticates it) and re-renders the table and the usage line from the JSON it gets, building
 * elements with textContent only (never innerHTML), the same markup as views.ts rowHtml(). When the
 * session ends the server says so and the script goes back to the sign-in page.
 */

export const CLIENT_SCRIPT = `'use strict';
(function () {
  var body = document.body;
  var live = body.getAttribute('data-live');
  var table = document.getElementById('workspaces');
  if (!live || !table) return;
  var csrf = body.getAttribute('data-csrf') || '';
  var showOwner = table.getAttribute('data-owner') === '1';

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    (children || []).forEach(function (c) { node.append(c); });
    return node;
  }
  function hidden(name, value) { return el('input', { type: 'hidden', name: name, value: value }); }
  function postForm(action, id, label, extra) {
    var parts = [hidden('csrf', csrf), hidden('instanceId', id)].concat(extra || []);
    parts.push(el('button', { type: 'submit' }, [label]));
    return el('form', { method: 'post', action: action, class: 'inline' }, parts);
  }
  function cell(field, text, title) {
    var attrs = { 'data-field': field };
    if (title) attrs.title = title;
    return el('td', attrs, [text]);
  }
  function usageText(u) {
    function of(n, limit, unit) { return n + (limit !== undefined ? ' of ' + limit : '') + unit; }
    return 'Usage: ' + of(u.instances, u.limits.instances, ' workspaces') + ', ' + of(u.cpu, u.limits.cpu, ' CPU') + ', ' + of(u.memoryMb, u.limits.memoryMb, ' MiB');
  }
  function renderRow(i) {
    var href = '/w/' + encodeURIComponent(i.id);
    var running = i.status === 'running' || i.status === 'starting';
    var keep = postForm('/actions/keep-alive', i.id, 'Keep alive', [el('input', { type: 'number', name: 'minutes', value: '60', min: '1', max: '1440', 'aria-label': 'minutes' })]);
    var actions = el('td', { class: 'actions' }, [
      postForm('/actions/open', i.id, 'Open'), ' ',
      running ? postForm('/actions/stop', i.id, 'Stop') : postForm('/actions/start', i.id, 'Start'), ' ',
      keep, ' ',
      el('a', { class: 'danger', href: href + '/delete' }, ['Delete']),
    ]);
    var cells = [el('td', { 'data-field': 'name' }, [el('a', { href: href }, [i.name])])];
    if (showOwner) cells.push(cell('owner', i.owner || ''));
    cells.push(
      cell('provider', i.provider),
      cell('status', i.status, i.statusReason),
      cell('health', i.health, i.healthReason),
      cell('lastActivity', i.lastActivity ? i.lastActivity.at + ' (' + i.lastActivity.source + ')' : '\\u2014'),
      cell('idleStopAt', i.idleStopAt || '\\u2014'),
      cell('lease', i.lease ? 'until ' + i.lease.until : '\\u2014', i.lease && i.lease.holder),
      actions
    );
    return el('tr', { 'data-id': i.id }, cells);
  }
  function render(list) {
    table.tBodies[0].replaceChildren.apply(table.tBodies[0], list.instances.map(renderRow));
    var empty = document.getElementById('empty');
    if (empty) empty.hidden = list.instances.length > 0;
    var usage = document.getElementById('usage');
    if (usage) usage.textContent = usageText(list.usage);
    body.setAttribute('data-updated', String(Date.now()));
  }
  var source = new EventSource(live);
  source.addEventListener('list', function (e) { render(JSON.parse(e.data)); });
  source.addEventListener('signed-out', function () { source.close(); window.location.assign('/'); });
})();
`;

export const STYLESHEET = `:root { color-scheme: light; font-family: system-ui, sans-serif; color: #222; }
body { margin: 0; }
header { display: flex; gap: 1rem; align-items: center; padding: 0.6rem 1.2rem; background: #263238; color: #eceff1; }
header a, header .home { color: #eceff1; font-weight: 600; text-decoration: none; }
header .who { margin-left: auto; }
main { padding: 1rem 1.2rem; max-width: 80rem; }
h1 { font-size: 1.4rem; } h2 { font-size: 1.1rem; margin-top: 1.6rem; }
table { border-collapse: collapse; width: 100%; font-size: 0.9rem; }
th, td { text-align: left; padding: 0.35rem 0.5rem; border-bottom: 1px solid #e0e0e0; vertical-align: top; }
td.actions { white-space: nowrap; }
form.inline { display: inline; }
input[type=number] { width: 4.5rem; }
button { cursor: pointer; }
button.link { background: none; border: none; color: #eceff1; text-decoration: underline; }
.danger { color: #b71c1c; }
.notice { padding: 0.5rem 0.8rem; border-radius: 4px; }
.notice.ok { background: #e8f5e9; }
.notice.error { background: #ffebee; color: #b71c1c; }
.hint, .usage, .empty { color: #546e7a; }
pre.logs { background: #263238; color: #eceff1; padding: 0.8rem; max-height: 24rem; overflow: auto; font-size: 0.8rem; }
dl.facts { display: grid; grid-template-columns: max-content auto; gap: 0.2rem 1rem; }
dl.facts dt { font-weight: 600; }
form.login, form.create { display: flex; flex-direction: column; align-items: flex-start; gap: 0.6rem; max-width: 28rem; }
svg.health-chart { max-width: 100%; height: auto; border: 1px solid #e0e0e0; }
a.button { display: inline-block; padding: 0.45rem 0.9rem; border-radius: 4px; background: #263238; color: #eceff1; text-decoration: none; }
`;
