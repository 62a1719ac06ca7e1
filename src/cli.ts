#!/usr/bin/env node
/**
 * vscode-swarm: `serve` speaks MCP over stdio; the other subcommands are for a person at a shell.
 * Results go to stdout (human lines, or JSON with --json); logs and progress go to stderr.
 *
 * A command acts through a SwarmApi, as one principal (the local admin, or VSCODE_SWARM_TOKEN's): while
 * `up` runs on the state directory, through that controller's MCP tools over HTTP (RemoteSwarm);
 * otherwise through a controller started for this one command (one-shot, AuthorizedSwarm). Both print
 * the same JSON and the same errors.
 */
import { serveStdio } from '@modelcontextprotocol/server/stdio';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { loadConfig, type SwarmConfig, type SwarmConfigInput } from './config.js';
import { createSwarm, startSwarmServices, type SwarmServices } from './controller/create-swarm.js';
import { parseInput } from './controller/parse-input.js';
import { SwarmError, asSwarmError, invalidInput } from './errors.js';
import { Authenticator } from './tenancy/authenticate.js';
import { AuthorizedSwarm } from './tenancy/authorized-swarm.js';
import { localAdmin } from './tenancy/identity.js';
import { LOCAL_CREDENTIAL_FILE, NewPrincipalSchema, type Principal } from './tenancy/principals.js';
import type { QuotaLimits } from './tenancy/quotas.js';
import { RemoteSwarm } from './tenancy/remote-swarm.js';
import type { ForkRequest, SwarmApi } from './tenancy/swarm-api.js';
import { createLogger, type Logger } from './logger.js';
import { AGENT_EVENTS_PATH, agentEventsHandler } from '../providers/aws-asg/agent-events.js';
import { removeControllerFile, runningController, writeControllerFile } from './cli/running-controller.js';
import { startMcpHttp } from './mcp/http.js';
import { describeTransfer, exportStateDir, importStateDir } from './store/transfer.js';
import { startDashboardFor, type Dashboard } from './dashboard/server.js';
import { createMcpServer } from './mcp/server.js';
import { describeInstance } from './mcp/tool-support.js';
import { describeSnapshot } from './mcp/tools/snapshot-tools.js';
import { InstanceNameSchema } from '../providers/provider.js';
import {
  CreateTokenInputSchema,
  ListAuditEventsInputSchema,
  ListTokensInputSchema,
  RevokeTokenInputSchema,
  UpdatePrincipalInputSchema,
  auditQueryOf,
  describeAuditEvent,
  describePrincipal,
  describeToken,
  describeWhoAmI,
} from './mcp/tools/tenancy-tools.js';
import { PACKAGE_VERSION } from './version.js';
import { runAgentCommand } from '../providers/aws-asg/agent/agent-cli.js';

