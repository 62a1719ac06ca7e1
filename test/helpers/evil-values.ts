/**
 * Bad input, generated from a tool's JSON Schema (as `tools/list` advertises it): for every property,
 * wrong types, out-of-range and non-finite numbers, the classic evil strings, hostile record keys, huge
 * arrays and deep nesting, missing required keys and unknown extra keys. `firstViolation` is a small
 * JSON Schema checker (the subset zod emits) that says which field a value breaks, so a test can tell
 * from the schema alone which cases must be refused and which field the refusal must name.
 */

export interface JsonSchema {
  type?: string | string[];
  properties?: Record<string, JsonSchema>;
  required?: string[];
  additionalProperties?: boolean | JsonSchema;
  propertyNames?: JsonSchema;
  maxProperties?: number;
  items?: JsonSchema;
  minItems?: number;
  maxItems?: number;
  enum?: unknown[];
  anyOf?: JsonSchema[];
  pattern?: string;
  minLength?: number;
  maxLength?: number;
  minimum?: number;
  maximum?: number;
  exclusiveMinimum?: number;
  exclusiveMaximum?: number;
  description?: string;
}

export interface Candidate {
  label: string;
  value: unknown;
}

/** A file the shell metacharacter cases would create on the host if anything ran them there. */
export const HOST_MARKER = `/tmp/vscode-swarm-badin-pwned-${process.pid}`;

const LONG = 'x'.repeat(100_000);

/** Strings every string field gets. Some are valid for a free-text field; the schema decides. */
export const EVIL_STRINGS: readonly Candidate[] = [
  { label: 'path traversal', value: '../../etc/passwd' },
  { label: 'encoded traversal', value: '..%2f..%2fetc%2fpasswd' },
  { label: 'absolute path', value: '/etc/passwd' },
  { label: 'windows path', value: 'C:\\Windows\\System32' },
  { label: 'NUL inside', value: 'ok\0evil' },
  { label: 'control characters', value: 'a\u0001\u0007\u001b[31mred\r\n' },
  { label: 'newline injection', value: 'ok\nINTERNAL: forged' },
  { label: '100 KB string', value: LONG },
  { label: 'Cyrillic look-alike', value: '\u0430lice' },
  { label: 'fullwidth digits', value: '\uff11\uff12\uff13' },
  { label: 'RTL override', value: 'abc\u202etxt.exe' },
  { label: 'zero-width joiner', value: 'a\u200db' },
  { label: 'lone surrogate', value: 'a\ud800b' },
  { label: '__proto__', value: '__proto__' },
  { label: 'constructor', value: 'constructor' },
  { label: 'prototype', value: 'prototype' },
  { label: 'shell: rm', value: '; rm -rf /' },
  { label: 'shell: $()', value: `$(touch ${HOST_MARKER})` },
  { label: 'shell: backticks', value: `\`touch ${HOST_MARKER}\`` },
  { label: 'empty', value: '' },
  { label: 'blank', value: '   ' },
];

/** A value nested `depth` objects deep. */
export function deeplyNested(depth: number): Record<string, unknown> {
  let value: Record<string, unknown> = { leaf: true };
  for (let i = 0; i < depth; i++) value = { a: value };
  return value;
}

/** Values of the wrong JSON type for a schema of type `type` (plus the huge and deep ones when asked). */
export function wrongTypes(type: string, withHuge: boolean): Candidate[] {
  const all: Candidate[] = [
    { label: 'number', value: 42 },
    { label: 'boolean', value: true },
    { label: 'null', value: null },
    { label: 'string', value: 'x' },
    { label: 'numeric string', value: '5' },
    { label: 'array', value: [] },
    { label: 'object', value: {} },
  ];
  const keep = all.filter((c) => {
    const t = jsonType(c.value);
    return !(t === type || (type === 'number' && t === 'integer') || (type === 'integer' && t === 'integer'));
  });
  if (withHuge) {
    keep.push({ label: 'array of 10^5 items', value: Array.from({ length: 100_000 }, (_, i) => i) });
    keep.push({ label: 'object nested 10^4 deep', value: deeplyNested(10_000) });
  }
  return keep;
}

/** Numbers around and beyond a number schema's bounds, non-finite and as strings. */
export function numberCandidates(schema: JsonSchema): Candidate[] {
  const out: Candidate[] = [
    { label: 'NaN', value: NaN },
    { label: 'Infinity', value: Infinity },
    { label: '-Infinity', value: -Infinity },
    { label: '-0', value: -0 },
    { label: '"NaN" string', value: 'NaN' },
    { label: '"Infinity" string', value: 'Infinity' },
    { label: '-1', value: -1 },
    { label: '1e308', value: 1e308 },
    { label: '-1e308', value: -1e308 },
    { label: 'smallest positive', value: Number.MIN_VALUE },
  ];
  if (schema.minimum !== undefined) out.push({ label: 'just below minimum', value: schema.minimum - 0.5 });
  if (schema.exclusiveMinimum !== undefined) out.push({ label: 'at exclusive minimum', value: schema.exclusiveMinimum });
  if (schema.maximum !== undefined) out.push({ label: 'just above maximum', value: schema.maximum + 1 });
  if (typeType(schema) === 'integer') {
    out.push({ label: 'fraction', value: 1.5 + (schema.minimum ?? 0) });
    out.push({ label: '2^53 + 2', value: 2 ** 53 + 2 });
  }
  return out;
}

