/**
 * `vscode-swarm agent`: runs the host agent on an EC2 host (or, in tests, on a loopback address).
 * Every flag can also come from VSCODE_SWARM_AGENT_<NAME> (e.g. --host-id from VSCODE_SWARM_AGENT_HOST_ID);
 * a flag wins over its variable. Prints one line to stdout when ready:
 *
 *   agent ready <hostId> api=http://<bind>:<apiPort> proxy=http://<bind>:<proxyPort>
 *
 * Logs go to stderr. SIGTERM drains (every container stopped, workspaces kept, `drained` reported to
 * the controller) and exits 0; SIGINT exits without draining (containers keep running).
 */
import path from 'node:path';
import { parseArgs } from 'node:util';
import { z } from 'zod';
import { ImageReferenceSchema } from '../../provider.js';
import { DEFAULT_EDITOR_IMAGE, DEFAULT_STATE_DIR } from '../../../src/config.js';
import { SwarmError, asSwarmError } from '../../../src/errors.js';
import { createLogger } from '../../../src/logger.js';
import { HOST_ID_PATTERN, runAgent, type AgentOptions } from './host-agent.js';
import { parsePortRange } from './port-pool.js';
import { NAME_PREFIX_PATTERN } from '../../docker/docker-mapping.js';

export const AGENT_USAGE = `Usage: vscode-swarm agent --host-id ID --token TOKEN --gateway-public-key KEY [options]

Runs the host agent of the AWS provider: a control API for the controller, an authenticating proxy
for users, and the editors' containers on the local Docker engine.

  --host-id ID                 This host's EC2 instance id (required)
  --token TOKEN                This host's own bearer token: what the controller presents, and what the
                               agent presents on its events (required; the controller derives it from
                               its master token and this host id, see the deploy README)
  --gateway-public-key KEY     The central gateway's Ed25519 public key, 43 base64url characters: links
                               are checked with it; this host cannot mint any (required, or:)
  --gateway-secret SECRET      Deprecated: the central gateway's secret (32+ characters), from which its
                               public key is derived; it can mint links, so keep it off hosts
  --bind ADDR                  Address of the API and the proxy (127.0.0.1)
  --publish-host ADDR          Address the editors' ports are published on (127.0.0.1); keep it the
                               host's loopback: containers cannot reach it, the proxy does
  --name-prefix PREFIX         What this host's container and volume names start with (vscode-swarm);
                               only hosts that share one Docker engine (the emulator) need their own
  --api-port N                 Control API port, 0 for any (9100)
  --proxy-port N               User-facing proxy port, 0 for any (7080)
  --capacity N                 Most containers on this host (20)
  --state-dir DIR              Local state (state/agent-<host-id>)
  --base-domain DOMAIN         Editors are <id>.<domain> on the proxy (localhost)
  --image REF                  Editor image when a create names none (${DEFAULT_EDITOR_IMAGE})
  --no-pull                    Never pull images; they must be present
  --idle-timeout-minutes N     Stop instances idle this long; 0 never (15)
  --idle-check-ms N            Idle sweep interval (30000)
  --controller-url URL         Where host events are POSTed (optional)
  --port-range A-B             Ports published for editors (20000-20999)
  --stop-timeout-seconds N     Grace period of a stop (10)
  --readiness-timeout-ms N     Time an editor has to answer after a start (90000)
  --network NAME               Docker network of the editors (vscode-swarm)
  --log-level LEVEL            fatal, error, warn, info, debug, trace, silent (info)

Each flag can be given as VSCODE_SWARM_AGENT_<FLAG> instead, e.g. VSCODE_SWARM_AGENT_HOST_ID.
`;

const FLAGS = {
  'host-id': { type: 'string' },
  bind: { type: 'string' },
  'publish-host': { type: 'string' },
  'name-prefix': { type: 'string' },
  'api-port': { type: 'string' },
  'proxy-port': { type: 'string' },
  capacity: { type: 'string' },
  'state-dir': { type: 'string' },
  token: { type: 'string' },
  'gateway-secret': { type: 'string' },
  'gateway-public-key': { type: 'string' },
  'base-domain': { type: 'string' },
  image: { type: 'string' },
  'no-pull': { type: 'boolean' },
  'idle-timeout-minutes': { type: 'string' },
  'idle-check-ms': { type: 'string' },
  'controller-url': { type: 'string' },
  'port-range': { type: 'string' },
  'stop-timeout-seconds': { type: 'string' },
  'readiness-timeout-ms': { type: 'string' },
  network: { type: 'string' },
  'log-level': { type: 'string' },
  help: { type: 'boolean', short: 'h' },
} as const;