const USAGE = `vscode-swarm ${PACKAGE_VERSION}

Usage: vscode-swarm <command> [options]

Commands:
  up [--demo [NAME]]         Run the controller with its gateway, dashboard and MCP over HTTP; print how to connect
                             and, with --demo, the link to a working editor. While it runs, the commands
                             below go through it.
  serve                      Serve MCP over stdio with the gateway (what mcp.json launches)
  status                     Counts by provider, status and health; provider states
  list                       List workspaces   [--status S] [--provider P] [--name GLOB]
  get ID                     Show one workspace
  create NAME                Create a workspace [--cpu N] [--memory MiB] [--image REF] [--provider P] [--env K=V ...]
                             [--owner PRINCIPAL] (admins: for another principal)
                             [--repo URL [--ref BRANCH|TAG|SHA] [--repo-credential NAME]] (cloned into the workspace)
  start ID                   Start a workspace
  stop ID                    Stop a workspace  [--force]
  update ID                  Change a workspace [--cpu N] [--memory MiB] [--image REF]
  delete ID                  Delete a workspace and its files [--keep-workspace]
  logs ID                    Recent editor output [--tail N]
  link ID                    A fresh one-time link that opens the editor [--revoke]
  keep-alive ID MINUTES      Hold a workspace awake
  whoami                     Who the CLI acts as: role, scopes, credential, usage and quotas
  principals list            Every principal (admins)
  principals add ID          Add a principal [--name N] [--role admin|member|viewer] [--kind person|service]
                             [--subject SUB ...] [--max-instances N] [--max-cpu N] [--max-memory MiB]
  principals set ID          Change a principal's role or own quotas [--role R] [--max-instances N] [--max-cpu N] [--max-memory MiB]
  principals disable ID      Refuse its tokens from the next request on (enable ID undoes it)
  tokens create NAME         Make an API token, printed this once [--principal ID] [--scope S ...] [--expires-days N]
  tokens list                API tokens, never their secrets [--principal ID]
  tokens revoke TOKEN_ID     Revoke a token
  audit                      The audit trail [--since ISO] [--until ISO] [--instance ID] [--actor ID]
                             [--type T (prefix with *)] [--outcome ok|denied|failed] [--limit N]
  snapshot create ID         Snapshot a workspace's files (SHA-256 per file) [--name LABEL] [--stop (for a consistent copy)]
  snapshot list              Your snapshots (every owner's for admins) [--instance ID]
  snapshot delete SNAP_ID    Delete a snapshot
  snapshot restore ID SNAP_ID  Replace a workspace's files with a snapshot's, every file verified
  snapshot fork NAME         A new workspace from --snapshot SNAP_ID, or from --instance ID as it is now [--provider P]
  agent --host-id ID ...     Run the host agent of the AWS provider on this host (agent --help)
  store import --from-state-dir DIR   Move a state directory's instances, audit trail, principals with their token
                             hashes, spent links and gateway signing key into the database
                             (store.databaseUrl / VSCODE_SWARM_DATABASE_URL) [--force: replace what it holds]
  store export --to-state-dir DIR     Move the same from the database into a state directory [--force]
                             Both need every controller stopped; they report what they moved.

Options:
  --config FILE              Config file (JSON); also VSCODE_SWARM_CONFIG
  --state-dir DIR            State directory; also VSCODE_SWARM_STATE_DIR
  --json                     Print results as JSON
  -h, --help                 This text

Environment:
  VSCODE_SWARM_TOKEN         Act as the principal of this API token instead of the local admin
`;

const OPTIONS = {
  config: { type: 'string' },
  'state-dir': { type: 'string' },
  json: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
  version: { type: 'boolean' },
  status: { type: 'string' },
  provider: { type: 'string' },
  name: { type: 'string' },
  cpu: { type: 'string' },
  memory: { type: 'string' },
  image: { type: 'string' },
  env: { type: 'string', multiple: true },
  force: { type: 'boolean' },
  'keep-workspace': { type: 'boolean' },
  stop: { type: 'boolean' },
  snapshot: { type: 'string' },
  tail: { type: 'string' },
  demo: { type: 'boolean' },
  revoke: { type: 'boolean' },
  owner: { type: 'string' },
  repo: { type: 'string' },
  ref: { type: 'string' },
  'repo-credential': { type: 'string' },
  role: { type: 'string' },
  kind: { type: 'string' },
  subject: { type: 'string', multiple: true },
  'max-instances': { type: 'string' },
  'max-cpu': { type: 'string' },
  'max-memory': { type: 'string' },
  principal: { type: 'string' },
  scope: { type: 'string', multiple: true },
  'expires-days': { type: 'string' },
  since: { type: 'string' },
  until: { type: 'string' },
  instance: { type: 'string' },
  actor: { type: 'string' },
  type: { type: 'string' },
  outcome: { type: 'string' },
  limit: { type: 'string' },
  'from-state-dir': { type: 'string' },
  'to-state-dir': { type: 'string' },
} as const;

/** Commands that act through a SwarmApi, with their subcommands where they have some. */
const COMMANDS: Record<string, readonly string[] | undefined> = {
  status: undefined,
  list: undefined,
  get: undefined,
  create: undefined,
  start: undefined,
  stop: undefined,
  update: undefined,
  delete: undefined,
  logs: undefined,
  link: undefined,
  'keep-alive': undefined,
  whoami: undefined,
  principals: ['list', 'add', 'set', 'disable', 'enable'],
  tokens: ['create', 'list', 'revoke'],
  audit: undefined,
  snapshot: ['create', 'list', 'delete', 'restore', 'fork'],
};

type Values = ReturnType<typeof parseArgs<{ options: typeof OPTIONS; allowPositionals: true }>>['values'];

