/**
 * Workspaces that start from a git repository.
 *
 * The clone happens ON THE CONTROLLER, with the machine's `git`, into a temporary folder; the result
 * (working tree and `.git`, shallow at the asked ref) is then packed and streamed into the new workspace
 * with the provider's `importWorkspace`, and verified file by file (SHA-256) against what was packed, the
 * way a migration verifies its copy. So it works on every provider with `workspaceTransfer`, the image
 * needs no git, and a private repository's credential never leaves the controller.
 *
 * The credential: a caller names one (`repository.credential`) configured under
 * `repositories.credentials.<name>`; its token is read from an environment variable or a file when the
 * clone runs, handed to git by a GIT_ASKPASS script that reads it from git's environment (never in argv,
 * never in a URL, never written to disk), and git's own credential helpers are switched off so nothing
 * stores it. What the instance records is the URL without user info and the resolved commit SHA.
 *
 * Egress: before git is run, the URL's host is resolved (DNS) and refused when any address it resolves to
 * is loopback, private, link-local, shared (CGNAT) or otherwise not a public unicast address, unless
 * `repositories.allowPrivateNetworks` is set: a caller must not use the controller to reach its own
 * network. git is then pinned to the addresses that were resolved (curl's resolve list for http(s), a URL
 * rewrite for git://) and, while private networks are refused, follows no redirect: a second lookup (DNS
 * rebinding) or a redirect cannot lead it elsewhere.
 *
 * Failures name the field: a malformed or refused URL (`repository.url`), a ref the remote does not have
 * (`repository.ref`), an unknown or refused credential (`repository.credential`). The temporary folder
 * goes whatever happens.
 */
