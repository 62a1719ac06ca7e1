/**
 * Turns a caller's input (library, CLI or MCP tool arguments) into typed values, or into one
 * INVALID_INPUT error that names the offending field and says what was expected. One wording for bad
 * input everywhere: "resources.cpu: expected at most 256 cores".
 */
import { z } from 'zod';
import { invalidInput, printable } from '../errors.js';

/** Validates input against a schema, naming the first bad field; `__proto__` keys are refused, never dropped. */
export function parseInput<S extends z.ZodType>(schema: S, input: unknown): z.infer<S> {
  const reserved = findProtoKey(input ?? {});
  // zod skips a "__proto__" key (assigning it would replace the result's prototype), so without this a
  // variable or metadata entry of that name would vanish while the call succeeds.
  if (reserved) throw invalidInput(fieldPath(reserved), 'a key other than "__proto__" (JavaScript objects cannot hold it as data)');
  const parsed = schema.safeParse(input ?? {});
  if (!parsed.success) {
    const { field, expected } = describeIssue(parsed.error.issues[0]!, schema);
    throw invalidInput(field, expected);
  }
  return parsed.data;
}

/**
 * A dotted path a person can read. Keys come from the caller, so one that is not plain (control or
 * invisible characters, spaces, quotes, a 100 KB key) is shown JSON-quoted, escaped and shortened.
 */
export function fieldPath(path: readonly PropertyKey[]): string {
  return path.map(showKey).join('.');
}

function showKey(key: PropertyKey): string {
  const text = String(key);
  if (/^[A-Za-z0-9_.\/-]{1,64}$/.test(text)) return text;
  return printable(JSON.stringify(text.length > 40 ? `${text.slice(0, 40)}…` : text));
}

/** The first own `__proto__` key anywhere in the input, as a path; iterative, so any depth is safe. */
function findProtoKey(input: unknown): PropertyKey[] | undefined {
  interface Node { value: object; key?: string; parent?: Node }
  const pathOf = (node: Node): PropertyKey[] => {
    const path: PropertyKey[] = [];
    for (let at: Node | undefined = node; at?.key !== undefined; at = at.parent) path.unshift(at.key);
    return path;
  };
  if (input === null || typeof input !== 'object') return undefined;
  const stack: Node[] = [{ value: input }];
  while (stack.length) {
    const node = stack.pop()!;
    if (Object.hasOwn(node.value, '__proto__')) return [...pathOf(node), '__proto__'];
    for (const [key, child] of Object.entries(node.value)) {
      if (child !== null && typeof child === 'object') stack.push({ value: child as object, key, parent: node });
    }
  }
  return undefined;
}

type Issue = z.core.$ZodIssue;

function describeIssue(issue: Issue, schema: z.ZodType, base: readonly PropertyKey[] = []): { field: string; expected: string } {
  const path = [...base, ...issue.path];
  switch (issue.code) {
    case 'unrecognized_keys': {
      const known = knownKeys(schema, path);
      return { field: fieldPath([...path, issue.keys[0]!]), expected: `no field of this name${known ? ` (known fields: ${known.join(', ') || 'none'})` : ''}` };
    }
    case 'invalid_key':
      return { field: fieldPath(path), expected: issue.issues[0] ? expectedOf(issue.issues[0] as Issue) : 'a valid key' };
    case 'invalid_union': {
      // Report the branch that got furthest into the input; when none did, every branch's expectation.
      const firsts = issue.errors.map((branch) => branch[0]).filter((i): i is Issue => i !== undefined);
      const deepest = firsts.reduce<Issue | undefined>((best, i) => (!best || i.path.length > best.path.length ? i : best), undefined);
      if (deepest && deepest.path.length > 0) return describeIssue(deepest, schema, path);
      return { field: fieldPath(path) || 'input', expected: firsts.map(expectedOf).join(', or ') || 'a valid value' };
    }
    default:
      return { field: fieldPath(path) || 'input', expected: expectedOf(issue) };
  }
}

/** What an issue says was expected, without zod's "Invalid input:" preamble. */
function expectedOf(issue: Issue): string {
  if (issue.code === 'invalid_format' && issue.format === 'regex' && !/expected /.test(issue.message)) {
    return `a string matching ${(issue as { pattern?: string }).pattern ?? 'its pattern'}`;
  }
  const message = issue.message.replace(/, received undefined$/, ' (the field is required)');
  const at = message.indexOf('expected ');
  return at >= 0 ? message.slice(at + 'expected '.length) : message.charAt(0).toLowerCase() + message.slice(1);
}

/** The keys an object schema declares at a path, when the path leads to one. */
function knownKeys(schema: z.ZodType, path: readonly PropertyKey[]): string[] | undefined {
  let at: z.ZodType | undefined = unwrap(schema);
  for (const key of path) {
    const shape: Record<string, z.ZodType> | undefined = at instanceof z.ZodObject ? at.shape : undefined;
    at = shape && Object.hasOwn(shape, String(key)) ? unwrap(shape[String(key)]!) : undefined;
  }
  return at instanceof z.ZodObject ? Object.keys(at.shape) : undefined;
}

function unwrap(schema: z.ZodType): z.ZodType {
  let at = schema;
  while (at instanceof z.ZodOptional || at instanceof z.ZodNullable || at instanceof z.ZodDefault) at = at.unwrap() as z.ZodType;
  return at;
}