async function main(argv: string[]): Promise<number> {
  // The host agent has its own flags (each also read from VSCODE_SWARM_AGENT_*).
  if (argv[0] === 'agent') return runAgentCommand(argv.slice(1));
  let parsed;
  try {
    parsed = parseArgs({ args: argv, options: OPTIONS, allowPositionals: true, strict: true });
  } catch (err) {
    process.stderr.write(`error: ${(err as Error).message}\n\n${USAGE}`);
    return 2;
  }
  const { values, positionals } = parsed;
  const [command, ...rest] = positionals;
  if (values.version) {
    process.stdout.write(`${PACKAGE_VERSION}\n`);
    return 0;
  }
  if (values.help || !command) {
    process.stdout.write(USAGE);
    return command || values.help ? 0 : 2;
  }

  const overrides: SwarmConfigInput = values['state-dir'] ? { stateDir: values['state-dir'] } : {};
  const config = await loadConfig({ ...(values.config ? { file: values.config } : {}), overrides });
  const logger = createLogger(command === 'serve' ? config.logLevel : (process.env.VSCODE_SWARM_LOG_LEVEL as 'info' | undefined) ?? 'warn');
  if (command === 'serve') return serve(await startSwarmServices(createSwarm(config, { logger }), logger), logger);
  if (command === 'up') return up(await startSwarmServices(createSwarm(config, { logger }), logger), config, logger, values.demo ? (rest[0] ?? 'demo') : undefined);

  if (command === 'store') {
    print(await storeCommand(rest[0], values, config.store?.databaseUrl, logger), values.json ?? false);
    return 0;
  }
  checkCommand(command, rest);
  if (command === 'snapshot') snapshotArgs(rest, values); // usage errors before a controller is started or connected
  const { swarm, close } = await openSwarm(config, logger);
  try {
    const result = await runCommand(swarm, command, rest, values);
    print(result, values.json ?? false);
    return 0;
  } finally {
    await close();
  }
}

/**
 * The swarm this command acts on: the running controller's over MCP HTTP when `up` owns the state
 * directory, else a controller of its own for this one command (which refuses, as it always has, when
 * another controller without HTTP, a stdio `serve`, owns the directory).
 */
async function openSwarm(config: SwarmConfig, logger: Logger): Promise<{ swarm: SwarmApi; close: () => Promise<void> }> {
  const token = process.env.VSCODE_SWARM_TOKEN;
  delete process.env.VSCODE_SWARM_TOKEN; // nothing started from here inherits it
  const asToken = (err: unknown): SwarmError => {
    const error = asSwarmError(err);
    return token !== undefined && error.code === 'UNAUTHENTICATED' ? new SwarmError('UNAUTHENTICATED', `VSCODE_SWARM_TOKEN: ${error.message}`) : error;
  };
  const running = await runningController(config.stateDir);
  if (running) {
    logger.info({ pid: running.pid, url: running.mcpUrl }, 'acting through the running controller');
    const credential = token !== undefined ? token.trim() : await localCredential(config.stateDir);
    const remote = await RemoteSwarm.connect({ url: running.mcpUrl, credential }).catch((err: unknown) => {
      throw asToken(err);
    });
    return { swarm: remote, close: () => remote.close() };
  }
  const controller = createSwarm(config, { logger });
  await controller.initialize();
  try {
    const actor = token === undefined ? localAdmin('cli') : await new Authenticator(controller.principals).authenticate(token.trim(), 'cli');
    return { swarm: new AuthorizedSwarm({ controller }, actor), close: () => controller.close() };
  } catch (err) {
    await controller.close();
    throw asToken(err);
  }
}

/** The local admin's credential, which only the user who runs the controller can read. */
async function localCredential(stateDir: string): Promise<string> {
  const file = path.join(stateDir, LOCAL_CREDENTIAL_FILE);
  try {
    return (await fs.readFile(file, 'utf8')).trim();
  } catch (err) {
    throw new SwarmError('UNAUTHENTICATED', `cannot read the local admin's credential ${file} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message}); run as the user who runs the controller, or set VSCODE_SWARM_TOKEN to an API token`);
  }
}

/** Refuses an unknown command before anything is started or connected. */
function checkCommand(command: string, args: string[]): void {
  if (!Object.hasOwn(COMMANDS, command)) throw invalidInput('command', `one of up, serve, ${Object.keys(COMMANDS).join(', ')}`, command);
  const subcommands = COMMANDS[command];
  if (subcommands && !subcommands.includes(args[0] ?? '')) throw invalidInput(command, `one of ${subcommands.map((s) => `"${command} ${s}"`).join(', ')}`, args[0] ?? '');
}

