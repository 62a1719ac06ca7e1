/**
 * The aws-asg provider itself against a real AWS deployment (providers/aws-asg/deploy/README.md): create,
 * exec, stop, start (the file kept), delete, then scale out (a create that needs a new host) and back in.
 * It CHANGES the group: run it on a test group of its own, from where the controller runs (inside the
 * VPC, where the hosts' security group admits it). Skipped, with the reason, unless all of these are set:
 *
 *   AWS_REGION (or AWS_DEFAULT_REGION)
 *   credentials the chain can find from the environment: AWS_ACCESS_KEY_ID, AWS_PROFILE,
 *     AWS_WEB_IDENTITY_TOKEN_FILE, or an ECS task role (AWS_CONTAINER_CREDENTIALS_*_URI)
 *   VSCODE_SWARM_AWS_LIVE_GROUP          the hosts' Auto Scaling group
 *   VSCODE_SWARM_AWS_LIVE_AGENT_TOKEN    the controller's master agent token (each host holds its own,
 *                                        derived from it and its instance id)
 *
 * Optional: VSCODE_SWARM_AWS_LIVE_AGENT_PORT (9100), VSCODE_SWARM_AWS_LIVE_IMAGE (the default editor
 * image), VSCODE_SWARM_AWS_LIVE_SCALE=0 to leave out scale out and in (which needs MaxSize above the
 * current desired capacity and takes minutes: a host boots, then is terminated after the cool-down).
 */
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it, type TestContext } from 'vitest';
import { AwsAsgProvider } from '../../providers/aws-asg/aws-asg-provider.js';
import type { InstanceConfig } from '../../providers/provider.js';
import { DEFAULT_EDITOR_IMAGE } from '../../src/config.js';
import { createLogger } from '../../src/logger.js';
import { waitUntil } from '../../src/timing/wait-until.js';
import { editorStatus } from '../helpers/editor-probe.js';

const env = process.env;
const region = env.AWS_REGION || env.AWS_DEFAULT_REGION || '';
const hasCredentials = Boolean(
  env.AWS_ACCESS_KEY_ID || env.AWS_PROFILE || env.AWS_WEB_IDENTITY_TOKEN_FILE || env.AWS_CONTAINER_CREDENTIALS_FULL_URI || env.AWS_CONTAINER_CREDENTIALS_RELATIVE_URI,
);
const groupName = env.VSCODE_SWARM_AWS_LIVE_GROUP || '';
const agentToken = env.VSCODE_SWARM_AWS_LIVE_AGENT_TOKEN || '';
const agentPort = Number(env.VSCODE_SWARM_AWS_LIVE_AGENT_PORT || 9100);
const image = env.VSCODE_SWARM_AWS_LIVE_IMAGE || DEFAULT_EDITOR_IMAGE;
const scale = env.VSCODE_SWARM_AWS_LIVE_SCALE !== '0';

/** Why the suite cannot run here, or '' when it can. */
const missing = [
  !region && 'AWS_REGION (or AWS_DEFAULT_REGION)',
  !hasCredentials && 'AWS credentials in the environment (AWS_ACCESS_KEY_ID, AWS_PROFILE, AWS_WEB_IDENTITY_TOKEN_FILE or a container role)',
  !groupName && 'VSCODE_SWARM_AWS_LIVE_GROUP',
  !agentToken && 'VSCODE_SWARM_AWS_LIVE_AGENT_TOKEN',
].filter(Boolean) as string[];
const skipReason = missing.length ? `AWS live provider suite skipped: set ${missing.join(', ')}` : '';
if (skipReason) console.info(`[aws-live] ${skipReason}`);

const PREFIX = `live-${randomBytes(3).toString('hex')}`;
const MINUTE = 60_000;

