/**
 * Dev containers, end to end: a repository served by a real git daemon whose devcontainer.json (JSON with
 * comments) names a local image WITHOUT code-server, on real Docker. The editor answers from the mounted
 * editor volume, postCreateCommand ran, the extension (a real .vsix) is installed, the env is set, the
 * marker file proves the image. Unsupported fields and a failing postCreateCommand fail the create and
 * leave nothing behind.
 */
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EDITOR_MOUNT_PATH, type VSCodeInstance } from '../../providers/provider.js';
import { createSwarm } from '../../src/controller/create-swarm.js';
import type { SwarmController } from '../../src/controller/swarm-controller.js';
import { isSwarmError, type SwarmError } from '../../src/errors.js';
import { listListeningPorts } from '../../src/gateway/ports.js';
import { AuthorizedSwarm } from '../../src/tenancy/authorized-swarm.js';
import { localAdmin } from '../../src/tenancy/identity.js';
import { DEVCONTAINER_METADATA, FORWARD_PORTS_METADATA, applyDevContainer, forwardedPortsOf, parseDevContainer, parseJsonc } from '../../src/workspace/devcontainer.js';
import { CLONE_DIR_PREFIX } from '../../src/workspace/repository.js';
import { MARKER_PATH, MARKER_TEXT, ensureNoEditorImage, writeTestVsix, type TestExtension } from '../helpers/devcontainer-image.js';
import { TEST_IMAGE, cleanUp, docker, httpStatus, makeStateDir, testConfig } from '../helpers/docker.js';
import { makeRepository, serveGitDaemon, type GitServer, type TestRepository } from '../helpers/git-server.js';
import { engineSnapshot } from '../helpers/tenancy.js';

const PREFIX = 'e2e-devc';

/** A devcontainer.json as people write them: comments, trailing commas, a URL with // in a string. */
function devcontainerJson(image: string, extension: string): string {
  return `// The dev container of the test repository
{
  "name": "test", // a label only
  /* the image has no code-server: the editor must come from the mount */
  "image": "${image}",
  "containerEnv": { "DEV_GREETING": "hello from containerEnv", },
  "remoteEnv": { "DEV_REMOTE": "https://example.com/a//b" },
  "forwardPorts": [3000, "5173",],
  "postCreateCommand": "printf '%s|%s' \\"$DEV_GREETING\\" \\"$(cat ${MARKER_PATH})\\" > post-create.txt",
  "postStartCommand": ["sh", "-c", "echo started >> post-start.log"],
  "customizations": {
    "vscode": { "extensions": ["${extension}",], },
    "codespaces": { "openFiles": ["README.md"] },
  },
}
`;
}

