/**
 * Log redaction as a line reaches stderr: secret-looking keys at any depth, environment maps, and
 * credentials inside strings (URLs, authorization values, error messages) never appear; the rest does.
 */
import { PassThrough } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { createLogger, redactSecrets, redactString } from '../../src/logger.js';

function capture(): { logger: ReturnType<typeof createLogger>; lines: () => string } {
  const sink = new PassThrough();
  let text = '';
  sink.on('data', (chunk: Buffer) => (text += chunk.toString()));
  return { logger: createLogger('debug', sink), lines: () => text };
}

const SECRETS = ['v1.aaaa.bbbb-link-token', 'hunter2-password', 'ghp_deep_secret_value', 'env-value-42', 'sig-0123456789', 'bearer-cred-xyz'];

describe('log redaction', () => {
  it('hides secrets at any depth, in env maps, URLs, bearer values and errors, and keeps the rest', async () => {
    const { logger, lines } = capture();
    const err = new Error(`GET http://a.localhost:7080/?swarm_token=${SECRETS[0]} failed`);
    logger.info(
      {
        instanceId: 'alice-1',
        deep: { a: { b: { c: { d: { e: { f: { apiKey: SECRETS[2] } } } } } } },
        request: { config: { env: { GITHUB_TOKEN_NAME: SECRETS[3] } }, headers: { Authorization: `Bearer ${SECRETS[5]}` } },
        list: [{ password: SECRETS[1] }],
        url: `https://x.example/cb?code=1&X-Amz-Signature=${SECRETS[4]}&keep=yes`,
        err,
      },
      `link issued: http://alice-1.localhost:7080/?swarm_token=${SECRETS[0]}`,
    );
    await new Promise((r) => setImmediate(r));
    const out = lines();
    for (const secret of SECRETS) expect(out).not.toContain(secret);
    const line = JSON.parse(out.trim());
    expect(line).toMatchObject({ instanceId: 'alice-1', msg: 'link issued: http://alice-1.localhost:7080/?swarm_token=[redacted]' });
    expect(line.deep.a.b.c.d.e.f.apiKey).toBe('[redacted]');
    expect(line.request.config.env).toEqual({ GITHUB_TOKEN_NAME: '[redacted]' });
    expect(line.url).toBe('https://x.example/cb?code=1&X-Amz-Signature=[redacted]&keep=yes');
    expect(line.err.message).toMatch(/swarm_token=\[redacted\] failed$/);
  });

  it('scrubs the password of a URL and leaves ordinary text alone', () => {
    expect(redactString('postgres://swarm:s3cret@127.0.0.1:5432/db')).toBe('postgres://swarm:[redacted]@127.0.0.1:5432/db');
    expect(redactString('authorization: Basic dXNlcjpwYXNz')).toBe('authorization: Basic [redacted]');
    expect(redactString('created alice-1 on docker in 812 ms')).toBe('created alice-1 on docker in 812 ms');
  });

  it('survives cycles and buffers', () => {
    const a: Record<string, unknown> = { name: 'a', blob: Buffer.alloc(1024) };
    a.self = a;
    expect(redactSecrets(a)).toEqual({ name: 'a', blob: '[1024 bytes]', self: '[circular]' });
  });
});
