/**
 * The MCP server: every tool and resource over one SwarmController. Transport-agnostic; the CLI serves
 * it on stdio, src/mcp/http.ts on Streamable HTTP, tests on an in-memory pair. Built on the v2 SDK
 * (`@modelcontextprotocol/server`), one instance per connection (stdio) or per request (HTTP): the SDK
 * speaks 2026-07-28 (no initialize; version and capabilities in every request's _meta; server/discover;
 * resultType; cache hints) and answers 2025-11-25 clients from the same instance.
 */
import { McpServer, ResourceTemplate, type CacheHint } from '@modelcontextprotocol/server';
import { z } from 'zod';
import { parseInput, type SwarmController } from '../controller/swarm-controller.js';
import { asSwarmError } from '../errors.js';
import type { HealthMonitor } from '../health/health-monitor.js';
import type { MigrationManager } from '../migration/migration-manager.js';
import { registerMigrationTools } from './tools/migration-tools.js';
import { silentLogger, type Logger } from '../logger.js';
import { PACKAGE_VERSION } from '../version.js';
import type { ToolContext } from './tool-support.js';
import { AuthorizedSwarm } from '../tenancy/authorized-swarm.js';
import { localAdmin, type Operation, type PrincipalActor } from '../tenancy/identity.js';
import { registerCheckInstanceHealthTool } from './tools/check-instance-health.js';
import { registerRecoverInstanceTool } from './tools/recover-instance.js';
import { registerCreateSwarmInstanceTool } from './tools/create-swarm-instance.js';
import { registerDeleteSwarmInstanceTool } from './tools/delete-swarm-instance.js';
import { registerExecuteCommandTool } from './tools/execute-command.js';
import { registerGetInstanceAccessLinkTool } from './tools/get-instance-access-link.js';
import { registerGetInstanceLogsTool } from './tools/get-instance-logs.js';
import { registerGetSwarmInstanceTool } from './tools/get-swarm-instance.js';
import { registerGetSwarmStatusTool } from './tools/get-swarm-status.js';
import { registerKeepInstanceAliveTool } from './tools/keep-instance-alive.js';
import { registerListSwarmInstancesTool } from './tools/list-swarm-instances.js';
import { registerStartSwarmInstanceTool } from './tools/start-swarm-instance.js';
import { registerStopSwarmInstanceTool } from './tools/stop-swarm-instance.js';
import { registerUpdateSwarmInstanceTool } from './tools/update-swarm-instance.js';
import { registerTenancyTools } from './tools/tenancy-tools.js';
import { registerPortTools } from './tools/port-tools.js';
import { registerSnapshotTools } from './tools/snapshot-tools.js';
import { registerWorkspaceApp } from './app/workspace-app.js';

export interface McpServerDeps {
  controller: SwarmController;
  /** Who calls through this server: the launching user (local admin) by default, or a token's principal. */
  actor?: PrincipalActor;
  health?: HealthMonitor;
  migrations?: MigrationManager;
  logger?: Logger;
}

/**
 * The operation (and so the scope) each tool is: MCP over HTTP refuses a call whose scope the credential
 * lacks before it runs (403, insufficient_scope); the domain layer checks again, for every door. A tool
 * missing here cannot be registered.
 */
export const TOOL_OPERATIONS = {
  list_swarm_instances: 'instance.list',
  get_swarm_instance: 'instance.get',
  create_swarm_instance: 'instance.create',
  start_swarm_instance: 'instance.start',
  stop_swarm_instance: 'instance.stop',
  delete_swarm_instance: 'instance.delete',
  update_swarm_instance: 'instance.update',
  get_swarm_status: 'swarm.status',
  get_instance_logs: 'instance.logs',
  execute_command: 'instance.exec',
  get_instance_access_link: 'instance.access-link',
  keep_instance_alive: 'instance.keep-alive',
  check_instance_health: 'instance.health',
  recover_instance: 'instance.recover',
  create_migration_plan: 'migration.plan',
  start_migration: 'migration.start',
  cancel_migration: 'migration.cancel',
  get_migration_status: 'migration.get',
  list_migrations: 'migration.list',
  whoami: 'swarm.usage',
  list_audit_events: 'audit.list',
  list_principals: 'principal.list',
  add_principal: 'principal.add',
  update_principal: 'principal.update',
  create_token: 'token.create',
  list_tokens: 'token.list',
  revoke_token: 'token.revoke',
  list_instance_ports: 'instance.ports',
  share_instance_port: 'instance.share-port',
  create_snapshot: 'snapshot.create',
  list_snapshots: 'snapshot.list',
  delete_snapshot: 'snapshot.delete',
  restore_snapshot: 'snapshot.restore',
  fork_instance: 'instance.fork',
} as const satisfies Record<string, Operation>;

