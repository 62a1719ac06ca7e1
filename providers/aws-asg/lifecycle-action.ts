/**
 * The controller's side of an Auto Scaling termination lifecycle hook: while a host waits in
 * `Terminating:Wait` (a scale-in by the group, an instance refresh, a rebalance, an operator's
 * TerminateInstanceInAutoScalingGroup, a Spot interruption: all go through the same hook), the provider
 * moves its workspaces elsewhere. This module finds the hook the host waits on, keeps the action alive
 * with RecordLifecycleActionHeartbeat at a period below the hook's heartbeat timeout, and completes it.
 *
 * https://docs.aws.amazon.com/autoscaling/ec2/userguide/lifecycle-hooks-overview.html: the instance waits
 * until CompleteLifecycleAction, or until the heartbeat timeout (restarted by each heartbeat, bounded by
 * the global timeout: 100 × the heartbeat timeout or 48 h, whichever is smaller) applies the default
 * result. For a terminating instance both CONTINUE and ABANDON end in its termination.
 */
import {
  CompleteLifecycleActionCommand,
  DescribeLifecycleHooksCommand,
  RecordLifecycleActionHeartbeatCommand,
  type AutoScalingClient,
} from '@aws-sdk/client-auto-scaling';
import type { Logger } from '../../src/logger.js';

export interface TerminationHook {
  name: string;
  heartbeatTimeoutMs: number;
  globalTimeoutMs: number;
  defaultResult: string;
}

/** The group's `autoscaling:EC2_INSTANCE_TERMINATING` hooks. */
export async function terminationHooks(asg: AutoScalingClient, groupName: string): Promise<TerminationHook[]> {
  const out = await asg.send(new DescribeLifecycleHooksCommand({ AutoScalingGroupName: groupName }));
  return (out.LifecycleHooks ?? [])
    .filter((h) => h.LifecycleTransition === 'autoscaling:EC2_INSTANCE_TERMINATING' && h.LifecycleHookName)
    .map((h) => {
      const heartbeat = (h.HeartbeatTimeout ?? 3600) * 1000;
      return {
        name: h.LifecycleHookName!,
        heartbeatTimeoutMs: heartbeat,
        globalTimeoutMs: (h.GlobalTimeout ?? Math.min(172_800, 100 * (h.HeartbeatTimeout ?? 3600))) * 1000,
        defaultResult: h.DefaultResult ?? 'ABANDON',
      };
    });
}

/** A heartbeat period safely below the hook's heartbeat timeout: a third of it, at least 500 ms. */
export function heartbeatPeriodMs(hook: Pick<TerminationHook, 'heartbeatTimeoutMs'>): number {
  return Math.max(500, Math.floor(hook.heartbeatTimeoutMs / 3));
}

export interface LifecycleActionOptions {
  asg: AutoScalingClient;
  groupName: string;
  instanceId: string;
  logger: Logger;
  /** Counts each AWS call by action name (the provider's `awsCalls`). */
  count: (action: string) => void;
}

/**
 * One instance's pending termination action. `open` finds the hook it waits on (the one that accepts a
 * heartbeat for it: DescribeAutoScalingGroups says `Terminating:Wait`, not which hook) and starts the
 * heartbeats; `complete` stops them and sends CompleteLifecycleAction.
 */
export class LifecycleAction {
  hook?: TerminationHook;
  heartbeats = 0;
  private timer?: NodeJS.Timeout;

  constructor(private readonly o: LifecycleActionOptions) {}

  /** The hook the instance waits on, heartbeats started; undefined when none holds it (nothing to keep alive). */
  async open(): Promise<TerminationHook | undefined> {
    this.o.count('DescribeLifecycleHooks');
    const hooks = await terminationHooks(this.o.asg, this.o.groupName);
    for (const hook of hooks) {
      if (await this.beat(hook, true)) {
        this.hook = hook;
        this.timer = setInterval(() => void this.beat(hook, false), heartbeatPeriodMs(hook));
        this.timer.unref();
        return hook;
      }
    }
    return undefined;
  }

  /** Stops the heartbeats and completes the action (CONTINUE: the host may go). False when AWS refused. */
  async complete(result: 'CONTINUE' | 'ABANDON' = 'CONTINUE'): Promise<boolean> {
    this.stop();
    const hook = this.hook;
    if (!hook) return false;
    try {
      this.o.count('CompleteLifecycleAction');
      await this.o.asg.send(
        new CompleteLifecycleActionCommand({ AutoScalingGroupName: this.o.groupName, LifecycleHookName: hook.name, InstanceId: this.o.instanceId, LifecycleActionResult: result }),
      );
      return true;
    } catch (err) {
      this.o.logger.warn({ hostId: this.o.instanceId, hook: hook.name, err: (err as Error).message }, 'CompleteLifecycleAction failed; the hook\'s heartbeat timeout will apply its default result');
      return false;
    }
  }

  stop(): void {
    clearInterval(this.timer);
    this.timer = undefined;
  }

  private async beat(hook: TerminationHook, probing: boolean): Promise<boolean> {
    try {
      this.o.count('RecordLifecycleActionHeartbeat');
      await this.o.asg.send(
        new RecordLifecycleActionHeartbeatCommand({ AutoScalingGroupName: this.o.groupName, LifecycleHookName: hook.name, InstanceId: this.o.instanceId }),
      );
      this.heartbeats++;
      return true;
    } catch (err) {
      // While probing, a refusal means "not waiting on this hook". Later, the action may have ended.
      if (!probing) this.o.logger.warn({ hostId: this.o.instanceId, hook: hook.name, err: (err as Error).message }, 'lifecycle heartbeat failed');
      return false;
    }
  }
}
