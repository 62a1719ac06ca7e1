/**
 * vscode-swarm as a library: build a controller from a configuration, or assemble one from parts.
 *
 *   const controller = createSwarm(await loadConfig());
 *   await controller.initialize();
 *   const { instance } = await controller.createInstance({ name: 'alice' });
 */
export * from '../providers/provider.js';
export { DockerProvider, type DockerProviderOptions } from '../providers/docker/docker-provider.js';
export { SwarmController, CreateRequestSchema, ListFilterSchema } from './controller/swarm-controller.js';
export type { CreateRequest, ListFilter, OperationOptions, ProviderStatus, ReconcileReport, SwarmStatus } from './controller/swarm-controller.js';
export { createSwarm, defaultProviderFactory, type CreateSwarmOptions } from './controller/create-swarm.js';
export { InstanceRegistry, type RegistryFilter, type LoadReport } from './registry/instance-registry.js';
export { loadConfig, parseConfig, SwarmConfigSchema, DEFAULT_EDITOR_IMAGE, DEFAULT_STATE_DIR, type SwarmConfig, type SwarmConfigInput } from './config.js';
export { SwarmError, ERROR_CODES, type ErrorCode } from './errors.js';
export { createMcpServer } from './mcp/server.js';
export { createLogger, silentLogger, type Logger } from './logger.js';
