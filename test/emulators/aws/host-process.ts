/**
 * One emulated EC2 host's process: a real child process (by default the host agent) bound to the host's
 * loopback address. It is "booted" when it prints a line starting with `agent ready` on stdout.
 */
import { spawn, type ChildProcess } from 'node:child_process';

export interface HostProcessSpec {
  hostId: string;
  command: string;
  args: string[];
  cwd: string;
  env: NodeJS.ProcessEnv;
  /** Called with every line the process prints (stdout and stderr). */
  onOutput?: ((hostId: string, stream: 'stdout' | 'stderr', line: string) => void) | undefined;
}

export type ReadyOutcome = { ok: true; line: string } | { ok: false; reason: string };

export interface ExitInfo {
  code: number | null;
  signal: NodeJS.Signals | null;
}

const READY_PREFIX = 'agent ready';
const OUTPUT_LINES = 200;

export class HostProcess {
  readonly child: ChildProcess;
  /** The last lines the process printed, for failure reasons and debugging. */
  readonly output: string[] = [];
  readonly exited: Promise<ExitInfo>;
  exit: ExitInfo | undefined;
  readyLine: string | undefined;
  private readyWaiters: Array<(line: string) => void> = [];

  constructor(private readonly spec: HostProcessSpec) {
    // Own process group, so that stopping a host also stops whatever its agent started.
    this.child = spawn(spec.command, spec.args, {
      cwd: spec.cwd,
      env: spec.env,
      stdio: ['pipe', 'pipe', 'pipe'],
      detached: true,
    });
    // stdin stays open and unused: agents may treat its end as "the emulator is gone".
    this.child.stdin?.on('error', () => undefined);
    this.exited = new Promise<ExitInfo>((resolve) => {
      this.child.once('exit', (code, signal) => {
        this.exit = { code, signal };
        resolve(this.exit);
      });
      this.child.once('error', (err) => {
        this.push('stderr', `spawn failed: ${err.message}`);
        if (!this.exit) {
          this.exit = { code: -1, signal: null };
          resolve(this.exit);
        }
      });
    });
    this.lines(this.child.stdout, 'stdout');
    this.lines(this.child.stderr, 'stderr');
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  get alive(): boolean {
    return this.exit === undefined;
  }

  /** Resolves when the ready line appears, or with a reason when the process exits or `timeoutMs` passes first. */
  waitReady(timeoutMs: number): Promise<ReadyOutcome> {
    if (this.readyLine !== undefined) return Promise.resolve({ ok: true, line: this.readyLine });
    return new Promise<ReadyOutcome>((resolve) => {
      let done = false;
      const finish = (outcome: ReadyOutcome): void => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        resolve(outcome);
      };
      const timer = setTimeout(() => finish({ ok: false, reason: `agent did not print "${READY_PREFIX}" within ${timeoutMs} ms` }), timeoutMs);
      this.readyWaiters.push((line) => finish({ ok: true, line }));
      void this.exited.then((exit) => {
        const tail = this.output.filter((l) => l.startsWith('[stderr]')).slice(-5).map((l) => l.slice(9)).join(' | ');
        finish({ ok: false, reason: `agent exited (${describeExit(exit)}) before it was ready${tail ? `: ${tail}` : ''}` });
      });
    });
  }

  /** Sends a signal to the whole process group (falls back to the child alone). */
  signal(sig: NodeJS.Signals): void {
    if (!this.alive || this.child.pid === undefined) return;
    try {
      process.kill(-this.child.pid, sig);
    } catch {
      try {
        this.child.kill(sig);
      } catch {
        // already gone
      }
    }
  }

  /** SIGTERM, then SIGKILL after `graceMs`; resolves once the process has exited. */
  async stop(graceMs: number): Promise<ExitInfo> {
    if (!this.alive) return this.exit!;
    this.signal('SIGTERM');
    const timer = setTimeout(() => this.signal('SIGKILL'), graceMs);
    const exit = await this.exited;
    clearTimeout(timer);
    return exit;
  }

  /** SIGKILL the group; resolves once the process has exited. */
  async kill(): Promise<ExitInfo> {
    this.signal('SIGKILL');
    return this.exited;
  }

  private lines(stream: NodeJS.ReadableStream | null, name: 'stdout' | 'stderr'): void {
    if (!stream) return;
    let buffer = '';
    stream.setEncoding('utf8');
    stream.on('data', (chunk: string) => {
      buffer += chunk;
      let nl: number;
      while ((nl = buffer.indexOf('\n')) >= 0) {
        const line = buffer.slice(0, nl).replace(/\r$/, '');
        buffer = buffer.slice(nl + 1);
        this.push(name, line);
      }
    });
    stream.on('end', () => {
      if (buffer) this.push(name, buffer);
      buffer = '';
    });
  }

  private push(stream: 'stdout' | 'stderr', line: string): void {
    this.output.push(`[${stream}] ${line}`);
    if (this.output.length > OUTPUT_LINES) this.output.shift();
    this.spec.onOutput?.(this.spec.hostId, stream, line);
    if (stream === 'stdout' && this.readyLine === undefined && line.startsWith(READY_PREFIX)) {
      this.readyLine = line;
      const waiters = this.readyWaiters;
      this.readyWaiters = [];
      for (const w of waiters) w(line);
    }
  }
}

export function describeExit(exit: ExitInfo): string {
  return exit.signal ? `signal ${exit.signal}` : `code ${exit.code}`;
}
