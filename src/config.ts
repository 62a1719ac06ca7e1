/**
 * Configuration: an optional JSON file validated by zod, then environment overrides, then defaults that
 * work with zero configuration on a machine with Docker.
 *
 * Precedence, highest first: explicit overrides (CLI flags, library callers) > environment > file > defaults.
 */
import { AuditConfigSchema } from './audit/audit-log.js';
import { OAuthConfigSchema } from './tenancy/oauth.js';
import { QuotaConfigSchema } from './tenancy/quotas.js';
import { RepositoriesConfigSchema } from './workspace/repository.js';
import { DevcontainersConfigSchema } from './workspace/devcontainer.js';
import { SnapshotsConfigSchema } from './snapshots/snapshot-store.js';
import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { z } from 'zod';
import { ImageReferenceSchema, ProviderTypeSchema, type ProviderType } from '../providers/provider.js';
import { SwarmError } from './errors.js';

/** The repository's `state/` folder (this file is at src/ or dist/src/). */
export const DEFAULT_STATE_DIR = path.resolve(
  path.dirname(fileURLToPath(import.meta.url)),
  fileURLToPath(import.meta.url).includes(`${path.sep}dist${path.sep}`) ? '../../state' : '../state',
);

/** Read when present and no other file is named: scripts/setup.sh writes it where no registry answers. */
export const DEFAULT_CONFIG_FILE = path.join(path.dirname(DEFAULT_STATE_DIR), 'vscode-swarm.config.json');

export const DEFAULT_EDITOR_IMAGE = 'codercom/code-server:latest';

const DockerConfigSchema = z
  .object({
    enabled: z.boolean().default(true),
    image: ImageReferenceSchema.default(DEFAULT_EDITOR_IMAGE),
    /** unix:///path or tcp://host:port; DOCKER_HOST is used when absent. */
    dockerHost: z.string().optional(),
    socketPath: z.string().optional(),
    /** null: publish nothing, reach editors on the Docker network (only the gateway is a way in). */
    publishHost: z.string().nullable().default(null),
    network: z.string().regex(/^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$/).default('vscode-swarm'),
    pullImages: z.boolean().default(true),
    readinessTimeoutMs: z.number().int().min(1_000).max(600_000).default(90_000),
    stopTimeoutSeconds: z.number().int().min(0).max(300).default(10),
    editorArgs: z.array(z.string()).optional(),
  })
  .strict();

const FlyConfigSchema = z
  .object({
    /** Off unless turned on; the token comes from FLY_API_TOKEN. */
    enabled: z.boolean().default(false),
    /** The one Fly app holding the swarm's Machines and volumes (created when missing). */
    app: z.string().regex(/^[a-z0-9][a-z0-9-]{1,62}$/, 'expected a Fly app name: lower-case letters, digits and "-"').default('vscode-swarm'),
    org: z.string().min(1).default('personal'),
    region: z.string().regex(/^[a-z]{3}$/, 'expected a three-letter Fly region such as iad').default('iad'),
    /** The Machines API; the public one when absent. */
    apiUrl: z.string().url().optional(),
    /** Fly pulls this itself, so it must be in a registry Fly reaches. */
    image: ImageReferenceSchema.default('codercom/code-server:4.99.3'),
    volumeSizeGb: z.number().int().min(1).max(500).default(1),
    readinessTimeoutMs: z.number().int().min(1_000).max(600_000).default(120_000),
  })
  .strict();

