/**
 * The wire formats of the two AWS protocols the emulator speaks, as the AWS SDK v3 clients (3.11xx, schema
 * serde in `@aws-sdk/core/protocols`) write and read them:
 *
 * - **AWS Query** (Auto Scaling, version 2011-01-01): a form-encoded POST `Action=X&Version=2011-01-01&...`
 *   with lists as `Name.member.N` and structures as `Name.member.N.Field`; answers
 *   `<XResponse xmlns=…><XResult>…</XResult><ResponseMetadata><RequestId>…</RequestId></ResponseMetadata></XResponse>`
 *   with list items in `<member>`; errors
 *   `<ErrorResponse><Error><Type>Sender|Receiver</Type><Code>…</Code><Message>…</Message></Error><RequestId>…</RequestId></ErrorResponse>`.
 * - **EC2 Query** (version 2016-11-15): the same form body but flat lists (`InstanceId.N`, `Filter.N.Name`,
 *   `Filter.N.Value.M`); answers `<XResponse xmlns=…><requestId>…</requestId>…</XResponse>` with camelCase
 *   element names, `<item>` list items and no Result wrapper; errors
 *   `<Response><Errors><Error><Code>…</Code><Message>…</Message></Error></Errors><RequestID>…</RequestID></Response>`.
 */

export type Service = 'autoscaling' | 'ec2';

export const ASG_VERSION = '2011-01-01';
export const EC2_VERSION = '2016-11-15';
export const ASG_XMLNS = 'http://autoscaling.amazonaws.com/doc/2011-01-01/';
export const EC2_XMLNS = 'http://ec2.amazonaws.com/doc/2016-11-15/';

/** An error answered in the service's own error shape. */
export class AwsError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    /** AWS Query only: `Sender` for the caller's fault, `Receiver` for the service's. */
    readonly type: 'Sender' | 'Receiver' = status >= 500 ? 'Receiver' : 'Sender',
  ) {
    super(message);
  }
}

export const validationError = (message: string): AwsError => new AwsError(400, 'ValidationError', message);

/** The request's parameters: the form body merged over the query string (SDKs send a form body). */
export function parseParams(rawBody: string, search: URLSearchParams): Map<string, string> {
  const params = new Map<string, string>();
  for (const [k, v] of search) params.set(k, v);
  for (const [k, v] of new URLSearchParams(rawBody)) params.set(k, v);
  return params;
}

/**
 * `prefix.1`, `prefix.2`, … in index order. A bare `prefix=` (the AWS Query serializer's empty list) and
 * gaps are tolerated, as the services do.
 */
export function listParam(params: Map<string, string>, prefix: string): string[] {
  const found: Array<[number, string]> = [];
  const re = new RegExp(`^${escapeRegExp(prefix)}\\.(\\d+)$`);
  for (const [k, v] of params) {
    const m = re.exec(k);
    if (m) found.push([Number(m[1]), v]);
  }
  return found.sort((a, b) => a[0] - b[0]).map(([, v]) => v);
}

/** Structures in a list: `prefix.N.Field…` grouped by N, each as a map of the rest of the key. */
export function structListParam(params: Map<string, string>, prefix: string): Array<Map<string, string>> {
  const groups = new Map<number, Map<string, string>>();
  const re = new RegExp(`^${escapeRegExp(prefix)}\\.(\\d+)\\.(.+)$`);
  for (const [k, v] of params) {
    const m = re.exec(k);
    if (!m) continue;
    const n = Number(m[1]);
    const group = groups.get(n) ?? new Map<string, string>();
    group.set(m[2]!, v);
    groups.set(n, group);
  }
  return [...groups.entries()].sort((a, b) => a[0] - b[0]).map(([, g]) => g);
}

export function intParam(params: Map<string, string>, name: string, service: Service): number | undefined {
  const raw = params.get(name);
  if (raw === undefined || raw === '') return undefined;
  if (!/^-?\d+$/.test(raw)) {
    throw service === 'ec2'
      ? new AwsError(400, 'InvalidParameterValue', `Value (${raw}) for parameter ${lowerFirst(name)} is invalid. Expected an integer.`)
      : validationError(`1 validation error detected: Value '${raw}' at '${lowerFirst(name)}' failed to satisfy constraint: Member must be an integer`);
  }
  return Number(raw);
}

export function boolParam(params: Map<string, string>, name: string): boolean | undefined {
  const raw = params.get(name);
  if (raw === undefined || raw === '') return undefined;
  if (raw === 'true') return true;
  if (raw === 'false') return false;
  throw validationError(`1 validation error detected: Value '${raw}' at '${lowerFirst(name)}' failed to satisfy constraint: Member must be a boolean`);
}

export function requireParam(params: Map<string, string>, name: string, service: Service): string {
  const v = params.get(name);
  if (v === undefined || v === '') {
    throw service === 'ec2'
      ? new AwsError(400, 'MissingParameter', `The request must contain the parameter ${name}`)
      : validationError(`1 validation error detected: Value null at '${lowerFirst(name)}' failed to satisfy constraint: Member must not be null`);
  }
  return v;
}

