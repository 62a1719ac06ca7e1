/**
 * Dev containers: a repository's `.devcontainer/devcontainer.json` (or `.devcontainer.json`) read on the
 * controller from the clone, before anything is created, and honoured as far as vscode-swarm can:
 *
 * - `image`: the workspace runs in it; the editor is not baked in but mounted from the editor image
 *   (InstanceConfig.editorMount) where the provider can (capabilities.editorMount: Docker).
 * - `containerEnv` and `remoteEnv`: both become the container's environment, which the editor and its
 *   terminals inherit (a container has one environment; the editor gets no separate one).
 * - `forwardPorts`: recorded in the instance's metadata (FORWARD_PORTS_METADATA); nothing is published,
 *   the gateway forwards any listening port anyway.
 * - `customizations.vscode.extensions`: `.vsix` files from `devcontainers.extensionsDir`, by id, installed
 *   with `code-server --install-extension` inside the workspace before the create returns.
 * - `postCreateCommand`: once, after the files are in, before the create returns; failing fails the create.
 * - `postStartCommand`: after the create and after each start; failing is logged and put in the status
 *   reason, the workspace stays up (the editor works; the command is the user's to fix).
 *
 * Everything else a devcontainer.json may say (a Dockerfile build, features, compose, mounts, run args,
 * users, other lifecycle commands, variables like `${localEnv:X}`) is refused with INVALID_INPUT naming
 * the field: a workspace that silently lacks what its repository asks for is worse than none.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { PassThrough } from 'node:stream';
import tar from 'tar-stream';
import { z } from 'zod';
import { EDITOR_MOUNT_PATH, ImageReferenceSchema, type InstanceConfig, type Provider, type ProviderCapabilities } from '../../providers/provider.js';
import { SwarmError, invalidInput, printable } from '../errors.js';
import { redactString, type Logger } from '../logger.js';

/** Metadata keys an instance made from a dev container records. */
export const DEVCONTAINER_METADATA = 'vscode-swarm/devcontainer';
export const FORWARD_PORTS_METADATA = 'vscode-swarm/forward-ports';
export const POST_START_METADATA = 'vscode-swarm/post-start';

/** Where dev container files are looked for in a repository, first found wins. */
export const DEVCONTAINER_FILES = ['.devcontainer/devcontainer.json', '.devcontainer.json'] as const;

/** Where the `.vsix` files are put in the workspace while they install (removed afterwards). */
const EXTENSIONS_STAGING = '.vscode-swarm-extensions';
/** What is stored with the instance is bounded by a metadata value's size. */
const MAX_STORED = 256;
const MAX_FILE_BYTES = 1_048_576;
const OUTPUT_TAIL = 2_000;

/** The `devcontainers` section of the configuration. */
export const DevcontainersConfigSchema = z
  .object({
    /** Folder of `.vsix` files named `<publisher>.<name>.vsix` (or `<publisher>.<name>-<version>.vsix` for `id@version`). */
    extensionsDir: z.string().min(1).optional(),
    /** Time each lifecycle command (and each extension install) may take. */
    commandTimeoutMs: z.number().int().min(1_000).max(3_600_000).default(600_000),
  })
  .strict();
export type DevcontainersConfig = z.infer<typeof DevcontainersConfigSchema>;

/** A lifecycle command: a shell line, an argv (no shell), or named ones (run one after the other). */
export type LifecycleCommand = string | string[] | Record<string, string | string[]>;

export interface DevContainer {
  /** Where it was found, relative to the repository. */
  file: string;
  image?: string;
  containerEnv: Record<string, string>;
  remoteEnv: Record<string, string>;
  forwardPorts: number[];
  postCreateCommand?: LifecycleCommand;
  postStartCommand?: LifecycleCommand;
  /** Extension ids, `publisher.name` or `publisher.name@version`. */
  extensions: string[];
}

export interface ResolvedExtension {
  id: string;
  /** The `.vsix` on the controller. */
  file: string;
}

