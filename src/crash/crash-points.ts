/**
 * Named crash points: places where a test can make this process die as abruptly as a power cut or an
 * OOM kill would, to prove that whatever was interrupted is settled on the next start.
 *
 * `VSCODE_SWARM_CRASH_AT=<point>` makes the process send itself SIGKILL the first time it reaches that
 * point; `<point>:<n>` the n-th time (1-based). Nothing is flushed, no handler runs: what is on disk and
 * on the provider at that moment is all the next process gets. Unset (always, outside tests), a crash
 * point costs one property read.
 *
 * Every point is listed here, so that the crash harness can enumerate them and a typo in a call site is
 * a type error rather than a point that never fires.
 */
export const CRASH_POINTS = [
  // Atomic state files (src/state/atomic-file.ts): the temp file written, then fsynced, then renamed.
  'state.after-write', 'state.after-fsync', 'state.after-rename',
  // Controller operations (src/controller/swarm-controller.ts).
  'create.after-record', 'create.after-provider',
  'start.after-record', 'start.after-provider',
  'stop.after-record', 'stop.after-provider',
  'delete.after-record', 'delete.after-provider',
  'update.after-provider',
  'warm.claim.after-check',
  'recover.restart.after-stop', 'recover.recreate.after-delete',
  // The Docker provider's multi-call operations (providers/docker/docker-provider.ts).
  'docker.delete.after-container', 'docker.recreate.after-new-container', 'docker.recreate.after-old-removed',
  // Migration (src/migration/migration-manager.ts): before each step starts and after it completed,
  // before its outcome is saved.
  ...(['prepare', 'validate-source', 'validate-target', 'export-source-config', 'create-target', 'start-target', 'verify-target', 'stop-source', 'cleanup-source', 'complete'] as const).flatMap(
    (step) => [`migration.before.${step}`, `migration.after.${step}`] as const,
  ),
] as const;
export type CrashPoint = (typeof CRASH_POINTS)[number];

export const CRASH_ENV = 'VSCODE_SWARM_CRASH_AT';

const reached = new Map<string, number>();

/** Dies here, at once, when the environment names this point (and this is the named occurrence). */
export function crashPoint(point: CrashPoint, env: NodeJS.ProcessEnv = process.env): void {
  const wanted = env[CRASH_ENV];
  if (!wanted) return;
  const [name, nth] = wanted.split(':');
  if (name !== point) return;
  const count = (reached.get(point) ?? 0) + 1;
  reached.set(point, count);
  if (count !== Number(nth ?? 1)) return;
  process.stderr.write(`vscode-swarm: crash point ${point} reached (${CRASH_ENV}); SIGKILL\n`);
  process.kill(process.pid, 'SIGKILL');
  // SIGKILL to oneself is delivered before kill() returns on Linux; never run past the point regardless.
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0);
}