async function serve(services: SwarmServices, logger: Logger): Promise<number> {
  // The launching user is the local admin, unless the client's config names a principal's token.
  let actor = localAdmin('mcp-stdio');
  const token = process.env.VSCODE_SWARM_TOKEN;
  if (token !== undefined) {
    try {
      actor = await new Authenticator(services.controller.principals).authenticate(token.trim(), 'mcp-stdio');
    } catch (err) {
      await services.close();
      throw new SwarmError('UNAUTHENTICATED', `VSCODE_SWARM_TOKEN: ${asSwarmError(err).message}`);
    }
    delete process.env.VSCODE_SWARM_TOKEN; // nothing started from here inherits it
  }
  logger.info({ principal: actor.principalId, role: actor.role, credential: actor.credentialId }, 'serving MCP as');
  // The SDK picks the revision from the client's opening (2026-07-28, or the 2025-11-25 initialize) and pins one server to it.
  const stdio = serveStdio(() => createMcpServer({ controller: services.controller, actor, logger, migrations: services.migrations, ...(services.health ? { health: services.health } : {}) }).server, {
    onerror: (err) => logger.warn({ err: err.message }, 'MCP stdio'),
  });
  logger.info({ version: PACKAGE_VERSION }, 'MCP server ready on stdio');
  return untilShutdown(logger, async () => {
    await stdio.close().catch(() => undefined);
    await services.close();
  }, (shutdown) => {
    process.stdin.once('end', () => shutdown('stdin closed')); // serveStdio owns the transport; stdin's end is the client leaving
  });
}

/** The main job for a person: everything running, and what to do next printed on stdout. */
async function up(services: SwarmServices, config: SwarmConfig, logger: Logger, demoName?: string): Promise<number> {
  const { controller } = services;
  const routes = config.providers['aws-asg'].enabled ? { [AGENT_EVENTS_PATH]: agentEventsHandler(controller, logger) } : undefined;
  const mcp = await startMcpHttp({ controller, migrations: services.migrations, ...(services.health ? { health: services.health } : {}), ...(routes ? { routes } : {}), host: config.mcpHttp.host, port: config.mcpHttp.port, stateDir: config.stateDir, logger });
  let dashboard: Dashboard | undefined;
  // From now on the CLI's commands on this state directory come here instead of starting a controller.
  const stop = async (): Promise<void> => {
    await removeControllerFile(config.stateDir).catch((err: unknown) => logger.warn({ err: (err as Error).message }, 'could not remove controller.json'));
    await dashboard?.close();
    await mcp.close();
    await services.close();
  };
  try {
    if (config.dashboard.enabled) {
      dashboard = await startDashboardFor(services, config, { logger });
    }
    await writeControllerFile(config.stateDir, mcp.url);
  } catch (err) {
    await stop();
    throw err;
  }
  const status = controller.getSwarmStatus();
  const lines = [
    `vscode-swarm ${PACKAGE_VERSION} is up (state: ${config.stateDir}).`,
    ...status.providers.filter((p) => p.state !== 'disabled').map((p) => `  provider ${p.type}: ${p.state}${p.reason ? ` — ${p.reason}` : ''}`),
    `  Editors:     ${status.gatewayUrlPattern ?? '(gateway disabled)'}  (signed-in through the gateway)`,
    `  Dashboard:   ${dashboard ? `${dashboard.url}  (sign in with an API token or the MCP HTTP bearer credential below)` : '(disabled: dashboard.enabled)'}`,
    `  MCP (HTTP):  ${mcp.url}   header  Authorization: Bearer ${mcp.token}`,
    `               npx @modelcontextprotocol/inspector --cli ${mcp.url} --transport http --header "Authorization: Bearer ${mcp.token}" --method tools/list`,
    `  MCP (stdio): clients that launch their server use mcp.json (node dist/src/cli.js serve); run that instead of \`up\`, not beside it.`,
    `  CLI:         vscode-swarm commands on this state directory now go through this controller (VSCODE_SWARM_TOKEN picks the principal).`,
    ...(routes ? [`  AWS hosts:   run agents with --controller-url ${mcp.url.replace(/\/mcp$/, AGENT_EVENTS_PATH)} (reachable from the hosts; bind mcpHttp.host accordingly)`] : []),
  ];
  process.stdout.write(`${lines.join('\n')}\n`);
  if (demoName) {
    process.stdout.write(`  Creating the demo workspace "${demoName}"...\n`);
    try {
      // As the person who ran `up`: the local admin, through the same authorization and audit trail as every door.
      const swarm = new AuthorizedSwarm({ controller, migrations: services.migrations }, localAdmin('cli'));
      const result = await swarm.createInstance({ name: demoName }, { onProgress: (e) => process.stderr.write(`[${Math.round(e.fraction * 100)}%] ${e.message}\n`) });
      const link = result.access ?? (await swarm.issueAccessLink(result.instance.id));
      process.stdout.write(`  Demo editor: ${link.accessUrl}\n               (one-time link; afterwards ${link.url} while signed in)\n`);
    } catch (err) {
      await stop();
      throw err;
    }
  }
  process.stdout.write('Press Ctrl+C to stop. Workspaces keep running; idle ones stop by themselves.\n');
  return untilShutdown(logger, stop);
}

