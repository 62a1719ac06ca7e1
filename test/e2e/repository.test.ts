/**
 * Workspaces created from a git repository, end to end: real git servers (git daemon, and git
 * http-backend behind HTTP basic auth), the machine's git on the controller, real Docker containers.
 *
 * The controller cases run on the light stand-in image (the editor is not what is tested there); one case
 * goes through MCP with the real code-server and finds the repository's files in the browser's explorer.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { PassThrough, type Readable } from 'node:stream';
import type { Browser } from 'playwright-core';
import tar from 'tar-stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ProgressEvent, VSCodeInstance } from '../../providers/provider.js';
import { createSwarm } from '../../src/controller/create-swarm.js';
import type { SwarmController } from '../../src/controller/swarm-controller.js';
import type { SwarmError } from '../../src/errors.js';
import { createLogger } from '../../src/logger.js';
import { AuthorizedSwarm } from '../../src/tenancy/authorized-swarm.js';
import { localAdmin } from '../../src/tenancy/identity.js';
import { CLONE_DIR_PREFIX, REPOSITORY_COMMIT_METADATA, REPOSITORY_URL_METADATA, type RepositoryRequest } from '../../src/workspace/repository.js';
import { launchChromium } from '../helpers/browser.js';
import { cleanUp, containersNamed, docker, makeStateDir, testConfig } from '../helpers/docker.js';
import { failure } from '../helpers/failure.js';
import { makeRepository, serveGitDaemon, serveGitHttp, type GitServer, type HttpGitServer, type TestRepository } from '../helpers/git-server.js';
import { REPO_ROOT, callTool, errorText, launchFromMcpJson, type LaunchedServer } from '../helpers/mcp.js';
import { STANDIN_IMAGE, ensureStandinImage } from '../helpers/standin-image.js';
import { engineSnapshot, filesUnder } from '../helpers/tenancy.js';

/** Every regular file of a container's workspace folder, name to content, read through the engine's archive API. */
async function workspaceFiles(containerId: string): Promise<Map<string, string>> {
  const archive = (await docker.getContainer(containerId).getArchive({ path: '/home/coder/project/.' })) as unknown as Readable;
  const files = new Map<string, string>();
  const extract = tar.extract();
  await new Promise<void>((resolve, reject) => {
    extract.on('entry', (header, stream, next) => {
      const chunks: Buffer[] = [];
      stream.on('data', (c: unknown) => chunks.push(c as Buffer));
      stream.on('end', () => {
        const name = header.name.replace(/^(\.\/)+/, '');
        if (header.type === 'file') files.set(name, Buffer.concat(chunks).toString('utf8'));
        next();
      });
    });
    extract.on('finish', resolve);
    extract.on('error', reject);
    archive.pipe(extract);
  });
  return files;
}

/** The repository's own files (what the commit holds), without `.git`. */
function treeOf(files: Map<string, string>): Record<string, string> {
  return Object.fromEntries([...files].filter(([name]) => !name.startsWith('.git/')).sort(([a], [b]) => a.localeCompare(b)));
}

/** The controller's temporary clone folders (under its state folder). */
async function cloneDirs(stateDir: string): Promise<string[]> {
  return (await fs.readdir(path.join(stateDir, 'clones')).catch(() => [])).filter((n) => n.startsWith(CLONE_DIR_PREFIX));
}

/** Asserts a failed create left nothing: no record, no container, no volume, no temporary clone. */
async function expectNothingLeft(controller: SwarmController, name: string): Promise<void> {
  expect(controller.registry.list().filter((i) => i.name === name)).toEqual([]);
  const engine = await engineSnapshot(controller.config.swarmId);
  expect(engine.containers.filter((c) => c.name.includes(name))).toEqual([]);
  expect(engine.volumes.filter((v) => Object.values(v.labels).includes(name))).toEqual([]);
  expect(await cloneDirs(controller.config.stateDir)).toEqual([]);
}

/** What every suite starts from: a repository served by git daemon, and a fresh state folder. */
interface Suite {
  stateDir: string;
  repo: TestRepository;
  daemon: GitServer;
}