export const BOOLEAN_CANDIDATES: readonly Candidate[] = [
  { label: '"true" string', value: 'true' },
  { label: '"false" string', value: 'false' },
  { label: '1', value: 1 },
  { label: '0', value: 0 },
  { label: 'null', value: null },
];

/** Near misses of an enum's first value: case, padding, look-alike letters, invisible characters. */
export function enumNearMisses(values: unknown[]): Candidate[] {
  const first = String(values[0]);
  return [
    { label: 'upper case', value: first.toUpperCase() },
    { label: 'trailing space', value: `${first} ` },
    { label: 'Cyrillic look-alike', value: first.replace(/[aeo]/, (c) => ({ a: '\u0430', e: '\u0435', o: '\u043e' })[c]!) },
    { label: 'zero-width joiner', value: `${first}\u200d` },
    { label: 'unknown value', value: 'gcp' },
  ];
}

/** Keys that break prototype-based lookups, and keys that break naming rules. */
export const HOSTILE_KEYS: readonly Candidate[] = [
  { label: '__proto__', value: '__proto__' },
  { label: 'constructor', value: 'constructor' },
  { label: 'prototype', value: 'prototype' },
  { label: 'toString', value: 'toString' },
  { label: 'hasOwnProperty', value: 'hasOwnProperty' },
  { label: 'path traversal', value: '../../etc/passwd' },
  { label: 'space', value: 'A B' },
  { label: 'shell', value: '$(id)' },
  { label: 'NUL', value: 'A\0B' },
  { label: 'empty', value: '' },
  { label: 'Cyrillic', value: '\u0430' },
];

/** An object with one own key `key` (also `__proto__`, which an object literal would turn into the prototype). */
export function objectWithKey(key: string, value: unknown): Record<string, unknown> {
  const object: Record<string, unknown> = {};
  Object.defineProperty(object, key, { value, enumerable: true, writable: true, configurable: true });
  return object;
}

export function typeType(schema: JsonSchema): string | undefined {
  return Array.isArray(schema.type) ? schema.type[0] : schema.type;
}

function jsonType(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'array';
  if (typeof value === 'number') return Number.isInteger(value) ? 'integer' : 'number';
  return typeof value;
}

/**
 * The path of the first place `value` breaks `schema`, or undefined when it conforms. Non-finite numbers
 * are not JSON numbers. Where several branches of an anyOf fail, the one that got deepest is reported
 * (what a person would call the offending field).
 */
export function firstViolation(schema: JsonSchema, value: unknown, path: PropertyKey[] = []): PropertyKey[] | undefined {
  if (schema.anyOf) {
    const failures = schema.anyOf.map((branch) => firstViolation(branch, value, path));
    if (failures.some((f) => f === undefined)) return undefined;
    return failures.reduce((a, b) => (b!.length > a!.length ? b : a));
  }
  const type = typeType(schema);
  if (type) {
    const actual = jsonType(value);
    const finite = typeof value !== 'number' || Number.isFinite(value);
    const ok = finite && (actual === type || (type === 'number' && actual === 'integer') || (type === 'integer' && actual === 'integer' && Number.isSafeInteger(value)));
    if (!ok) return path;
  }
  if (schema.enum && !schema.enum.includes(value)) return path;
  if (typeof value === 'string') {
    if (schema.minLength !== undefined && value.length < schema.minLength) return path;
    if (schema.maxLength !== undefined && value.length > schema.maxLength) return path;
    if (schema.pattern !== undefined && !new RegExp(schema.pattern, 'u').test(value)) return path;
  }
  if (typeof value === 'number') {
    if (schema.minimum !== undefined && value < schema.minimum) return path;
    if (schema.maximum !== undefined && value > schema.maximum) return path;
    if (schema.exclusiveMinimum !== undefined && value <= schema.exclusiveMinimum) return path;
    if (schema.exclusiveMaximum !== undefined && value >= schema.exclusiveMaximum) return path;
  }
  if (Array.isArray(value)) {
    if (schema.minItems !== undefined && value.length < schema.minItems) return path;
    if (schema.maxItems !== undefined && value.length > schema.maxItems) return path;
    if (schema.items) {
      for (let i = 0; i < value.length; i++) {
        const v = firstViolation(schema.items, value[i], [...path, i]);
        if (v) return v;
      }
    }
  }
  if (value !== null && typeof value === 'object' && !Array.isArray(value)) {
    const record = value as Record<string, unknown>;
    // parseInput refuses an own "__proto__" key before anything else (zod would drop it silently).
    if (Object.hasOwn(record, '__proto__')) return [...path, '__proto__'];
    const props = schema.properties ?? {};
    for (const key of Object.keys(props)) {
      if (Object.hasOwn(record, key)) {
        const v = firstViolation(props[key]!, record[key], [...path, key]);
        if (v) return v;
      } else if (schema.required?.includes(key)) return [...path, key];
    }
    if (schema.maxProperties !== undefined && Object.keys(record).length > schema.maxProperties) return path;
    for (const key of Object.keys(record)) {
      if (Object.hasOwn(props, key)) continue;
      if (schema.propertyNames && firstViolation(schema.propertyNames, key, [...path, key])) return [...path, key];
      if (schema.additionalProperties === false) return [...path, key];
      if (typeof schema.additionalProperties === 'object') {
        const v = firstViolation(schema.additionalProperties, record[key], [...path, key]);
        if (v) return v;
      }
    }
  }
  return undefined;
}