const AwsAsgConfigSchema = z
  .object({
    /** Off unless turned on; credentials come from the standard AWS chain (environment, profile, instance role). */
    enabled: z.boolean().default(false),
    /** AWS_REGION / AWS_DEFAULT_REGION when absent. */
    region: z.string().regex(/^[a-z]{2}(-[a-z]+)+-\d$/, 'expected an AWS region such as eu-west-1').optional(),
    /** The Auto Scaling group whose EC2 hosts run `vscode-swarm agent`. */
    groupName: z.string().min(1).max(255).default('vscode-swarm'),
    /** Another endpoint for both AWS services (a local emulator, a VPC endpoint); the public ones when absent. */
    endpoint: z.string().url().optional(),
    /** Editor image the agents run when a create names none; they must be able to pull it. */
    image: ImageReferenceSchema.default('codercom/code-server:4.99.3'),
    /** Containers per host; the agents' --capacity should match. */
    perHostCapacity: z.number().int().min(1).max(1_000).default(20),
    /** Free container slots kept ready by the group's desired capacity. */
    bufferSlots: z.number().int().min(0).max(10_000).default(5),
    /** The agents' control-API port (--api-port), the same on every host. */
    agentPort: z.number().int().min(1).max(65_535).default(9100),
    /** Where the agents' bearer token (--token) is read from: this variable, else agentTokenFile. Never put the token in the file itself. */
    agentTokenEnv: z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/).default('VSCODE_SWARM_AWS_AGENT_TOKEN'),
    agentTokenFile: z.string().min(1).optional(),
    /** The agents' --port-range (editors publish there on the host's loopback; endpoints are the hosts' proxies). */
    agentPortRange: z.string().regex(/^\d{1,5}(-\d{1,5})?$/, 'expected a port range such as 20000-20999').default('20000-20999'),
    // No gateway key here: the agents check access links with the central gateway's Ed25519 public key,
    // which their launcher passes as --gateway-public-key; the controller never sends a secret to a host.
    /** SDK attempts per AWS call (the SDK retries throttling and 5xx itself). */
    maxAttempts: z.number().int().min(1).max(20).default(5),
    retryMode: z.enum(['standard', 'adaptive']).default('standard'),
    hostCacheTtlMs: z.number().int().min(100).max(600_000).default(10_000),
    agentTimeoutMs: z.number().int().min(500).max(600_000).default(15_000),
    agentCreateTimeoutMs: z.number().int().min(1_000).max(1_800_000).default(180_000),
    /** How long a create waits for a new host when every host is full (EC2 boot plus agent start). */
    hostWaitTimeoutMs: z.number().int().min(1_000).max(3_600_000).default(600_000),
    hostPollMs: z.number().int().min(100).max(60_000).default(2_000),
    /** A host whose agent has not answered this long after launch is terminated and replaced (EC2 keeps it InService whatever its user data did). */
    hostBootTimeoutMs: z.number().int().min(1_000).max(3_600_000).default(600_000),
    /** A host empty this long is terminated (min size and buffer permitting). */
    scaleInCooldownMinutes: z.number().min(0).max(1_440).default(10),
    reconcileIntervalMs: z.number().int().min(100).max(3_600_000).default(15_000),
    /**
     * A host the group terminates (scale-in, instance refresh, rebalance, an operator, Spot) waits on the
     * group's termination lifecycle hook while the controller moves its workspaces, with their files, to
     * other hosts. Off: they go with the host.
     */
    evacuateTerminatingHosts: z.boolean().default(true),
    /** How long an evacuation keeps trying to move an instance before giving up on it (never past the hook's global timeout). */
    evacuationTimeoutMinutes: z.number().min(1).max(2_880).default(60),
  })
  .strict();
export type AwsAsgConfig = z.infer<typeof AwsAsgConfigSchema>;