export const STATUS_RESOURCE_URI = 'swarm://status';
export const INSTANCE_RESOURCE_TEMPLATE = 'swarm://instances/{instanceId}';

/**
 * Cache hints for the 2026-07-28 list results (`ttlMs`/`cacheScope`); 2025-11-25 answers carry none.
 * The tool and template lists depend only on the build and the configuration (execute_command is listed
 * when exec is enabled), never on state, so a client may keep them a while; `private`, because a
 * deployment may one day list tools by principal and a shared cache must not hand one principal's list
 * to another. Resource contents and the instance list change with every workspace: not cacheable.
 */
export const CACHE_HINTS = {
  'tools/list': { ttlMs: 300_000, cacheScope: 'private' },
  'resources/templates/list': { ttlMs: 300_000, cacheScope: 'private' },
  'server/discover': { ttlMs: 300_000, cacheScope: 'private' },
  'resources/list': { ttlMs: 0, cacheScope: 'private' },
  'resources/read': { ttlMs: 0, cacheScope: 'private' },
} as const satisfies Record<string, CacheHint>;

export function createMcpServer(deps: McpServerDeps): { server: McpServer; close: () => Promise<void> } {
  const logger = (deps.logger ?? silentLogger()).child({ component: 'mcp' });
  const { controller } = deps;
  const server = new McpServer(
    { name: 'vscode-swarm', title: 'vscode-swarm', version: PACKAGE_VERSION },
    {
      // listChanged: false, truthfully: the tool list is fixed for a server's life, and no notification is sent
      // when workspaces come and go (the SDK would otherwise declare true and 2026 listeners would wait in vain).
      capabilities: { logging: {}, tools: { listChanged: false }, resources: { listChanged: false } },
      cacheHints: CACHE_HINTS,
      instructions:
        'Manages VS Code (code-server) workspaces on demand. Create one with create_swarm_instance (names are unique; asking twice returns the same workspace) and give the person its access.accessUrl; get_instance_access_link issues a new link. Workspaces stop after their idle timeout: use keep_instance_alive while you work elsewhere and will be back.',
    },
  );
  const swarm = new AuthorizedSwarm({ controller, ...(deps.health ? { health: deps.health } : {}), ...(deps.migrations ? { migrations: deps.migrations } : {}) }, deps.actor ?? localAdmin('mcp-stdio'));
  checkArgumentsLikeTheController(server, logger, swarm);
  const ctx: ToolContext = { controller, swarm, logger, ...(deps.health ? { health: deps.health } : {}), ...(deps.migrations ? { migrations: deps.migrations } : {}) };
  const execEnabled = controller.getSwarmStatus().execEnabled;

  registerListSwarmInstancesTool(server, ctx);
  registerGetSwarmInstanceTool(server, ctx);
  registerCreateSwarmInstanceTool(server, ctx);
  registerStartSwarmInstanceTool(server, ctx);
  registerStopSwarmInstanceTool(server, ctx);
  registerDeleteSwarmInstanceTool(server, ctx);
  registerUpdateSwarmInstanceTool(server, ctx);
  registerGetSwarmStatusTool(server, ctx);
  registerGetInstanceLogsTool(server, ctx);
  registerExecuteCommandTool(server, ctx, execEnabled);
  registerGetInstanceAccessLinkTool(server, ctx);
  registerKeepInstanceAliveTool(server, ctx);
  registerCheckInstanceHealthTool(server, ctx);
  registerRecoverInstanceTool(server, ctx);
  registerMigrationTools(server, ctx);
  registerTenancyTools(server, ctx);
  registerPortTools(server, ctx);
  registerSnapshotTools(server, ctx);

  server.registerResource(
    'swarm-status',
    STATUS_RESOURCE_URI,
    { title: 'Swarm status', description: 'Counts by provider, status and health; provider states and capabilities', mimeType: 'application/json' },
    async (uri) => ({ contents: [{ uri: uri.href, mimeType: 'application/json', text: JSON.stringify(await swarm.getSwarmStatus(), null, 2) }] }),
  );
  server.registerResource(
    'swarm-instance',
    new ResourceTemplate(INSTANCE_RESOURCE_TEMPLATE, {
      list: async () => ({
        resources: (await swarm.listInstances({}, { refresh: false })).map((i) => ({ uri: `swarm://instances/${i.id}`, name: i.name, mimeType: 'application/json' })),
      }),
    }),
    { title: 'Workspace', description: 'One workspace as recorded in the registry', mimeType: 'application/json' },
    async (uri, { instanceId }) => {
      const instance = await swarm.getInstance(String(instanceId));
      return { contents: [{ uri: uri.href, mimeType: 'application/json', text: JSON.stringify(instance, null, 2) }] };
    },
  );
  registerWorkspaceApp(server); // ui://vscode-swarm/workspace.html, the MCP App of the tools that return one workspace

  return { server, close: () => server.close() };
}

