/**
 * The clone egress policy, with real git servers (git daemon, git http-backend) on loopback and the
 * machine's git, no Docker: a repository URL whose host resolves to a loopback, private or link-local
 * address is refused unless repositories.allowPrivateNetworks is set, on the resolved address (DNS), not
 * the string; nothing is fetched then. When allowed, git is pinned to the address that was resolved: a
 * host name that only the controller's lookup knows still clones, over git:// and over http(s).
 */
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  CLONE_DIR_PREFIX,
  RepositoriesConfigSchema,
  checkEgress,
  isNonPublicAddress,
  withClonedRepository,
  type CloneOptions,
  type HostLookup,
  type RepositoryRequest,
} from '../../src/workspace/repository.js';
import { failure } from '../helpers/failure.js';
import { makeRepository, serveGitDaemon, serveGitHttp, type GitServer, type HttpGitServer, type TestRepository } from '../helpers/git-server.js';

const SECRET = 'ghp_e2eEgressSecret0123456789abcdef';

describe('which addresses are not public', () => {
  it('refuses loopback, private, shared, link-local, unique-local, mapped and multicast addresses, and passes public ones', () => {
    const nonPublic = ['127.0.0.1', '127.8.9.10', '10.0.0.1', '172.16.5.4', '172.31.255.255', '192.168.1.1', '169.254.169.254', '100.64.0.1', '0.0.0.0', '224.0.0.1', '255.255.255.255',
      '::1', '::', 'fe80::1', 'fc00::1', 'fd12:3456::1', '::ffff:127.0.0.1', '::ffff:10.0.0.1', '::ffff:a9fe:a9fe', 'ff02::1', '64:ff9b::a00:1'];
    const publicOnes = ['8.8.8.8', '1.1.1.1', '140.82.112.3', '172.32.0.1', '192.169.0.1', '2606:4700:4700::1111', '2a00:1450:4001::200e', '::ffff:8.8.8.8'];
    expect(nonPublic.filter((a) => !isNonPublicAddress(a))).toEqual([]);
    expect(publicOnes.filter((a) => isNonPublicAddress(a))).toEqual([]);
  });

  it('checks the resolved addresses, not the string: localhost by the system resolver, every address of a name', async () => {
    const refuse = RepositoriesConfigSchema.parse({});
    const localhost = await failure(checkEgress(new URL('http://localhost:8080/project.git'), refuse));
    expect([localhost.code, localhost.field]).toEqual(['FORBIDDEN', 'repository.url']);
    expect(localhost.message).toMatch(/^repository\.url: http:\/\/localhost:8080\/project\.git resolves to (127\.0\.0\.1|::1)/);
    expect(localhost.message).toContain('repositories.allowPrivateNetworks');

    // A name with one public and one private address is refused, naming the private one.
    const mixed: HostLookup = async (host) => (host === 'git.example.test' ? ['140.82.112.3', '10.1.2.3'] : []);
    const err = await failure(checkEgress(new URL('https://git.example.test/a/b.git'), refuse, mixed));
    expect(err.message).toMatch(/resolves to 10\.1\.2\.3, a loopback, private or link-local address/);
    expect(await checkEgress(new URL('https://git.example.test/a/b.git'), refuse, async () => ['140.82.112.3'])).toEqual(['140.82.112.3']);

    for (const url of ['git://10.0.0.7/x.git', 'http://[::1]:9/x.git', 'http://[::ffff:127.0.0.1]/x.git', 'https://169.254.169.254/latest', 'http://0x7f000001/x.git']) {
      expect((await failure(checkEgress(new URL(url), refuse))).field, url).toBe('repository.url');
    }
    expect(await checkEgress(new URL('https://140.82.112.3/a.git'), refuse)).toEqual(['140.82.112.3']);

    const unresolvable = await failure(checkEgress(new URL('https://git.example.test/a.git'), refuse, async () => Promise.reject(Object.assign(new Error('no'), { code: 'ENOTFOUND' }))));
    expect([unresolvable.code, unresolvable.field]).toEqual(['INVALID_INPUT', 'repository.url']);
    expect(unresolvable.message).toMatch(/does not resolve \(ENOTFOUND\)/);

    const allow = RepositoriesConfigSchema.parse({ allowPrivateNetworks: true });
    expect(await checkEgress(new URL('http://10.0.0.7/x.git'), allow)).toEqual(['10.0.0.7']);
  });
});

