/**
 * The AWS emulator against the real SDK clients (`@aws-sdk/client-auto-scaling`, `@aws-sdk/client-ec2`) over
 * HTTP, with the stand-in agent (dist/test/emulators/aws/fake-agent.js, built by `npx tsc -p .`) as the
 * process on every emulated EC2 host.
 */
import {
  AutoScalingClient,
  CompleteLifecycleActionCommand,
  DescribeAutoScalingGroupsCommand,
  DescribeAutoScalingInstancesCommand,
  DescribeLifecycleHooksCommand,
  DescribeScalingActivitiesCommand,
  PutLifecycleHookCommand,
  RecordLifecycleActionHeartbeatCommand,
  SetDesiredCapacityCommand,
  SetInstanceProtectionCommand,
  TerminateInstanceInAutoScalingGroupCommand,
  UpdateAutoScalingGroupCommand,
  paginateDescribeAutoScalingGroups,
} from '@aws-sdk/client-auto-scaling';
import { DescribeInstancesCommand, EC2Client, paginateDescribeInstances, type Instance } from '@aws-sdk/client-ec2';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startAwsEmulator, type AwsEmulator, type AwsEmulatorOptions } from '../emulators/aws/index.js';

const FAKE_AGENT = 'dist/test/emulators/aws/fake-agent.js';
const TOKEN = 'agent-token-for-tests';
const credentials = { accessKeyId: 'AKIAEMULATOR000000', secretAccessKey: 'emulator-secret' };

let stateRoot: string;
const emulators: AwsEmulator[] = [];

beforeAll(() => {
  if (!existsSync(path.resolve(FAKE_AGENT))) throw new Error(`${FAKE_AGENT} is missing: run \`npx tsc -p .\` first`);
  stateRoot = mkdtempSync(path.join(tmpdir(), 'aws-emulator-test-'));
});

afterEach(async () => {
  await Promise.all(emulators.splice(0).map((e) => e.close()));
});

afterAll(() => {
  rmSync(stateRoot, { recursive: true, force: true });
});

async function start(options: AwsEmulatorOptions): Promise<{ emu: AwsEmulator; asg: AutoScalingClient; ec2: EC2Client }> {
  const emu = await startAwsEmulator({
    bootDelayMs: 50,
    healthCheckDelayMs: 200,
    stopGraceMs: 2_000,
    ...options,
    agent: {
      script: FAKE_AGENT,
      token: TOKEN,
      extraArgs: ['--api-port', '0', '--token', TOKEN, '--state-dir', `${stateRoot}/{hostId}`, '--capacity', '4', '--no-pull'],
      ...options.agent,
    },
  });
  emulators.push(emu);
  const asg = new AutoScalingClient({ region: 'eu-west-1', credentials, endpoint: emu.asgEndpoint });
  const ec2 = new EC2Client({ region: 'eu-west-1', credentials, endpoint: emu.ec2Endpoint });
  return { emu, asg, ec2 };
}

async function instancesOf(ec2: EC2Client, ids: string[]): Promise<Instance[]> {
  const out = await ec2.send(new DescribeInstancesCommand({ InstanceIds: ids }));
  return (out.Reservations ?? []).flatMap((r) => r.Instances ?? []);
}

async function groupOf(asg: AutoScalingClient, name: string) {
  const out = await asg.send(new DescribeAutoScalingGroupsCommand({ AutoScalingGroupNames: [name] }));
  expect(out.AutoScalingGroups).toHaveLength(1);
  return out.AutoScalingGroups![0]!;
}

async function catchError(p: Promise<unknown>): Promise<Error & { $metadata?: { httpStatusCode?: number; attempts?: number } }> {
  try {
    await p;
  } catch (err) {
    return err as Error;
  }
  throw new Error('expected the call to fail');
}

