/**
 * The MCP server: every tool and resource over one SwarmController. Transport-agnostic; the CLI connects
 * it to stdio, tests to an in-memory pair.
 */
import { McpServer, ResourceTemplate } from '@modelcontextprotocol/sdk/server/mcp.js';
import { z } from 'zod';
import { parseInput, type SwarmController } from '../controller/swarm-controller.js';
import { asSwarmError } from '../errors.js';
import type { HealthMonitor } from '../health/health-monitor.js';
import type { MigrationManager } from '../migration/migration-manager.js';
import { registerMigrationTools } from './tools/migration-tools.js';
import { silentLogger, type Logger } from '../logger.js';
import { PACKAGE_VERSION } from '../version.js';
import type { ToolContext } from './tool-support.js';
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

export interface McpServerDeps {
  controller: SwarmController;
  health?: HealthMonitor;
  migrations?: MigrationManager;
  logger?: Logger;
}

export const STATUS_RESOURCE_URI = 'swarm://status';
export const INSTANCE_RESOURCE_TEMPLATE = 'swarm://instances/{instanceId}';

export function createMcpServer(deps: McpServerDeps): { server: McpServer; close: () => Promise<void> } {
  const logger = (deps.logger ?? silentLogger()).child({ component: 'mcp' });
  const { controller } = deps;
  const server = new McpServer(
    { name: 'vscode-swarm', title: 'vscode-swarm', version: PACKAGE_VERSION },
    {
      capabilities: { logging: {} },
      instructions:
        'Manages VS Code (code-server) workspaces on demand. Create one with create_swarm_instance (names are unique; asking twice returns the same workspace) and give the person its access.accessUrl; get_instance_access_link issues a new link. Workspaces stop after their idle timeout: use keep_instance_alive while you work elsewhere and will be back.',
    },
  );
  checkArgumentsLikeTheController(server, logger);
  const ctx: ToolContext = { controller, logger, ...(deps.health ? { health: deps.health } : {}), ...(deps.migrations ? { migrations: deps.migrations } : {}) };
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

  server.registerResource(
    'swarm-status',
    STATUS_RESOURCE_URI,
    { title: 'Swarm status', description: 'Counts by provider, status and health; provider states and capabilities', mimeType: 'application/json' },
    async (uri) => ({ contents: [{ uri: uri.href, mimeType: 'application/json', text: JSON.stringify(controller.getSwarmStatus(), null, 2) }] }),
  );
  server.registerResource(
    'swarm-instance',
    new ResourceTemplate(INSTANCE_RESOURCE_TEMPLATE, {
      list: async () => ({
        resources: controller.registry.list().map((i) => ({ uri: `swarm://instances/${i.id}`, name: i.name, mimeType: 'application/json' })),
      }),
    }),
    { title: 'Workspace', description: 'One workspace as recorded in the registry', mimeType: 'application/json' },
    async (uri, { instanceId }) => {
      const instance = await controller.getInstance(String(instanceId));
      return { contents: [{ uri: uri.href, mimeType: 'application/json', text: JSON.stringify(instance, null, 2) }] };
    },
  );

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
function checkArgumentsLikeTheController(server: McpServer, logger: Logger): void {
  const register = server.registerTool.bind(server) as (name: string, config: { inputSchema?: unknown }, cb: unknown) => unknown;
  (server as unknown as { registerTool: typeof register }).registerTool = (name, config, cb) =>
    register(name, { ...config, inputSchema: strictInput(config.inputSchema) }, cb);
  const sdk = server as unknown as { validateToolInput?: (tool: { inputSchema?: z.ZodType }, args: unknown, toolName: string) => Promise<unknown> };
  if (typeof sdk.validateToolInput !== 'function') throw new Error('@modelcontextprotocol/sdk: McpServer.validateToolInput is gone; update src/mcp/server.ts');
  sdk.validateToolInput = async (tool, args, toolName) => {
    if (!tool.inputSchema) return undefined;
    try {
      return parseInput(tool.inputSchema, args ?? {});
    } catch (err) {
      const error = asSwarmError(err);
      logger.info({ tool: toolName, code: error.code, message: error.message }, 'tool refused');
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