function untilShutdown(logger: Logger, close: () => Promise<void>, more?: (shutdown: (why: string) => void) => void): Promise<number> {
  return new Promise<number>((resolve) => {
    let closing = false;
    const shutdown = (why: string): void => {
      if (closing) return;
      closing = true;
      logger.info({ why }, 'shutting down');
      void close().finally(() => resolve(0));
    };
    process.once('SIGINT', () => shutdown('SIGINT'));
    process.once('SIGTERM', () => shutdown('SIGTERM'));
    more?.(shutdown);
  });
}

type Printable = { text: string; json: unknown };

/** `store import|export`: moves state between a state directory and the database, controllers stopped (./store/transfer.ts). */
async function storeCommand(sub: string | undefined, values: Values, databaseUrl: string | undefined, logger: Logger): Promise<Printable> {
  if (sub !== 'import' && sub !== 'export') throw invalidInput('store', '"store import" or "store export"', sub ?? '');
  if (!databaseUrl) throw invalidInput('store.databaseUrl', 'a postgres:// URL (config store.databaseUrl or VSCODE_SWARM_DATABASE_URL) to move state to or from');
  const flag = sub === 'import' ? 'from-state-dir' : 'to-state-dir';
  const stateDir = values[flag];
  if (!stateDir) throw invalidInput(`--${flag}`, 'a state directory');
  const options = { stateDir: path.resolve(stateDir), databaseUrl, force: values.force ?? false, logger };
  const report = sub === 'import' ? await importStateDir(options) : await exportStateDir(options);
  return { text: describeTransfer(report), json: report };
}