const GatewayConfigSchema = z
  .object({
    /** Serve the gateway with `serve` and `up`. */
    enabled: z.boolean().default(true),
    host: z.string().default('127.0.0.1'),
    /** 0 picks a free port (tests). */
    port: z.number().int().min(0).max(65_535).default(7080),
    /** The port in the URLs handed out, when a proxy in front listens elsewhere. */
    publicPort: z.number().int().min(1).max(65_535).optional(),
    scheme: z.enum(['http', 'https']).default('http'),
    /** Instances are reached at <id>.<baseDomain>; browsers resolve *.localhost to loopback by themselves. */
    baseDomain: z.string().regex(/^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$/, 'expected a lower-case domain such as localhost or ws.example.com').default('localhost'),
    /** Signing key; generated into <stateDir>/gateway/secret.key when absent. */
    secret: z.string().min(32).optional(),
    linkTtlMinutes: z.number().min(1).max(10_080).default(60),
    sessionTtlHours: z.number().min(0.1).max(720).default(12),
    /** A request for a stopped instance starts it and waits, instead of showing a page. */
    autoStart: z.boolean().default(true),
    startTimeoutMs: z.number().int().min(1_000).max(600_000).default(120_000),
    /** Failed authentications allowed per client (an IPv4 address or an IPv6 /64) per minute before it gets 429; a valid session is never refused. */
    maxFailuresPerMinute: z.number().int().min(1).max(10_000).default(20),
    /** Clients whose failures are remembered at most; the least recently failing is forgotten first. */
    maxTrackedAddresses: z.number().int().min(1).max(10_000_000).default(10_000),
    /** Time a client has to send a request's headers, then its whole request (408 and closed after). */
    headersTimeoutMs: z.number().int().min(100).max(600_000).default(20_000),
    requestTimeoutMs: z.number().int().min(100).max(3_600_000).default(60_000),
    /**
     * Open connections at most, in total and per client (an IPv4 address or an IPv6 /64); more are closed at
     * once. Behind a TLS proxy or load balancer every client has its address: raise the per-client cap there.
     */
    maxConnections: z.number().int().min(1).max(1_000_000).default(4_096),
    maxConnectionsPerAddress: z.number().int().min(1).max(1_000_000).default(256),
  })
  .strict()
  .superRefine((gateway, ctx) => {
    if (gateway.headersTimeoutMs > gateway.requestTimeoutMs) {
      ctx.addIssue({ code: 'custom', path: ['headersTimeoutMs'], message: `expected at most requestTimeoutMs (${gateway.requestTimeoutMs}), since the headers are part of the request (got ${gateway.headersTimeoutMs})` });
    }
  });
export type GatewayConfig = z.infer<typeof GatewayConfigSchema>;

/** OAuth sign-in to the dashboard (authorization code with PKCE) at the issuer named by `oauth.issuer`. */
const DashboardOAuthSchema = z
  .object({
    /** The dashboard's client id at the issuer, registered for the authorization_code grant with the redirect URL <publicUrl>oauth/callback. */
    clientId: z.string().min(1, 'expected the client id the issuer registered for the dashboard').max(256),
    /** A file holding the client's secret (sent as client_secret_basic); none for a public client. */
    clientSecretFile: z.string().min(1).optional(),
    /** Where browsers reach the dashboard (e.g. https://dashboard.example.com/); the redirect URL is derived from it. Default: its listening address. */
    publicUrl: z
      .string()
      .refine((u) => URL.canParse(u) && /^https?:$/.test(new URL(u).protocol) && !u.includes('?') && !u.includes('#'), 'expected an http(s) URL without query or fragment, such as https://dashboard.example.com/')
      .optional(),
    /** The scopes asked for besides `openid`; the principal's role narrows what the token grants. */
    scopes: z.array(z.string().regex(/^[\x21\x23-\x5b\x5d-\x7e]+$/, 'expected a scope token (RFC 6749 §3.3)')).min(1).default(['swarm:read', 'swarm:write']),
  })
  .strict();
export type DashboardOAuthConfig = z.infer<typeof DashboardOAuthSchema>;

const DashboardConfigSchema = z
  .object({
    /** Serve the dashboard (a web page of one's workspaces) with `up`. */
    enabled: z.boolean().default(true),
    host: z.string().default('127.0.0.1'),
    /** 0 picks a free port (tests). */
    port: z.number().int().min(0).max(65_535).default(8090),
    sessionTtlHours: z.number().min(0.1).max(720).default(12),
    /**
     * Host headers it accepts besides dashboard.<gateway.baseDomain> and the loopback ones (localhost,
     * 127.0.0.1, [::1] and the bound address), on the listening port; others get 421 (DNS rebinding).
     */
    allowedHosts: z.array(z.string().regex(/^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+)(:\d{1,5})?$/, 'expected a host name or address with an optional port, such as dashboard.example.com:443')).default([]),
    /** Origins its forms may be posted from besides its own allowed hosts over http (e.g. https://dashboard.example.com behind a TLS proxy). */
    allowedOrigins: z.array(z.string().regex(/^https?:\/\/(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+)(:\d{1,5})?$/, 'expected an origin such as https://dashboard.example.com (scheme, host and optional port; no path)')).default([]),
    /** Failed sign-ins allowed per client (an IPv4 address or an IPv6 /64) per minute before it gets 429. */
    maxFailuresPerMinute: z.number().int().min(1).max(10_000).default(20),
    /** Sign-in through the OAuth issuer (`oauth.issuer`) besides API tokens; requires `oauth`. */
    oauth: DashboardOAuthSchema.optional(),
  })
  .strict();
