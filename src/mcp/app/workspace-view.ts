/**
 * The workspace view's own markup, style and script: what runs inside the host's sandboxed frame beside
 * the ext-apps App client. Kept as text (not a compiled module) because it is served to a browser inside
 * one HTML document, not loaded by Node; workspace-app.ts assembles the page.
 *
 * The script gets the workspace from the tool result the host forwards (structuredContent.instance), and
 * acts only through the host: tools/call for a fresh access link or a start (so the host's credential,
 * and with it the principal's authorization, decides), ui/open-link to open the editor. It writes with
 * textContent only: names and reasons come from users and providers, never as markup.
 */

export const VIEW_STYLE = `
:root { color-scheme: light dark; font-family: var(--font-sans, system-ui, sans-serif); font-size: 14px; }
body { margin: 0; padding: 12px 14px; }
h1 { font-size: 16px; margin: 0 0 8px; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: 2px 12px; margin: 0 0 10px; }
dt { opacity: 0.7; }
dd { margin: 0; overflow-wrap: anywhere; }
.actions { display: flex; gap: 8px; }
button { font: inherit; padding: 4px 14px; cursor: pointer; }
button[hidden] { display: none; }
#message { margin: 8px 0 0; min-height: 1em; }
#message.error { color: #c62828; }
`;

export const VIEW_BODY = `
<main>
  <h1 id="name">Waiting for the workspace…</h1>
  <dl>
    <dt>Id</dt><dd id="id">–</dd>
    <dt>Provider</dt><dd id="provider">–</dd>
    <dt>Status</dt><dd id="status">–</dd>
    <dt>Health</dt><dd id="health">–</dd>
  </dl>
  <div class="actions">
    <button id="open" type="button" hidden>Open</button>
    <button id="start" type="button" hidden>Start</button>
    <button id="refresh" type="button" hidden>Refresh</button>
  </div>
  <p id="message" role="status"></p>
</main>
`;

/** Runs after the ext-apps bundle, in the same module: `ExtApps` holds its exports, `APP_VERSION` the server's version. */
export const VIEW_SCRIPT = `
const el = (id) => document.getElementById(id);
let instance;
let busy = false;

function say(text, isError) {
  el('message').textContent = text;
  el('message').className = isError ? 'error' : '';
}

function textOf(result) {
  return (result.content || []).map((c) => (c && c.type === 'text' ? c.text : '')).join('\\n');
}

function instanceIn(result) {
  const found = result && result.structuredContent && result.structuredContent.instance;
  return found && typeof found.id === 'string' ? found : undefined;
}

function render() {
  if (!instance) return;
  el('name').textContent = instance.name;
  el('id').textContent = instance.id;
  el('provider').textContent = instance.providerType;
  el('status').textContent = instance.status + (instance.statusReason ? ' (' + instance.statusReason + ')' : '');
  el('health').textContent = instance.health + (instance.healthReason ? ': ' + instance.healthReason : '');
  el('open').hidden = instance.status !== 'running';
  el('start').hidden = instance.status !== 'stopped';
  el('refresh').hidden = false;
  for (const id of ['open', 'start', 'refresh']) el(id).disabled = busy;
}

function show(result) {
  const found = instanceIn(result);
  if (found) {
    instance = found;
    render();
  } else if (result && result.isError) {
    say(textOf(result) || 'The tool failed', true);
  }
}

/** One action at a time; a tool error is shown as the server worded it ("NOT_FOUND: ..."). */
async function act(what, work) {
  if (busy || !instance) return;
  busy = true;
  render();
  say(what + '…', false);
  try {
    say(await work(), false);
  } catch (err) {
    say(err && err.message ? err.message : String(err), true);
  } finally {
    busy = false;
    render();
  }
}

async function callTool(name, args) {
  const result = await app.callServerTool({ name, arguments: args });
  if (result.isError) throw new Error(textOf(result) || name + ' failed');
  return result;
}

const app = new ExtApps.App({ name: 'vscode-swarm-workspace', version: APP_VERSION }, {});
app.ontoolresult = show;

el('open').addEventListener('click', () =>
  act('Getting a link', async () => {
    const link = await callTool('get_instance_access_link', { instanceId: instance.id });
    const url = link.structuredContent && link.structuredContent.accessUrl;
    if (typeof url !== 'string') throw new Error('get_instance_access_link returned no accessUrl');
    const opened = await app.openLink({ url });
    if (opened.isError) throw new Error('The host did not open the link');
    return 'Opened in a new tab';
  }),
);
el('start').addEventListener('click', () =>
  act('Starting', async () => {
    show(await callTool('start_swarm_instance', { instanceId: instance.id }));
    return 'Started';
  }),
);
el('refresh').addEventListener('click', () =>
  act('Refreshing', async () => {
    show(await callTool('get_swarm_instance', { instanceId: instance.id }));
    return '';
  }),
);

app.connect().catch((err) => say('Could not reach the host: ' + (err && err.message ? err.message : String(err)), true));
`;