/**
 * Tool arguments go through the controller's own parser, so bad input reads the same from every door
 * ("INVALID_INPUT: resources.cpu: expected at most 256 cores") and unknown keys are refused (the
 * listed schemas say additionalProperties: false) instead of silently dropped. The SDK would answer
 * "MCP error -32602: Input validation error: ..." and strip unknown keys, and McpServer has no option
 * for either: tools are registered with strict schemas, and its argument check is replaced on this
 * instance (test/e2e/bad-input.test.ts fails if an SDK upgrade moves it).
 */
function checkArgumentsLikeTheController(server: McpServer, logger: Logger, swarm: AuthorizedSwarm): void {
  const register = server.registerTool.bind(server) as (name: string, config: { inputSchema?: unknown }, cb: unknown) => unknown;
  (server as unknown as { registerTool: typeof register }).registerTool = (name, config, cb) => {
    if (!Object.hasOwn(TOOL_OPERATIONS, name)) throw new Error(`tool ${name} has no entry in TOOL_OPERATIONS (src/mcp/server.ts): say which operation, and so which scope, it is`);
    return register(name, { ...config, inputSchema: strictInput(config.inputSchema) }, cb);
  };
  const sdk = server as unknown as { validateToolInput?: (tool: { inputSchema?: z.ZodType }, args: unknown, toolName: string) => Promise<unknown> };
  if (typeof sdk.validateToolInput !== 'function') throw new Error('@modelcontextprotocol/server: McpServer.validateToolInput is gone; update src/mcp/server.ts');
  sdk.validateToolInput = async (tool, args, toolName) => {
    if (!tool.inputSchema) return undefined;
    try {
      return parseInput(tool.inputSchema, args ?? {});
    } catch (err) {
      const error = asSwarmError(err);
      logger.info({ tool: toolName, code: error.code, message: error.message }, 'tool refused');
      if (Object.hasOwn(TOOL_OPERATIONS, toolName)) await swarm.recordRefused(TOOL_OPERATIONS[toolName as keyof typeof TOOL_OPERATIONS], error);
      throw new Error(`${error.code}: ${error.message}`); // the SDK reports the message as the isError text
    }
  };
}

function strictInput(schema: unknown): unknown {
  if (schema === undefined) return undefined;
  if (schema instanceof z.ZodObject) return schema.strict();
  if (schema instanceof z.ZodType) return schema;
  return z.object(schema as z.ZodRawShape).strict();
}
