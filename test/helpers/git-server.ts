/**
 * Real git servers for the repository tests: a repository made with the machine's git (two commits on
 * `main`, a `feature` branch off the first, a `v1` tag), served read-only by `git daemon` over git://, or
 * by `git http-backend` behind a small node HTTP server that demands HTTP basic auth and refuses a wrong
 * password, the way a private repository on a forge does.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { waitUntil } from '../../src/timing/wait-until.js';
import { freePort } from './ports.js';

const run = promisify(execFile);

const GIT_ENV = {
  ...process.env,
  GIT_CONFIG_NOSYSTEM: '1',
  GIT_CONFIG_GLOBAL: '/dev/null',
  GIT_AUTHOR_NAME: 'Test',
  GIT_AUTHOR_EMAIL: 'test@example.com',
  GIT_COMMITTER_NAME: 'Test',
  GIT_COMMITTER_EMAIL: 'test@example.com',
};

async function git(cwd: string, ...args: string[]): Promise<string> {
  return (await run('git', args, { cwd, env: GIT_ENV })).stdout.trim();
}

export interface TestRepository {
  /** The folder the servers export (`--base-path`, GIT_PROJECT_ROOT). */
  base: string;
  /** The bare repository's name under `base`. */
  name: string;
  /** What each commit holds, file name to content. */
  files: { first: Record<string, string>; second: Record<string, string>; feature: Record<string, string> };
  commits: { first: string; second: string; feature: string };
  remove(): Promise<void>;
}

/**
 * Two commits on main (the second adds a nested file, changes README.md, and adds `extra`), a branch off
 * the first, a tag on it.
 */
export async function makeRepository(name = 'project.git', extra: Record<string, string> = {}): Promise<TestRepository> {
  const base = await mkdtemp(path.join(os.tmpdir(), 'vscode-swarm-git-'));
  const work = path.join(base, 'work');
  await mkdir(work);
  const files = {
    first: { 'README.md': '# project\nfirst\n' },
    second: { 'README.md': '# project\nsecond\n', 'src/app.txt': 'the app at the second commit\n', ...extra },
    feature: { 'README.md': '# project\nfirst\n', 'feature.txt': 'only on the feature branch\n' },
  };
  const commit = async (content: Record<string, string>, message: string): Promise<string> => {
    for (const [file, text] of Object.entries(content)) {
      await mkdir(path.dirname(path.join(work, file)), { recursive: true });
      await writeFile(path.join(work, file), text);
    }
    await git(work, 'add', '-A');
    await git(work, 'commit', '-q', '-m', message);
    return git(work, 'rev-parse', 'HEAD');
  };
  await git(work, 'init', '-q', '-b', 'main');
  const first = await commit(files.first, 'first');
  await git(work, 'tag', 'v1');
  const second = await commit(files.second, 'second');
  await git(work, 'checkout', '-q', '-b', 'feature', first);
  const feature = await commit({ 'feature.txt': files.feature['feature.txt'] }, 'feature');
  await git(work, 'checkout', '-q', 'main');
  await git(base, 'clone', '-q', '--bare', work, name);
  await rm(work, { recursive: true, force: true });
  return { base, name, files, commits: { first, second, feature }, remove: () => rm(base, { recursive: true, force: true }) };
}

export interface GitServer {
  /** The clone URL of a repository under the base path. */
  url(name: string): string;
  close(): Promise<void>;
}

/**
 * `git daemon` exporting every repository under `base`, read-only (git://), on 127.0.0.1 or on `address`
 * (e.g. a Docker network's gateway, which the containers on it can reach too).
 */