import { spawn } from 'node:child_process';
import dns from 'node:dns';
import { createReadStream, promises as fs } from 'node:fs';
import { BlockList, isIP } from 'node:net';
import path from 'node:path';
import { PassThrough, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import tar from 'tar-stream';
import { z } from 'zod';
import type { ProgressEvent, Provider } from '../../providers/provider.js';
import { SwarmError, invalidInput, printable } from '../errors.js';
import { redactString, silentLogger, type Logger } from '../logger.js';
import { manifestDifferences, manifestOf, openSpooled, spoolArchive } from '../migration/workspace-archive.js';
import { CappedCollector } from '../streams/capped-collector.js';
import { PrincipalIdSchema } from '../tenancy/identity.js';

/** Metadata keys under which an instance made from a repository records where its files came from. */
export const REPOSITORY_URL_METADATA = 'vscode-swarm/repository';
export const REPOSITORY_COMMIT_METADATA = 'vscode-swarm/commit';

/** Prefix of the temporary clone folders in a CloneOptions.workDir. */
export const CLONE_DIR_PREFIX = 'clone-';

/** Clone folders in use in this process: any other in a workDir was left by a process that died. */
const activeClones = new Set<string>();

const CREDENTIAL_NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/;
const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;
/** Branch and tag names as people write them (a subset of git check-ref-format), or a commit SHA. */
const REF_PATTERN = /^(?!-)(?!.*\.\.)(?!.*@\{)(?!.*\/\/)(?!.*\/$)(?!\/)(?!.*\.lock$)[A-Za-z0-9._\/+-]{1,255}$/;
const FULL_SHA = /^(?:[0-9a-f]{40}|[0-9a-f]{64})$/;

/** What a create may ask for: the repository, a ref, and the NAME of a credential (never the secret). */
export const RepositoryRequestSchema = z
  .object({
    url: z.string().min(1).max(256).describe('Clone URL: https://, http:// or git:// (no user:password in it; name a credential instead)'),
    ref: z
      .string()
      .regex(REF_PATTERN, 'expected a branch, tag or full commit SHA (letters, digits, ".", "_", "/", "+" and "-")')
      .optional()
      .describe('Branch, tag or full commit SHA; the default branch when absent'),
    credential: z
      .string()
      .regex(CREDENTIAL_NAME, 'expected the name of a credential configured under repositories.credentials')
      .optional()
      .describe('Name of a credential configured on the controller (repositories.credentials.<name>) for a private repository; never the secret itself'),
  })
  .strict();
export type RepositoryRequest = z.infer<typeof RepositoryRequestSchema>;

const credentialBase = {
  username: z.string().min(1).max(256).optional(),
  /** Principals whose creates may name it; anyone who may create when absent. */
  principals: z.array(PrincipalIdSchema).optional(),
};
const CredentialSchema = z.union([
  z.object({ ...credentialBase, tokenEnv: z.string().regex(ENV_NAME, 'expected an environment variable name') }).strict(),
  z.object({ ...credentialBase, tokenFile: z.string().min(1) }).strict(),
]);
export type RepositoryCredential = z.infer<typeof CredentialSchema>;

/** The `repositories` section of the configuration. */
export const RepositoriesConfigSchema = z
  .object({
    /** Named credentials: `{ username?, tokenEnv }` or `{ username?, tokenFile }`; the token itself is never in the file. */
    credentials: z.record(z.string().regex(CREDENTIAL_NAME, 'expected a credential name of letters, digits, "_", "." and "-"'), CredentialSchema).default({}),
    /** Allow file:// URLs (a repository on the controller's own disk); off: a caller could read any repository there. */
    allowLocal: z.boolean().default(false),
    /**
     * Allow hosts that resolve to loopback, private, link-local or other non-public addresses (a git server
     * on the controller's own network); off: a caller could reach services only the controller can see.
     */
    allowPrivateNetworks: z.boolean().default(false),
    /** Time a clone may take, from the first contact to the last file checked out. */
    timeoutMs: z.number().int().min(1_000).max(3_600_000).default(300_000),
    /** The most a clone (history fetched plus working tree) may weigh on the controller's disk. */
    maxBytes: z.number().int().min(1_024).max(1_099_511_627_776).default(1_073_741_824),
  })
  .strict();
export type RepositoriesConfig = z.infer<typeof RepositoriesConfigSchema>;

export interface ClonedRepository {
  /** The working tree, `.git` included. */
  dir: string;
  /** The URL as recorded: user info removed. */
  url: string;
  /** The ref asked for, or the default branch it resolved to. */
  ref: string;
  commit: string;
  /** Bytes on disk (history and working tree). */
  bytes: number;
}

export interface CloneOptions {
  config: RepositoriesConfig;
  /** The principal the workspace is for: a credential with `principals` is refused to others. */
  owner?: string;
  /**
   * Where temporary clones go: a folder only this controller uses (under its state directory), so that
   * clones a killed process left there are removed by the next clone.
   */
  workDir: string;
  logger?: Logger;
  onProgress?: (event: ProgressEvent) => void;
  signal?: AbortSignal;
  /** Where credentials' tokenEnv are read; process.env by default. */
  env?: NodeJS.ProcessEnv;
  /** Resolves the URL's host for the egress check; the system resolver (getaddrinfo) by default. */
  lookup?: HostLookup;
}

/**
 * Checks what can be checked without the network (URL form, credential name and who may use it): a
 * create fails on these before anything is made. `owner` is the principal the workspace is for.
 */
export function checkRepositoryRequest(request: RepositoryRequest, config: RepositoriesConfig, owner?: string): URL {
  const url = parseRepositoryUrl(request.url, config.allowLocal);
  const usable = (name: string): boolean => {
    const allowed = config.credentials[name]?.principals;
    return !allowed || (owner !== undefined && allowed.includes(owner));
  };
  if (request.credential !== undefined && !Object.hasOwn(config.credentials, request.credential)) {
    // Only the names this owner may use are shown: the others are none of its business.
    const known = Object.keys(config.credentials).filter(usable);
    throw invalidInput('repository.credential', known.length ? `the name of a configured credential (one of ${known.join(', ')})` : 'the name of a configured credential, and none is configured for this owner (repositories.credentials)', request.credential);
  }
  if (request.credential !== undefined && !usable(request.credential)) {
    throw new SwarmError('FORBIDDEN', `repository.credential: credential "${request.credential}" is not for ${owner ?? 'this caller'} (repositories.credentials.${request.credential}.principals)`, { field: 'repository.credential' });
  }
  if (request.credential !== undefined && url.protocol !== 'https:' && url.protocol !== 'http:') {
    throw invalidInput('repository.credential', `no credential with a ${url.protocol}// URL (credentials are sent over http(s) only)`, request.credential);
  }
  return url;
}

/** The URL, refused unless it is http(s) or git (file:// only when allowed), without a password in it. */
export function parseRepositoryUrl(text: string, allowLocal = false): URL {
  const allowed = allowLocal ? 'an https://, http://, git:// or file:// URL' : 'an https://, http:// or git:// URL (ssh and local paths are not supported)';
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw invalidInput('repository.url', allowed, text);
  }
  const schemes = allowLocal ? ['https:', 'http:', 'git:', 'file:'] : ['https:', 'http:', 'git:'];
  if (!schemes.includes(url.protocol)) throw invalidInput('repository.url', allowed, publicUrl(url));
  if (url.protocol !== 'file:' && !url.hostname) throw invalidInput('repository.url', `${allowed} with a host`, publicUrl(url));
  if (url.password) {
    throw invalidInput('repository.url', 'a URL without a password in it: configure the secret under repositories.credentials and name it in repository.credential', publicUrl(url));
  }
  if (/[\s\0]/.test(text)) throw invalidInput('repository.url', 'a URL without spaces or control characters', publicUrl(url));
  return url;
}

/** The URL as it may be shown and recorded: no user info, no query, no fragment. */
export function publicUrl(url: URL): string {
  const copy = new URL(url.href);
  copy.username = '';
  copy.password = '';
  copy.search = '';
  copy.hash = '';
  return copy.href;
}

/** Where a clone may not go unless repositories.allowPrivateNetworks: every range that is not public unicast. */
const NON_PUBLIC = ((): BlockList => {
  const list = new BlockList();
  const v4: [string, number][] = [
    ['0.0.0.0', 8], ['10.0.0.0', 8], ['100.64.0.0', 10], ['127.0.0.0', 8], ['169.254.0.0', 16], ['172.16.0.0', 12], ['192.0.0.0', 24],
    ['192.0.2.0', 24], ['192.88.99.0', 24], ['192.168.0.0', 16], ['198.18.0.0', 15], ['198.51.100.0', 24], ['203.0.113.0', 24], ['224.0.0.0', 3],
  ];
  const v6: [string, number][] = [
    ['::', 96], ['64:ff9b::', 96], ['64:ff9b:1::', 48], ['100::', 64], ['2001::', 23], ['2001:db8::', 32], ['2002::', 16], ['fc00::', 7], ['fe80::', 10], ['fec0::', 10], ['ff00::', 8],
  ];
  for (const [net, bits] of v4) list.addSubnet(net, bits, 'ipv4');
  for (const [net, bits] of v6) list.addSubnet(net, bits, 'ipv6');
  return list;
})();

/** Whether an IP address is loopback, private, link-local, shared, reserved or multicast (IPv4-mapped IPv6 included). */
export function isNonPublicAddress(address: string): boolean {
  const family = isIP(address);
  if (!family) throw new TypeError(`not an IP address: ${address}`);
  return NON_PUBLIC.check(address, family === 4 ? 'ipv4' : 'ipv6');
}

export type HostLookup = (hostname: string) => Promise<string[]>;

const systemLookup: HostLookup = async (hostname) => (await dns.promises.lookup(hostname, { all: true, verbatim: true })).map((a) => a.address);

/**
 * The addresses a network URL's host resolves to, refused (FORBIDDEN, naming repository.url and the
 * setting that allows it) when one of them is not public and repositories.allowPrivateNetworks is off.
 * Undefined for a file:// URL (no network).
 */
export async function checkEgress(url: URL, config: Pick<RepositoriesConfig, 'allowPrivateNetworks'>, lookup: HostLookup = systemLookup): Promise<string[] | undefined> {
  if (url.protocol === 'file:') return undefined;
  const shown = publicUrl(url);
  const host = url.hostname.replace(/^\[(.*)\]$/, '$1');
  let addresses: string[];
  try {
    addresses = isIP(host) ? [host] : await lookup(host);
  } catch (err) {
    throw new SwarmError('INVALID_INPUT', `repository.url: the host of ${shown} does not resolve (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`, { field: 'repository.url' });
  }
  if (!addresses.length) throw new SwarmError('INVALID_INPUT', `repository.url: the host of ${shown} resolves to no address`, { field: 'repository.url' });
  const refused = config.allowPrivateNetworks ? [] : addresses.filter(isNonPublicAddress);
  if (refused.length) {
    throw new SwarmError(
      'FORBIDDEN',
      `repository.url: ${shown} resolves to ${refused.join(', ')}, a loopback, private or link-local address; clones may reach only public addresses unless repositories.allowPrivateNetworks is true in the controller's configuration`,
      { field: 'repository.url', details: { setting: 'repositories.allowPrivateNetworks' } },
    );
  }
  return addresses;
}

/** git options that make it use only the checked addresses of the URL's host (no second lookup). */
function pinnedTo(url: URL, addresses: string[] | undefined): string[] {
  if (!addresses || isIP(url.hostname.replace(/^\[(.*)\]$/, '$1'))) return [];
  if (url.protocol === 'git:') {
    const ip = isIP(addresses[0]!) === 6 ? `[${addresses[0]}]` : addresses[0]!;
    const from = `git://${url.host}/`;
    return ['-c', `url.git://${ip}:${url.port || '9418'}/.insteadOf=${from}`];
  }
  const port = url.port || (url.protocol === 'https:' ? '443' : '80');
  return ['-c', `http.curloptResolve=${url.hostname}:${port}:${addresses.map((a) => (isIP(a) === 6 ? `[${a}]` : a)).join(',')}`];
}

/** Metadata an instance made from this clone records. */
export function repositoryMetadata(clone: Pick<ClonedRepository, 'url' | 'commit'>): Record<string, string> {
  return { [REPOSITORY_URL_METADATA]: clone.url, [REPOSITORY_COMMIT_METADATA]: clone.commit };
}

/**
 * Clones the repository at the ref into a temporary folder, hands it to `use`, and removes the folder
 * afterwards, whatever happens.
 */
export async function withClonedRepository<T>(request: RepositoryRequest, options: CloneOptions, use: (clone: ClonedRepository) => Promise<T>): Promise<T> {
  const url = checkRepositoryRequest(request, options.config, options.owner);
  const addresses = await checkEgress(url, options.config, options.lookup);
  await fs.mkdir(options.workDir, { recursive: true, mode: 0o700 });
  await removeStaleClones(options.workDir);
  const root = await fs.mkdtemp(path.join(options.workDir, CLONE_DIR_PREFIX));
  activeClones.add(root);
  try {
    await fs.chmod(root, 0o700);
    const clone = await cloneInto(root, url, request, options, addresses);
    return await use(clone);
  } finally {
    await fs.rm(root, { recursive: true, force: true });
    activeClones.delete(root);
  }
}

/** Clone folders in workDir that no clone of this process uses: left by a process that was killed mid-clone. */
async function removeStaleClones(workDir: string): Promise<void> {
  for (const name of await fs.readdir(workDir).catch(() => [])) {
    const dir = path.join(workDir, name);
    if (name.startsWith(CLONE_DIR_PREFIX) && !activeClones.has(dir)) await fs.rm(dir, { recursive: true, force: true });
  }
}

async function cloneInto(root: string, url: URL, request: RepositoryRequest, options: CloneOptions, addresses: string[] | undefined): Promise<ClonedRepository> {
  const logger = options.logger ?? silentLogger();
  const shown = publicUrl(url);
  const progress = (fraction: number, message: string): void => options.onProgress?.({ fraction, message });
  const git = await gitRunner(root, url, request, options, addresses);
  const deadline = Date.now() + options.config.timeoutMs;
  const dir = path.join(root, 'repo');

  progress(0.02, `repository: looking up ${request.ref ?? 'the default branch'} in ${shown}`);
  const listing = await git.run(['ls-remote', '--symref', '--', shown], { deadline, what: 'looking up refs', request });
  const target = resolveRef(listing, request.ref, shown);

  await fs.mkdir(dir);
  // The remote the workspace keeps is the public URL: its own `git pull` asks for its own credential.
  await git.run(['init', '--quiet', dir], { deadline, what: 'init', request });
  await git.run(['-C', dir, 'remote', 'add', 'origin', shown], { deadline, what: 'init', request });
  progress(0.05, `repository: fetching ${target.label} of ${shown}`);
  const fetchArgs = ['-C', dir, 'fetch', '--quiet', '--depth=1', '--no-tags', 'origin', target.refspec];
  await git.run(fetchArgs, { deadline, what: `fetching ${target.label}`, request, watchSize: { dir: root, maxBytes: options.config.maxBytes } });
  await git.run(['-C', dir, ...target.checkout], { deadline, what: `checking out ${target.label}`, request, watchSize: { dir: root, maxBytes: options.config.maxBytes } });
  const commit = (await git.run(['-C', dir, 'rev-parse', 'HEAD'], { deadline, what: 'reading the commit', request })).trim();
  const bytes = await dirSize(dir);
  if (bytes > options.config.maxBytes) throw tooLarge(shown, bytes, options.config.maxBytes);
  progress(0.15, `repository: ${shown} at ${commit.slice(0, 12)} (${target.label}) fetched, ${bytes} bytes`);
  logger.info({ repository: shown, ref: target.label, commit, bytes }, 'repository cloned');
  return { dir, url: shown, ref: target.label, commit, bytes };
}

interface Target {
  label: string;
  refspec: string;
  checkout: string[];
}

/** What to fetch and check out for the asked ref, from `git ls-remote --symref` output. */
function resolveRef(listing: string, ref: string | undefined, shown: string): Target {
  const refs = new Map<string, string>();
  let headBranch: string | undefined;
  for (const line of listing.split('\n')) {
    const symref = /^ref: refs\/heads\/(\S+)\tHEAD$/.exec(line);
    if (symref) headBranch = symref[1];
    const [sha, name] = line.split('\t');
    if (sha && name && !line.startsWith('ref:')) refs.set(name, sha);
  }
  const branch = (name: string): Target => ({
    label: name,
    refspec: `+refs/heads/${name}:refs/remotes/origin/${name}`,
    checkout: ['checkout', '--quiet', '-B', name, '--track', `origin/${name}`],
  });
  if (ref === undefined) {
    if (headBranch) return branch(headBranch);
    if (refs.has('HEAD')) return { label: 'HEAD', refspec: 'HEAD', checkout: ['checkout', '--quiet', '--detach', 'FETCH_HEAD'] };
    throw new SwarmError('INVALID_INPUT', `repository.ref: ${shown} has no default branch (it may be empty); name a branch, tag or commit`, { field: 'repository.ref' });
  }
  const name = ref.replace(/^refs\/(heads|tags)\//, '');
  if (refs.has(`refs/heads/${name}`) && !ref.startsWith('refs/tags/')) return branch(name);
  if (refs.has(`refs/tags/${name}`)) {
    return { label: name, refspec: `+refs/tags/${name}:refs/tags/${name}`, checkout: ['checkout', '--quiet', '--detach', `refs/tags/${name}^{commit}`] };
  }
  if (FULL_SHA.test(ref)) return { label: ref, refspec: ref, checkout: ['checkout', '--quiet', '--detach', 'FETCH_HEAD'] };
  const hint = /^[0-9a-f]{4,39}$/.test(ref) ? ' (an abbreviated commit SHA cannot be fetched: give all 40 characters)' : '';
  throw invalidInput('repository.ref', `a branch, tag or full commit SHA of ${shown}, which has no branch or tag of that name${hint}`, ref);
}

interface RunOptions {
  deadline: number;
  what: string;
  request: RepositoryRequest;
  /** Stops git when the folder grows past the cap. */
  watchSize?: { dir: string; maxBytes: number };
}

interface GitRunner {
  run(args: string[], options: RunOptions): Promise<string>;
}

/**
 * Runs git with no terminal prompts, no credential helpers, only the allowed transports, and the
 * credential (when one is named) in its environment for the askpass script to hand over.
 */
async function gitRunner(root: string, url: URL, request: RepositoryRequest, options: CloneOptions, addresses: string[] | undefined): Promise<GitRunner> {
  const env: NodeJS.ProcessEnv = {
    PATH: process.env.PATH ?? '/usr/bin:/bin',
    HOME: root,
    LANG: 'C',
    LC_ALL: 'C',
    GIT_TERMINAL_PROMPT: '0',
    GIT_CONFIG_NOSYSTEM: '1',
    GIT_CONFIG_GLOBAL: '/dev/null',
    GIT_ALLOW_PROTOCOL: options.config.allowLocal ? 'http:https:git:file' : 'http:https:git',
    GIT_AUTHOR_NAME: 'vscode-swarm',
    GIT_AUTHOR_EMAIL: 'vscode-swarm@localhost',
    GIT_COMMITTER_NAME: 'vscode-swarm',
    GIT_COMMITTER_EMAIL: 'vscode-swarm@localhost',
  };
  if (request.credential !== undefined) {
    const credential = options.config.credentials[request.credential]!;
    const token = await readToken(request.credential, credential, options.env ?? process.env);
    const askpass = path.join(root, 'askpass.sh');
    // The script holds no secret: it prints what git's environment carries.
    await fs.writeFile(askpass, '#!/bin/sh\ncase "$1" in\n  Username*) printf \'%s\\n\' "$VSCODE_SWARM_GIT_USERNAME" ;;\n  *) printf \'%s\\n\' "$VSCODE_SWARM_GIT_TOKEN" ;;\nesac\n', { mode: 0o700 });
    Object.assign(env, { GIT_ASKPASS: askpass, VSCODE_SWARM_GIT_USERNAME: url.username ? decodeURIComponent(url.username) : (credential.username ?? 'x-access-token'), VSCODE_SWARM_GIT_TOKEN: token });
  } else {
    env.GIT_ASKPASS = 'false';
  }
  // No credential helper may store (or volunteer) a secret; with a credential, no redirect may carry it elsewhere.
  const base = ['-c', 'credential.helper=', '-c', 'advice.detachedHead=false', '-c', 'init.defaultBranch=main'];
  // Nor, where egress is checked, may a redirect lead to a host that was not.
  if (request.credential !== undefined || !options.config.allowPrivateNetworks) base.push('-c', 'http.followRedirects=false');
  base.push(...pinnedTo(url, addresses));
  return {
    run: (args, runOptions) => runGit([...base, ...args], env, runOptions, options, url),
  };
}

async function readToken(name: string, credential: RepositoryCredential, env: NodeJS.ProcessEnv): Promise<string> {
  const field = 'repository.credential';
  if ('tokenEnv' in credential) {
    const value = env[credential.tokenEnv];
    if (!value) throw new SwarmError('PROVIDER_ERROR', `${field}: credential "${name}" reads its token from $${credential.tokenEnv}, which is not set on the controller`, { field });
    return value.trim();
  }
  try {
    const value = (await fs.readFile(credential.tokenFile, 'utf8')).trim();
    if (!value) throw new Error('the file is empty');
    return value;
  } catch (err) {
    throw new SwarmError('PROVIDER_ERROR', `${field}: credential "${name}" reads its token from ${credential.tokenFile}, which cannot be read: ${(err as Error).message}`, { field });
  }
}

function runGit(args: string[], env: NodeJS.ProcessEnv, run: RunOptions, options: CloneOptions, url: URL): Promise<string> {
  const shown = publicUrl(url);
  return new Promise((resolve, reject) => {
    const child = spawn('git', args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    const stdout = new CappedCollector(4 * 1024 * 1024);
    const stderr = new CappedCollector(16 * 1024);
    child.stdout.pipe(stdout);
    child.stderr.pipe(stderr);
    let stopped: SwarmError | undefined;
    const stop = (err: SwarmError): void => {
      stopped ??= err;
      child.kill('SIGKILL');
    };
    const timer = setTimeout(
      () => stop(new SwarmError('TIMEOUT', `repository.url: ${run.what} of ${shown} did not finish within repositories.timeoutMs (${options.config.timeoutMs} ms)`, { field: 'repository.url' })),
      Math.max(0, run.deadline - Date.now()),
    );
    const onAbort = (): void => stop(new SwarmError('CONFLICT', `repository.url: ${run.what} of ${shown} was cancelled`, { field: 'repository.url' }));
    options.signal?.addEventListener('abort', onAbort, { once: true });
    if (options.signal?.aborted) onAbort();
    let watching = false;
    const watch = run.watchSize
      ? setInterval(() => {
          if (watching) return;
          watching = true;
          void dirSize(run.watchSize!.dir)
            .then((bytes) => {
              if (bytes > run.watchSize!.maxBytes) stop(tooLarge(shown, bytes, run.watchSize!.maxBytes));
            }, () => undefined)
            .finally(() => (watching = false));
        }, 500)
      : undefined;
    child.on('error', (err) => stop(new SwarmError('PROVIDER_UNAVAILABLE', `repository.url: cannot run git on the controller (${err.message}); install git`, { field: 'repository.url' })));
    child.on('close', (code) => {
      clearTimeout(timer);
      if (watch) clearInterval(watch);
      options.signal?.removeEventListener('abort', onAbort);
      if (stopped) return reject(stopped);
      if (code === 0) return resolve(stdout.text());
      reject(gitFailure(stderr.text(), run, shown));
    });
  });
}

/** git's complaint turned into an error naming the field it is about. */
function gitFailure(stderr: string, run: RunOptions, shown: string): SwarmError {
  const said = printable(redactString(stderr.trim().split('\n').slice(-3).join(' / '))).slice(0, 600);
  const { request } = run;
  if (/authentication failed|could not read (username|password)|terminal prompts disabled|HTTP (401|403)|invalid username or password|403 Forbidden|401 Unauthorized/i.test(stderr)) {
    if (request.credential !== undefined) {
      return new SwarmError('PROVIDER_ERROR', `repository.credential: credential "${request.credential}" was refused by ${shown} (${said})`, { field: 'repository.credential' });
    }
    return new SwarmError('INVALID_INPUT', `repository.credential: ${shown} asks for a credential; configure one under repositories.credentials and name it in repository.credential (${said})`, { field: 'repository.credential' });
  }
  if (/not our ref|couldn't find remote ref|no such remote ref|unadvertised object|reference is not a tree|did not match any|not a valid object name|pathspec .* did not match|bad object/i.test(stderr) && run.what !== 'looking up refs') {
    return new SwarmError('INVALID_INPUT', `repository.ref: ${shown} has no commit ${JSON.stringify(request.ref ?? 'HEAD')} (${said})`, { field: 'repository.ref' });
  }
  if (/not found|not exported|does not appear to be a git repository|does not exist|repository .* not found|HTTP 404|no such repository/i.test(stderr)) {
    return new SwarmError('INVALID_INPUT', `repository.url: ${shown} is not a git repository the controller can read (${said})`, { field: 'repository.url' });
  }
  return new SwarmError('PROVIDER_ERROR', `repository.url: ${run.what} of ${shown} failed (${said || 'git gave no reason'})`, { field: 'repository.url' });
}

function tooLarge(shown: string, bytes: number, maxBytes: number): SwarmError {
  return new SwarmError('CONFLICT', `repository.url: ${shown} is larger than the ${maxBytes} bytes a repository may bring (repositories.maxBytes); stopped at ${bytes} bytes`, { field: 'repository.url' });
}

/** Bytes of regular files under a folder (symbolic links are not followed). */
async function dirSize(dir: string): Promise<number> {
  let total = 0;
  for (const entry of await fs.readdir(dir, { withFileTypes: true }).catch(() => [])) {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) total += await dirSize(full);
    else if (entry.isFile()) total += (await fs.lstat(full).catch(() => ({ size: 0 }))).size;
  }
  return total;
}

export interface ImportOptions {
  /** The cap on what is streamed, and on what the verification reads back. */
  maxBytes: number;
  deadline?: number;
  onProgress?: (event: ProgressEvent) => void;
  logger?: Logger;
}

/**
 * Packs the clone (owned by the workspace folder's owner), streams it into the instance's workspace, and
 * reads the workspace back to check every file arrived byte for byte.
 */
export async function importClone(provider: Provider, instanceId: string, clone: ClonedRepository, options: ImportOptions): Promise<void> {
  if (!provider.importWorkspace || !provider.exportWorkspace || !provider.getCapabilities().workspaceTransfer) {
    throw new SwarmError('INVALID_INPUT', `repository: ${provider.type} cannot receive files into a workspace (no workspace transfer)`, { field: 'repository' });
  }
  const progress = (fraction: number, message: string): void => options.onProgress?.({ fraction, message });
  const what = `the clone of ${clone.url}`;
  const limits = { maxBytes: options.maxBytes, what, ...(options.deadline !== undefined ? { deadline: options.deadline } : {}) };
  const owner = await workspaceOwner(provider, instanceId);
  const spoolFile = path.join(path.dirname(clone.dir), 'workspace.tar');
  const spooled = await spoolArchive(packDirectory(clone.dir, owner), spoolFile, limits);
  const files = Object.keys(spooled.manifest).length;
  progress(0.85, `repository: copying ${files} files (${spooled.bytes} bytes) into the workspace`);
  await provider.importWorkspace(instanceId, openSpooled(spooled));
  progress(0.93, 'repository: verifying the workspace against the clone (SHA-256)');
  const actual = await manifestOf(await provider.exportWorkspace(instanceId), { ...limits, maxBytes: options.maxBytes * 2 + 1_048_576, what: `the workspace of ${instanceId}` });
  const problems = manifestDifferences(spooled.manifest, actual);
  await fs.rm(spoolFile, { force: true });
  if (problems.length) {
    throw new SwarmError('PROVIDER_ERROR', `repository: the workspace of ${instanceId} does not hold the clone of ${clone.url} (${problems.length} files differ: ${problems.slice(0, 5).join('; ')})`, { field: 'repository' });
  }
  progress(0.98, `repository: ${clone.url} at ${clone.commit.slice(0, 12)} is in the workspace (${files} files verified)`);
  options.logger?.info({ instanceId, repository: clone.url, commit: clone.commit, files, bytes: spooled.bytes }, 'repository imported into the workspace');
}

/** The uid and gid of the workspace folder, read from the first entry of its (fresh, near empty) export. */
async function workspaceOwner(provider: Provider, instanceId: string): Promise<{ uid: number; gid: number }> {
  const archive = await provider.exportWorkspace!(instanceId);
  const extract = tar.extract();
  try {
    return await new Promise((resolve, reject) => {
      extract.once('entry', (header) => resolve({ uid: header.uid ?? 0, gid: header.gid ?? 0 }));
      extract.once('finish', () => resolve({ uid: 0, gid: 0 }));
      extract.once('error', reject);
      archive.once('error', reject);
      archive.pipe(extract);
    });
  } finally {
    archive.unpipe(extract);
    archive.destroy();
    extract.destroy();
  }
}

/** A tar stream of a folder's contents (files, folders, symbolic links), produced as it is read. */
function packDirectory(dir: string, owner: { uid: number; gid: number }): Readable {
  const pack = tar.pack();
  const out = new PassThrough();
  const walk = async (rel: string): Promise<void> => {
    for (const entry of (await fs.readdir(path.join(dir, rel), { withFileTypes: true })).sort((a, b) => a.name.localeCompare(b.name))) {
      const name = rel ? `${rel}/${entry.name}` : entry.name;
      const full = path.join(dir, name);
      const stat = await fs.lstat(full);
      const header = { name, mode: stat.mode & 0o7777, mtime: stat.mtime, uid: owner.uid, gid: owner.gid };
      if (entry.isDirectory()) {
        pack.entry({ ...header, type: 'directory' });
        await walk(name);
      } else if (entry.isSymbolicLink()) {
        pack.entry({ ...header, type: 'symlink', linkname: await fs.readlink(full) });
      } else if (entry.isFile()) {
        const sink = pack.entry({ ...header, type: 'file', size: stat.size });
        await pipeline(createReadStream(full), sink);
      }
    }
  };
  walk('').then(
    () => pack.finalize(),
    (err: Error) => pack.destroy(err),
  );
  pack.on('error', (err) => out.destroy(err));
  return pack.pipe(out);
}