async function runCommand(swarm: SwarmApi, command: string, args: string[], values: Values): Promise<Printable> {
  const id = (): string => {
    if (!args[0]) throw invalidInput('ID', `an instance id after "${command}"`);
    return args[0];
  };
  const progress = (e: { fraction: number; message: string }): void => {
    process.stderr.write(`[${Math.round(e.fraction * 100)}%] ${e.message}\n`);
  };
  switch (command) {
    case 'status': {
      const status = await swarm.getSwarmStatus();
      const lines = [
        `${status.total} workspace(s)`,
        ...Object.entries(status.byStatus).filter(([, n]) => n > 0).map(([s, n]) => `  ${s}: ${n}`),
        ...status.providers.map((p) => `provider ${p.type}: ${p.state}${p.reason ? ` — ${p.reason}` : ''}`),
      ];
      return { text: lines.join('\n'), json: status };
    }
    case 'list': {
      const instances = await swarm.listInstances({
        ...(values.status ? { status: values.status as never } : {}),
        ...(values.provider ? { providerType: values.provider as never } : {}),
        ...(values.name ? { namePattern: values.name } : {}),
      });
      return { text: instances.map(describeInstance).join('\n') || 'No workspaces.', json: instances };
    }
    case 'get': {
      const instance = await swarm.getInstance(id());
      return { text: describeInstance(instance), json: instance };
    }
    case 'create': {
      if (!args[0]) throw invalidInput('NAME', 'a workspace name after "create"');
      const resources = resourceFlags(values);
      const { instance, created, access } = await swarm.createInstance(
        {
          name: args[0],
          ...(values.provider ? { providerType: values.provider as never } : {}),
          ...(values.image ? { image: values.image } : {}),
          ...(resources ? { resources } : {}),
          ...(values.env ? { env: envFlags(values.env) } : {}),
          ...(values.owner !== undefined ? { owner: values.owner } : {}),
          ...repositoryFlags(values),
        },
        { onProgress: progress },
      );
      const open = access ? `\nOpen: ${access.accessUrl}` : '';
      return { text: `${created ? 'Created' : 'Already exists'}: ${describeInstance(instance)}${open}`, json: { instance, created, access } };
    }
    case 'start': {
      const instance = await swarm.startInstance(id(), { onProgress: progress });
      return { text: `Started: ${describeInstance(instance)}`, json: instance };
    }
    case 'stop': {
      const instance = await swarm.stopInstance(id(), { force: values.force ?? false });
      return { text: `Stopped: ${describeInstance(instance)}`, json: instance };
    }
    case 'update': {
      const resources = resourceFlags(values);
      const result = await swarm.updateInstance(id(), { ...(values.image ? { image: values.image } : {}), ...(resources ? { resources } : {}) }, { onProgress: progress });
      return { text: `Updated (${result.updateMode}): ${describeInstance(result)}`, json: result };
    }
    case 'delete': {
      const result = await swarm.deleteInstance(id(), { keepWorkspace: values['keep-workspace'] ?? false });
      return { text: `Deleted ${result.instanceId}${result.workspaceKept ? ' (workspace files kept)' : ''}`, json: result };
    }
    case 'logs': {
      const logs = await swarm.getInstanceLogs(id(), values.tail ? { tail: numberFlag('--tail', values.tail) } : {});
      return { text: logs.lines.join('\n'), json: logs };
    }
    case 'link': {
      const link = await swarm.issueAccessLink(id(), { revokeExisting: values.revoke ?? false });
      return { text: link.accessUrl, json: link };
    }
    case 'keep-alive': {
      if (!args[1]) throw invalidInput('MINUTES', 'a number of minutes after the id');
      const instance = await swarm.keepAlive(id(), numberFlag('MINUTES', args[1]));
      return { text: `Kept awake until ${instance.lease?.until}`, json: instance };
    }
    case 'whoami': {
      const me = await swarm.whoami();
      return { text: describeWhoAmI(me), json: me };
    }
    case 'principals':
      return principalsCommand(swarm, args, values);
    case 'tokens':
      return tokensCommand(swarm, args, values);
    case 'snapshot':
      return snapshotCommand(swarm, args, values, progress);
    case 'audit': {
      const input = parseInput(ListAuditEventsInputSchema, {
        since: values.since,
        until: values.until,
        instanceId: values.instance,
        actorId: values.actor,
        type: values.type,
        outcome: values.outcome,
        limit: values.limit !== undefined ? numberFlag('--limit', values.limit) : undefined,
      });
      const events = await swarm.auditEvents(auditQueryOf(input));
      return { text: events.map(describeAuditEvent).join('\n') || 'No events match.', json: events };
    }
    default:
      throw invalidInput('command', `one of up, serve, ${Object.keys(COMMANDS).join(', ')}`, command);
  }
}

/** principals list | add ID | set ID | disable ID | enable ID: flags are checked with the MCP tools' schemas. */
async function principalsCommand(swarm: SwarmApi, [sub, principalId]: string[], values: Values): Promise<Printable> {
  if (sub === 'list') {
    const principals = await swarm.listPrincipals();
    return { text: principals.map(describePrincipal).join('\n'), json: principals };
  }
  if (!principalId) throw invalidInput('ID', `a principal id after "principals ${sub}"`);
  const done = (verb: string, principal: Principal): Printable => ({ text: `${verb}: ${describePrincipal(principal)}`, json: principal });
  switch (sub) {
    case 'add': {
      const quotas = quotaFlags(values);
      const input = parseInput(NewPrincipalSchema, {
        id: principalId,
        name: values.name,
        kind: values.kind,
        role: values.role,
        subjects: values.subject,
        ...(quotas ? { quotas } : {}),
      });
      return done('Added', await swarm.addPrincipal(input));
    }
    case 'set': {
      const own = quotaFlags(values);
      if (values.role === undefined && !own) throw invalidInput('principals set', 'a change: --role, --max-instances, --max-cpu or --max-memory');
      // Limits not named stay as they are: the store replaces the principal's own quotas as a whole.
      const current = own ? (await swarm.listPrincipals()).find((p) => p.id === principalId) : undefined;
      const { principalId: target, ...change } = parseInput(UpdatePrincipalInputSchema, {
        principalId,
        role: values.role,
        ...(own ? { quotas: { ...current?.quotas, ...own } } : {}),
      });
      return done('Updated', await swarm.updatePrincipal(target, change));
    }
    case 'disable':
    case 'enable': {
      const { principalId: target } = parseInput(UpdatePrincipalInputSchema, { principalId });
      return done(sub === 'disable' ? 'Disabled' : 'Enabled', await swarm.updatePrincipal(target, { disabled: sub === 'disable' }));
    }
    default:
      throw invalidInput('principals', 'one of list, add, set, disable, enable', sub);
  }
}

