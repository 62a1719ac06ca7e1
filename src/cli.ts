#!/usr/bin/env node
/**
 * vscode-swarm: `serve` speaks MCP over stdio; the other subcommands are for a person at a shell.
 * Results go to stdout (human lines, or JSON with --json); logs and progress go to stderr.
 */
import { StdioServerTransport } from '@modelcontextprotocol/sdk/server/stdio.js';
import { parseArgs } from 'node:util';
import { loadConfig, type SwarmConfig, type SwarmConfigInput } from './config.js';
import { createSwarm, startSwarmServices, type SwarmServices } from './controller/create-swarm.js';
import type { SwarmController } from './controller/swarm-controller.js';
import { asSwarmError, invalidInput } from './errors.js';
import { createLogger, type Logger } from './logger.js';
import { AGENT_EVENTS_PATH, agentEventsHandler } from '../providers/aws-asg/agent-events.js';
import { startMcpHttp } from './mcp/http.js';
import { createMcpServer } from './mcp/server.js';
import { describeInstance } from './mcp/tool-support.js';
import { PACKAGE_VERSION } from './version.js';
import { runAgentCommand } from '../providers/aws-asg/agent/agent-cli.js';

const USAGE = `vscode-swarm ${PACKAGE_VERSION}

Usage: vscode-swarm <command> [options]

Commands:
  up [--demo [NAME]]         Run the controller with its gateway and MCP over HTTP; print how to connect
                             and, with --demo, the link to a working editor
  serve                      Serve MCP over stdio with the gateway (what mcp.json launches)
  status                     Counts by provider, status and health; provider states
  list                       List workspaces   [--status S] [--provider P] [--name GLOB]
  get ID                     Show one workspace
  create NAME                Create a workspace [--cpu N] [--memory MiB] [--image REF] [--provider P] [--env K=V ...]
  start ID                   Start a workspace
  stop ID                    Stop a workspace  [--force]
  update ID                  Change a workspace [--cpu N] [--memory MiB] [--image REF]
  delete ID                  Delete a workspace and its files [--keep-workspace]
  logs ID                    Recent editor output [--tail N]
  link ID                    A fresh one-time link that opens the editor [--revoke]
  keep-alive ID MINUTES      Hold a workspace awake
  agent --host-id ID ...     Run the host agent of the AWS provider on this host (agent --help)

Options:
  --config FILE              Config file (JSON); also VSCODE_SWARM_CONFIG
  --state-dir DIR            State directory; also VSCODE_SWARM_STATE_DIR
  --json                     Print results as JSON
  -h, --help                 This text
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
  tail: { type: 'string' },
  demo: { type: 'boolean' },
  revoke: { type: 'boolean' },
} as const;

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
  const controller = createSwarm(config, { logger });
  if (command === 'serve') return serve(await startSwarmServices(controller, logger), logger);
  if (command === 'up') return up(await startSwarmServices(controller, logger), config, logger, values.demo ? (rest[0] ?? 'demo') : undefined);

  await controller.initialize();
  try {
    const result = await runCommand(controller, command, rest, values);
    print(result, values.json ?? false);
    return 0;
  } finally {
    await controller.close();
  }
}

async function serve(services: SwarmServices, logger: Logger): Promise<number> {
  const { server } = createMcpServer({ controller: services.controller, logger, migrations: services.migrations, ...(services.health ? { health: services.health } : {}) });
  const transport = new StdioServerTransport();
  await server.connect(transport);
  logger.info({ version: PACKAGE_VERSION }, 'MCP server ready on stdio');
  return untilShutdown(logger, async () => {
    await server.close().catch(() => undefined);
    await services.close();
  }, (shutdown) => {
    process.stdin.once('end', () => shutdown('stdin closed'));
    transport.onclose = () => shutdown('transport closed');
  });
}

/** The main job for a person: everything running, and what to do next printed on stdout. */
async function up(services: SwarmServices, config: SwarmConfig, logger: Logger, demoName?: string): Promise<number> {
  const { controller } = services;
  const routes = config.providers['aws-asg'].enabled ? { [AGENT_EVENTS_PATH]: agentEventsHandler(controller, logger) } : undefined;
  const mcp = await startMcpHttp({ controller, migrations: services.migrations, ...(services.health ? { health: services.health } : {}), ...(routes ? { routes } : {}), host: config.mcpHttp.host, port: config.mcpHttp.port, stateDir: config.stateDir, logger });
  const status = controller.getSwarmStatus();
  const lines = [
    `vscode-swarm ${PACKAGE_VERSION} is up (state: ${config.stateDir}).`,
    ...status.providers.filter((p) => p.state !== 'disabled').map((p) => `  provider ${p.type}: ${p.state}${p.reason ? ` — ${p.reason}` : ''}`),
    `  Editors:     ${status.gatewayUrlPattern ?? '(gateway disabled)'}  (signed-in through the gateway)`,
    `  MCP (HTTP):  ${mcp.url}   header  Authorization: Bearer ${mcp.token}`,
    `               npx @modelcontextprotocol/inspector --cli ${mcp.url} --transport http --header "Authorization: Bearer ${mcp.token}" --method tools/list`,
    `  MCP (stdio): clients that launch their server use mcp.json (node dist/src/cli.js serve); run that instead of \`up\`, not beside it.`,
    ...(routes ? [`  AWS hosts:   run agents with --controller-url ${mcp.url.replace(/\/mcp$/, AGENT_EVENTS_PATH)} (reachable from the hosts; bind mcpHttp.host accordingly)`] : []),
  ];
  process.stdout.write(`${lines.join('\n')}\n`);
  if (demoName) {
    process.stdout.write(`  Creating the demo workspace "${demoName}"...\n`);
    try {
      const result = await controller.createInstance({ name: demoName }, { onProgress: (e) => process.stderr.write(`[${Math.round(e.fraction * 100)}%] ${e.message}\n`) });
      const link = result.access ?? (await controller.issueAccessLink(result.instance.id));
      process.stdout.write(`  Demo editor: ${link.accessUrl}\n               (one-time link; afterwards ${link.url} while signed in)\n`);
    } catch (err) {
      await mcp.close();
      await services.close();
      throw err;
    }
  }
  process.stdout.write('Press Ctrl+C to stop. Workspaces keep running; idle ones stop by themselves.\n');
  return untilShutdown(logger, async () => {
    await mcp.close();
    await services.close();
  });
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

