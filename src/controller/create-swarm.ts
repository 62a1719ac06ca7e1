/**
 * Builds the object graph from a configuration: registry, providers, controller. No singletons; a caller
 * (CLI, MCP server, test, library user) owns what it builds and closes it.
 */
import { AwsAsgProvider } from '../../providers/aws-asg/aws-asg-provider.js';
import { parsePortRange } from '../../providers/aws-asg/agent/port-pool.js';
import { DockerProvider } from '../../providers/docker/docker-provider.js';
import { FlyProvider } from '../../providers/fly/fly-provider.js';
import { ProviderFactory, type Provider, type ProviderType } from '../../providers/provider.js';
import type { SwarmConfig } from '../config.js';
import { silentLogger, type Logger } from '../logger.js';
import { storesFor } from '../store/index.js';
import { leadershipFor, type Leadership } from '../store/postgres/leadership.js';
import { ActivityTracker } from '../activity/activity-tracker.js';
import { IdleMonitor } from '../activity/idle-monitor.js';
import { HealthMonitor } from '../health/health-monitor.js';
import { ProviderFailover } from '../health/failover.js';
import { MigrationManager } from '../migration/migration-manager.js';
import { SwarmError } from '../errors.js';
import { AccessLinks } from '../gateway/access-links.js';
import { Gateway } from '../gateway/gateway.js';
import { SwarmController } from './swarm-controller.js';
import { snapshotManagerFor } from '../snapshots/snapshot-manager.js';

export interface CreateSwarmOptions {
  logger?: Logger;
  env?: NodeJS.ProcessEnv;
  /** Replaces the built-in factory, e.g. to add a provider from outside this package. */
  factory?: ProviderFactory;
}

/** The factory with every provider this build includes. */
export function defaultProviderFactory(): ProviderFactory {
  return new ProviderFactory()
    .register('docker', (options: ConstructorParameters<typeof DockerProvider>[0]) => new DockerProvider(options))
    .register('fly', (options: ConstructorParameters<typeof FlyProvider>[0]) => new FlyProvider(options))
    .register('aws-asg', (options: ConstructorParameters<typeof AwsAsgProvider>[0]) => new AwsAsgProvider(options));
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
      swarmId: config.swarmId,
      pullImages: docker.pullImages,
      readinessTimeoutMs: docker.readinessTimeoutMs,
      stopTimeoutSeconds: docker.stopTimeoutSeconds,
      env: options.env ?? process.env,
      logger,
    });
  }
  const fly = config.providers.fly;
  if (fly.enabled) {
    providers.fly = factory.create('fly', {
      app: fly.app,
      org: fly.org,
      region: fly.region,
      defaultImage: fly.image,
      volumeSizeGb: fly.volumeSizeGb,
      swarmId: config.swarmId,
      readinessTimeoutMs: fly.readinessTimeoutMs,
      ...(fly.apiUrl ? { apiUrl: fly.apiUrl } : {}),
      env: options.env ?? process.env,
      logger,
    });
  }
  const aws = config.providers['aws-asg'];
  if (aws.enabled) {
    providers['aws-asg'] = factory.create('aws-asg', {
      groupName: aws.groupName,
      ...(aws.region ? { region: aws.region } : {}),
      ...(aws.endpoint ? { endpoint: aws.endpoint } : {}),
      defaultImage: aws.image,
      perHostCapacity: aws.perHostCapacity,
      bufferSlots: aws.bufferSlots,
      agentPort: aws.agentPort,
      agentTokenEnv: aws.agentTokenEnv,
      ...(aws.agentTokenFile ? { agentTokenFile: aws.agentTokenFile } : {}),
      agentPortRange: parsePortRange(aws.agentPortRange, 'providers.aws-asg.agentPortRange'),
      maxAttempts: aws.maxAttempts,
      retryMode: aws.retryMode,
      hostCacheTtlMs: aws.hostCacheTtlMs,
      agentTimeoutMs: aws.agentTimeoutMs,
      agentCreateTimeoutMs: aws.agentCreateTimeoutMs,
      hostWaitTimeoutMs: aws.hostWaitTimeoutMs,
      hostPollMs: aws.hostPollMs,
      hostBootTimeoutMs: aws.hostBootTimeoutMs,
      scaleInCooldownMs: aws.scaleInCooldownMinutes * 60_000,
      reconcileIntervalMs: aws.reconcileIntervalMs,
      evacuateTerminatingHosts: aws.evacuateTerminatingHosts,
      evacuationTimeoutMs: aws.evacuationTimeoutMinutes * 60_000,
      env: options.env ?? process.env,
      logger,
    } satisfies ConstructorParameters<typeof AwsAsgProvider>[0]);
  }
  // PostgreSQL when store.databaseUrl is set (instances, principals and token hashes, spent links shared by
  // every controller on it), the JSON files otherwise; it connects in initialize().
  const { registry, principals, spentLinks, signingSeed, documents } = storesFor(config, logger);
  const access = config.gateway.enabled ? new AccessLinks(config.gateway, config.stateDir, Date.now, signingSeed ? { signingSeed } : {}, spentLinks) : undefined;
  return new SwarmController({
    config, registry, providers, logger, activity: new ActivityTracker(),
    ...(access ? { access } : {}), ...(principals ? { principals } : {}), ...(documents ? { documents } : {}),
  });
}