/** tokens create NAME | list | revoke TOKEN_ID. */
async function tokensCommand(swarm: SwarmApi, [sub, arg]: string[], values: Values): Promise<Printable> {
  switch (sub) {
    case 'create': {
      if (!arg) throw invalidInput('NAME', 'a token name after "tokens create"');
      const input = parseInput(CreateTokenInputSchema, {
        name: arg,
        principalId: values.principal,
        scopes: values.scope,
        expiresInDays: values['expires-days'] !== undefined ? numberFlag('--expires-days', values['expires-days']) : undefined,
      });
      const made = await swarm.createToken(input);
      // The token is the result (stdout, alone on its line for scripts); the warning is for the person.
      process.stderr.write(`Token ${made.info.id} for ${made.info.principalId} (${made.info.scopes.join(', ')}): this is the only time it is shown; it is not stored and will not be shown again.\n`);
      return { text: made.token, json: made };
    }
    case 'list': {
      const { principalId } = parseInput(ListTokensInputSchema, { principalId: values.principal });
      const tokens = await swarm.listTokens(principalId);
      return { text: tokens.map(describeToken).join('\n') || 'No tokens.', json: tokens };
    }
    case 'revoke': {
      if (!arg) throw invalidInput('TOKEN_ID', 'a token id after "tokens revoke" (see "tokens list")');
      const { tokenId } = parseInput(RevokeTokenInputSchema, { tokenId: arg });
      const token = await swarm.revokeToken(tokenId);
      return { text: `Revoked: ${describeToken(token)}`, json: token };
    }
    default:
      throw invalidInput('tokens', 'one of create, list, revoke', sub);
  }
}

type SnapshotArgs =
  | { sub: 'create'; instanceId: string; name?: string; stopForSnapshot: boolean }
  | { sub: 'list'; instanceId?: string }
  | { sub: 'delete'; snapshotId: string }
  | { sub: 'restore'; instanceId: string; snapshotId: string }
  | { sub: 'fork'; request: ForkRequest };

/** The snapshot subcommand's arguments checked, before anything is started or connected. */
function snapshotArgs([sub, first, second]: string[], values: Values): SnapshotArgs {
  const positional = (value: string | undefined, name: string, after: string): string => {
    if (!value) throw invalidInput(name, `${name === 'SNAP_ID' ? 'a snapshot id (see "snapshot list")' : name === 'NAME' ? 'a name for the new workspace' : 'an instance id'} after "snapshot ${after}"`);
    return value;
  };
  switch (sub) {
    case 'create': {
      const instanceId = positional(first, 'ID', 'create');
      return { sub, instanceId, ...(values.name !== undefined ? { name: nameArg('--name', values.name) } : {}), stopForSnapshot: values.stop ?? false };
    }
    case 'list':
      return { sub, ...(values.instance !== undefined ? { instanceId: values.instance } : {}) };
    case 'delete':
      return { sub, snapshotId: positional(first, 'SNAP_ID', 'delete') };
    case 'restore': {
      const instanceId = positional(first, 'ID', 'restore ID SNAP_ID');
      return { sub, instanceId, snapshotId: positional(second, 'SNAP_ID', `restore ${instanceId}`) };
    }
    case 'fork': {
      const name = nameArg('NAME', positional(first, 'NAME', 'fork'));
      if ((values.snapshot === undefined) === (values.instance === undefined)) {
        throw invalidInput('--snapshot', 'exactly one of --snapshot SNAP_ID (fork that snapshot) and --instance ID (fork the workspace as it is now)');
      }
      return {
        sub,
        request: {
          name,
          ...(values.snapshot !== undefined ? { snapshotId: values.snapshot } : {}),
          ...(values.instance !== undefined ? { instanceId: values.instance } : {}),
          ...(values.provider ? { providerType: values.provider as never } : {}),
        },
      };
    }
    default:
      throw invalidInput('snapshot', 'one of create, list, delete, restore, fork', sub);
  }
}

/**
 * snapshot create ID | list | delete SNAP_ID | restore ID SNAP_ID | fork NAME: one MCP snapshot tool each
 * (create_snapshot, list_snapshots, delete_snapshot, restore_snapshot, fork_instance), same results.
 */
