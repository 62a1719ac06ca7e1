/**
 * Tenants kept apart on AWS hosts, the parts that need no AWS and no Docker: each host's own credential,
 * the controller accepting a host's events only about that host's instances (bounded fields), and access
 * links a host can check but not mint, with sessions signed by a key of each host's own.
 * Real files, a real controller and registry; the gateway's Docker-backed paths are in the e2e suites.
 */
import { mkdtemp, rm, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AgentEventSchema } from '../../providers/aws-asg/agent/agent-protocol.js';
import { applyAgentEvent } from '../../providers/aws-asg/agent-events.js';
import { deriveHostToken, isHostAuthorization } from '../../providers/aws-asg/host-credentials.js';
import type { VSCodeInstance } from '../../providers/provider.js';
import { parseConfig } from '../../src/config.js';
import { SwarmController } from '../../src/controller/swarm-controller.js';
import { isSwarmError } from '../../src/errors.js';
import { AccessLinks } from '../../src/gateway/access-links.js';
import { publicKeyText, signingKeyFromSecret } from '../../src/gateway/access-tokens.js';
import { InstanceRegistry } from '../../src/registry/instance-registry.js';

const MASTER = 'master-agent-token-0123456789abcdef';
const HOST_A = 'i-0aaaaaaaaaaaaaaa1';
const HOST_B = 'i-0bbbbbbbbbbbbbbb2';
const SECRET = 'central-gateway-secret-0123456789abcdef';

const dirs: string[] = [];
async function tempDir(label: string): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), `aws-tenants-${label}-`));
  dirs.push(dir);
  return dir;
}
afterAll(async () => {
  for (const dir of dirs) await rm(dir, { recursive: true, force: true });
});

function record(id: string, providerType: VSCodeInstance['providerType'], hostId?: string): VSCodeInstance {
  const at = new Date().toISOString();
  return {
    id, name: id, providerType, status: 'running', health: 'healthy',
    config: { name: id, image: 'img:1', resources: { cpu: 1, memoryMb: 1024 }, env: {}, labels: {} } as VSCodeInstance['config'],
    providerRef: hostId ? { hostId } : {}, createdAt: at, updatedAt: at,
  } as VSCodeInstance;
}

describe('per-host agent credentials', () => {
  it('derives a distinct token per host that authorizes that host only', () => {
    const a = deriveHostToken(MASTER, HOST_A);
    const b = deriveHostToken(MASTER, HOST_B);
    expect(a).toMatch(/^[A-Za-z0-9_-]{43}$/);
    expect(a).not.toBe(b);
    expect(a).not.toContain(MASTER);
    expect(deriveHostToken(MASTER, HOST_A)).toBe(a);
    expect(isHostAuthorization(MASTER, HOST_A, `Bearer ${a}`)).toBe(true);
    expect(isHostAuthorization(MASTER, HOST_B, `Bearer ${a}`)).toBe(false);
    // The master itself is not a host's credential.
    expect(isHostAuthorization(MASTER, HOST_A, `Bearer ${MASTER}`)).toBe(false);
    expect(isHostAuthorization(MASTER, HOST_A, undefined)).toBe(false);
    expect(isHostAuthorization(MASTER, 'Not_An_Id', `Bearer ${a}`)).toBe(false);
    expect(() => deriveHostToken(MASTER, '../x')).toThrow(/hostId: expected an EC2 instance id/);
  });
});

describe('host events are bounded and scoped to the reporting host', () => {
  let controller: SwarmController;
  let registry: InstanceRegistry;

  beforeAll(async () => {
    const stateDir = await tempDir('events');
    const config = parseConfig({ stateDir, logLevel: 'silent', gateway: { enabled: false } });
    registry = new InstanceRegistry({ stateDir });
    controller = new SwarmController({ config, registry, providers: {}, lockStateDir: false });
    await controller.initialize();
    await registry.register(record('on-a', 'aws-asg', HOST_A));
    await registry.register(record('on-b', 'aws-asg', HOST_B));
    await registry.register(record('local', 'docker'));
  });
  afterAll(async () => {
    await controller?.close();
  });

  it('refuses an idle stop from host A about an instance on host B, or about a Docker instance, and changes nothing', async () => {
    const before = JSON.stringify(registry.list());
    for (const [instanceId, what] of [['on-b', `on host ${HOST_B}`], ['local', 'a docker instance']] as const) {
      const err = await applyAgentEvent(controller, { type: 'idle-stopped', hostId: HOST_A, instanceId, reason: 'forged' }).catch((e: unknown) => e);
      expect(isSwarmError(err, 'FORBIDDEN'), String(err)).toBe(true);
      expect((err as Error).message).toContain(what);
      expect((err as Error).message).toContain(`host ${HOST_A} reported idle-stopped for instance ${instanceId}`);
    }
    expect(JSON.stringify(registry.list())).toBe(before);
    expect(registry.require('on-b').desiredState).toBeUndefined();
  });

  it('refuses a drained report naming any instance not on the host, leaving even its own untouched', async () => {
    const before = JSON.stringify(registry.list());
    const err = await applyAgentEvent(controller, { type: 'drained', hostId: HOST_A, instances: ['on-a', 'on-b'] }).catch((e: unknown) => e);
    expect(isSwarmError(err, 'FORBIDDEN'), String(err)).toBe(true);
    expect(JSON.stringify(registry.list())).toBe(before);
  });

  it('bounds every field of an event', () => {
    const ok = { type: 'idle-stopped', hostId: HOST_A, instanceId: 'on-a', reason: 'idle for 15 minutes' };
    expect(AgentEventSchema.safeParse(ok).success).toBe(true);
    expect(AgentEventSchema.safeParse({ ...ok, reason: 'x'.repeat(513) }).success).toBe(false);
    expect(AgentEventSchema.safeParse({ ...ok, hostId: 'i-'.padEnd(60, 'a') }).success).toBe(false);
    expect(AgentEventSchema.safeParse({ ...ok, hostId: 'Host A' }).success).toBe(false);
    expect(AgentEventSchema.safeParse({ ...ok, extra: 'field' }).success).toBe(false);
    expect(AgentEventSchema.safeParse({ type: 'drained', hostId: HOST_A, instances: Array.from({ length: 10_001 }, (_, i) => `i${i}`) }).success).toBe(false);
  });
});