async function startSuite(prefix: string, repository: () => Promise<TestRepository> = () => makeRepository()): Promise<Suite> {
  await cleanUp(prefix);
  await ensureStandinImage();
  const repo = await repository();
  return { repo, daemon: await serveGitDaemon(repo.base), stateDir: await makeStateDir(prefix) };
}

async function endSuite(prefix: string, suite: Suite | undefined): Promise<void> {
  await suite?.daemon.close();
  await suite?.repo.remove();
  await cleanUp(prefix, suite?.stateDir);
}

const SECRET = 'ghp_e2eRepositorySecret0123456789abcdef';
const WRONG = 'ghp_e2eWrongSecret9876543210fedcba';

describe('workspaces from a repository (controller, stand-in image)', () => {
  const PREFIX = 'e2e-repo';
  let suite: Suite;
  let stateDir: string;
  let repo: TestRepository;
  let daemon: GitServer;
  let forge: HttpGitServer;
  let controller: SwarmController;
  let swarm: AuthorizedSwarm;
  let logText = '';

  beforeAll(async () => {
    suite = await startSuite(PREFIX);
    ({ stateDir, repo, daemon } = suite);
    forge = await serveGitHttp(repo.base, { username: 'alice', password: SECRET });
    process.env.E2E_REPO_TOKEN = SECRET;
    process.env.E2E_REPO_WRONG_TOKEN = WRONG;
    const sink = new PassThrough();
    sink.on('data', (chunk: Buffer) => (logText += chunk.toString()));
    const config = testConfig(stateDir, {
      logLevel: 'debug',
      providers: { docker: { image: STANDIN_IMAGE, stopTimeoutSeconds: 1 } },
      repositories: {
        // The git servers are on loopback: allowed here explicitly (refused by default).
        allowPrivateNetworks: true,
        credentials: {
          forge: { username: 'alice', tokenEnv: 'E2E_REPO_TOKEN' },
          stale: { username: 'alice', tokenEnv: 'E2E_REPO_WRONG_TOKEN' },
          bobs: { username: 'alice', tokenEnv: 'E2E_REPO_TOKEN', principals: ['bob'] },
        },
      },
    });
    controller = createSwarm(config, { logger: createLogger('debug', sink) });
    await controller.initialize();
    swarm = new AuthorizedSwarm({ controller }, localAdmin('cli'));
  }, 120_000);
  afterAll(async () => {
    await controller?.close();
    await forge?.close();
    delete process.env.E2E_REPO_TOKEN;
    delete process.env.E2E_REPO_WRONG_TOKEN;
    await endSuite(PREFIX, suite);
  });


  it('creates from a branch: the files at its head, on that branch, with the URL and commit recorded and progress reported', async () => {
    const events: ProgressEvent[] = [];
    const url = daemon.url(repo.name);
    const { instance, created } = await swarm.createInstance({ name: `${PREFIX}-branch`, repository: { url, ref: 'feature' } }, { onProgress: (e) => events.push(e) });
    expect(created).toBe(true);
    expect(instance.status).toBe('running');
    const files = await workspaceFiles(instance.providerRef.containerId!);
    expect(treeOf(files)).toEqual(repo.files.feature);
    expect(files.get('.git/HEAD')).toBe('ref: refs/heads/feature\n');
    expect(instance.config.metadata).toEqual({ [REPOSITORY_URL_METADATA]: url, [REPOSITORY_COMMIT_METADATA]: repo.commits.feature });
    expect(controller.registry.get(instance.id)?.config.metadata?.[REPOSITORY_COMMIT_METADATA]).toBe(repo.commits.feature);

    const messages = events.map((e) => e.message);
    for (const step of [/^repository: looking up feature in /, /^repository: fetching feature of /, /fetched/, /editor is answering/, /^repository: copying \d+ files/, /^repository: verifying/, /is in the workspace \(\d+ files verified\)$/]) {
      expect(messages.some((m) => step.test(m)), `${step} in ${JSON.stringify(messages)}`).toBe(true);
    }
    const fractions = events.map((e) => e.fraction);
    expect(fractions).toEqual([...fractions].sort((a, b) => a - b));
    expect(fractions.every((f) => f >= 0 && f <= 1)).toBe(true);
  });

  it('creates from a full commit SHA (detached there) and from the default branch', async () => {
    const url = daemon.url(repo.name);
    const bySha = await swarm.createInstance({ name: `${PREFIX}-sha`, repository: { url, ref: repo.commits.first } });
    const shaFiles = await workspaceFiles(bySha.instance.providerRef.containerId!);
    expect(treeOf(shaFiles)).toEqual(repo.files.first);
    expect(shaFiles.get('.git/HEAD')).toBe(`${repo.commits.first}\n`);
    expect(bySha.instance.config.metadata?.[REPOSITORY_COMMIT_METADATA]).toBe(repo.commits.first);

    const byDefault = await swarm.createInstance({ name: `${PREFIX}-default`, repository: { url } });
    const defaultFiles = await workspaceFiles(byDefault.instance.providerRef.containerId!);
    expect(treeOf(defaultFiles)).toEqual(repo.files.second);
    expect(defaultFiles.get('.git/HEAD')).toBe('ref: refs/heads/main\n');
    expect(byDefault.instance.config.metadata?.[REPOSITORY_COMMIT_METADATA]).toBe(repo.commits.second);
  });

  it('refuses a missing branch and a missing commit with INVALID_INPUT naming repository.ref, leaving nothing behind', async () => {
    const url = daemon.url(repo.name);
    const cases: [string, string][] = [
      ['no-branch', 'no-such-branch'],
      ['no-commit', 'f'.repeat(40)],
      ['short-sha', repo.commits.first.slice(0, 10)],
    ];
    for (const [suffix, ref] of cases) {
      const name = `${PREFIX}-${suffix}`;
      const err = await failure(swarm.createInstance({ name, repository: { url, ref } }));
      expect(err.code, err.message).toBe('INVALID_INPUT');
      expect(err.field).toBe('repository.ref');
      expect(err.message).toMatch(/^repository\.ref: /);
      await expectNothingLeft(controller, name);
    }
  });

  it('refuses bad URLs with INVALID_INPUT naming repository.url, before anything is made', async () => {
    const cases: [string, RepositoryRequest, string, RegExp][] = [
      ['file', { url: `file://${repo.base}/${repo.name}` }, 'repository.url', /https:\/\/, http:\/\/ or git:\/\//],
      ['path', { url: `${repo.base}/${repo.name}` }, 'repository.url', /ssh and local paths are not supported/],
      ['ssh', { url: 'ssh://git@127.0.0.1/project.git' }, 'repository.url', /ssh and local paths are not supported/],
      ['password', { url: `http://alice:${SECRET}@127.0.0.1/project.git` }, 'repository.url', /name it in repository\.credential/],
      ['absent', { url: daemon.url('no-such-repo.git') }, 'repository.url', /is not a git repository the controller can read/],
      ['unknown-credential', { url: daemon.url(repo.name), credential: 'nobody' }, 'repository.credential', /configured credential \(one of forge, stale\) \(got "nobody"\)$/],
    ];
    for (const [suffix, repository, field, message] of cases) {
      const name = `${PREFIX}-bad-${suffix}`;
      const err = await failure(swarm.createInstance({ name, repository }));
      expect(err.code, err.message).toBe('INVALID_INPUT');
      expect(err.field, err.message).toBe(field);
      expect(err.message).toMatch(message);
      expect(err.message).not.toContain(SECRET);
      await expectNothingLeft(controller, name);
    }
  });

  it('checks the owner\'s quota before the clone (nothing fetched), and again atomically when the record is made', async () => {
    const url = forge.url(repo.name);
    await controller.principals.addPrincipal({ id: 'e2e-quota-none', role: 'member', quotas: { instances: 0 } });
    const before = forge.requests.length;
    const refused = await failure(controller.createInstance({ name: `${PREFIX}-quota-none`, owner: 'e2e-quota-none', repository: { url, credential: 'forge' } }));
    expect(refused.code, refused.message).toBe('QUOTA_EXCEEDED');
    expect(refused.message).toMatch(/^instances: e2e-quota-none may hold 0, holds 0 and asked for 1 more/);
    expect(forge.requests.length).toBe(before); // the server was never asked: nothing was cloned
    await expectNothingLeft(controller, `${PREFIX}-quota-none`);

    // Room for one: two creates at once both pass the early check and clone; the check at the record lets one through.
    await controller.principals.addPrincipal({ id: 'e2e-quota-one', role: 'member', quotas: { instances: 1 } });
    const names = [`${PREFIX}-quota-a`, `${PREFIX}-quota-b`];
    const outcomes = await Promise.allSettled(names.map((name) => controller.createInstance({ name, owner: 'e2e-quota-one', repository: { url, credential: 'forge' } })));
    const made = outcomes.filter((o) => o.status === 'fulfilled');
    const failed = outcomes.flatMap((o) => (o.status === 'rejected' ? [o.reason as SwarmError] : []));
    expect(made).toHaveLength(1);
    expect(failed.map((e) => e.code)).toEqual(['QUOTA_EXCEEDED']);
    expect(controller.registry.list().filter((i) => i.owner === 'e2e-quota-one').map((i) => i.status)).toEqual(['running']);
    const loser = names[outcomes.findIndex((o) => o.status === 'rejected')]!;
    await expectNothingLeft(controller, loser);
  });

  it('clones a private repository with a configured credential, refuses a wrong one, and the secret is written nowhere', async () => {
    const url = forge.url(repo.name);

    const without = await failure(swarm.createInstance({ name: `${PREFIX}-private-none`, repository: { url } }));
    expect([without.code, without.field]).toEqual(['INVALID_INPUT', 'repository.credential']);
    expect(without.message).toMatch(/asks for a credential/);
    await expectNothingLeft(controller, `${PREFIX}-private-none`);

    const wrong = await failure(swarm.createInstance({ name: `${PREFIX}-private-stale`, repository: { url, credential: 'stale' } }));
    expect([wrong.code, wrong.field]).toEqual(['PROVIDER_ERROR', 'repository.credential']);
    expect(wrong.message).toMatch(/credential "stale" was refused by/);
    await expectNothingLeft(controller, `${PREFIX}-private-stale`);

    // A credential kept for other principals is refused before anyone is asked.
    const others = await failure(swarm.createInstance({ name: `${PREFIX}-private-bobs`, repository: { url, credential: 'bobs' } }));
    expect([others.code, others.field]).toEqual(['FORBIDDEN', 'repository.credential']);
    await expectNothingLeft(controller, `${PREFIX}-private-bobs`);

    const before = forge.requests.length;
    const { instance } = await swarm.createInstance({ name: `${PREFIX}-private`, repository: { url, ref: 'main', credential: 'forge' } });
    expect(forge.requests.slice(before).some((r) => r.authorized && r.status === 200)).toBe(true);
    const files = await workspaceFiles(instance.providerRef.containerId!);
    expect(treeOf(files)).toEqual(repo.files.second);
    expect(instance.config.metadata?.[REPOSITORY_URL_METADATA]).toBe(url);
    expect(files.get('.git/config')).toContain(`url = ${url}`);
    expect(await cloneDirs(stateDir)).toEqual([]);

    // The secret: not in the workspace (.git/config included), the state folder (registry, audit), the logs, the audit events.
    const leaks: string[] = [];
    for (const [name, content] of files) if (content.includes(SECRET)) leaks.push(`workspace ${name}`);
    for (const file of await filesUnder(stateDir)) {
      const content = await fs.readFile(path.join(stateDir, file), 'utf8').catch(() => '');
      if (content.includes(SECRET) || content.includes(WRONG)) leaks.push(`state ${file}`);
    }
    if (logText.includes(SECRET) || logText.includes(WRONG)) leaks.push('log');
    const events = await swarm.auditEvents({ limit: 10_000 });
    if (JSON.stringify(events).includes(SECRET)) leaks.push('audit events');
    expect(leaks).toEqual([]);
    // The checks above looked at real material: the logs and the audit trail did record these creates.
    expect(logText).toContain('repository cloned');
    expect(events.filter((e) => e.action === 'instance.create' && e.outcome === 'failed').length).toBeGreaterThanOrEqual(2);
  });
});

describe('a workspace from a repository through MCP, in the browser (real code-server)', () => {
  const PREFIX = 'e2e-repo-mcp';
  let suite: Suite;
  let repo: TestRepository;
  let daemon: GitServer;
  let server: LaunchedServer;
  let browser: Browser;

  beforeAll(async () => {
    suite = await startSuite(PREFIX);
    ({ repo, daemon } = suite);
    server = await launchFromMcpJson({ VSCODE_SWARM_STATE_DIR: suite.stateDir, VSCODE_SWARM_REPOSITORIES_ALLOW_PRIVATE_NETWORKS: 'true' });
    browser = await launchChromium();
  }, 120_000);
  afterAll(async () => {
    await browser?.close();
    await server?.close();
    await endSuite(PREFIX, suite);
  });

  it('create_swarm_instance clones the ref, reports progress, and the files are in the explorer, writable by the editor', async () => {
    const progress: string[] = [];
    const result = await callTool(server.client, 'create_swarm_instance', { name: `${PREFIX}-ws`, repository: { url: daemon.url(repo.name), ref: 'main' } }, (p) => {
      if (p.message) progress.push(p.message);
    });
    expect(result.isError, JSON.stringify(result.content)).toBeFalsy();
    const instance = result.structuredContent!.instance as VSCodeInstance;
    const access = result.structuredContent!.access as { accessUrl: string };
    expect(instance.config.metadata?.[REPOSITORY_COMMIT_METADATA]).toBe(repo.commits.second);
    expect(progress.some((m) => m.startsWith('repository: fetching main of'))).toBe(true);
    expect(progress.some((m) => m.includes('is in the workspace'))).toBe(true);

    // The editor's user owns what was imported: it can change a file and add one.
    const exec = await docker.getContainer(instance.providerRef.containerId!).exec({
      Cmd: ['sh', '-c', 'cd /home/coder/project && printf more >> README.md && touch src/new.txt && stat -c %U README.md src .git | tr "\\n" " "'],
      User: 'coder',
      AttachStdout: true,
      AttachStderr: true,
    });
    const stream = await exec.start({ hijack: true, stdin: false });
    let output = '';
    stream.on('data', (c: Buffer) => (output += c.toString()));
    await new Promise((r) => stream.on('end', r));
    expect((await exec.inspect()).ExitCode, output).toBe(0);
    expect(output).toMatch(/coder\s+coder\s+coder/);

    const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    const page = await context.newPage();
    expect((await page.goto(access.accessUrl, { waitUntil: 'domcontentloaded' }))?.status()).toBe(200);
    await page.locator('.monaco-workbench').waitFor({ timeout: 60_000 });
    // VS Code may ask whether to trust the folder's authors; the explorer shows the files either way once answered.
    const trust = page.getByRole('button', { name: /Yes, I trust the authors/ });
    if (await trust.isVisible({ timeout: 5_000 }).catch(() => false)) await trust.click();
    for (const entry of ['README.md', 'src']) {
      await page.locator('.explorer-folders-view .monaco-list-row', { hasText: entry }).first().waitFor({ timeout: 30_000 });
    }
    await page.locator('.explorer-folders-view .monaco-list-row', { hasText: 'README.md' }).first().click();
    const editor = page.locator('.editor-instance .monaco-editor .view-lines');
    await expect.poll(async () => (await editor.innerText().catch(() => '')).replace(/\u00a0/g, ' '), { timeout: 15_000 }).toContain('second');
    await fs.mkdir(path.join(REPO_ROOT, 'test-artifacts'), { recursive: true });
    await page.screenshot({ path: path.join(REPO_ROOT, 'test-artifacts', 'repository-explorer.png') });
    await context.close();
  });

  it('a missing ref through MCP is an INVALID_INPUT tool error naming repository.ref', async () => {
    const result = await callTool(server.client, 'create_swarm_instance', { name: `${PREFIX}-missing`, repository: { url: daemon.url(repo.name), ref: 'nope' } });
    expect(errorText(result)).toMatch(/repository\.ref: /);
    expect(await containersNamed(`${PREFIX}-missing`)).toEqual([]);
  });
});

describe('a create from a repository interrupted by a crash', () => {
  const PREFIX = 'e2e-repo-crash';
  let suite: Suite;
  let controller: SwarmController | undefined;

  beforeAll(async () => {
    suite = await startSuite(PREFIX);
  }, 120_000);
  afterAll(async () => {
    await controller?.close();
    await endSuite(PREFIX, suite);
  });

  it('is undone on the next start when the process died after the container existed and before the files were in', async () => {
    const { stateDir, repo, daemon } = suite;
    const name = `${PREFIX}-ws`;
    const server = await launchFromMcpJson({ VSCODE_SWARM_STATE_DIR: stateDir, VSCODE_SWARM_DOCKER_IMAGE: STANDIN_IMAGE, VSCODE_SWARM_REPOSITORIES_ALLOW_PRIVATE_NETWORKS: 'true', VSCODE_SWARM_CRASH_AT: 'create.after-provider' });
    const outcome = await callTool(server.client, 'create_swarm_instance', { name, repository: { url: daemon.url(repo.name), ref: 'main' } }).then(
      () => 'answered',
      () => 'connection lost',
    );
    expect(outcome).toBe('connection lost');
    await server.close().catch(() => undefined);
    const config = testConfig(stateDir, { providers: { docker: { image: STANDIN_IMAGE, stopTimeoutSeconds: 1 } }, repositories: { allowPrivateNetworks: true } });
    // What the dead process left: a `creating` record and a container without the repository's files.
    const engine = await engineSnapshot(config.swarmId);
    expect(engine.containers.filter((c) => c.name.includes(name)).length).toBe(1);
    const records = await Promise.all((await fs.readdir(path.join(stateDir, 'instances'))).map(async (f) => JSON.parse(await fs.readFile(path.join(stateDir, 'instances', f), 'utf8')) as VSCodeInstance));
    expect(records.filter((r) => r.name === name).map((r) => r.status)).toEqual(['creating']);

    expect(await cloneDirs(stateDir)).toHaveLength(1); // the dead process's clone

    controller = createSwarm(config);
    const { reconciled } = await controller.initialize();
    expect(reconciled.flatMap((r) => r.removed)).toHaveLength(1);
    expect(controller.registry.list().filter((i) => i.name === name)).toEqual([]);
    const after = await engineSnapshot(config.swarmId);
    expect(after.containers.filter((c) => c.name.includes(name))).toEqual([]);
    expect(after.volumes.filter((v) => Object.values(v.labels).includes(name))).toEqual([]);

    // Asking again makes the workspace, with the files; the next clone removed the one the dead process left.
    const again = await controller.createInstance({ name, repository: { url: daemon.url(repo.name), ref: 'main' } });
    expect(treeOf(await workspaceFiles(again.instance.providerRef.containerId!))).toEqual(repo.files.second);
    expect(await cloneDirs(stateDir)).toEqual([]);
  });
});

describe('a create from a repository that fails after its container exists', () => {
  const PREFIX = 'e2e-repo-late';
  let suite: Suite;
  let controller: SwarmController;

  beforeAll(async () => {
    // Many one-byte files: small on disk (within the clone cap), large as an archive (a 1 KiB tar record each).
    suite = await startSuite(PREFIX, () => makeRepository('many.git', Object.fromEntries(Array.from({ length: 400 }, (_, i) => [`many/f${i}.txt`, 'x']))));
    controller = createSwarm(testConfig(suite.stateDir, { providers: { docker: { image: STANDIN_IMAGE, stopTimeoutSeconds: 1 } }, repositories: { maxBytes: 150_000, allowPrivateNetworks: true } }));
    await controller.initialize();
  }, 120_000);
  afterAll(async () => {
    await controller?.close();
    await endSuite(PREFIX, suite);
  });

  it('deletes the container, volume and record it made, and the temporary clone', async () => {
    const name = `${PREFIX}-ws`;
    const events: ProgressEvent[] = [];
    const err = await failure(controller.createInstance({ name, repository: { url: suite.daemon.url(suite.repo.name) } }, { onProgress: (e) => events.push(e) }));
    expect(err.code, err.message).toBe('CONFLICT');
    expect(err.message).toMatch(/the clone of git:\/\/127\.0\.0\.1:\d+\/many\.git is larger than the 300000 bytes a transfer may carry/);
    // It did get as far as a running container before failing.
    expect(events.some((e) => e.message === 'editor is answering')).toBe(true);
    await expectNothingLeft(controller, name);
  });
});
