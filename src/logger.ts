/**
 * Logs go to stderr: stdout is the MCP stdio channel. Secrets are redacted by key wherever they appear.
 */
import { pino, type Logger, type LevelWithSilent } from 'pino';

export type { Logger };

export const REDACTED_KEYS = ['token', 'password', 'secret', 'authorization', 'apiKey', 'accessToken', 'PASSWORD'];

export function createLogger(level: LevelWithSilent = 'info', destination: number | NodeJS.WritableStream = 2): Logger {
  const paths = REDACTED_KEYS.flatMap((key) => [key, `*.${key}`, `*.*.${key}`, `env.${key}`, `config.env.*`]);
  const stream = typeof destination === 'number' ? pino.destination({ fd: destination, sync: true }) : destination;
  return pino(
    {
      name: 'vscode-swarm',
      level,
      redact: { paths: [...new Set(paths)], censor: '[redacted]' },
      base: { pid: process.pid },
    },
    stream,
  );
}

/** A logger that drops everything; for library users who bring none and for tests. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