describe('links hosts can verify but not mint; sessions per host', () => {
  let central: AccessLinks;
  let hostA: AccessLinks;
  let hostB: AccessLinks;
  let centralDir: string;
  let hostADir: string;

  beforeAll(async () => {
    centralDir = await tempDir('central');
    hostADir = await tempDir('host-a');
    const hostBDir = await tempDir('host-b');
    const gateway = (stateDir: string, secret?: string) => parseConfig({ stateDir, gateway: { ...(secret ? { secret } : {}), port: 7080 } }).gateway;
    central = new AccessLinks(gateway(centralDir), centralDir);
    await central.initialize();
    // The hosts get only the central public key; any secret in their config is ignored.
    hostA = new AccessLinks(gateway(hostADir, SECRET), hostADir, Date.now, { linkPublicKey: central.publicKey });
    hostB = new AccessLinks(gateway(hostBDir), hostBDir, Date.now, { linkPublicKey: central.publicKey });
    await hostA.initialize();
    await hostB.initialize();
  });

  it('keeps the central private key in the state directory, mode 0600', async () => {
    const info = await stat(path.join(centralDir, 'gateway', 'ed25519.key'));
    expect(info.mode & 0o777).toBe(0o600);
    expect(central.publicKey).toMatch(/^[A-Za-z0-9_-]{43}$/);
  });

  it('a host checks the central links but cannot issue one', () => {
    const link = central.link('ws-1', 0);
    const token = new URL(link.accessUrl).searchParams.get('swarm_token')!;
    const verified = hostA.verify(token, 'link');
    expect(verified.ok && verified.claims.instanceId).toBe('ws-1');
    let refused: unknown;
    try {
      hostA.link('ws-1', 0);
    } catch (err) {
      refused = err;
    }
    expect(isSwarmError(refused, 'FORBIDDEN'), String(refused)).toBe(true);
    expect((refused as Error).message).toContain('holds only the public key');
  });

  it('a session signed by host A opens nothing on host B or on the central gateway', () => {
    const { token } = hostA.session('ws-1', 0);
    expect(hostA.verify(token, 'session').ok).toBe(true);
    expect(hostB.verify(token, 'session')).toEqual({ ok: false, reason: 'bad-signature' });
    expect(central.verify(token, 'session')).toEqual({ ok: false, reason: 'bad-signature' });
    // Nor does it pass for a link anywhere.
    expect(central.verify(token, 'link').ok).toBe(false);
    expect(hostB.verify(token, 'link').ok).toBe(false);
  });

  it('a configured secret and the public key derived from it agree (the deprecated --gateway-secret path)', async () => {
    const dir = await tempDir('configured');
    const configured = new AccessLinks(parseConfig({ stateDir: dir, gateway: { secret: SECRET, port: 7080 } }).gateway, dir);
    await configured.initialize();
    expect(configured.publicKey).toBe(publicKeyText(signingKeyFromSecret(SECRET)));
    const host = new AccessLinks(parseConfig({ stateDir: hostADir, gateway: { port: 7080 } }).gateway, hostADir, Date.now, { linkPublicKey: publicKeyText(signingKeyFromSecret(SECRET)) });
    await host.initialize();
    const token = new URL(configured.link('ws-2', 3).accessUrl).searchParams.get('swarm_token')!;
    expect(host.verify(token, 'link').ok).toBe(true);
    expect(hostA.verify(token, 'link')).toEqual({ ok: false, reason: 'bad-signature' });
  });
});