describe('dev container files (JSON with comments)', () => {
  it('parses comments and trailing commas, keeps // and /* inside strings, and names the file when it cannot parse', () => {
    const value = parseJsonc('{\n // c\n "a": "x//y /* z */", /* b */ "b": [1, 2,],\n}', 'f.json');
    expect(value).toEqual({ a: 'x//y /* z */', b: [1, 2] });
    expect(parseJsonc('{"q": "a\\"//b", }', 'f.json')).toEqual({ q: 'a"//b' });
    expect(() => parseJsonc('{"a": 1 /* open', 'x/devcontainer.json')).toThrow(/devcontainer: expected JSON with comments in x\/devcontainer.json/);
    expect(() => parseJsonc('{"a": }', 'x/devcontainer.json')).toThrow(/x\/devcontainer.json/);
  });

  it('refuses another image where the provider cannot mount the editor, and accepts its own editor image there', () => {
    const dev = parseDevContainer({ image: 'some/image:1' }, '.devcontainer.json');
    const config = { name: 'x', image: 'editor/image:1', resources: { cpu: 1, memoryMb: 512 } };
    const capabilities = { liveResize: false, snapshots: false, workspaceTransfer: true, persistentWorkspace: true, logs: true, exec: true, stats: false, regions: [], resourceLimits: { minCpu: 0.1, maxCpu: 2, minMemoryMb: 256, maxMemoryMb: 4096 } };
    const target = { providerType: 'fly', capabilities, defaultImage: 'editor/image:1' };
    expect(() => applyDevContainer(config, dev, target)).toThrow(/^devcontainer\.image: fly cannot run the editor in another image \(no editorMount capability/);
    expect(applyDevContainer(config, parseDevContainer({ image: 'editor/image:1' }, 'd.json'), target)).toMatchObject({ image: 'editor/image:1', metadata: { [DEVCONTAINER_METADATA]: 'd.json' } });
    expect(applyDevContainer(config, dev, { ...target, providerType: 'docker', capabilities: { ...capabilities, editorMount: true } })).toMatchObject({ image: 'some/image:1', editorMount: { image: 'editor/image:1' } });
    expect(() => applyDevContainer({ ...config, image: 'other/image:2' }, dev, { ...target, capabilities: { ...capabilities, editorMount: true } })).toThrow(/^image: expected no image in the request, or the one/);
  });

  it('reads the honoured fields, and refuses the others naming them', () => {
    const dev = parseDevContainer(parseJsonc(devcontainerJson('some/image:1', 'a.b'), 'd.json'), 'd.json');
    expect(dev).toMatchObject({ image: 'some/image:1', containerEnv: { DEV_GREETING: 'hello from containerEnv' }, forwardPorts: [3000, 5173], extensions: ['a.b'] });
    const refused: [Record<string, unknown>, string][] = [
      [{ build: { dockerfile: 'Dockerfile' } }, 'devcontainer.build'],
      [{ features: { 'ghcr.io/devcontainers/features/node:1': {} } }, 'devcontainer.features'],
      [{ dockerComposeFile: 'compose.yml' }, 'devcontainer.dockerComposeFile'],
      [{ mounts: [] }, 'devcontainer.mounts'],
      [{ containerEnv: { X: '${localEnv:HOME}' } }, 'devcontainer.containerEnv.X'],
      [{ forwardPorts: ['db:5432'] }, 'devcontainer.forwardPorts[0]'],
      [{ customizations: { vscode: { settings: {} } } }, 'devcontainer.customizations.vscode.settings'],
    ];
    for (const [value, field] of refused) {
      let err: unknown;
      try {
        parseDevContainer(value, 'd.json');
      } catch (e) {
        err = e;
      }
      expect(isSwarmError(err, 'INVALID_INPUT'), `${field}: ${String(err)}`).toBe(true);
      expect((err as SwarmError).field).toBe(field);
      expect((err as SwarmError).message.startsWith(`${field}: `)).toBe(true);
    }
  });
});

describe('workspaces from a repository with a dev container (Docker, editor mounted into an image without one)', () => {
  let stateDir: string;
  let extensionsDir: string;
  let extension: TestExtension;
  let image: string;
  const repos: TestRepository[] = [];
  const daemons: GitServer[] = [];
  let controller: SwarmController;
  let swarm: AuthorizedSwarm;

  /** A repository holding these extra files, served by its own git daemon; its URL. */
  async function serve(name: string, files: Record<string, string>): Promise<string> {
    const repo = await makeRepository(`${name}.git`, files);
    repos.push(repo);
    const daemon = await serveGitDaemon(repo.base);
    daemons.push(daemon);
    return daemon.url(repo.name);
  }

  async function exec(instance: VSCodeInstance, command: string): Promise<string> {
    const result = await controller.connectedProvider('docker').then((p) => p.executeCommand(instance.id, command));
    expect(result.exitCode, `${command}: ${result.stderr}`).toBe(0);
    return result.stdout;
  }

  async function expectNothingLeft(name: string): Promise<void> {
    expect(controller.registry.list().filter((i) => i.name === name)).toEqual([]);
    const engine = await engineSnapshot(controller.config.swarmId);
    expect(engine.containers.filter((c) => c.name.includes(name))).toEqual([]);
    expect(engine.volumes.filter((v) => Object.values(v.labels).includes(name))).toEqual([]);
    const clones = (await fs.readdir(path.join(stateDir, 'clones')).catch(() => [])).filter((n) => n.startsWith(CLONE_DIR_PREFIX));
    expect(clones).toEqual([]);
  }

  beforeAll(async () => {
    await cleanUp(PREFIX);
    image = await ensureNoEditorImage();
    stateDir = await makeStateDir(PREFIX);
    extensionsDir = await fs.mkdtemp(path.join(os.tmpdir(), 'vscode-swarm-vsix-'));
    extension = await writeTestVsix(extensionsDir);
    const config = testConfig(stateDir, {
      providers: { docker: { image: TEST_IMAGE, readinessTimeoutMs: 90_000 } },
      devcontainers: { extensionsDir, commandTimeoutMs: 120_000 },
      repositories: { allowPrivateNetworks: true }, // the git servers are on loopback
    });
    controller = createSwarm(config);
    await controller.initialize();
    swarm = new AuthorizedSwarm({ controller }, localAdmin('cli'));
  }, 300_000);

  afterAll(async () => {
    await controller?.close();
    for (const d of daemons) await d.close();
    for (const r of repos) await r.remove();
    await cleanUp(PREFIX, stateDir);
    if (extensionsDir) await fs.rm(extensionsDir, { recursive: true, force: true });
  });

  it('runs the editor from the mount in the named image, with its env, postCreateCommand, extension and ports; postStartCommand at each start', async () => {
    const url = await serve('devc-good', { '.devcontainer/devcontainer.json': devcontainerJson(image, extension.id) });
    const name = `${PREFIX}-good`;
    const { instance } = await swarm.createInstance({ name, repository: { url } });
    expect(instance.status).toBe('running');
    expect(instance.config.image).toBe(image);
    expect(instance.config.editorMount).toEqual({ image: TEST_IMAGE });
    expect(instance.statusReason).toBeUndefined();

    // The editor answers (its readiness endpoint), in a container of the image without code-server.
    expect(await httpStatus(`${instance.endpoint!.url}/healthz`, 5_000)).toBe(200);
    expect((await exec(instance, `cat ${MARKER_PATH}`)).trim()).toBe(MARKER_TEXT);
    expect(await exec(instance, 'ls /usr/lib/code-server /opt/code-server /usr/local/bin/node 2>&1 || true')).toMatch(/No such file[\s\S]*No such file[\s\S]*No such file/);
    const inspected = await docker.getContainer(instance.providerRef.containerId!).inspect();
    expect(inspected.Config.Image).toBe(image);
    expect(inspected.Config.Entrypoint).toEqual([`${EDITOR_MOUNT_PATH}/bin/code-server`, '--bind-addr', '0.0.0.0:8080']);
    expect(inspected.Mounts.find((m) => m.Destination === EDITOR_MOUNT_PATH)).toMatchObject({ Type: 'volume', RW: false });
    // The running editor is the mounted one.
    expect(await exec(instance, `cat /proc/*/cmdline 2>/dev/null | tr '\\0' ' '`)).toContain(`${EDITOR_MOUNT_PATH}/lib/`);

    // containerEnv and remoteEnv: in the container's env, which the editor (and its terminals) inherit.
    const environ = await exec(instance, `tr '\\0' '\\n' < /proc/1/environ`);
    expect(environ).toContain('DEV_GREETING=hello from containerEnv');
    expect(environ).toContain('DEV_REMOTE=https://example.com/a//b');

    // postCreateCommand ran once, in the workspace folder, with the env, in the image.
    expect(await exec(instance, 'cat post-create.txt')).toBe(`hello from containerEnv|${MARKER_TEXT}`);
    expect(await exec(instance, 'cat post-start.log')).toBe('started\n');

    // The extension from the .vsix, installed into this editor.
    expect((await exec(instance, `${EDITOR_MOUNT_PATH}/bin/code-server --list-extensions --show-versions`)).split('\n')).toContain(`${extension.id}@${extension.version}`);
    expect(await exec(instance, 'ls -a')).not.toContain('.vscode-swarm-extensions');

    // The repository's files are there, and the dev container is recorded with its ports.
    expect(await exec(instance, 'cat README.md')).toBe(repos.at(-1)!.files.second['README.md']);
    expect(instance.config.metadata?.[DEVCONTAINER_METADATA]).toBe('.devcontainer/devcontainer.json');
    expect(instance.config.metadata?.[FORWARD_PORTS_METADATA]).toBe('3000,5173');
    expect(forwardedPortsOf(controller.registry.get(instance.id)?.config.metadata)).toEqual([3000, 5173]);

    // Each start runs postStartCommand again; the editor comes back from the mount.
    await swarm.stopInstance(instance.id);
    const started = await swarm.startInstance(instance.id);
    expect(started.status).toBe('running');
    expect(await exec(started, 'cat post-start.log')).toBe('started\nstarted\n');
    expect(await httpStatus(`${started.endpoint!.url}/healthz`, 5_000)).toBe(200);

    // The health monitor's repairs start it too (restart, then re-create around the same files): same postStartCommand.
    const restarted = await controller.restartInstance(instance.id, 'health: restart (attempt 1) because the test asked');
    expect(restarted.status).toBe('running');
    expect(await exec(restarted, 'cat post-start.log')).toBe('started\nstarted\nstarted\n');
    const recreated = await controller.recreateInstance(instance.id, 'health: recreate (attempt 2) because the test asked');
    expect(recreated.status).toBe('running');
    expect(recreated.statusReason).toBe('health: recreate (attempt 2) because the test asked');
    expect(await exec(recreated, 'cat post-start.log')).toBe('started\nstarted\nstarted\nstarted\n');

    // Its declared ports are listed with their addresses while nothing listens on them; one that listens is both.
    const declared = await listListeningPorts(controller, instance.id);
    expect(declared.filter((p) => p.declared)).toEqual([
      { port: 3000, addresses: [], reachable: false, listening: false, declared: true, url: controller.access!.urlFor(`3000--${instance.id}`) },
      { port: 5173, addresses: [], reachable: false, listening: false, declared: true, url: controller.access!.urlFor(`5173--${instance.id}`) },
    ]);
    expect(declared.some((p) => p.port === 8080)).toBe(false);
  }, 300_000);

  it('refuses build and features with INVALID_INPUT naming the field, before anything is made', async () => {
    const cases: [string, string, string][] = [
      ['build', `{ "build": { "dockerfile": "Dockerfile" }, // no builds\n}`, 'devcontainer.build'],
      ['features', `{ "image": "${image}", "features": { "ghcr.io/devcontainers/features/node:1": {} } }`, 'devcontainer.features'],
    ];
    for (const [suffix, text, field] of cases) {
      const url = await serve(`devc-${suffix}`, { '.devcontainer.json': text });
      const name = `${PREFIX}-${suffix}`;
      const create = swarm.createInstance({ name, repository: { url } });
      await expect(create).rejects.toMatchObject({ code: 'INVALID_INPUT', field, message: expect.stringMatching(new RegExp(`^${field.replace('.', '\\.')}: not supported`)) });
      await expectNothingLeft(name);
    }
  }, 120_000);

  it('fails the create when postCreateCommand fails, with its output, and leaves nothing behind', async () => {
    const text = JSON.stringify({ image, postCreateCommand: ['sh', '-c', 'echo preparing; echo the build broke >&2; exit 7'] });
    const url = await serve('devc-failing', { '.devcontainer/devcontainer.json': text });
    const name = `${PREFIX}-failing`;
    const create = swarm.createInstance({ name, repository: { url } });
    await expect(create).rejects.toMatchObject({ code: 'PROVIDER_ERROR', field: 'devcontainer.postCreateCommand' });
    await expect(create).rejects.toThrow(/devcontainer\.postCreateCommand exited with 7; output: preparing \| the build broke/);
    await expectNothingLeft(name);
  }, 180_000);

  it('keeps a workspace whose postStartCommand fails, with the failure as its status reason (editor image: no mount)', async () => {
    const text = JSON.stringify({ image: TEST_IMAGE, containerEnv: { ONLY_ENV: 'yes' }, postStartCommand: 'echo no database >&2; exit 3' });
    const url = await serve('devc-poststart', { '.devcontainer.json': text });
    const { instance } = await swarm.createInstance({ name: `${PREFIX}-poststart`, repository: { url } });
    expect(instance.status).toBe('running');
    expect(instance.config.editorMount).toBeUndefined();
    expect(instance.statusReason).toMatch(/^devcontainer\.postStartCommand exited with 3; output: no database$/);
    expect(controller.registry.get(instance.id)?.statusReason).toBe(instance.statusReason);
    expect(await exec(instance, 'printenv ONLY_ENV')).toBe('yes\n');
    expect(await httpStatus(`${instance.endpoint!.url}/healthz`, 5_000)).toBe(200);
  }, 180_000);
});
