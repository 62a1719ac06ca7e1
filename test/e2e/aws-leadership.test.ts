/**
 * Two controllers on one Auto Scaling group (each with its own AWS provider over the emulator) sharing one
 * real PostgreSQL: the group's once-only decisions are the leader's. An operator raises the group to three
 * hosts that nobody uses; once they have been empty for the cool-down, only the leading controller's
 * provider terminates the spare two, the follower's none. When the leader gives its lease up, the other
 * controller takes over and does the same for the next spare hosts. Without leadership both providers
 * would race to terminate (and, for busy hosts, to evacuate the same workspaces).
 * Build first: `npx tsc -p .`.
 */
import { AutoScalingClient, SetDesiredCapacityCommand } from '@aws-sdk/client-auto-scaling';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startAwsBurstRig, type AwsBurstRig } from '../bench/aws-figures.js';
import { cleanUp } from '../helpers/docker.js';
import { startPostgres, type TestPostgres } from '../helpers/postgres.js';
import { StorePool, migrate } from '../../src/store/index.js';
import { PgLeadership } from '../../src/store/postgres/leadership.js';
import type { AwsAsgProvider } from '../../providers/aws-asg/aws-asg-provider.js';

const GROUP = 'lead-asg';
let pg: TestPostgres;
let rig: AwsBurstRig | undefined;
const pools: StorePool[] = [];
const leaderships: PgLeadership[] = [];

beforeAll(async () => {
  pg = await startPostgres();
  const pool = new StorePool({ databaseUrl: pg.url });
  pools.push(pool);
  await migrate(pool); // the lease table (a controller's store applies the schema when it loads)
}, 120_000);

afterAll(async () => {
  for (const l of leaderships) await l.stop().catch(() => undefined);
  await rig?.close();
  for (const p of pools) await p.close().catch(() => undefined);
  await pg?.stop();
});

async function leadership(): Promise<PgLeadership> {
  const pool = new StorePool({ databaseUrl: pg.url });
  pools.push(pool);
  const l = new PgLeadership({ pool, name: 'swarm:aws-leadership-test', ttlMs: 3_000 });
  leaderships.push(l);
  await l.start();
  return l;
}

const terminations = (p: AwsAsgProvider): number => p.awsCalls.TerminateInstanceInAutoScalingGroup ?? 0;

describe('aws-asg scale-in with two controllers on one store', () => {
  it('only the leader terminates spare hosts; after it steps down the other one does', async () => {
    await cleanUp('awsl');
    rig = await startAwsBurstRig({ group: GROUP, firstAddress: '127.0.38.2', agentPort: 19_400, perHost: 5, maxSize: 4, bufferSlots: 0, bootDelayMs: 500, scaleInCooldownMs: 1_000 });
    const first = await leadership();
    const second = await leadership();
    expect([first.isLeader, second.isLeader].filter(Boolean)).toHaveLength(1);
    const [leader, follower] = first.isLeader ? [first, second] : [second, first];
    const byLeader = rig.provider;
    byLeader.useLeadership(leader);
    const byFollower = await rig.anotherProvider();
    byFollower.useLeadership(follower);

    const asg = new AutoScalingClient({ region: 'us-east-1', endpoint: rig.emulator.url, credentials: { accessKeyId: 'AKIAEMULATOR000000', secretAccessKey: 'emulator-secret' } });
    // Two spare hosts launched; whoever leads terminates each once it has been empty for the cool-down (the
    // second may still be booting when the first goes: hosts are not waited for all at once).
    const spareHostsGone = async (by: AwsAsgProvider, what: string): Promise<void> => {
      const before = terminations(by);
      await asg.send(new SetDesiredCapacityCommand({ AutoScalingGroupName: GROUP, DesiredCapacity: 3, HonorCooldown: false }));
      await rig!.emulator.waitFor(
        () => {
          const g = rig!.emulator.group(GROUP)!;
          return terminations(by) - before === 2 && g.desiredCapacity === 1 && g.instances.length === 1;
        },
        120_000,
        what,
      );
    };
    try {
      await spareHostsGone(byLeader, 'the leader scaling the group back in to one host');
      expect(terminations(byLeader)).toBe(2);
      expect(terminations(byFollower)).toBe(0);

      // The leader steps down (as on shutdown); the other controller leads and makes the decisions now.
      await leader.stop();
      await rig.emulator.waitFor(() => follower.isLeader, 15_000, 'the second controller leading');
      const before = terminations(byLeader);
      await spareHostsGone(byFollower, 'the new leader scaling the group back in to one host');
      expect(terminations(byFollower)).toBe(2);
      expect(terminations(byLeader)).toBe(before);
    } finally {
      asg.destroy();
    }
  }, 240_000);
});