export type DashboardConfig = z.infer<typeof DashboardConfigSchema>;

const WarmBufferSchema = z
  .object({
    provider: ProviderTypeSchema.default('docker'),
    /** Defaults to the provider's image. */
    image: ImageReferenceSchema.optional(),
    /** Defaults to `defaults`. */
    resources: z.object({ cpu: z.number().min(0.1).max(256), memoryMb: z.number().int().min(256) }).strict().optional(),
    size: z.number().int().min(0).max(100),
  })
  .strict();
export type WarmBufferConfig = z.infer<typeof WarmBufferSchema>;

export const SwarmConfigSchema = z
  .object({
    stateDir: z.string().min(1).default(DEFAULT_STATE_DIR),
    /** Where the shared state lives: the JSON files under stateDir (default), or PostgreSQL when databaseUrl is set. */
    store: z
      .object({ databaseUrl: z.string().regex(/^postgres(ql)?:\/\//, 'expected a postgres:// or postgresql:// URL').optional() })
      .strict()
      .optional(),
    /**
     * Names this swarm on shared infrastructure (labels on every container); controllers of other swarms
     * on the same engine never adopt or touch its instances. Derived from the state directory when absent.
     */
    swarmId: z.string().regex(/^[a-z0-9][a-z0-9-]{0,62}$/).optional(),
    logLevel: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
    defaultProvider: ProviderTypeSchema.default('docker'),
    defaults: z
      .object({
        cpu: z.number().min(0.1).max(256).default(1),
        memoryMb: z.number().int().min(256).default(2048),
      })
      .strict()
      .prefault({}),
    providers: z
      .object({
        docker: DockerConfigSchema.prefault({}),
        fly: FlyConfigSchema.prefault({}),
        'aws-asg': AwsAsgConfigSchema.prefault({}),
      })
      .strict()
      .prefault({}),
    gateway: GatewayConfigSchema.prefault({}),
    /** MCP over Streamable HTTP, served by `up` (bearer token in <stateDir>/mcp-http.token). */
    mcpHttp: z
      .object({
        host: z.string().default('127.0.0.1'),
        port: z.number().int().min(0).max(65_535).default(7081),
        /**
         * Host headers /mcp accepts besides the loopback ones (localhost, 127.0.0.1, [::1] and the bound
         * address, on the listening port); others get 403 (DNS rebinding). A name without a port means the listening port.
         */
        allowedHosts: z.array(z.string().regex(/^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+)(:\d{1,5})?$/, 'expected a host name or address with an optional port, such as mcp.example.com:443')).default([]),
        /** Origin headers /mcp accepts besides the loopback ones (http://localhost:<port>, ...); a request with another Origin gets 403. */
        allowedOrigins: z.array(z.string().regex(/^https?:\/\/(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+)(:\d{1,5})?$/, 'expected an origin such as https://app.example.com (scheme, host and optional port; no path)')).default([]),
      })
      .strict()
      .prefault({}),
    /** The dashboard served by `up` beside the gateway, for signed-in principals. */
    dashboard: DashboardConfigSchema.prefault({}),
    /** Per-principal limits by role; a principal's own limits (principals add --quota...) override these. */
    quotas: QuotaConfigSchema.prefault({}),
    /** The audit trail under <stateDir>/audit, with retention and optional signed webhooks. */
    audit: AuditConfigSchema.prefault({}),
    /** Accept OAuth 2.1 access tokens (JWT) from this issuer on MCP over HTTP, besides API tokens. */
    oauth: OAuthConfigSchema.optional(),
    idle: z
      .object({
        enabled: z.boolean().default(true),
        /** Default for instances that set none; 0 never stops them. */
        timeoutMinutes: z.number().min(0).max(10_080).default(15),
        checkIntervalMs: z.number().int().min(100).max(3_600_000).default(30_000),
      })
      .strict()
      .prefault({}),
    health: z
      .object({
        enabled: z.boolean().default(true),
        intervalMs: z.number().int().min(100).max(3_600_000).default(30_000),
        timeoutMs: z.number().int().min(100).max(60_000).default(5_000),
        slowMs: z.number().int().min(10).max(60_000).default(2_000),
        failureThreshold: z.number().int().min(1).max(20).default(2),
        memoryDegradedRatio: z.number().gt(0).max(1).default(0.9),
        historySize: z.number().int().min(1).max(10_000).default(50),
        concurrency: z.number().int().min(1).max(256).default(8),
        autoRecover: z.boolean().default(true),
        /** Tried in this order, one per attempt; 'migrate' moves the instance with its files to `migrateTo`. */
        recoveryActions: z.array(z.enum(['restart', 'recreate', 'migrate'])).min(1).default(['restart', 'recreate']),
        /** Where 'migrate' moves a failing instance (required when recoveryActions lists it). */
        migrateTo: ProviderTypeSchema.optional(),
        maxAttempts: z.number().int().min(1).max(20).default(3),
        backoffMs: z.number().int().min(0).max(3_600_000).default(10_000),
      })
      .strict()
      .prefault({}),
    /**
     * Provider failover (off unless turned on): the instances that should be running on a provider that
     * has been unavailable for longer than `afterMs` move to `to`, with their files where they can still be
     * read, and are otherwise marked failed with the reason (never re-created empty).
     */
    failover: z
      .object({
        enabled: z.boolean().default(false),
        /** Providers watched; every enabled provider but `to` when absent. */
        from: z.array(ProviderTypeSchema).min(1).optional(),
        /** Where their instances go (required when enabled). */
        to: ProviderTypeSchema.optional(),
        /** How long a provider must stay unavailable before anything moves. */
        afterMs: z.number().int().min(1_000).max(86_400_000).default(300_000),
        /** How often providers are probed. */
        checkIntervalMs: z.number().int().min(100).max(3_600_000).default(10_000),
      })
      .strict()
      .prefault({}),
    migration: z
      .object({
        /** Time a migration may take before it is rolled back. */
        timeoutMs: z.number().int().min(1_000).max(86_400_000).default(600_000),
      })
      .strict()
      .prefault({}),
    /** Workspace snapshots under <stateDir>/snapshots: retention and per-principal limits (see src/snapshots/). */
    snapshots: SnapshotsConfigSchema.prefault({}),
    /** Ready, unassigned instances kept per provider, image and size; a matching create takes one. */
    warm: z.array(WarmBufferSchema).max(16).default([]),
    /** Workspaces created from a git repository: named credentials (never the secret itself), limits, file:// switch. */
    repositories: RepositoriesConfigSchema.prefault({}),
    /** Dev containers of those repositories: where extensions' .vsix files come from, lifecycle command time limit. */
    devcontainers: DevcontainersConfigSchema.prefault({}),
    exec: z
      .object({
        /** execute_command runs arbitrary shell commands in a workspace: off unless turned on. */
        enabled: z.boolean().default(false),
        timeoutMs: z.number().int().min(100).max(3_600_000).default(30_000),
        maxOutputBytes: z.number().int().min(1_024).max(64 * 1024 * 1024).default(1024 * 1024),
      })
      .strict()
      .prefault({}),
  })
  .strict()
  .superRefine((config, ctx) => {
    const enabled = (type: ProviderType): boolean => config.providers[type].enabled;
    const { health, failover } = config;
    if (config.dashboard.oauth && !config.oauth) {
      ctx.addIssue({ code: 'custom', path: ['dashboard', 'oauth'], message: 'needs `oauth` (at least oauth.issuer): the issuer the dashboard signs people in through' });
    }
    if (health.recoveryActions.includes('migrate')) {
      if (!health.migrateTo) {
        ctx.addIssue({ code: 'custom', path: ['health', 'migrateTo'], message: "required when health.recoveryActions includes 'migrate': the provider type failing instances move to" });
      } else if (!enabled(health.migrateTo)) {
        ctx.addIssue({ code: 'custom', path: ['health', 'migrateTo'], message: `${health.migrateTo} is not enabled (set providers.${health.migrateTo}.enabled)` });
      }
    }
    if (failover.enabled) {
      if (!failover.to) {
        ctx.addIssue({ code: 'custom', path: ['failover', 'to'], message: 'required when failover.enabled: the provider type instances move to' });
      } else if (!enabled(failover.to)) {
        ctx.addIssue({ code: 'custom', path: ['failover', 'to'], message: `${failover.to} is not enabled (set providers.${failover.to}.enabled)` });
      }
      for (const [i, type] of (failover.from ?? []).entries()) {
        if (type === failover.to) ctx.addIssue({ code: 'custom', path: ['failover', 'from', i], message: `${type} is also failover.to; a provider cannot fail over to itself` });
        else if (!enabled(type)) ctx.addIssue({ code: 'custom', path: ['failover', 'from', i], message: `${type} is not enabled (set providers.${type}.enabled)` });
      }
    }
  });

export type SwarmConfig = z.infer<typeof SwarmConfigSchema> & { swarmId: string };
export type SwarmConfigInput = z.input<typeof SwarmConfigSchema>;

export interface LoadConfigOptions {
  /**
   * Path of a JSON config file; VSCODE_SWARM_CONFIG when absent, then DEFAULT_CONFIG_FILE if it exists.
   * A named file that is missing is an error. `false` reads no file.
   */
  file?: string | false;
  env?: NodeJS.ProcessEnv;
  /** Applied last, e.g. from CLI flags. */
  overrides?: SwarmConfigInput;
}

/** Environment variables that override the file, and where they land. */
export const ENV_OVERRIDES: Record<string, { path: string[]; parse: (v: string) => unknown }> = {
  VSCODE_SWARM_STATE_DIR: { path: ['stateDir'], parse: String },
  VSCODE_SWARM_DATABASE_URL: { path: ['store', 'databaseUrl'], parse: String },
  VSCODE_SWARM_LOG_LEVEL: { path: ['logLevel'], parse: String },
  VSCODE_SWARM_DEFAULT_PROVIDER: { path: ['defaultProvider'], parse: String },
  VSCODE_SWARM_DOCKER_IMAGE: { path: ['providers', 'docker', 'image'], parse: String },
  VSCODE_SWARM_DOCKER_PULL: { path: ['providers', 'docker', 'pullImages'], parse: parseBoolean },
  VSCODE_SWARM_ENABLE_EXEC: { path: ['exec', 'enabled'], parse: parseBoolean },
  VSCODE_SWARM_REPOSITORIES_ALLOW_PRIVATE_NETWORKS: { path: ['repositories', 'allowPrivateNetworks'], parse: parseBoolean },
  VSCODE_SWARM_FLY_ENABLED: { path: ['providers', 'fly', 'enabled'], parse: parseBoolean },
  VSCODE_SWARM_FLY_APP: { path: ['providers', 'fly', 'app'], parse: String },
  VSCODE_SWARM_FLY_API_URL: { path: ['providers', 'fly', 'apiUrl'], parse: String },
  VSCODE_SWARM_FLY_IMAGE: { path: ['providers', 'fly', 'image'], parse: String },
  VSCODE_SWARM_AWS_ENABLED: { path: ['providers', 'aws-asg', 'enabled'], parse: parseBoolean },
  VSCODE_SWARM_AWS_GROUP: { path: ['providers', 'aws-asg', 'groupName'], parse: String },
  VSCODE_SWARM_AWS_ENDPOINT: { path: ['providers', 'aws-asg', 'endpoint'], parse: String },
  VSCODE_SWARM_GATEWAY_PORT: { path: ['gateway', 'port'], parse: Number },
  VSCODE_SWARM_GATEWAY_HOST: { path: ['gateway', 'host'], parse: String },
  VSCODE_SWARM_MCP_HTTP_PORT: { path: ['mcpHttp', 'port'], parse: Number },
  VSCODE_SWARM_DASHBOARD_PORT: { path: ['dashboard', 'port'], parse: Number },
  VSCODE_SWARM_DASHBOARD_HOST: { path: ['dashboard', 'host'], parse: String },
  VSCODE_SWARM_BASE_DOMAIN: { path: ['gateway', 'baseDomain'], parse: String },
  VSCODE_SWARM_GATEWAY_SECRET: { path: ['gateway', 'secret'], parse: String },
  VSCODE_SWARM_IDLE_TIMEOUT_MINUTES: { path: ['idle', 'timeoutMinutes'], parse: Number },
  VSCODE_SWARM_IDLE_CHECK_MS: { path: ['idle', 'checkIntervalMs'], parse: Number },
  VSCODE_SWARM_HEALTH_INTERVAL_MS: { path: ['health', 'intervalMs'], parse: Number },
  VSCODE_SWARM_AUTO_RECOVER: { path: ['health', 'autoRecover'], parse: parseBoolean },
  VSCODE_SWARM_WARM_SIZE: { path: ['warm'], parse: (v) => [{ provider: 'docker', size: Number(v) }] },
};

export async function loadConfig(options: LoadConfigOptions = {}): Promise<SwarmConfig> {
  const env = options.env ?? process.env;
  const file = options.file === false ? undefined : (options.file ?? env.VSCODE_SWARM_CONFIG ?? (await exists(DEFAULT_CONFIG_FILE)));
  let raw: Record<string, unknown> = {};
  if (file) {
    let text: string;
    try {
      text = await fs.readFile(file, 'utf8');
    } catch (err) {
      throw new SwarmError('INVALID_INPUT', `config: cannot read ${file}: ${(err as Error).message}`, { field: 'config', cause: err });
    }
    try {
      raw = JSON.parse(text) as Record<string, unknown>;
    } catch (err) {
      throw new SwarmError('INVALID_INPUT', `config: ${file} is not valid JSON: ${(err as Error).message}`, { field: 'config', cause: err });
    }
  }
  for (const [name, { path: at, parse }] of Object.entries(ENV_OVERRIDES)) {
    const value = env[name];
    if (value !== undefined && value !== '') setPath(raw, at, parse(value), name);
  }
  return parseConfig(deepMerge(raw, options.overrides ?? {}), file || 'config');
}

/** Validates a config object, naming the first offending field and where it came from. */
export function parseConfig(input: unknown, source = 'config'): SwarmConfig {
  const parsed = SwarmConfigSchema.safeParse(input ?? {});
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    const field = issue.path.join('.') || '(root)';
    throw new SwarmError('INVALID_INPUT', `${source}: ${field}: ${issue.message}`, { field });
  }
  const stateDir = path.resolve(parsed.data.stateDir);
  return { ...parsed.data, stateDir, swarmId: parsed.data.swarmId ?? swarmIdFor(stateDir) };
}

/** The default swarm id: a short digest of the absolute state directory. */
export function swarmIdFor(stateDir: string): string {
  return createHash('sha256').update(path.resolve(stateDir)).digest('hex').slice(0, 12);
}

async function exists(file: string): Promise<string | undefined> {
  return fs.access(file).then(
    () => file,
    () => undefined,
  );
}

function parseBoolean(value: string): boolean | string {
  if (/^(1|true|yes|on)$/i.test(value)) return true;
  if (/^(0|false|no|off)$/i.test(value)) return false;
  return value; // left for the schema to reject with the field's name
}

function setPath(target: Record<string, unknown>, at: string[], value: unknown, source: string): void {
  let node = target;
  for (const key of at.slice(0, -1)) {
    const child = node[key];
    if (child !== undefined && (typeof child !== 'object' || child === null)) {
      throw new SwarmError('INVALID_INPUT', `config: ${source} overrides ${at.join('.')}, but ${key} is not an object`, { field: key });
    }
    node = (node[key] ??= {}) as Record<string, unknown>;
  }
  node[at.at(-1)!] = value;
}

function deepMerge(base: Record<string, unknown>, extra: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = { ...base };
  for (const [key, value] of Object.entries(extra)) {
    const current = out[key];
    out[key] =
      value && typeof value === 'object' && !Array.isArray(value) && current && typeof current === 'object' && !Array.isArray(current)
        ? deepMerge(current as Record<string, unknown>, value as Record<string, unknown>)
        : value;
  }
  return out;
}
