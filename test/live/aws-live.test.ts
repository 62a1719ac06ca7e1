/**
 * A read-only check of a real AWS deployment of the aws-asg provider (providers/aws-asg/deploy/README.md),
 * with the real SDK clients and the standard credential chain. Skipped unless all of these are set:
 *
 *   AWS_REGION (or AWS_DEFAULT_REGION)
 *   credentials the chain can find from the environment: AWS_ACCESS_KEY_ID, AWS_PROFILE,
 *     AWS_WEB_IDENTITY_TOKEN_FILE, or an ECS task role (AWS_CONTAINER_CREDENTIALS_*_URI)
 *   VSCODE_SWARM_AWS_LIVE_GROUP          the hosts' Auto Scaling group
 *
 * and, to call every InService host's agent as the controller does (GET /v1/host with the bearer token;
 * run it from where the controller runs, inside the VPC):
 *
 *   VSCODE_SWARM_AWS_LIVE_AGENT_TOKEN    the controller's master agent token (each host's --token is
 *                                        derived from it and the host's instance id)
 *   VSCODE_SWARM_AWS_LIVE_AGENT_PORT     their --api-port (9100)
 *
 * It changes nothing: DescribeAutoScalingGroups, DescribeInstances (paginated) and agent GETs only.
 * aws-provider-live.test.ts runs the provider itself (create, stop, start, exec, delete, scale out and in).
 */
import { AutoScalingClient, DescribeAutoScalingGroupsCommand, type AutoScalingGroup } from '@aws-sdk/client-auto-scaling';
import { EC2Client, paginateDescribeInstances, type Instance } from '@aws-sdk/client-ec2';
import { afterAll, beforeAll, describe, expect, it, type TestContext } from 'vitest';
import type { HostReport } from '../../providers/aws-asg/agent/agent-protocol.js';
import { deriveHostToken } from '../../providers/aws-asg/host-credentials.js';

const env = process.env;
const region = env.AWS_REGION || env.AWS_DEFAULT_REGION || '';
const hasCredentials = Boolean(
  env.AWS_ACCESS_KEY_ID ||
    env.AWS_PROFILE ||
    env.AWS_WEB_IDENTITY_TOKEN_FILE ||
    env.AWS_CONTAINER_CREDENTIALS_FULL_URI ||
    env.AWS_CONTAINER_CREDENTIALS_RELATIVE_URI,
);
const groupName = env.VSCODE_SWARM_AWS_LIVE_GROUP || '';
const agentToken = env.VSCODE_SWARM_AWS_LIVE_AGENT_TOKEN || '';
const agentPort = Number(env.VSCODE_SWARM_AWS_LIVE_AGENT_PORT || 9100);
const live = Boolean(region && hasCredentials && groupName);