// ---- XML ----

export function xmlEscape(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;').replace(/'/g, '&apos;');
}

export type XmlValue = string | number | boolean | Date | undefined | null;

/** `<name>value</name>`; nothing for undefined/null. Dates as ISO 8601 (both protocols' default). */
export function el(name: string, value: XmlValue): string {
  if (value === undefined || value === null) return '';
  const text = value instanceof Date ? value.toISOString() : String(value);
  return `<${name}>${xmlEscape(text)}</${name}>`;
}

/** `<name>…children…</name>` where children are already XML. */
export function node(name: string, ...children: string[]): string {
  return `<${name}>${children.join('')}</${name}>`;
}

/** A list: `<name><item>…</item>…</name>`, item XML already built. */
export function list(name: string, itemTag: 'member' | 'item', items: string[]): string {
  return `<${name}>${items.map((i) => `<${itemTag}>${i}</${itemTag}>`).join('')}</${name}>`;
}

const XML_DECL = '<?xml version="1.0" encoding="UTF-8"?>\n';

export function asgResponse(action: string, requestId: string, resultXml: string | undefined): string {
  const result = resultXml === undefined ? '' : `<${action}Result>${resultXml}</${action}Result>`;
  return `${XML_DECL}<${action}Response xmlns="${ASG_XMLNS}">${result}<ResponseMetadata><RequestId>${requestId}</RequestId></ResponseMetadata></${action}Response>`;
}

export function ec2Response(action: string, requestId: string, bodyXml: string): string {
  return `${XML_DECL}<${action}Response xmlns="${EC2_XMLNS}"><requestId>${requestId}</requestId>${bodyXml}</${action}Response>`;
}

export function errorBody(service: Service, err: AwsError, requestId: string): string {
  if (service === 'ec2') {
    return `${XML_DECL}<Response><Errors><Error>${el('Code', err.code)}${el('Message', err.message)}</Error></Errors><RequestID>${requestId}</RequestID></Response>`;
  }
  return `${XML_DECL}<ErrorResponse xmlns="${ASG_XMLNS}"><Error>${el('Type', err.type)}${el('Code', err.code)}${el('Message', err.message)}</Error><RequestId>${requestId}</RequestId></ErrorResponse>`;
}

// ---- SigV4 (shape only) ----

const SIGV4 = /^AWS4-HMAC-SHA256 Credential=([^/,\s]+)\/(\d{8})\/([^/,\s]+)\/([^/,\s]+)\/aws4_request,\s*SignedHeaders=([a-z0-9;.-]+),\s*Signature=([0-9a-f]{64})$/;

/**
 * Checks that the request carries something shaped like a SigV4 signature for this service. The signature
 * itself is not verified (any static fake credentials work), but a missing or malformed header, a missing
 * X-Amz-Date or a credential scoped to another service is refused as AWS refuses it.
 */
export function checkSigV4(service: Service, authorization: string | undefined, amzDate: string | undefined): void {
  if (!authorization) {
    throw service === 'ec2'
      ? new AwsError(401, 'MissingAuthenticationToken', 'The request must contain either a valid (registered) AWS access key ID or X.509 certificate.')
      : new AwsError(403, 'MissingAuthenticationToken', 'Request is missing Authentication Token');
  }
  const m = SIGV4.exec(authorization.trim());
  if (!m) {
    throw new AwsError(400, 'IncompleteSignature', `Authorization header requires 'Credential', 'SignedHeaders' and 'Signature' parameters (AWS4-HMAC-SHA256). Authorization=${authorization.split(' ')[0]}`);
  }
  const signedHeaders = m[5]!.split(';');
  if (!amzDate || !signedHeaders.includes('host')) {
    throw new AwsError(400, 'IncompleteSignature', 'Authorization header requires existence of either a \'X-Amz-Date\' or a \'Date\' header, and \'host\' among the signed headers.');
  }
  if (m[4] !== service) {
    throw new AwsError(403, 'SignatureDoesNotMatch', `Credential should be scoped to correct service: '${service}'.`);
  }
}

function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

function lowerFirst(s: string): string {
  return s.charAt(0).toLowerCase() + s.slice(1);
}

/** Opaque pagination tokens: the offset and a fingerprint of the query, so a token from another query is refused. */
export function encodeToken(offset: number, fingerprint: string): string {
  return Buffer.from(JSON.stringify({ o: offset, f: fingerprint })).toString('base64url');
}

export function decodeToken(token: string, fingerprint: string): number | undefined {
  try {
    const parsed = JSON.parse(Buffer.from(token, 'base64url').toString('utf8')) as { o?: unknown; f?: unknown };
    if (typeof parsed.o === 'number' && Number.isInteger(parsed.o) && parsed.o >= 0 && parsed.f === fingerprint) return parsed.o;
  } catch {
    // fall through
  }
  return undefined;
}
