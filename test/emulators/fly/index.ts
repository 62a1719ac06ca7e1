/** The Fly.io Machines API emulator for tests: a real HTTP server backed by real Docker containers. */
export { startFlyEmulator, type FlyEmulator, type FlyEmulatorOptions, type FaultOptions, type MachineSnapshot, type RecordedCall } from './fly-emulator.js';
export { removeFlyEmulatorLeftovers, LABEL_APP, LABEL_EMULATOR, LABEL_MACHINE, LABEL_VOLUME } from './docker-backend.js';
export type { RateLimitOptions } from './rate-limiter.js';