/** Fields that are read and honoured (or are only a label). */
const HONOURED = new Set(['name', '$schema', 'image', 'containerEnv', 'remoteEnv', 'forwardPorts', 'postCreateCommand', 'postStartCommand', 'customizations']);
/** What to say about fields people often use that are not supported. */
const WHY_NOT: Record<string, string> = {
  build: 'no image builds: name a prebuilt image in "image"',
  dockerFile: 'no image builds: name a prebuilt image in "image"',
  context: 'no image builds: name a prebuilt image in "image"',
  features: 'no dev container features: use an image that has what they add',
  dockerComposeFile: 'no Docker Compose: one image per workspace',
  service: 'no Docker Compose: one image per workspace',
  runServices: 'no Docker Compose: one image per workspace',
};

const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]{0,127}$/;
const EXTENSION_ID = /^[A-Za-z0-9][A-Za-z0-9-]*\.[A-Za-z0-9][A-Za-z0-9_.-]*(?:@[0-9A-Za-z.+-]+)?$/;

/**
 * JSON with comments (`//`, `/* *\/`) and trailing commas, as devcontainer.json is written, parsed; `file`
 * names it in the error.
 */
export function parseJsonc(text: string, file: string): unknown {
  let out = '';
  let i = 0;
  while (i < text.length) {
    const c = text[i]!;
    if (c === '"') {
      const start = i++;
      while (i < text.length && text[i] !== '"') i += text[i] === '\\' ? 2 : 1;
      out += text.slice(start, ++i);
    } else if (c === '/' && text[i + 1] === '/') {
      while (i < text.length && text[i] !== '\n') i++;
    } else if (c === '/' && text[i + 1] === '*') {
      const end = text.indexOf('*/', i + 2);
      if (end < 0) throw invalidInput('devcontainer', `JSON with comments in ${file}, with every /* comment closed`, 'an unclosed comment');
      out += ' ';
      i = end + 2;
    } else {
      out += c;
      i++;
    }
  }
  // Trailing commas: a comma followed only by white space before a closing bracket (strings copied as they are).
  const cleaned = out.replace(/"(?:[^"\\]|\\.)*"|,(\s*[}\]])/g, (match: string, closing?: string) => closing ?? match);
  try {
    return JSON.parse(cleaned) as unknown;
  } catch (err) {
    throw invalidInput('devcontainer', `JSON with comments in ${file} (${(err as Error).message})`, 'text that does not parse');
  }
}

/** The repository's dev container, or undefined when it has none; refuses what is not supported. */
export async function readDevContainer(repositoryDir: string): Promise<DevContainer | undefined> {
  for (const file of DEVCONTAINER_FILES) {
    const full = path.join(repositoryDir, file);
    const stat = await fs.lstat(full).catch(() => undefined);
    if (!stat) continue;
    if (!stat.isFile()) throw invalidInput('devcontainer', `${file} to be a regular file`, stat.isSymbolicLink() ? 'a symbolic link' : 'something else');
    if (stat.size > MAX_FILE_BYTES) throw invalidInput('devcontainer', `${file} of at most ${MAX_FILE_BYTES} bytes`, `${stat.size} bytes`);
    return parseDevContainer(parseJsonc(await fs.readFile(full, 'utf8'), file), file);
  }
  return undefined;
}