type FlagName = Exclude<keyof typeof FLAGS, 'help'>;

const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;

const int = (min: number, max: number) => z.coerce.number({ error: `expected an integer from ${min} to ${max}` }).int(`expected an integer from ${min} to ${max}`).min(min, `expected an integer from ${min} to ${max}`).max(max, `expected an integer from ${min} to ${max}`);

const AgentFlagsSchema = z.object({
  'host-id': z.string({ error: 'required: this host\'s EC2 instance id' }).regex(HOST_ID_PATTERN, 'expected an EC2 instance id such as i-0123abcd (a-z, 0-9, "-", at most 58 characters)'),
  bind: z.string().min(1).default('127.0.0.1'),
  'publish-host': z.string().min(1).default('127.0.0.1'),
  'name-prefix': z.string().regex(NAME_PREFIX_PATTERN, 'expected letters, digits, `_`, `.` or `-`, starting with a letter or digit, at most 64').optional(),
  'api-port': int(0, 65_535).default(9100),
  'proxy-port': int(0, 65_535).default(7080),
  capacity: int(1, 10_000).default(20),
  'state-dir': z.string().min(1).optional(),
  token: z.string({ error: 'required: the bearer token the controller presents' }).min(1, 'required: the bearer token the controller presents'),
  'gateway-secret': z.string().min(32, 'expected at least 32 characters').optional(),
  'gateway-public-key': z.string().regex(/^[A-Za-z0-9_-]{43}$/, "expected the central gateway's Ed25519 public key: 43 base64url characters").optional(),
  'base-domain': z.string().regex(/^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$/, 'expected a lower-case domain such as localhost').default('localhost'),
  image: ImageReferenceSchema.default(DEFAULT_EDITOR_IMAGE),
  'no-pull': z.boolean().default(false),
  'idle-timeout-minutes': z.coerce.number({ error: 'expected minutes from 0 to 10080' }).min(0, 'expected minutes from 0 to 10080').max(10_080, 'expected minutes from 0 to 10080').default(15),
  'idle-check-ms': int(100, 3_600_000).default(30_000),
  'controller-url': z.url({ protocol: /^https?$/, error: 'expected an http(s) URL' }).optional(),
  'port-range': z.string().default('20000-20999'),
  'stop-timeout-seconds': int(0, 300).default(10),
  'readiness-timeout-ms': int(1_000, 600_000).default(90_000),
  network: z.string().regex(/^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$/, 'expected a Docker network name').default('vscode-swarm'),
  'log-level': z.enum(LOG_LEVELS).default('info'),
});

function envName(flag: FlagName): string {
  return `VSCODE_SWARM_AGENT_${flag.toUpperCase().replace(/-/g, '_')}`;
}

