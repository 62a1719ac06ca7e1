import { describe, expect, it } from 'vitest';
import {
  ImageReferenceSchema,
  InstanceConfigSchema,
  ProviderFactory,
  parseInstanceStatus,
} from '../../providers/provider.js';
import { parseConfig, loadConfig } from '../../src/config.js';
import { CreateRequestSchema, parseInput } from '../../src/controller/swarm-controller.js';

describe('image references', () => {
  it.each(['codercom/code-server', 'codercom/code-server:4.99.3', 'localhost:5000/team/editor:v1', `ubuntu@sha256:${'a'.repeat(64)}`, 'ghcr.io/coder/code-server:latest'])(
    'accepts %s',
    (ref) => expect(ImageReferenceSchema.safeParse(ref).success).toBe(true),
  );
  it.each(['', 'Code Server', 'repo/UPPER', 'a//b', 'image:', 'image:tag:two', '-lead/x', 'x@sha256:short', 'a b'])('rejects %j', (ref) =>
    expect(ImageReferenceSchema.safeParse(ref).success).toBe(false),
  );
});

describe('create requests', () => {
  const bad: [string, unknown, string][] = [
    ['path in name', { name: '../etc' }, 'name'],
    ['slash in name', { name: 'a/b' }, 'name'],
    ['NUL in name', { name: 'a\0b' }, 'name'],
    ['over-long name', { name: 'n'.repeat(64) }, 'name'],
    ['negative cpu', { name: 'ok', resources: { cpu: -1 } }, 'resources.cpu'],
    ['zero cpu', { name: 'ok', resources: { cpu: 0 } }, 'resources.cpu'],
    ['absurd cpu', { name: 'ok', resources: { cpu: 100000 } }, 'resources.cpu'],
    ['zero memory', { name: 'ok', resources: { memoryMb: 0 } }, 'resources.memoryMb'],
    ['fractional memory', { name: 'ok', resources: { memoryMb: 512.5 } }, 'resources.memoryMb'],
    ['absurd memory', { name: 'ok', resources: { memoryMb: 1e12 } }, 'resources.memoryMb'],
    ['bad image', { name: 'ok', image: 'Not An Image' }, 'image'],
    ['unknown provider', { name: 'ok', providerType: 'gcp' }, 'providerType'],
    ['unknown field', { name: 'ok', privileged: true }, 'input'],
    ['bad env name', { name: 'ok', env: { 'A-B': '1' } }, 'env.A-B'],
  ];
  it.each(bad)('%s is refused naming the field', (_label, input, field) => {
    try {
      parseInput(CreateRequestSchema, input);
      expect.unreachable('accepted');
    } catch (err) {
      expect(err).toMatchObject({ code: 'INVALID_INPUT' });
      expect((err as Error).message).toContain(field === 'input' ? 'privileged' : field);
    }
  });

  it('accepts a minimal request', () => {
    expect(parseInput(CreateRequestSchema, { name: 'alice' })).toEqual({ name: 'alice' });
    expect(InstanceConfigSchema.safeParse({ name: 'a', resources: { cpu: 0.5, memoryMb: 512 } }).success).toBe(true);
  });
});

describe('closed status set', () => {
  it('parses the known and rejects the unknown', () => {
    expect(parseInstanceStatus('running')).toBe('running');
    expect(() => parseInstanceStatus('exploded')).toThrow(/status: expected one of creating/);
  });
});

describe('ProviderFactory', () => {
  it('fails loudly on an unknown type and on a known type it was not given', () => {
    const factory = new ProviderFactory();
    expect(() => factory.create('gcp', {})).toThrow(/providerType: expected one of docker, aws-asg, fly \(got "gcp"\)/);
    expect(() => factory.create('fly', {})).toThrow(/does not include yet/);
  });
});

describe('configuration', () => {
  it('works with zero configuration', () => {
    const config = parseConfig({});
    expect(config.defaultProvider).toBe('docker');
    expect(config.exec.enabled).toBe(false);
    expect(config.providers.docker.publishHost).toBeNull();
  });

  it('names the offending field', () => {
    expect(() => parseConfig({ providers: { docker: { image: 'NOPE NOPE' } } })).toThrow(/providers\.docker\.image/);
    expect(() => parseConfig({ exec: { enabled: 'yes' } })).toThrow(/exec\.enabled/);
    expect(() => parseConfig({ typo: 1 })).toThrow(/typo/);
  });

  it('lets the environment override the file', async () => {
    const config = await loadConfig({
      file: false,
      env: { VSCODE_SWARM_ENABLE_EXEC: '1', VSCODE_SWARM_DOCKER_IMAGE: 'a/b:c', VSCODE_SWARM_STATE_DIR: '/tmp/x' },
    });
    expect(config.exec.enabled).toBe(true);
    expect(config.providers.docker.image).toBe('a/b:c');
    expect(config.stateDir).toBe('/tmp/x');
    await expect(loadConfig({ file: false, env: { VSCODE_SWARM_ENABLE_EXEC: 'maybe' } })).rejects.toThrow(/exec\.enabled/);
    await expect(loadConfig({ file: '/nonexistent/config.json', env: {} })).rejects.toThrow(/cannot read/);
  });
});