describe(`AWS live: the aws-asg provider on group ${groupName || '$VSCODE_SWARM_AWS_LIVE_GROUP'}`, () => {
  let provider: AwsAsgProvider | undefined;
  const made = new Set<string>();
  const config = (name: string): InstanceConfig & { image: string } => ({ name, image, resources: { cpu: 0.5, memoryMb: 1024 } });
  const needLive = (ctx: TestContext): AwsAsgProvider => {
    if (skipReason) ctx.skip(skipReason);
    return provider!;
  };

  beforeAll(async () => {
    if (skipReason) return;
    provider = new AwsAsgProvider({
      region, groupName, agentToken, agentPort, defaultImage: image, env,
      // One workspace per host from the provider's side, so a second create needs a second host.
      perHostCapacity: 1, bufferSlots: 0,
      hostWaitTimeoutMs: 15 * MINUTE, scaleInCooldownMs: 30_000,
      logger: createLogger('warn'),
    });
    await provider.initialize();
  }, 2 * MINUTE);

  afterAll(async () => {
    if (!provider) return;
    // Whatever a failed test left behind goes too.
    for (const id of made) await provider.deleteInstance(id).catch(() => undefined);
    await provider.close();
  }, 5 * MINUTE);

  it('creates a workspace whose editor answers through its host\'s proxy, runs a command in it', async (ctx) => {
    const p = needLive(ctx);
    const id = `${PREFIX}-a`;
    made.add(id);
    const created = await p.createInstance(config(id), { instanceId: id });
    expect(created).toMatchObject({ id, status: 'running', providerType: 'aws-asg' });
    expect(created.endpoint).toMatchObject({ host: created.providerRef.hostIp, hostHeader: `${id}.${created.endpoint!.hostHeader!.slice(id.length + 1)}` });
    expect(await editorStatus(created, p, '/healthz', 10_000)).toBe(200);
    const wrote = await p.executeCommand(id, 'echo "kept across a stop" > live-check.txt && cat live-check.txt');
    expect(wrote).toMatchObject({ exitCode: 0, stdout: 'kept across a stop\n' });
  }, 10 * MINUTE);

  it('stops and starts it, keeping the workspace', async (ctx) => {
    const p = needLive(ctx);
    const id = `${PREFIX}-a`;
    expect(await p.stopInstance(id)).toMatchObject({ status: 'stopped' });
    const started = await p.startInstance(id);
    expect(started.status).toBe('running');
    expect(await editorStatus(started, p, '/healthz', 10_000)).toBe(200);
    expect(await p.executeCommand(id, 'cat live-check.txt')).toMatchObject({ exitCode: 0, stdout: 'kept across a stop\n' });
  }, 10 * MINUTE);

  it('scales out for a create no host has room for, and back in once it is deleted', async (ctx) => {
    const p = needLive(ctx);
    if (!scale) ctx.skip('VSCODE_SWARM_AWS_LIVE_SCALE=0');
    const before = p.hostSummary().filter((h) => h.lifecycle === 'InService').length;
    const id = `${PREFIX}-b`;
    made.add(id);
    const progress: string[] = [];
    const second = await p.createInstance(config(id), { instanceId: id, onProgress: (e) => progress.push(e.message) });
    expect(second.status).toBe('running');
    expect(second.providerRef.hostId).not.toBe((await p.getInstance(`${PREFIX}-a`))?.providerRef.hostId);
    console.info(`[aws-live] scale out: ${progress.join(' → ')}`);
    expect(await p.deleteInstance(id)).toBe(true);
    made.delete(id);
    // The emptied host goes after the cool-down; the group is back to where it was.
    await waitUntil(async () => (p.hostSummary().filter((h) => h.lifecycle === 'InService').length <= before ? true : undefined), {
      timeoutMs: 15 * MINUTE, intervalMs: 10_000, what: `the group back to ${before} host(s) in service`,
    });
  }, 35 * MINUTE);

  it('deletes the workspace', async (ctx) => {
    const p = needLive(ctx);
    const id = `${PREFIX}-a`;
    expect(await p.deleteInstance(id)).toBe(true);
    made.delete(id);
    expect(await p.getInstance(id)).toBeNull();
  }, 5 * MINUTE);
});