describe('clones and the egress policy (real git servers on loopback)', () => {
  let repo: TestRepository;
  let daemon: GitServer;
  let forge: HttpGitServer;
  let workDir: string;

  const options = (config: Record<string, unknown>, extra: Partial<CloneOptions> = {}): CloneOptions => ({
    config: RepositoriesConfigSchema.parse({ credentials: { forge: { username: 'alice', tokenEnv: 'E2E_EGRESS_TOKEN' } }, ...config }),
    workDir,
    env: { E2E_EGRESS_TOKEN: SECRET },
    ...extra,
  });
  const commitOf = (request: RepositoryRequest, opts: CloneOptions): Promise<string> => withClonedRepository(request, opts, async (clone) => clone.commit);
  const clones = async (): Promise<string[]> => (await fs.readdir(workDir).catch(() => [])).filter((n) => n.startsWith(CLONE_DIR_PREFIX));

  beforeAll(async () => {
    repo = await makeRepository();
    daemon = await serveGitDaemon(repo.base);
    forge = await serveGitHttp(repo.base, { username: 'alice', password: SECRET });
    workDir = await fs.mkdtemp(path.join(os.tmpdir(), 'vscode-swarm-egress-'));
  });
  afterAll(async () => {
    await daemon?.close();
    await forge?.close();
    await repo?.remove();
    if (workDir) await fs.rm(workDir, { recursive: true, force: true });
  });

  it('refuses a loopback server by default, naming repository.url and the setting, without contacting it', async () => {
    for (const url of [daemon.url(repo.name), forge.url(repo.name), daemon.url(repo.name).replace('127.0.0.1', 'localhost')]) {
      const err = await failure(commitOf({ url, credential: url.startsWith('http') ? 'forge' : undefined } as RepositoryRequest, options({})));
      expect([err.code, err.field], err.message).toEqual(['FORBIDDEN', 'repository.url']);
      expect(err.message).toContain('repositories.allowPrivateNetworks');
    }
    expect(forge.requests).toEqual([]);
    expect(await clones()).toEqual([]);
  });

  it('clones from loopback when allowed, pinned to the resolved address: a name only the lookup knows works over git:// and http', async () => {
    const allowed = { allowPrivateNetworks: true };
    expect(await commitOf({ url: daemon.url(repo.name), ref: 'feature' }, options(allowed))).toBe(repo.commits.feature);
    // The system resolver: localhost.
    expect(await commitOf({ url: daemon.url(repo.name).replace('127.0.0.1', 'localhost') }, options(allowed))).toBe(repo.commits.second);

    // git itself cannot resolve this name: the clone works only because git uses the address that was checked.
    const lookup: HostLookup = async (host) => (host === 'git.pinned.test' ? ['127.0.0.1'] : Promise.reject(Object.assign(new Error('unknown'), { code: 'ENOTFOUND' })));
    const viaDaemon = daemon.url(repo.name).replace('127.0.0.1', 'git.pinned.test');
    expect(await commitOf({ url: viaDaemon, ref: 'main' }, options(allowed, { lookup }))).toBe(repo.commits.second);
    const viaHttp = forge.url(repo.name).replace('127.0.0.1', 'git.pinned.test');
    expect(await commitOf({ url: viaHttp, ref: 'feature', credential: 'forge' }, options(allowed, { lookup }))).toBe(repo.commits.feature);
    expect(forge.requests.some((r) => r.authorized && r.status === 200)).toBe(true);

    // The remote the workspace keeps is the URL as given, not the pinned address.
    const remote = await withClonedRepository({ url: viaDaemon }, options(allowed, { lookup }), (clone) => fs.readFile(path.join(clone.dir, '.git/config'), 'utf8'));
    expect(remote).toContain(`url = ${viaDaemon}`);
    expect(remote).not.toContain('insteadOf');

    // The same name refused by default, on the address the lookup gave.
    const refused = await failure(commitOf({ url: viaDaemon }, options({}, { lookup })));
    expect(refused.message).toMatch(/resolves to 127\.0\.0\.1/);
    expect(await clones()).toEqual([]);
  });
});