describe.skipIf(!live)(`AWS live (read-only): the hosts of Auto Scaling group ${groupName || '$VSCODE_SWARM_AWS_LIVE_GROUP'}`, () => {
  let asg: AutoScalingClient;
  let ec2: EC2Client;
  let group: AutoScalingGroup | undefined;
  /** InService members of the group with their EC2 description (undefined when EC2 does not list one). */
  let hosts: { instanceId: string; instance: Instance | undefined }[] = [];

  beforeAll(async () => {
    // No credentials passed: the SDK's standard chain (environment, profile, web identity, container, instance role).
    asg = new AutoScalingClient({ region, maxAttempts: 5 });
    ec2 = new EC2Client({ region, maxAttempts: 5 });

    const out = await asg.send(new DescribeAutoScalingGroupsCommand({ AutoScalingGroupNames: [groupName] }));
    group = out.AutoScalingGroups?.find((g) => g.AutoScalingGroupName === groupName);
    if (!group) return;

    // One paginated listing for the whole group, as the provider discovers hosts (never one call per host).
    const described = new Map<string, Instance>();
    const pages = paginateDescribeInstances(
      { client: ec2, pageSize: 1000 },
      { Filters: [{ Name: 'tag:aws:autoscaling:groupName', Values: [groupName] }] },
    );
    for await (const page of pages) {
      for (const reservation of page.Reservations ?? []) {
        for (const instance of reservation.Instances ?? []) if (instance.InstanceId) described.set(instance.InstanceId, instance);
      }
    }
    hosts = (group.Instances ?? [])
      .filter((m) => m.LifecycleState === 'InService' && m.InstanceId)
      .map((m) => ({ instanceId: m.InstanceId!, instance: described.get(m.InstanceId!) }));
  });

  afterAll(() => {
    asg?.destroy();
    ec2?.destroy();
  });

  /**
   * The checks below hold for every InService host, so an empty list would pass them without checking
   * anything: the group must exist and have at least one host in service (the deployment keeps MinSize 1).
   * Only a group that asks for no host at all (desired capacity 0) has nothing to check.
   */
  const requireHosts = (ctx: TestContext): void => {
    expect(group, `Auto Scaling group "${groupName}" not found in ${region}`).toBeDefined();
    if ((group!.DesiredCapacity ?? 0) === 0) ctx.skip(`group ${groupName} has a desired capacity of 0: no host to check`);
    expect(hosts.length, `group ${groupName} wants ${group!.DesiredCapacity} host(s) but none is InService`).toBeGreaterThan(0);
  };

  it('the group exists, with sizes that make sense', () => {
    expect(group, `Auto Scaling group "${groupName}" not found in ${region}`).toBeDefined();
    const { MinSize = -1, MaxSize = -1, DesiredCapacity = -1 } = group!;
    expect(MinSize).toBeGreaterThanOrEqual(0);
    expect(MaxSize).toBeGreaterThanOrEqual(MinSize);
    expect(DesiredCapacity).toBeGreaterThanOrEqual(MinSize);
    expect(DesiredCapacity).toBeLessThanOrEqual(MaxSize);
    console.info(`[aws-live] group ${groupName} in ${region}: min ${MinSize}, desired ${DesiredCapacity}, max ${MaxSize}, ${hosts.length} InService`);
  });

  it('every InService host is a running instance with a private IPv4 address', (ctx) => {
    requireHosts(ctx);
    for (const { instanceId, instance } of hosts) {
      expect(instance, `${instanceId} is InService in the group but DescribeInstances does not list it`).toBeDefined();
      expect(instance!.State?.Name, `${instanceId} state`).toBe('running');
      expect(instance!.PrivateIpAddress, `${instanceId} has no private IPv4 address`).toMatch(/^\d{1,3}(\.\d{1,3}){3}$/);
    }
  });

  it.skipIf(!agentToken)('every InService host runs an agent that answers GET /v1/host for the controller', async (ctx) => {
    requireHosts(ctx);
    for (const { instanceId, instance } of hosts) {
      const url = `http://${instance?.PrivateIpAddress}:${agentPort}/v1/host`;
      const res = await fetch(url, { headers: { Authorization: `Bearer ${deriveHostToken(agentToken, instanceId)}` }, signal: AbortSignal.timeout(10_000) }).catch((err: Error) => {
        throw new Error(`${instanceId}: ${url} did not answer (${err.message}); run from inside the VPC, where the hosts' security group admits the controller`);
      });
      expect(res.status, `${instanceId}: GET ${url}`).toBe(200);
      const report = (await res.json()) as HostReport;
      expect(report.hostId, `${instanceId}: the agent on ${url} runs as another host`).toBe(instanceId);
      expect(report.capacity).toBeGreaterThan(0);
      expect(report.used + report.free).toBeGreaterThanOrEqual(report.capacity);
      console.info(`[aws-live] ${instanceId} ${instance?.PrivateIpAddress}: agent ${report.version}, ${report.used}/${report.capacity} used${report.draining ? ', draining' : ''}`);
    }
  });

  it.skipIf(!agentToken)('the agents refuse a caller without the token', async (ctx) => {
    requireHosts(ctx);
    for (const { instanceId, instance } of hosts) {
      const res = await fetch(`http://${instance?.PrivateIpAddress}:${agentPort}/v1/host`, { signal: AbortSignal.timeout(10_000) });
      expect(res.status, `${instanceId}: GET /v1/host without a token`).toBe(401);
      await res.body?.cancel();
    }
  });
});
