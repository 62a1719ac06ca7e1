/**
 * Builds the object graph from a configuration: registry, providers, controller. No singletons; a caller
 * (CLI, MCP server, test, library user) owns what it builds and closes it.
 */
import { DockerProvider } from '../../providers/docker/docker-provider.js';
import { ProviderFactory, type Provider, type ProviderType } from '../../providers/provider.js';
import type { SwarmConfig } from '../config.js';
import { silentLogger, type Logger } from '../logger.js';
import { InstanceRegistry } from '../registry/instance-registry.js';
import { SwarmController } from './swarm-controller.js';

export interface CreateSwarmOptions {
  logger?: Logger;
  env?: NodeJS.ProcessEnv;
  /** Replaces the built-in factory, e.g. to add a provider from outside this package. */
  factory?: ProviderFactory;
}

/** The factory with every provider this build includes. */
export function defaultProviderFactory(): ProviderFactory {
  return new ProviderFactory().register('docker', (options: ConstructorParameters<typeof DockerProvider>[0]) => new DockerProvider(options));
}

export function createSwarm(config: SwarmConfig, options: CreateSwarmOptions = {}): SwarmController {
  const logger = options.logger ?? silentLogger();
  const factory = options.factory ?? defaultProviderFactory();
  const providers: Partial<Record<ProviderType, Provider>> = {};
  const docker = config.providers.docker;
  if (docker.enabled) {
    providers.docker = factory.create('docker', {
      defaultImage: docker.image,
      ...(docker.dockerHost ? { dockerHost: docker.dockerHost } : {}),
      ...(docker.socketPath ? { socketPath: docker.socketPath } : {}),
      ...(docker.editorArgs ? { editorArgs: docker.editorArgs } : {}),
      publishHost: docker.publishHost,
      network: docker.network,
      pullImages: docker.pullImages,
      readinessTimeoutMs: docker.readinessTimeoutMs,
      stopTimeoutSeconds: docker.stopTimeoutSeconds,
      env: options.env ?? process.env,
      logger,
    });
  }
  const registry = new InstanceRegistry({ stateDir: config.stateDir, logger });
  return new SwarmController({ config, registry, providers, logger });
}
