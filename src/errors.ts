/**
 * The one catalogue of domain errors. Every error the controller, a provider or a tool raises on purpose
 * is a SwarmError with a stable code; anything else reaching a boundary is an internal fault.
 */
export const ERROR_CODES = {
  INVALID_INPUT: 'the caller sent something malformed; nothing was changed',
  UNAUTHENTICATED: 'no valid credential was presented',
  FORBIDDEN: 'the caller may see this but not do it; the missing scope is named',
  QUOTA_EXCEEDED: 'the request would exceed a quota; the limit, the usage and the request are named',
  NOT_FOUND: 'the named instance or object does not exist',
  CONFLICT: 'the request clashes with the current state',
  PROVIDER_UNKNOWN: 'no provider of that type is known',
  PROVIDER_UNAVAILABLE: 'the provider could not be reached or is not configured',
  PROVIDER_ERROR: 'the provider refused or failed the operation',
  TIMEOUT: 'the operation did not finish in time',
  DISABLED: 'the feature is turned off by configuration',
  STATE_ERROR: 'the state directory could not be read or written',
  STORE_UNAVAILABLE: 'the state store (PostgreSQL) cannot be reached; nothing was changed, retry when it is back',
  INTERNAL: 'an unexpected fault inside vscode-swarm',
} as const;

export type ErrorCode = keyof typeof ERROR_CODES;

export interface SwarmErrorOptions {
  cause?: unknown;
  /** For INVALID_INPUT: the dotted path of the offending field. */
  field?: string;
  /** Extra machine-readable detail, never secrets. */
  details?: Record<string, unknown>;
}

export class SwarmError extends Error {
  readonly code: ErrorCode;
  readonly field?: string;
  readonly details?: Record<string, unknown>;

  constructor(code: ErrorCode, message: string, options: SwarmErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'SwarmError';
    this.code = code;
    if (options.field !== undefined) this.field = options.field;
    if (options.details !== undefined) this.details = options.details;
  }

  toJSON(): Record<string, unknown> {
    return { code: this.code, message: this.message, field: this.field, details: this.details };
  }
}

/** An INVALID_INPUT error that names the field and what was expected. */
export function invalidInput(field: string, expected: string, got?: unknown): SwarmError {
  const shown = got === undefined ? '' : ` (got ${describeValue(got)})`;
  return new SwarmError('INVALID_INPUT', `${field}: expected ${expected}${shown}`, { field });
}

export function isSwarmError(err: unknown, code?: ErrorCode): err is SwarmError {
  return err instanceof SwarmError && (code === undefined || err.code === code);
}

/** Wraps an unknown fault so that it is never mistaken for bad input. */
export function asSwarmError(err: unknown, fallback: ErrorCode = 'INTERNAL', prefix?: string): SwarmError {
  if (err instanceof SwarmError) return err;
  const message = err instanceof Error ? err.message : String(err);
  return new SwarmError(fallback, prefix ? `${prefix}: ${message}` : message, { cause: err });
}

function describeValue(value: unknown): string {
  const text = printable(typeof value === 'string' ? JSON.stringify(value.length > 200 ? value.slice(0, 200) : value) : String(value));
  return text.length > 80 ? `${text.slice(0, 77)}...` : text;
}

/**
 * Text from a caller made safe to put in a message: control, format and separator characters as \uXXXX.
 * A right-to-left override or zero-width joiner echoed raw would make the message read differently from what it says.
 */
export function printable(text: string): string {
  return text.replace(/[\p{C}\p{Zl}\p{Zp}]/gu, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}