async function snapshotCommand(swarm: SwarmApi, args: string[], values: Values, progress: (e: { fraction: number; message: string }) => void): Promise<Printable> {
  const a = snapshotArgs(args, values);
  switch (a.sub) {
    case 'create': {
      const snapshot = await swarm.createSnapshot(a.instanceId, { ...(a.name ? { name: a.name } : {}), ...(a.stopForSnapshot ? { stopForSnapshot: true } : {}), onProgress: progress });
      return { text: `Snapshot taken: ${describeSnapshot(snapshot)}`, json: snapshot };
    }
    case 'list': {
      const snapshots = await swarm.listSnapshots(a.instanceId !== undefined ? { instanceId: a.instanceId } : {});
      return { text: snapshots.map(describeSnapshot).join('\n') || 'No snapshots.', json: snapshots };
    }
    case 'delete': {
      const snapshot = await swarm.deleteSnapshot(a.snapshotId);
      return { text: `Deleted snapshot ${snapshot.id}.`, json: { snapshot, deleted: true } };
    }
    case 'restore': {
      const result = await swarm.restoreSnapshot(a.instanceId, a.snapshotId, { onProgress: progress });
      return { text: `Restored ${result.instanceId} to ${result.snapshotId}: ${result.files} files verified by SHA-256.`, json: result };
    }
    case 'fork': {
      const result = await swarm.forkInstance(a.request, { onProgress: progress });
      const open = result.access ? `\nOpen: ${result.access.accessUrl}` : '';
      return { text: `Forked from ${result.snapshotId} (${result.files} files verified): ${describeInstance(result.instance)}${open}`, json: result };
    }
  }
}

/** A workspace or snapshot name from the command line, checked as the tools check it. */
function nameArg(field: string, value: string): string {
  if (!InstanceNameSchema.safeParse(value).success) throw invalidInput(field, '1-63 characters of letters, digits, "_", "." and "-", starting with a letter or digit', value);
  return value;
}

function resourceFlags(values: Values): { cpu?: number; memoryMb?: number } | undefined {
  const resources = {
    ...(values.cpu !== undefined ? { cpu: numberFlag('--cpu', values.cpu) } : {}),
    ...(values.memory !== undefined ? { memoryMb: numberFlag('--memory', values.memory) } : {}),
  };
  return Object.keys(resources).length ? resources : undefined;
}

/** --repo, --ref and --repo-credential as the request's repository; --ref or --repo-credential alone is an error. */
function repositoryFlags(values: Values): { repository?: { url: string; ref?: string; credential?: string } } {
  if (values.repo === undefined) {
    if (values.ref !== undefined) throw invalidInput('--ref', 'to come with --repo URL');
    if (values['repo-credential'] !== undefined) throw invalidInput('--repo-credential', 'to come with --repo URL');
    return {};
  }
  return {
    repository: {
      url: values.repo,
      ...(values.ref !== undefined ? { ref: values.ref } : {}),
      ...(values['repo-credential'] !== undefined ? { credential: values['repo-credential'] } : {}),
    },
  };
}

function quotaFlags(values: Values): QuotaLimits | undefined {
  const quotas: QuotaLimits = {
    ...(values['max-instances'] !== undefined ? { instances: numberFlag('--max-instances', values['max-instances']) } : {}),
    ...(values['max-cpu'] !== undefined ? { cpu: numberFlag('--max-cpu', values['max-cpu']) } : {}),
    ...(values['max-memory'] !== undefined ? { memoryMb: numberFlag('--max-memory', values['max-memory']) } : {}),
  };
  return Object.keys(quotas).length ? quotas : undefined;
}

function numberFlag(flag: string, value: string): number {
  const n = Number(value);
  if (value.trim() === '' || !Number.isFinite(n)) throw invalidInput(flag, 'a number', value);
  return n;
}

function envFlags(pairs: string[]): Record<string, string> {
  const env: Record<string, string> = {};
  for (const pair of pairs) {
    const eq = pair.indexOf('=');
    if (eq <= 0) throw invalidInput('--env', 'KEY=VALUE', pair);
    env[pair.slice(0, eq)] = pair.slice(eq + 1);
  }
  return env;
}

function print(result: Printable, json: boolean): void {
  process.stdout.write(json ? `${JSON.stringify(result.json, null, 2)}\n` : `${result.text}\n`);
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    const error = asSwarmError(err);
    process.stderr.write(`error: ${error.code}: ${error.message}\n`);
    if (error.code === 'INTERNAL' && err instanceof Error) process.stderr.write(`${err.stack}\n`);
    process.exitCode = error.code === 'INVALID_INPUT' ? 2 : 1;
  },
);