/** Flags, then VSCODE_SWARM_AGENT_* variables, then defaults; the first bad one is named. */
export function parseAgentArgs(argv: string[], env: NodeJS.ProcessEnv = process.env): { help: true } | { help: false; options: AgentOptions; logLevel: (typeof LOG_LEVELS)[number] } {
  let values: Record<string, string | boolean | undefined>;
  try {
    values = parseArgs({ args: argv, options: FLAGS, allowPositionals: false, strict: true }).values;
  } catch (err) {
    throw new SwarmError('INVALID_INPUT', (err as Error).message);
  }
  if (values.help) return { help: true };
  const raw: Record<string, unknown> = {};
  for (const flag of Object.keys(FLAGS) as (FlagName | 'help')[]) {
    if (flag === 'help') continue;
    const fromEnv = env[envName(flag)];
    let value: unknown = values[flag];
    if (value === undefined && fromEnv !== undefined && fromEnv !== '') {
      value = flag === 'no-pull' ? /^(1|true|yes|on)$/i.test(fromEnv) : fromEnv;
    }
    if (value !== undefined) raw[flag] = value;
  }
  const parsed = AgentFlagsSchema.safeParse(raw);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    const flag = String(issue.path[0] ?? 'arguments') as FlagName;
    const got = raw[flag] === undefined || flag === 'token' || flag === 'gateway-secret' ? '' : ` (got ${JSON.stringify(raw[flag])})`;
    throw new SwarmError('INVALID_INPUT', `--${flag} (or ${envName(flag)}): ${issue.message}${got}`, { field: flag });
  }
  const f = parsed.data;
  if (f['gateway-public-key'] === undefined && f['gateway-secret'] === undefined) {
    throw new SwarmError('INVALID_INPUT', `--gateway-public-key (or ${envName('gateway-public-key')}): required: the central gateway's Ed25519 public key`, { field: 'gateway-public-key' });
  }
  const portRange = parsePortRange(f['port-range'], '--port-range');
  return {
    help: false,
    logLevel: f['log-level'],
    options: {
      hostId: f['host-id'],
      bind: f.bind,
      publishHost: f['publish-host'],
      ...(f['name-prefix'] !== undefined ? { namePrefix: f['name-prefix'] } : {}),
      apiPort: f['api-port'],
      proxyPort: f['proxy-port'],
      capacity: f.capacity,
      stateDir: path.resolve(f['state-dir'] ?? path.join(DEFAULT_STATE_DIR, `agent-${f['host-id']}`)),
      token: f.token,
      ...(f['gateway-public-key'] !== undefined ? { gatewayPublicKey: f['gateway-public-key'] } : { gatewaySecret: f['gateway-secret']! }),
      baseDomain: f['base-domain'],
      image: f.image,
      pullImages: !f['no-pull'],
      idleTimeoutMinutes: f['idle-timeout-minutes'],
      idleCheckMs: f['idle-check-ms'],
      ...(f['controller-url'] ? { controllerUrl: f['controller-url'] } : {}),
      portRange,
      stopTimeoutSeconds: f['stop-timeout-seconds'],
      readinessTimeoutMs: f['readiness-timeout-ms'],
      network: f.network,
    },
  };
}

/** `vscode-swarm agent ...`: resolves with the exit code once the agent has shut down. */
export async function runAgentCommand(argv: string[], env: NodeJS.ProcessEnv = process.env): Promise<number> {
  let parsed: ReturnType<typeof parseAgentArgs>;
  try {
    parsed = parseAgentArgs(argv, env);
  } catch (err) {
    process.stderr.write(`error: ${asSwarmError(err).message}\n(vscode-swarm agent --help lists the flags)\n`);
    return 2;
  }
  if (parsed.help) {
    process.stdout.write(AGENT_USAGE);
    return 0;
  }
  const logger = createLogger(parsed.logLevel);
  if (parsed.options.token.length < 16) logger.warn('the API token is shorter than 16 characters; use a long random one outside tests');
  const agent = await runAgent(parsed.options, { logger, env });
  process.stdout.write(`agent ready ${agent.hostId} api=${agent.apiUrl} proxy=${agent.proxyUrl}\n`);
  return new Promise<number>((resolve) => {
    let stopping = false;
    const shutdown = (signal: NodeJS.Signals): void => {
      if (stopping) return;
      stopping = true;
      logger.info({ signal }, signal === 'SIGTERM' ? 'SIGTERM: draining, then exiting' : 'shutting down without draining');
      void (async () => {
        let code = 0;
        try {
          if (signal === 'SIGTERM') {
            const { failed } = await agent.drain('SIGTERM');
            if (failed.length) logger.warn({ failed }, 'some instances could not be stopped');
          }
        } catch (err) {
          logger.error({ err: asSwarmError(err).message }, 'drain failed');
          code = 1;
        }
        await agent.close().catch((err) => {
          logger.error({ err: asSwarmError(err).message }, 'close failed');
          code = 1;
        });
        // Pooled keep-alive sockets must not hold the process after a clean shutdown.
        setTimeout(() => process.exit(code), 1_000).unref();
        resolve(code);
      })();
    };
    process.once('SIGTERM', () => shutdown('SIGTERM'));
    process.once('SIGINT', () => shutdown('SIGINT'));
  });
}