async function runCommand(controller: SwarmController, command: string, args: string[], values: Values): Promise<Printable> {
  const id = (): string => {
    if (!args[0]) throw invalidInput('ID', `an instance id after "${command}"`);
    return args[0];
  };
  const progress = (e: { fraction: number; message: string }): void => {
    process.stderr.write(`[${Math.round(e.fraction * 100)}%] ${e.message}\n`);
  };
  switch (command) {
    case 'status': {
      const status = controller.getSwarmStatus();
      const lines = [
        `${status.total} workspace(s)`,
        ...Object.entries(status.byStatus).filter(([, n]) => n > 0).map(([s, n]) => `  ${s}: ${n}`),
        ...status.providers.map((p) => `provider ${p.type}: ${p.state}${p.reason ? ` — ${p.reason}` : ''}`),
      ];
      return { text: lines.join('\n'), json: status };
    }
    case 'list': {
      const instances = await controller.listInstances({
        ...(values.status ? { status: values.status as never } : {}),
        ...(values.provider ? { providerType: values.provider as never } : {}),
        ...(values.name ? { namePattern: values.name } : {}),
      });
      return { text: instances.map(describeInstance).join('\n') || 'No workspaces.', json: instances };
    }
    case 'get': {
      const instance = await controller.getInstance(id());
      return { text: describeInstance(instance), json: instance };
    }
    case 'create': {
      if (!args[0]) throw invalidInput('NAME', 'a workspace name after "create"');
      const resources = {
        ...(values.cpu !== undefined ? { cpu: numberFlag('--cpu', values.cpu) } : {}),
        ...(values.memory !== undefined ? { memoryMb: numberFlag('--memory', values.memory) } : {}),
      };
      const { instance, created, access } = await controller.createInstance(
        {
          name: args[0],
          ...(values.provider ? { providerType: values.provider as never } : {}),
          ...(values.image ? { image: values.image } : {}),
          ...(Object.keys(resources).length ? { resources } : {}),
          ...(values.env ? { env: envFlags(values.env) } : {}),
        },
        { onProgress: progress },
      );
      const open = access ? `\nOpen: ${access.accessUrl}` : '';
      return { text: `${created ? 'Created' : 'Already exists'}: ${describeInstance(instance)}${open}`, json: { instance, created, access } };
    }
    case 'start': {
      const instance = await controller.startInstance(id(), { onProgress: progress });
      return { text: `Started: ${describeInstance(instance)}`, json: instance };
    }
    case 'stop': {
      const instance = await controller.stopInstance(id(), { force: values.force ?? false });
      return { text: `Stopped: ${describeInstance(instance)}`, json: instance };
    }
    case 'update': {
      const resources = {
        ...(values.cpu !== undefined ? { cpu: numberFlag('--cpu', values.cpu) } : {}),
        ...(values.memory !== undefined ? { memoryMb: numberFlag('--memory', values.memory) } : {}),
      };
      const result = await controller.updateInstance(
        id(),
        { ...(values.image ? { image: values.image } : {}), ...(Object.keys(resources).length ? { resources } : {}) },
        { onProgress: progress },
      );
      return { text: `Updated (${result.updateMode}): ${describeInstance(result)}`, json: result };
    }
    case 'delete': {
      const result = await controller.deleteInstance(id(), { keepWorkspace: values['keep-workspace'] ?? false });
      return { text: `Deleted ${result.instanceId}${result.workspaceKept ? ' (workspace files kept)' : ''}`, json: result };
    }
    case 'logs': {
      const logs = await controller.getInstanceLogs(id(), values.tail ? { tail: numberFlag('--tail', values.tail) } : {});
      return { text: logs.lines.join('\n'), json: logs };
    }
    case 'link': {
      const link = await controller.issueAccessLink(id(), { revokeExisting: values.revoke ?? false });
      return { text: link.accessUrl, json: link };
    }
    case 'keep-alive': {
      if (!args[1]) throw invalidInput('MINUTES', 'a number of minutes after the id');
      const instance = await controller.keepAlive(id(), numberFlag('MINUTES', args[1]));
      return { text: `Kept awake until ${instance.lease?.until}`, json: instance };
    }
    default:
      throw invalidInput('command', `one of up, serve, status, list, get, create, start, stop, update, delete, logs, link, keep-alive`, command);
  }
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