export interface SwarmServices {
  controller: SwarmController;
  gateway?: Gateway;
  idle?: IdleMonitor;
  health?: HealthMonitor;
  /** Provider failover, when `failover.enabled`. */
  failover?: ProviderFailover;
  migrations: MigrationManager;
  /** Who runs the work that must run once: always this controller with the JSON store; the lease holder with PostgreSQL. */
  leadership: Leadership;
  /** Stops the monitors and the gateway, then closes the controller. */
  close: () => Promise<void>;
}

/**
 * Initialises the controller and starts what runs beside it: the gateway (when enabled), the idle
 * monitor, the health monitor and the provider failover. The MCP server (stdio) and `up` both run on this.
 *
 * With a PostgreSQL store several controllers share the swarm: reconcile, the monitors, the failover and
 * the warm refill act only on the one holding the swarm's lease (see Leadership), which also reconciles
 * on taking the lead and every health interval after, settling what a dead controller left.
 */
export async function startSwarmServices(controller: SwarmController, logger: Logger = silentLogger()): Promise<SwarmServices> {
  const { config } = controller;
  const leadership = leadershipFor(config, logger);
  // Set before initialize: its reconcile runs only if this controller leads, and it does not lead yet.
  controller.useLeadership(leadership);
  try {
    await controller.initialize();
    await leadership.start();
  } catch (err) {
    await leadership.stop().catch(() => undefined);
    throw err;
  }
  if (leadership.shared) leadership.whileLeader(config.health.intervalMs, () => controller.reconcileAll());
  let gateway: Gateway | undefined;
  if (controller.access) {
    gateway = new Gateway({ controller, access: controller.access, activity: controller.activity, config: config.gateway, logger });
    try {
      await gateway.listen();
    } catch (err) {
      await leadership.stop();
      await controller.close();
      throw new SwarmError('CONFLICT', `gateway: cannot listen on ${config.gateway.host}:${config.gateway.port} (${(err as Error).message}); set gateway.port or VSCODE_SWARM_GATEWAY_PORT`, { cause: err });
    }
  }
  let idle: IdleMonitor | undefined;
  if (config.idle.enabled) {
    idle = new IdleMonitor({ controller, activity: controller.activity, checkIntervalMs: config.idle.checkIntervalMs, logger });
    idle.start();
  }
  const { documents } = controller;
  const migrations = new MigrationManager({ controller, stateDir: config.stateDir, timeoutMs: config.migration.timeoutMs, logger, documents });
  const settle = async (): Promise<void> => {
    const settled = await migrations.recover();
    if (settled.length) logger.warn({ migrations: settled.map((m) => ({ id: m.id, status: m.status, reason: m.reason })) }, 'settled migrations left by a previous run');
  };
  // Shared: the leader settles the migrations of controllers that are gone, on taking the lead and every
  // health interval after (one that dies later); a live controller's are left to it. Files: all, once, now.
  if (leadership.shared && migrations.sharedStore) leadership.whileLeader(config.health.intervalMs, settle);
  else await settle();
  // Snapshots past their retention (and copies a crash interrupted) go at start; list and create sweep too.
  await snapshotManagerFor(controller, logger).sweep().catch((err: unknown) => logger.warn({ err: (err as Error).message }, 'snapshot sweep failed'));
  let health: HealthMonitor | undefined;
  // The failover writes its decisions to the health history, so it needs the monitor even when checks are off.
  const monitor = config.health.enabled || config.failover.enabled ? new HealthMonitor({ controller, stateDir: config.stateDir, config: config.health, migrations, logger, documents }) : undefined;
  if (config.health.enabled) {
    health = monitor;
    health!.start();
  }
  let failover: ProviderFailover | undefined;
  if (config.failover.enabled) {
    failover = new ProviderFailover({ controller, migrations, health: monitor!, config: config.failover, logger });
    failover.start();
  }
  return {
    controller,
    ...(gateway ? { gateway } : {}),
    ...(idle ? { idle } : {}),
    ...(health ? { health } : {}),
    ...(failover ? { failover } : {}),
    migrations,
    leadership,
    close: async () => {
      await leadership.stop();
      await failover?.stop();
      await health?.stop();
      await idle?.stop();
      await gateway?.close();
      await controller.close();
    },
  };
}