/** A parsed devcontainer.json checked field by field. */
export function parseDevContainer(value: unknown, file: string): DevContainer {
  if (!isObject(value)) throw invalidInput('devcontainer', `an object in ${file}`, value);
  for (const key of Object.keys(value)) {
    if (HONOURED.has(key)) continue;
    const why = WHY_NOT[key] ?? `a field vscode-swarm honours (${[...HONOURED].filter((k) => k !== '$schema').join(', ')})`;
    throw new SwarmError('INVALID_INPUT', `devcontainer.${key}: not supported (${file}): ${why}`, { field: `devcontainer.${key}` });
  }
  const dev: DevContainer = {
    file,
    containerEnv: envOf(value.containerEnv, 'devcontainer.containerEnv'),
    remoteEnv: envOf(value.remoteEnv, 'devcontainer.remoteEnv'),
    forwardPorts: portsOf(value.forwardPorts),
    extensions: extensionsOf(value.customizations),
  };
  if (value.image !== undefined) {
    const image = ImageReferenceSchema.safeParse(value.image);
    if (!image.success) throw invalidInput('devcontainer.image', 'an image reference such as "mcr.microsoft.com/devcontainers/base:bookworm"', value.image);
    dev.image = image.data;
  }
  if (value.postCreateCommand !== undefined) dev.postCreateCommand = commandOf(value.postCreateCommand, 'devcontainer.postCreateCommand');
  if (value.postStartCommand !== undefined) {
    dev.postStartCommand = commandOf(value.postStartCommand, 'devcontainer.postStartCommand');
    if (JSON.stringify(dev.postStartCommand).length > MAX_STORED) {
      throw invalidInput('devcontainer.postStartCommand', `at most ${MAX_STORED} characters as JSON (it is stored with the instance to run at each start); put a longer one in a script in the repository`, `${JSON.stringify(dev.postStartCommand).length} characters`);
    }
  }
  return dev;
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function envOf(value: unknown, field: string): Record<string, string> {
  if (value === undefined) return {};
  if (!isObject(value)) throw invalidInput(field, 'an object of variable names to strings', value);
  const env: Record<string, string> = {};
  for (const [key, v] of Object.entries(value)) {
    if (!ENV_NAME.test(key)) throw invalidInput(`${field}.${key}`, 'an environment variable name (letters, digits and "_")', key);
    if (typeof v !== 'string' || v.includes('\0')) throw invalidInput(`${field}.${key}`, 'a string without NUL characters', v);
    if (v.includes('${')) throw invalidInput(`${field}.${key}`, 'a plain value: variables such as ${localEnv:X} or ${containerEnv:X} are not supported', v);
    env[key] = v;
  }
  return env;
}

function portsOf(value: unknown): number[] {
  if (value === undefined) return [];
  if (!Array.isArray(value)) throw invalidInput('devcontainer.forwardPorts', 'an array of port numbers', value);
  return value.map((entry, index) => {
    const port = typeof entry === 'string' && /^[0-9]{1,5}$/.test(entry) ? Number(entry) : entry;
    if (typeof port !== 'number' || !Number.isInteger(port) || port < 1 || port > 65_535) {
      throw invalidInput(`devcontainer.forwardPorts[${index}]`, 'a port number from 1 to 65535 inside the workspace ("host:port" forms are not supported)', entry);
    }
    return port;
  });
}

function extensionsOf(value: unknown): string[] {
  if (value === undefined) return [];
  if (!isObject(value)) throw invalidInput('devcontainer.customizations', 'an object', value);
  // Other tools' customizations (codespaces, jetbrains...) are theirs: the specification says to leave them.
  const vscode = value.vscode;
  if (vscode === undefined) return [];
  if (!isObject(vscode)) throw invalidInput('devcontainer.customizations.vscode', 'an object', vscode);
  for (const key of Object.keys(vscode)) {
    if (key !== 'extensions') {
      throw new SwarmError('INVALID_INPUT', `devcontainer.customizations.vscode.${key}: not supported (only "extensions" is)`, { field: `devcontainer.customizations.vscode.${key}` });
    }
  }
  const list = vscode.extensions ?? [];
  if (!Array.isArray(list)) throw invalidInput('devcontainer.customizations.vscode.extensions', 'an array of extension ids', list);
  return list.map((id, index) => {
    if (typeof id !== 'string' || !EXTENSION_ID.test(id)) {
      throw invalidInput(`devcontainer.customizations.vscode.extensions[${index}]`, 'an extension id such as "publisher.name" or "publisher.name@1.2.3"', id);
    }
    return id;
  });
}

function commandOf(value: unknown, field: string): LifecycleCommand {
  const one = (v: unknown, at: string): string | string[] => {
    if (typeof v === 'string' && v.trim() && !v.includes('\0')) return v;
    if (Array.isArray(v) && v.length > 0 && v.every((a) => typeof a === 'string' && !a.includes('\0'))) return v as string[];
    throw invalidInput(at, 'a command: a non-empty string (run by sh) or an array of strings (a program and its arguments)', v);
  };
  if (isObject(value)) {
    const entries = Object.entries(value);
    if (!entries.length) throw invalidInput(field, 'a command, or an object of named commands with at least one', value);
    return Object.fromEntries(entries.map(([name, v]) => [name, one(v, `${field}.${name}`)]));
  }
  return one(value, field);
}

/** The shell line that runs a lifecycle command: an argv quoted word by word; named ones in order, stopping at the first failure. */
export function commandScript(command: LifecycleCommand): string {
  const line = (c: string | string[]): string => (typeof c === 'string' ? c : c.map(shellQuote).join(' '));
  if (typeof command === 'string' || Array.isArray(command)) return line(command);
  return Object.values(command)
    .map((c) => `(${line(c)})`)
    .join(' && ');
}

function shellQuote(word: string): string {
  return `'${word.replace(/'/g, `'\\''`)}'`;
}

/** Metadata that records the dev container on the instance: where it came from, its ports, its postStartCommand. */
export function devContainerMetadata(dev: DevContainer): Record<string, string> {
  return {
    [DEVCONTAINER_METADATA]: dev.file,
    ...(dev.forwardPorts.length ? { [FORWARD_PORTS_METADATA]: dev.forwardPorts.join(',') } : {}),
    ...(dev.postStartCommand !== undefined ? { [POST_START_METADATA]: JSON.stringify(dev.postStartCommand) } : {}),
  };
}

/** The ports an instance's dev container asks to forward (from its metadata). */
export function forwardedPortsOf(metadata: Record<string, string> | undefined): number[] {
  return (metadata?.[FORWARD_PORTS_METADATA] ?? '')
    .split(',')
    .filter(Boolean)
    .map(Number)
    .filter((p) => Number.isInteger(p) && p > 0 && p <= 65_535);
}

/**
 * Finds every extension's `.vsix` under the configured folder before anything is created: `<id>.vsix`, or
 * `<id>-<version>.vsix` for `id@version` (ids compared without regard to case).
 */
export async function resolveExtensions(ids: string[], config: DevcontainersConfig): Promise<ResolvedExtension[]> {
  if (!ids.length) return [];
  const field = 'devcontainer.customizations.vscode.extensions';
  if (!config.extensionsDir) throw invalidInput(field, 'no extensions, or a folder of .vsix files configured in devcontainers.extensionsDir', ids.join(', '));
  const names = await fs.readdir(config.extensionsDir).catch((err: Error) => {
    throw new SwarmError('PROVIDER_ERROR', `${field}: devcontainers.extensionsDir ${config.extensionsDir} cannot be read (${err.message})`, { field });
  });
  return ids.map((id) => {
    const [name, version] = id.split('@') as [string, string | undefined];
    const wanted = `${name}${version ? `-${version}` : ''}.vsix`.toLowerCase();
    const found = names.find((n) => n.toLowerCase() === wanted);
    if (!found) throw invalidInput(field, `an extension with a .vsix in devcontainers.extensionsDir (looked for ${wanted} in ${config.extensionsDir})`, id);
    return { id, file: path.join(config.extensionsDir!, found) };
  });
}

export interface DevContainerRunOptions {
  config: DevcontainersConfig;
  logger?: Logger;
  onProgress?: (event: { fraction: number; message: string }) => void;
}

/** The editor's command line inside the workspace: from the mount where there is one, else the image's own. */
const CODE_SERVER = `PATH="${EDITOR_MOUNT_PATH}/bin:$PATH" code-server`;

/**
 * What a dev container asks for once its files are in: extensions, then postCreateCommand (either failing
 * fails the create, with the output's tail), then postStartCommand (see runPostStart).
 * Returns the post-start failure, if any, for the status reason.
 */
export async function setUpDevContainer(provider: Provider, instanceId: string, dev: DevContainer, extensions: ResolvedExtension[], options: DevContainerRunOptions): Promise<string | undefined> {
  const progress = (fraction: number, message: string): void => options.onProgress?.({ fraction, message });
  if (extensions.length) {
    progress(0.985, `devcontainer: installing ${extensions.length} extension(s)`);
    await installExtensions(provider, instanceId, extensions, options);
  }
  if (dev.postCreateCommand !== undefined) {
    progress(0.99, 'devcontainer: running postCreateCommand');
    await runLifecycle(provider, instanceId, 'postCreateCommand', dev.postCreateCommand, options);
  }
  if (dev.postStartCommand === undefined) return undefined;
  return runPostStart(provider, instanceId, { [POST_START_METADATA]: JSON.stringify(dev.postStartCommand) }, options);
}

/**
 * Runs the postStartCommand recorded in the metadata, if any. A failure is not fatal (the editor is up):
 * it is logged and returned as the reason to show; undefined when it ran fine or there is none.
 */
export async function runPostStart(provider: Provider, instanceId: string, metadata: Record<string, string> | undefined, options: DevContainerRunOptions): Promise<string | undefined> {
  const stored = metadata?.[POST_START_METADATA];
  if (stored === undefined) return undefined;
  try {
    await runLifecycle(provider, instanceId, 'postStartCommand', JSON.parse(stored) as LifecycleCommand, options);
    return undefined;
  } catch (err) {
    const message = (err as Error).message;
    options.logger?.warn({ instanceId, err: message }, 'devcontainer postStartCommand failed; the workspace stays up');
    return message;
  }
}

async function runLifecycle(provider: Provider, instanceId: string, which: string, command: LifecycleCommand, options: DevContainerRunOptions): Promise<void> {
  const field = `devcontainer.${which}`;
  if (!provider.getCapabilities().exec) throw new SwarmError('INVALID_INPUT', `${field}: ${provider.type} cannot run commands in a workspace (no exec)`, { field });
  const result = await provider.executeCommand(instanceId, commandScript(command), { timeoutMs: options.config.commandTimeoutMs, maxOutputBytes: 256 * 1024 });
  if (result.exitCode === 0 && !result.timedOut) {
    options.logger?.info({ instanceId, which, durationMs: result.durationMs }, 'devcontainer command ran');
    return;
  }
  const how = result.timedOut ? `did not finish within devcontainers.commandTimeoutMs (${options.config.commandTimeoutMs} ms)` : `exited with ${result.exitCode ?? 'no code'}`;
  throw new SwarmError('PROVIDER_ERROR', `${field} ${how}; output: ${tailOf(result.stdout, result.stderr)}`, { field });
}

/** The last lines of what a command printed, secrets redacted, for an error. */
function tailOf(stdout: string, stderr: string): string {
  const lines = `${stdout}\n${stderr}`.split(/\r?\n/).filter((l) => l.trim());
  const text = printable(redactString(lines.join(' | ')));
  if (!text) return '(none)';
  return text.length > OUTPUT_TAIL ? `…${text.slice(-OUTPUT_TAIL)}` : text;
}

/** Copies the `.vsix` files into the workspace, installs each with code-server, and removes them. */
async function installExtensions(provider: Provider, instanceId: string, extensions: ResolvedExtension[], options: DevContainerRunOptions): Promise<void> {
  const field = 'devcontainer.customizations.vscode.extensions';
  if (!provider.importWorkspace || !provider.getCapabilities().exec) {
    throw new SwarmError('INVALID_INPUT', `${field}: ${provider.type} cannot copy files into a workspace and run commands there`, { field });
  }
  // Owned like the workspace folder, so that the editor's user can read and remove them.
  const stat = await provider.executeCommand(instanceId, "stat -c '%u %g' .", { timeoutMs: 30_000 });
  const [uid = 0, gid = 0] = stat.exitCode === 0 ? stat.stdout.trim().split(' ').map(Number) : [];
  const pack = tar.pack();
  pack.entry({ name: EXTENSIONS_STAGING, type: 'directory', mode: 0o755, uid, gid });
  const staged: (ResolvedExtension & { inside: string })[] = [];
  for (const [index, ext] of extensions.entries()) {
    const inside = `${EXTENSIONS_STAGING}/${index}-${path.basename(ext.file)}`;
    pack.entry({ name: inside, mode: 0o644, uid, gid }, await fs.readFile(ext.file));
    staged.push({ ...ext, inside });
  }
  pack.finalize();
  await provider.importWorkspace(instanceId, pack.pipe(new PassThrough()));
  try {
    for (const ext of staged) {
      const result = await provider.executeCommand(instanceId, `${CODE_SERVER} --install-extension ${shellQuote(ext.inside)}`, { timeoutMs: options.config.commandTimeoutMs, maxOutputBytes: 256 * 1024 });
      if (result.exitCode !== 0 || result.timedOut) {
        throw new SwarmError('PROVIDER_ERROR', `${field}: ${ext.id} (${path.basename(ext.file)}) did not install (exit ${result.exitCode ?? 'none'}); output: ${tailOf(result.stdout, result.stderr)}`, { field });
      }
      options.logger?.info({ instanceId, extension: ext.id }, 'extension installed');
    }
  } finally {
    const removed = await provider.executeCommand(instanceId, `rm -rf ${EXTENSIONS_STAGING}`, { timeoutMs: 30_000 }).catch((err: Error) => ({ exitCode: null, stderr: err.message }));
    if (removed.exitCode !== 0) options.logger?.warn({ instanceId, err: removed.stderr.trim() }, `could not remove ${EXTENSIONS_STAGING} from the workspace`);
  }
}

export interface DevContainerTarget {
  providerType: string;
  capabilities: ProviderCapabilities;
  /** The provider's editor image: the one a devcontainer image gets its editor from. */
  defaultImage: string;
}

/**
 * The create's config with the dev container applied: its image (the editor mounted from the default
 * editor image when that is another image, where the provider can), its env (the request's own env wins
 * over the file's), and its record in the metadata. Refuses what the provider cannot do.
 */
export function applyDevContainer(config: InstanceConfig & { image: string }, dev: DevContainer, target: DevContainerTarget): InstanceConfig & { image: string } {
  let image = config.image;
  let editorMount: InstanceConfig['editorMount'];
  if (dev.image !== undefined && dev.image !== config.image) {
    if (config.image !== target.defaultImage) throw invalidInput('image', `no image in the request, or the one ${dev.file} names (${dev.image})`, config.image);
    image = dev.image;
    if (!target.capabilities.editorMount) {
      throw new SwarmError('INVALID_INPUT', `devcontainer.image: ${target.providerType} cannot run the editor in another image (no editorMount capability: the editor would have to be in ${dev.image}); use the docker provider, or ${target.defaultImage} as the image`, { field: 'devcontainer.image' });
    }
    editorMount = { image: target.defaultImage };
  }
  const env = { ...dev.containerEnv, ...dev.remoteEnv, ...config.env };
  if (Object.keys(env).length > 128) throw invalidInput('devcontainer.containerEnv', 'at most 128 variables with remoteEnv and the request\'s env', Object.keys(env).length);
  const metadata = { ...config.metadata, ...devContainerMetadata(dev) };
  // Two more entries record the repository.
  if (Object.keys(metadata).length > 62) throw invalidInput('metadata', 'at most 62 entries with the dev container\'s (2 more record the repository)', Object.keys(metadata).length);
  return { ...config, image, ...(editorMount ? { editorMount } : {}), ...(Object.keys(env).length ? { env } : {}), metadata };
}
