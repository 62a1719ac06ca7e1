/** The AWS Auto Scaling + EC2 emulator for tests: the real SDK clients over HTTP, real host-agent processes as EC2 hosts. */
export {
  startAwsEmulator,
  type ActivitySnapshot,
  type AgentLaunchOptions,
  type AwsEmulator,
  type AwsEmulatorOptions,
  type AgentState,
  type Ec2State,
  type FaultKind,
  type FaultRule,
  type GroupSnapshot,
  type GroupSpec,
  type GroupTag,
  type HostLaunchContext,
  type HostSnapshot,
  type LifecycleState,
  type NeverBootsOption,
  type RecordedAwsCall,
  type RecordedLifecycleAction,
} from './aws-emulator.js';
export type { LoopbackPoolOptions } from './loopback-pool.js';
export type { ExitInfo } from './host-process.js';
