/**
 * Logs go to stderr: stdout is the MCP stdio channel.
 *
 * Secrets are redacted before a line is written, wherever they appear: a value under a secret-looking key
 * at any depth, every value of an environment map (workspace env values are the user's secrets), and in
 * any string (messages, error messages and stacks included) a token-like URL parameter, the password of a
 * URL's user info, a bearer credential and one of our `vss_` API tokens. Key paths alone (pino's `redact`)
 * cannot reach arbitrary depth nor the inside of a string, so the walk is ours.
 */
import { pino, type Logger, type LevelWithSilent } from 'pino';

export type { Logger };

export const REDACTED = '[redacted]';

/** Keys whose value is a secret whatever it looks like. */
export const SECRET_KEY = /token|passw(or)?d|secret|authori[sz]ation|api[-_]?key|access[-_]?key|private[-_]?key|credential|cookie|signature/i;
/** Keys whose value is a map of environment variables: every value is redacted, the names kept. */
const ENV_KEY = /^(env|environment|containerEnv|remoteEnv)$/i;
/** URL query parameters that carry credentials (`?swarm_token=…`, `X-Amz-Signature=…`, `api_key=…`). */
const SECRET_PARAM = /([?&](?:[\w.-]*(?:token|secret|passw(?:or)?d|signature|api[-_]?key|credential)[\w.-]*)=)[^&#\s"'<>]*/gi;
const URL_USERINFO = /(\b[a-z][a-z0-9+.-]*:\/\/[^/\s:@"'<>]*:)[^@/\s"'<>]+@/gi;
const BEARER = /\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]{4,}/g;
/** Our own API tokens (`vss_` then base64url), wherever they stand: a pasted token is caught without a key or a header. */
const API_TOKEN = /\bvss_[A-Za-z0-9_-]{16,}/g;
const MAX_DEPTH = 12;

/** A string with credentials in URLs and authorization values replaced. */
export function redactString(text: string): string {
  return text.replace(SECRET_PARAM, `$1${REDACTED}`).replace(URL_USERINFO, `$1${REDACTED}@`).replace(BEARER, `$1 ${REDACTED}`).replace(API_TOKEN, REDACTED);
}

/** A copy of `value` that is safe to log: see the module comment. Cycles and very deep values are cut. */
export function redactSecrets(value: unknown, depth = 0, seen: WeakSet<object> = new WeakSet()): unknown {
  if (typeof value === 'string') return redactString(value);
  if (value === null || typeof value !== 'object') return value;
  if (depth >= MAX_DEPTH) return '[too deep]';
  if (seen.has(value)) return '[circular]';
  seen.add(value);
  if (value instanceof Error) {
    const code = (value as { code?: unknown }).code;
    return {
      type: value.name,
      message: redactString(value.message),
      ...(code !== undefined ? { code } : {}),
      ...(value.stack ? { stack: redactString(value.stack) } : {}),
      ...(value.cause !== undefined ? { cause: redactSecrets(value.cause, depth + 1, seen) } : {}),
    };
  }
  if (Buffer.isBuffer(value) || ArrayBuffer.isView(value)) return `[${value.byteLength} bytes]`;
  if (Array.isArray(value)) return value.map((item) => redactSecrets(item, depth + 1, seen));
  const out: Record<string, unknown> = {};
  for (const [key, item] of Object.entries(value)) {
    if (SECRET_KEY.test(key) && item !== undefined && item !== null && item !== '') out[key] = REDACTED;
    else if (ENV_KEY.test(key) && item && typeof item === 'object' && !Array.isArray(item)) {
      out[key] = Object.fromEntries(Object.keys(item).map((name) => [name, REDACTED]));
    } else out[key] = redactSecrets(item, depth + 1, seen);
  }
  return out;
}

export function createLogger(level: LevelWithSilent = 'info', destination: number | NodeJS.WritableStream = 2): Logger {
  const stream = typeof destination === 'number' ? pino.destination({ fd: destination, sync: true }) : destination;
  return pino(
    {
      name: 'vscode-swarm',
      level,
      base: { pid: process.pid },
      formatters: { log: (object) => redactSecrets(object) as Record<string, unknown> },
      hooks: {
        // The message and any printf-style arguments are strings the walk above never sees.
        logMethod(args, method) {
          method.apply(this, args.map((arg) => (typeof arg === 'string' ? redactString(arg) : arg)) as Parameters<typeof method>);
        },
      },
    },
    stream,
  );
}

/** A logger that drops everything; for library users who bring none and for tests. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