export async function serveGitDaemon(base: string, address = '127.0.0.1'): Promise<GitServer> {
  const port = await freePort();
  const daemon: ChildProcess = spawn('git', ['daemon', '--export-all', '--reuseaddr', `--base-path=${base}`, `--port=${port}`, `--listen=${address}`, base], {
    env: GIT_ENV,
    stdio: 'ignore',
  });
  await waitUntil(
    () =>
      new Promise<true | undefined>((resolve) => {
        const socket = net.connect(port, address, () => {
          socket.destroy();
          resolve(true);
        });
        socket.on('error', () => resolve(undefined));
      }),
    { timeoutMs: 10_000, intervalMs: 50, what: `git daemon on port ${port}` },
  );
  return {
    url: (name) => `git://${address}:${port}/${name}`,
    close: async () => {
      if (daemon.exitCode === null) {
        const exited = new Promise((resolve) => daemon.once('exit', resolve));
        daemon.kill('SIGTERM');
        await exited;
      }
    },
  };
}

export interface HttpGitServer extends GitServer {
  /** Authorization header values seen, and the status answered, per request. */
  readonly requests: { authorized: boolean; status: number }[];
}

/**
 * `git http-backend` (CGI) behind a node HTTP server on 127.0.0.1 that answers 401 to a request without
 * the right basic-auth user and password, so git must present the credential.
 */
export async function serveGitHttp(base: string, auth: { username: string; password: string }): Promise<HttpGitServer> {
  const requests: { authorized: boolean; status: number }[] = [];
  const expected = `Basic ${Buffer.from(`${auth.username}:${auth.password}`).toString('base64')}`;
  const server = http.createServer((req, res) => {
    const authorized = req.headers.authorization === expected;
    if (!authorized) {
      requests.push({ authorized, status: 401 });
      req.resume();
      res.writeHead(401, { 'WWW-Authenticate': 'Basic realm="git"', 'Content-Type': 'text/plain' }).end('authentication required\n');
      return;
    }
    const url = new URL(req.url ?? '/', 'http://localhost');
    const cgi = spawn('git', ['http-backend'], {
      env: {
        ...GIT_ENV,
        GIT_PROJECT_ROOT: base,
        GIT_HTTP_EXPORT_ALL: '1',
        PATH_INFO: decodeURIComponent(url.pathname),
        QUERY_STRING: url.search.slice(1),
        REQUEST_METHOD: req.method ?? 'GET',
        CONTENT_TYPE: req.headers['content-type'] ?? '',
        REMOTE_USER: auth.username,
        REMOTE_ADDR: '127.0.0.1',
        ...(req.headers['content-encoding'] ? { HTTP_CONTENT_ENCODING: req.headers['content-encoding'] } : {}),
        ...(req.headers['git-protocol'] ? { GIT_PROTOCOL: String(req.headers['git-protocol']) } : {}),
      },
      stdio: ['pipe', 'pipe', 'ignore'],
    });
    req.pipe(cgi.stdin!);
    // CGI output: headers (Status: among them), a blank line, then the body, passed on as it comes.
    let head = Buffer.alloc(0);
    let headersDone = false;
    cgi.stdout!.on('data', (chunk: Buffer) => {
      if (headersDone) {
        res.write(chunk);
        return;
      }
      head = Buffer.concat([head, chunk]);
      const text = head.toString('latin1');
      const end = text.search(/\r?\n\r?\n/);
      if (end < 0) return;
      headersDone = true;
      const separator = /\r?\n\r?\n/.exec(text)!;
      let status = 200;
      const headers: Record<string, string> = {};
      for (const line of text.slice(0, end).split(/\r?\n/)) {
        const colon = line.indexOf(':');
        if (colon < 0) continue;
        const key = line.slice(0, colon).trim();
        const value = line.slice(colon + 1).trim();
        if (key.toLowerCase() === 'status') status = Number(value.split(' ')[0]);
        else headers[key] = value;
      }
      requests.push({ authorized, status });
      res.writeHead(status, headers);
      res.write(head.subarray(end + separator[0].length));
    });
    cgi.on('close', () => {
      if (!headersDone) {
        requests.push({ authorized, status: 502 });
        res.writeHead(502).end('git http-backend gave no answer\n');
      } else res.end();
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as net.AddressInfo;
  return {
    requests,
    url: (name) => `http://127.0.0.1:${port}/${name}`,
    close: () => new Promise((resolve) => {
      server.closeAllConnections();
      server.close(() => resolve());
    }),
  };
}