describe('AWS emulator (real SDK clients over HTTP)', () => {
  it('describes a group, its instances and their hosts', async () => {
    const { emu, asg, ec2 } = await start({
      groups: [{ name: 'web', minSize: 1, maxSize: 3, desiredCapacity: 2, tags: { team: 'swarm' } }],
    });
    await emu.waitForGroupStable('web');

    const group = await groupOf(asg, 'web');
    expect(group).toMatchObject({ AutoScalingGroupName: 'web', MinSize: 1, MaxSize: 3, DesiredCapacity: 2 });
    expect(group.AutoScalingGroupARN).toMatch(/^arn:aws:autoscaling:us-east-1:123456789012:autoScalingGroup:.+:autoScalingGroupName\/web$/);
    expect(group.CreatedTime).toBeInstanceOf(Date);
    expect(group.Tags).toEqual([{ ResourceId: 'web', ResourceType: 'auto-scaling-group', Key: 'team', Value: 'swarm', PropagateAtLaunch: true }]);
    expect(group.Instances).toHaveLength(2);
    for (const i of group.Instances!) {
      expect(i).toMatchObject({ LifecycleState: 'InService', HealthStatus: 'Healthy', ProtectedFromScaleIn: false });
      expect(i.InstanceId).toMatch(/^i-0[0-9a-f]{16}$/);
    }
    const ids = group.Instances!.map((i) => i.InstanceId!);

    // Unknown names are not an error: the list is empty.
    const none = await asg.send(new DescribeAutoScalingGroupsCommand({ AutoScalingGroupNames: ['no-such-group'] }));
    expect(none.AutoScalingGroups).toEqual([]);

    const details = await asg.send(new DescribeAutoScalingInstancesCommand({ InstanceIds: ids }));
    expect(details.AutoScalingInstances?.map((i) => [i.InstanceId, i.AutoScalingGroupName, i.HealthStatus]).sort()).toEqual(
      ids.map((id) => [id, 'web', 'HEALTHY']).sort(),
    );
    const tooMany = await catchError(asg.send(new DescribeAutoScalingInstancesCommand({ InstanceIds: Array.from({ length: 51 }, (_, n) => `i-0${n.toString(16).padStart(16, '0')}`) })));
    expect(tooMany.name).toBe('ValidationError');
    expect(tooMany.message).toBe('The number of instance ids that may be passed in is limited to 50');

    const instances = await instancesOf(ec2, ids);
    expect(instances.map((i) => i.InstanceId).sort()).toEqual([...ids].sort());
    for (const i of instances) {
      expect(i.State).toEqual({ Code: 16, Name: 'running' });
      expect(i.PrivateIpAddress).toMatch(/^127\.0\.0\.\d+$/);
      expect(i.LaunchTime).toBeInstanceOf(Date);
      expect(i.Tags).toContainEqual({ Key: 'aws:autoscaling:groupName', Value: 'web' });
      expect(i.Tags).toContainEqual({ Key: 'team', Value: 'swarm' });
      // The host is a real process on that address.
      const host = emu.host(i.InstanceId!)!;
      const res = await fetch(`${host.apiUrl}/v1/host`, { headers: { authorization: `Bearer ${TOKEN}` } });
      expect(res.status).toBe(200);
      const body = (await res.json()) as { hostId: string; bind: string; args: Record<string, unknown> };
      expect(body).toMatchObject({ hostId: i.InstanceId, bind: i.PrivateIpAddress, args: { capacity: '4', 'no-pull': true } });
      expect(existsSync(path.join(stateRoot, i.InstanceId!, 'host.json'))).toBe(true);
    }
    expect(new Set(instances.map((i) => i.PrivateIpAddress)).size).toBe(2);

    const unknown = await catchError(ec2.send(new DescribeInstancesCommand({ InstanceIds: ['i-0123456789abcdef0'] })));
    expect(unknown.name).toBe('InvalidInstanceID.NotFound');
    expect(unknown.message).toBe("The instance ID 'i-0123456789abcdef0' does not exist");
  });

  it('refuses requests without a SigV4 Authorization header, in each service’s error shape', async () => {
    const { emu } = await start({});
    const form = { 'content-type': 'application/x-www-form-urlencoded' };
    const a = await fetch(`${emu.asgEndpoint}/`, { method: 'POST', headers: form, body: 'Action=DescribeAutoScalingGroups&Version=2011-01-01' });
    expect(a.status).toBe(403);
    const aBody = await a.text();
    expect(aBody).toMatch(/<ErrorResponse[^>]*><Error><Type>Sender<\/Type><Code>MissingAuthenticationToken<\/Code><Message>[^<]+<\/Message><\/Error><RequestId>[0-9a-f-]{36}<\/RequestId><\/ErrorResponse>/);
    const e = await fetch(`${emu.ec2Endpoint}/`, { method: 'POST', headers: form, body: 'Action=DescribeInstances&Version=2016-11-15' });
    expect(e.status).toBe(401);
    expect(await e.text()).toMatch(/<Response><Errors><Error><Code>MissingAuthenticationToken<\/Code><Message>[^<]+<\/Message><\/Error><\/Errors><RequestID>[0-9a-f-]{36}<\/RequestID><\/Response>/);
    const bad = await fetch(`${emu.ec2Endpoint}/`, { method: 'POST', headers: { ...form, authorization: 'Bearer nope' }, body: 'Action=DescribeInstances&Version=2016-11-15' });
    expect(bad.status).toBe(400);
    expect(await bad.text()).toContain('<Code>IncompleteSignature</Code>');
    expect(emu.calls).toMatchObject({ DescribeAutoScalingGroups: 1, DescribeInstances: 2 });
  });

  it('paginates DescribeInstances (MaxResults 5 over 12 hosts) and DescribeAutoScalingGroups', async () => {
    const { emu, asg, ec2 } = await start({
      bootDelayMs: 20,
      groups: [
        { name: 'fleet', minSize: 0, maxSize: 20, desiredCapacity: 12 },
        { name: 'spare', minSize: 0, maxSize: 2, desiredCapacity: 0 },
      ],
    });
    await emu.waitForGroupStable('fleet', 20_000);
    emu.resetCalls();

    const pages: number[] = [];
    const seen: Instance[] = [];
    const paginator = paginateDescribeInstances(
      { client: ec2, pageSize: 5 },
      { Filters: [{ Name: 'tag:aws:autoscaling:groupName', Values: ['fleet'] }, { Name: 'instance-state-name', Values: ['pending', 'running'] }] },
    );
    for await (const page of paginator) {
      const items = (page.Reservations ?? []).flatMap((r) => r.Instances ?? []);
      pages.push(items.length);
      seen.push(...items);
    }
    expect(pages).toEqual([5, 5, 2]);
    expect(emu.calls.DescribeInstances).toBe(3);
    expect(new Set(seen.map((i) => i.InstanceId)).size).toBe(12);
    expect(new Set(seen.map((i) => i.PrivateIpAddress)).size).toBe(12);
    expect(seen.every((i) => i.State?.Name === 'running' && /^127\.0\.\d+\.\d+$/.test(i.PrivateIpAddress ?? ''))).toBe(true);

    const tooSmall = await catchError(ec2.send(new DescribeInstancesCommand({ MaxResults: 3 })));
    expect(tooSmall.name).toBe('InvalidParameterValue');
    const badToken = await catchError(ec2.send(new DescribeInstancesCommand({ MaxResults: 5, NextToken: 'garbage' })));
    expect(badToken.name).toBe('InvalidPaginationToken');

    const groupPages: string[][] = [];
    for await (const page of paginateDescribeAutoScalingGroups({ client: asg, pageSize: 1 }, {})) {
      groupPages.push((page.AutoScalingGroups ?? []).map((g) => g.AutoScalingGroupName!));
    }
    expect(groupPages).toEqual([['fleet'], ['spare']]);
  });

  it('validates capacity changes with the service’s messages', async () => {
    const { emu, asg } = await start({ groups: [{ name: 'web', minSize: 1, maxSize: 3, desiredCapacity: 1 }] });
    const above = await catchError(asg.send(new SetDesiredCapacityCommand({ AutoScalingGroupName: 'web', DesiredCapacity: 5 })));
    expect(above.name).toBe('ValidationError');
    expect(above.message).toBe('New SetDesiredCapacity value 5 is above max value 3 for the AutoScalingGroup.');
    expect(above.$metadata?.httpStatusCode).toBe(400);
    expect(above.$metadata?.attempts).toBe(1);
    const below = await catchError(asg.send(new SetDesiredCapacityCommand({ AutoScalingGroupName: 'web', DesiredCapacity: 0 })));
    expect(below.message).toBe('New SetDesiredCapacity value 0 is below min value 1 for the AutoScalingGroup.');
    const update = await catchError(asg.send(new UpdateAutoScalingGroupCommand({ AutoScalingGroupName: 'web', MaxSize: 2, DesiredCapacity: 4 })));
    expect(update.message).toBe('Desired capacity:4 must be between the specified min size:1 and max size:2');
    const unknown = await catchError(asg.send(new SetDesiredCapacityCommand({ AutoScalingGroupName: 'nope', DesiredCapacity: 1 })));
    expect(unknown.name).toBe('ValidationError');
    const [only] = emu.group('web')!.instances;
    const atMin = await catchError(asg.send(new TerminateInstanceInAutoScalingGroupCommand({ InstanceId: only!.id, ShouldDecrementDesiredCapacity: true })));
    expect(atMin.message).toMatch(/^Currently, desiredSize equals minSize \(1\)\. Terminating instance without replacement will violate group's min size constraint\./);
    const notMember = await catchError(
      asg.send(new SetInstanceProtectionCommand({ AutoScalingGroupName: 'web', InstanceIds: ['i-0123456789abcdef0'], ProtectedFromScaleIn: true })),
    );
    expect(notMember.message).toBe('The instance i-0123456789abcdef0 is not part of Auto Scaling group web.');
    // Nothing changed.
    expect(emu.group('web')).toMatchObject({ minSize: 1, maxSize: 3, desiredCapacity: 1 });
    expect(emu.group('web')!.instances.map((i) => i.id)).toEqual([only!.id]);

    await asg.send(new UpdateAutoScalingGroupCommand({ AutoScalingGroupName: 'web', MinSize: 0, MaxSize: 5, DesiredCapacity: 0 }));
    expect(emu.group('web')).toMatchObject({ minSize: 0, maxSize: 5, desiredCapacity: 0 });
    await emu.waitFor(() => emu.group('web')!.instances.length === 0, 10_000, 'scale-in to 0');
  });

  it('scales out and in: pending then running hosts, protected hosts kept, terminate with and without decrement', async () => {
    const { emu, asg, ec2 } = await start({ bootDelayMs: 300, launchDelayMs: 500, groups: [{ name: 'web', minSize: 0, maxSize: 4, desiredCapacity: 1 }] });
    await emu.waitForGroupStable('web');
    const [a] = (await groupOf(asg, 'web')).Instances!.map((i) => i.InstanceId!);

    // Scale out: the new instances appear after the call returns, Pending / pending with an address, then
    // InService / running.
    await asg.send(new SetDesiredCapacityCommand({ AutoScalingGroupName: 'web', DesiredCapacity: 3 }));
    expect((await groupOf(asg, 'web')).Instances!.map((i) => i.InstanceId)).toEqual([a]);
    await emu.waitFor(() => emu.group('web')!.instances.length === 3, 5_000, 'the launches');
    const launching = await groupOf(asg, 'web');
    expect(launching.DesiredCapacity).toBe(3);
    const fresh = launching.Instances!.filter((i) => i.InstanceId !== a);
    expect(fresh.map((i) => i.LifecycleState)).toEqual(['Pending', 'Pending']);
    const pending = await instancesOf(ec2, fresh.map((i) => i.InstanceId!));
    expect(pending.map((i) => i.State?.Name)).toEqual(['pending', 'pending']);
    expect(pending.every((i) => /^127\.0\.0\.\d+$/.test(i.PrivateIpAddress ?? ''))).toBe(true);
    await emu.waitForGroupStable('web');
    const [b, c] = fresh.map((i) => i.InstanceId!) as [string, string];
    expect((await instancesOf(ec2, [a!, b, c])).map((i) => i.State?.Name)).toEqual(['running', 'running', 'running']);

    // Protect the newest; terminate the oldest without decrement: it is replaced.
    await asg.send(new SetInstanceProtectionCommand({ AutoScalingGroupName: 'web', InstanceIds: [c], ProtectedFromScaleIn: true }));
    const term = await asg.send(new TerminateInstanceInAutoScalingGroupCommand({ InstanceId: a, ShouldDecrementDesiredCapacity: false }));
    expect(term.Activity).toMatchObject({ AutoScalingGroupName: 'web', Description: `Terminating EC2 instance: ${a}`, StatusCode: 'InProgress' });
    expect(term.Activity?.StartTime).toBeInstanceOf(Date);
    await emu.waitFor(() => emu.host(a!)?.state === 'terminated', 10_000, `${a} terminated`);
    await emu.waitForGroupStable('web');
    const afterReplace = (await groupOf(asg, 'web')).Instances!.map((i) => i.InstanceId!);
    expect(afterReplace).toHaveLength(3);
    expect(afterReplace).not.toContain(a);
    const d = afterReplace.find((id) => id !== b && id !== c)!;
    // SIGTERM at shutdown, and no drain call from the emulator.
    expect(emu.host(a!)).toMatchObject({ lifecycleState: 'Terminated', agent: 'down', exit: { code: 0 } });
    expect(readFileSync(path.join(stateRoot, a!, 'host.json'), 'utf8')).toContain(a!);
    expect(existsSync(path.join(stateRoot, a!, 'drain.json'))).toBe(false);

    // Scale in: unprotected instances go newest first; the protected one stays.
    await asg.send(new SetDesiredCapacityCommand({ AutoScalingGroupName: 'web', DesiredCapacity: 2 }));
    await emu.waitFor(() => /^Terminat/.test(emu.host(d)!.lifecycleState), 5_000, `${d} terminating`);
    expect(emu.host(b)!.lifecycleState).toBe('InService');
    await emu.waitFor(() => emu.host(d)?.state === 'terminated', 10_000, `${d} terminated`);
    await asg.send(new SetDesiredCapacityCommand({ AutoScalingGroupName: 'web', DesiredCapacity: 1 }));
    await emu.waitFor(() => emu.host(b)?.state === 'terminated', 10_000, `${b} terminated`);
    const scaledIn = await groupOf(asg, 'web');
    expect(scaledIn.Instances!.map((i) => [i.InstanceId, i.ProtectedFromScaleIn])).toEqual([[c, true]]);
    const gone = await instancesOf(ec2, [b, d]);
    expect(gone.map((i) => i.State)).toEqual([{ Code: 48, Name: 'terminated' }, { Code: 48, Name: 'terminated' }]);
    expect(gone.every((i) => i.PrivateIpAddress === undefined && i.StateReason?.Code === 'Client.UserInitiatedShutdown')).toBe(true);
    const running = await ec2.send(new DescribeInstancesCommand({ Filters: [{ Name: 'instance-state-name', Values: ['running'] }] }));
    expect(running.Reservations?.flatMap((r) => r.Instances ?? []).map((i) => i.InstanceId)).toEqual([c]);

    // A protected host still goes when terminated explicitly; with decrement there is no replacement.
    const lastTerm = await asg.send(new TerminateInstanceInAutoScalingGroupCommand({ InstanceId: c, ShouldDecrementDesiredCapacity: true }));
    expect(lastTerm.Activity?.Cause).toContain('shrinking the capacity from 1 to 0');
    await emu.waitFor(() => emu.group('web')!.instances.length === 0, 10_000, 'group empty');
    expect(emu.group('web')!.desiredCapacity).toBe(0);
    expect(emu.hosts().filter((h) => h.state !== 'terminated')).toEqual([]);

    const activities = await asg.send(new DescribeScalingActivitiesCommand({ AutoScalingGroupName: 'web' }));
    const descriptions = activities.Activities!.map((x) => `${x.Description} ${x.StatusCode}`);
    expect(descriptions[0]).toBe(`Terminating EC2 instance: ${c} Successful`);
    expect(descriptions.filter((x) => x.startsWith('Launching'))).toHaveLength(4);
  });

  it('waits in Terminating:Wait for CompleteLifecycleAction when the group has a termination hook, without draining the host', async () => {
    const { emu, asg } = await start({
      groups: [{ name: 'hooked', minSize: 0, maxSize: 2, desiredCapacity: 1, terminationHook: { name: 'drain-hook', timeoutMs: 20_000 } }],
    });
    await emu.waitForGroupStable('hooked');
    const [id] = emu.group('hooked')!.instances.map((i) => i.id);
    await asg.send(new SetDesiredCapacityCommand({ AutoScalingGroupName: 'hooked', DesiredCapacity: 0 }));
    await emu.waitFor(() => emu.host(id!)?.lifecycleState === 'Terminating:Wait', 5_000, 'Terminating:Wait');
    const seen = await asg.send(new DescribeAutoScalingInstancesCommand({ InstanceIds: [id!] }));
    expect(seen.AutoScalingInstances?.[0]?.LifecycleState).toBe('Terminating:Wait');
    // The instance runs on, its agent untouched: nothing drains it but whoever handles the hook.
    expect(emu.host(id!)).toMatchObject({ state: 'running', agent: 'ready' });
    expect(existsSync(path.join(stateRoot, id!, 'drain.json'))).toBe(false);

    const wrongHook = await catchError(
      asg.send(new CompleteLifecycleActionCommand({ AutoScalingGroupName: 'hooked', LifecycleHookName: 'other', LifecycleActionResult: 'CONTINUE', InstanceId: id })),
    );
    expect(wrongHook.name).toBe('ValidationError');
    await asg.send(new RecordLifecycleActionHeartbeatCommand({ AutoScalingGroupName: 'hooked', LifecycleHookName: 'drain-hook', InstanceId: id }));
    // By token, as a notification would carry it.
    const token = emu.host(id!)!.lifecycleActionToken!;
    expect(token).toMatch(/^[0-9a-f-]{36}$/);
    await asg.send(new CompleteLifecycleActionCommand({ AutoScalingGroupName: 'hooked', LifecycleHookName: 'drain-hook', LifecycleActionResult: 'CONTINUE', LifecycleActionToken: token }));
    await emu.waitFor(() => emu.host(id!)?.state === 'terminated', 5_000, 'terminated after CompleteLifecycleAction');
    expect(emu.lifecycleActions()).toEqual([expect.objectContaining({ group: 'hooked', hookName: 'drain-hook', instanceId: id, result: 'CONTINUE', matched: true, token })]);
    const late = await catchError(
      asg.send(new CompleteLifecycleActionCommand({ AutoScalingGroupName: 'hooked', LifecycleHookName: 'drain-hook', LifecycleActionResult: 'CONTINUE', InstanceId: id })),
    );
    expect(late.message).toMatch(/No active Lifecycle Action/);
  });

  it('PutLifecycleHook / DescribeLifecycleHooks; a hook nobody completes times out with its default result', async () => {
    const { emu, asg } = await start({ groups: [{ name: 'web', minSize: 0, maxSize: 2, desiredCapacity: 1 }] });
    await emu.waitForGroupStable('web');
    // deploy/lifecycle-hook.json's shape.
    await asg.send(new PutLifecycleHookCommand({
      AutoScalingGroupName: 'web', LifecycleHookName: 'vscode-swarm-drain', LifecycleTransition: 'autoscaling:EC2_INSTANCE_TERMINATING',
      HeartbeatTimeout: 600, DefaultResult: 'CONTINUE', NotificationMetadata: '{"x":1}',
    }));
    const tooShort = await catchError(asg.send(new PutLifecycleHookCommand({ AutoScalingGroupName: 'web', LifecycleHookName: 'h2', LifecycleTransition: 'autoscaling:EC2_INSTANCE_TERMINATING', HeartbeatTimeout: 5 })));
    expect(tooShort.name).toBe('ValidationError');
    const hooks = await asg.send(new DescribeLifecycleHooksCommand({ AutoScalingGroupName: 'web' }));
    expect(hooks.LifecycleHooks).toEqual([expect.objectContaining({
      LifecycleHookName: 'vscode-swarm-drain', LifecycleTransition: 'autoscaling:EC2_INSTANCE_TERMINATING', HeartbeatTimeout: 600, GlobalTimeout: 60_000, DefaultResult: 'CONTINUE', NotificationMetadata: '{"x":1}',
    })]);

    // A group made with a short hook (in ms, for tests): nobody completes it, the default result applies.
    const short = await start({ groups: [{ name: 'short', minSize: 0, maxSize: 1, desiredCapacity: 1, terminationHook: { name: 'h', timeoutMs: 400, defaultResult: 'ABANDON' } }] });
    await short.emu.waitForGroupStable('short');
    const [id] = short.emu.group('short')!.instances.map((i) => i.id);
    await short.asg.send(new TerminateInstanceInAutoScalingGroupCommand({ InstanceId: id, ShouldDecrementDesiredCapacity: true }));
    expect(short.emu.host(id!)!.lifecycleState).toMatch(/^Terminating/);
    await short.emu.waitFor(() => short.emu.host(id!)?.state === 'terminated', 10_000, 'terminated after the heartbeat timeout');
    expect(short.emu.lifecycleActions()).toEqual([expect.objectContaining({ hookName: 'h', instanceId: id, result: 'ABANDON', timedOut: true })]);
  });

  it('SetInstanceProtection refuses the whole call when an instance is not InService', async () => {
    const { emu, asg } = await start({ bootDelayMs: 3_000, groups: [{ name: 'web', minSize: 0, maxSize: 3, desiredCapacity: 1 }] });
    await emu.waitForGroupStable('web', 10_000);
    const [a] = emu.group('web')!.instances.map((i) => i.id);
    await asg.send(new SetDesiredCapacityCommand({ AutoScalingGroupName: 'web', DesiredCapacity: 2 }));
    await emu.waitFor(() => emu.group('web')!.instances.length === 2, 5_000, 'the launch');
    const pending = emu.group('web')!.instances.find((i) => i.id !== a)!;
    expect(pending.lifecycleState).toBe('Pending');
    const refused = await catchError(asg.send(new SetInstanceProtectionCommand({ AutoScalingGroupName: 'web', InstanceIds: [a!, pending.id], ProtectedFromScaleIn: true })));
    expect(refused.name).toBe('ValidationError');
    expect(refused.message).toContain(`The instance ${pending.id} is not in InService`);
    // Nothing changed, not even for the InService one.
    expect(emu.group('web')!.instances.map((i) => i.protectedFromScaleIn)).toEqual([false, false]);
    await asg.send(new SetInstanceProtectionCommand({ AutoScalingGroupName: 'web', InstanceIds: [a!], ProtectedFromScaleIn: true }));
    expect(emu.host(a!)!.protectedFromScaleIn).toBe(true);
  });

  it('injected throttling and internal errors are retried by the SDK', async () => {
    const { emu, asg, ec2 } = await start({ groups: [{ name: 'web', minSize: 0, maxSize: 2, desiredCapacity: 0 }] });
    emu.setFaults([
      { kind: 'throttle', actions: ['DescribeAutoScalingGroups'], count: 2 },
      { kind: 'throttle', actions: ['DescribeInstances'], count: 1 },
      { kind: 'internal', actions: ['SetDesiredCapacity'], count: 1 },
    ]);
    const groups = await asg.send(new DescribeAutoScalingGroupsCommand({ AutoScalingGroupNames: ['web'] }));
    expect(groups.AutoScalingGroups).toHaveLength(1);
    expect(groups.$metadata.attempts).toBe(3);
    expect(emu.calls.DescribeAutoScalingGroups).toBe(3);
    const inst = await ec2.send(new DescribeInstancesCommand({}));
    expect(inst.$metadata.attempts).toBe(2);
    expect(emu.calls.DescribeInstances).toBe(2);
    const set = await asg.send(new SetDesiredCapacityCommand({ AutoScalingGroupName: 'web', DesiredCapacity: 0 }));
    expect(set.$metadata.attempts).toBe(2);
    // 3 SDK calls, 7 requests on the wire.
    expect(emu.totalCalls()).toBe(7);
    expect(emu.log.filter((c) => c.fault).map((c) => `${c.action} ${c.status} ${c.code}`)).toEqual([
      'DescribeAutoScalingGroups 400 Throttling',
      'DescribeAutoScalingGroups 400 Throttling',
      'DescribeInstances 503 RequestLimitExceeded',
      'SetDesiredCapacity 500 InternalFailure',
    ]);

    // With retries off the SDK surfaces the service's error as is.
    emu.setFaults([{ kind: 'throttle' }]);
    const noRetry = new AutoScalingClient({ region: 'eu-west-1', credentials, endpoint: emu.asgEndpoint, maxAttempts: 1 });
    const throttled = await catchError(noRetry.send(new DescribeAutoScalingGroupsCommand({})));
    expect(throttled.name).toBe('Throttling');
    expect(throttled.message).toBe('Rate exceeded');
    const noRetryEc2 = new EC2Client({ region: 'eu-west-1', credentials, endpoint: emu.ec2Endpoint, maxAttempts: 1 });
    const limited = await catchError(noRetryEc2.send(new DescribeInstancesCommand({})));
    expect(limited.name).toBe('RequestLimitExceeded');
    expect(limited.$metadata?.httpStatusCode).toBe(503);

    emu.setFaults([{ kind: 'slow', delayMs: 300, actions: ['DescribeInstances'] }]);
    const t0 = Date.now();
    await ec2.send(new DescribeInstancesCommand({}));
    expect(Date.now() - t0).toBeGreaterThanOrEqual(290);
  });

  it('a host whose agent never starts is InService and Healthy after the boot delay, and stays (EC2 health checks)', async () => {
    const { emu, asg } = await start({
      bootDelayMs: 200,
      hostNeverBoots: 1,
      groups: [{ name: 'web', minSize: 1, maxSize: 2, desiredCapacity: 1 }],
    });
    const [stuck] = emu.hosts();
    expect(stuck).toMatchObject({ neverBoots: true, state: 'pending', lifecycleState: 'Pending', agent: 'none' });
    const group = await emu.waitForGroupStable('web', 10_000);
    expect(group.instances).toEqual([expect.objectContaining({ id: stuck!.id, state: 'running', lifecycleState: 'InService', healthStatus: 'Healthy' })]);
    // Well past the health-check delay: still there, never replaced by the group.
    await new Promise((r) => setTimeout(r, 1_000));
    const details = await asg.send(new DescribeAutoScalingInstancesCommand({ InstanceIds: [stuck!.id] }));
    expect(details.AutoScalingInstances?.[0]).toMatchObject({ LifecycleState: 'InService', HealthStatus: 'HEALTHY' });
    expect(emu.hosts()).toHaveLength(1);
    // The agent can be started later (an operator fixed the user data).
    await emu.restartAgent(stuck!.id);
    await emu.waitFor(() => emu.host(stuck!.id)?.agent === 'ready', 10_000, 'the agent ready');
    expect(emu.host(stuck!.id)).toMatchObject({ neverBoots: false, agentStarts: 1, apiUrl: expect.stringMatching(/^http:\/\/127\.0\.0\.\d+:\d+$/) });
  });

  it('an agent that dies is not an instance failure: the instance stays InService, and a restarted agent keeps its id, address and state', async () => {
    const { emu, ec2 } = await start({ healthCheckDelayMs: 200, groups: [{ name: 'web', minSize: 1, maxSize: 2, desiredCapacity: 1 }] });
    await emu.waitForGroupStable('web');
    const [host] = emu.group('web')!.instances;
    await emu.killAgent(host!.id);
    expect(emu.host(host!.id)).toMatchObject({ agent: 'down', state: 'running', lifecycleState: 'InService', healthStatus: 'Healthy', exit: { signal: 'SIGKILL' } });
    await new Promise((r) => setTimeout(r, 800)); // four health-check delays
    expect(emu.hosts()).toHaveLength(1);
    const [seen] = await instancesOf(ec2, [host!.id]);
    expect(seen).toMatchObject({ State: { Name: 'running' }, PrivateIpAddress: host!.ip });
    await emu.restartAgent(host!.id);
    await emu.waitFor(() => emu.host(host!.id)?.agent === 'ready', 10_000, 'the agent back');
    expect(emu.host(host!.id)).toMatchObject({ ip: host!.ip, agentStarts: 2, state: 'running' });
    // The same --state-dir: host.json rewritten there by the second agent.
    expect(JSON.parse(readFileSync(path.join(stateRoot, host!.id, 'host.json'), 'utf8'))).toMatchObject({ hostId: host!.id });
    await expect(emu.restartAgent(host!.id)).rejects.toThrow(/still running/);
  });

  it('a killed host shows as terminated and unhealthy, then is replaced on the freed address', async () => {
    const destroyed: string[] = [];
    const { emu, asg, ec2 } = await start({
      healthCheckDelayMs: 800,
      groups: [{ name: 'web', minSize: 1, maxSize: 2, desiredCapacity: 1 }],
      agent: { destroyDisk: async (h) => void destroyed.push(h.hostId) },
    });
    await emu.waitForGroupStable('web');
    const [victim] = emu.group('web')!.instances;
    expect(victim!.ip).toBe('127.0.0.2');
    await emu.killHost(victim!.id);

    const [dead] = await instancesOf(ec2, [victim!.id]);
    expect(dead?.State?.Name).toBe('terminated');
    expect(dead?.StateReason?.Code).toBe('Server.InternalError');
    const details = await asg.send(new DescribeAutoScalingInstancesCommand({ InstanceIds: [victim!.id] }));
    expect(details.AutoScalingInstances?.[0]).toMatchObject({ HealthStatus: 'UNHEALTHY' });
    expect(emu.host(victim!.id)).toMatchObject({ healthStatus: 'Unhealthy', reason: expect.stringMatching(/^instance failed/), exit: { signal: 'SIGKILL' } });
    // Its disk went with it.
    expect(destroyed).toEqual([victim!.id]);

    await emu.waitFor(() => emu.group('web')!.instances.some((i) => i.id !== victim!.id), 5_000, 'a replacement');
    const stable = await emu.waitForGroupStable('web', 10_000);
    expect(stable.instances.map((i) => i.ip)).toEqual(['127.0.0.2']);
    expect(emu.host(victim!.id)!.lifecycleState).toBe('Terminated');
  });
});
