/**
 * An MCP App (`@modelcontextprotocol/ext-apps`) for one workspace: clients that render MCP Apps show, next
 * to a tool result that is one workspace, its name, id, provider, status and health, with an Open button
 * (a fresh access link, opened by the host) and Start when it is stopped, so a person chatting with an
 * assistant opens the editor without copying a link.
 *
 * The page is one self-contained HTML document: the package's browser bundle (app-with-deps, read from
 * node_modules once, never committed here) inlined with the view's own script, so it fetches nothing and
 * declares no network origin in its CSP metadata. It holds no secret: the workspace comes from the tool
 * result, and a link is asked for only on click, through the host's own MCP connection, so the server's
 * authorization of that caller (AuthorizedSwarm) decides what the app may show or open.
 */
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { RESOURCE_MIME_TYPE, registerAppResource } from '@modelcontextprotocol/ext-apps/server';
import type { McpServer } from '@modelcontextprotocol/server';
import { SwarmError } from '../../errors.js';
import { PACKAGE_VERSION } from '../../version.js';
import { VIEW_BODY, VIEW_SCRIPT, VIEW_STYLE } from './workspace-view.js';

export const WORKSPACE_APP_URI = 'ui://vscode-swarm/workspace.html';

/** `_meta` for a tool whose result is one workspace (structuredContent.instance): hosts render the app for it. */
export const WORKSPACE_APP_TOOL_META = { ui: { resourceUri: WORKSPACE_APP_URI } };

const BUNDLE_MODULE = '@modelcontextprotocol/ext-apps/app-with-deps';

let page: string | undefined;

/** The page, built on first use and kept: every MCP-over-HTTP request builds a server, and the bundle is half a megabyte. */
export function workspaceAppHtml(): string {
  page ??= buildPage(readBundle());
  return page;
}

export function registerWorkspaceApp(server: McpServer): void {
  registerAppResource(
    server,
    'workspace-app',
    WORKSPACE_APP_URI,
    {
      title: 'Workspace',
      description: 'Shows one workspace (status, health) with Open and Start buttons, for clients that render MCP Apps',
      _meta: { ui: { csp: { connectDomains: [], resourceDomains: [] }, prefersBorder: true } },
    },
    async (uri) => ({
      contents: [{ uri: uri.href, mimeType: RESOURCE_MIME_TYPE, text: workspaceAppHtml() }],
    }),
  );
}

function readBundle(): string {
  let file: string;
  try {
    file = createRequire(import.meta.url).resolve(BUNDLE_MODULE);
  } catch (err) {
    throw new SwarmError('INTERNAL', `the MCP App needs ${BUNDLE_MODULE} (npm install): ${(err as Error).message}`, { cause: err });
  }
  return readFileSync(file, 'utf8');
}

/**
 * Turns the bundle's closing `export{local as Name,...};` into `const ExtApps={Name:local,...};`, so it runs
 * as an inline module script whose exports the view's script, in the same module, reads.
 */
export function bundleAsInlineModule(bundle: string): string {
  const match = /export\s*\{([^{}]*)\};?\s*$/.exec(bundle);
  if (!match) throw new SwarmError('INTERNAL', `${BUNDLE_MODULE}: expected the bundle to end with one export list; the package layout changed`);
  const entries = match[1]!.split(',').map((part) => {
    const names = /^\s*([\w$]+)(?:\s+as\s+([\w$]+))?\s*$/.exec(part);
    if (!names) throw new SwarmError('INTERNAL', `${BUNDLE_MODULE}: unexpected export entry "${part.trim()}"`);
    return `${names[2] ?? names[1]}:${names[1]}`;
  });
  const code = `${bundle.slice(0, match.index)}\nconst ExtApps={${entries.join(',')}};\n`;
  // Inside <script>, these would end the element or change how the HTML parser reads it.
  if (/<\/script|<!--/i.test(code)) throw new SwarmError('INTERNAL', `${BUNDLE_MODULE}: the bundle contains "</script" or "<!--" and cannot be inlined`);
  return code;
}

function buildPage(bundle: string): string {
  return [
    '<!doctype html>',
    '<html lang="en">',
    '<head>',
    '<meta charset="utf-8">',
    '<meta name="viewport" content="width=device-width, initial-scale=1">',
    '<title>Workspace</title>',
    `<style>${VIEW_STYLE}</style>`,
    '</head>',
    '<body>',
    VIEW_BODY,
    // The view's script in a block of its own: its names cannot collide with the bundle's minified ones.
    `<script type="module">\n${bundleAsInlineModule(bundle)}\n{\nconst APP_VERSION = ${JSON.stringify(PACKAGE_VERSION)};\n${VIEW_SCRIPT}}\n</script>`,
    '</body>',
    '</html>',
  ].join('\n');
}
