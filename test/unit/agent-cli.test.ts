/**
 * The agent's command line: flags, VSCODE_SWARM_AGENT_* variables, defaults, and errors that name the flag.
 */
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseAgentArgs } from '../../providers/aws-asg/agent/agent-cli.js';

const SECRET = 's'.repeat(32);
const required = ['--host-id', 'i-0123', '--token', 'tok', '--gateway-secret', SECRET];

function options(argv: string[], env: NodeJS.ProcessEnv = {}) {
  const parsed = parseAgentArgs(argv, env);
  if (parsed.help) throw new Error('unexpected help');
  return parsed.options;
}

describe('agent command line', () => {
  it('applies the defaults', () => {
    const o = options(required);
    expect(o).toMatchObject({
      hostId: 'i-0123', bind: '127.0.0.1', publishHost: '127.0.0.1', apiPort: 9100, proxyPort: 7080, capacity: 20, baseDomain: 'localhost',
      pullImages: true, idleTimeoutMinutes: 15, idleCheckMs: 30_000, portRange: { first: 20000, last: 20999 }, network: 'vscode-swarm',
    });
    expect(o.controllerUrl).toBeUndefined();
    expect(path.basename(o.stateDir)).toBe('agent-i-0123');
  });

  it('reads every flag', () => {
    const o = options([
      ...required, '--bind', '127.0.0.2', '--publish-host', '127.0.9.9', '--api-port', '0', '--proxy-port', '7081', '--capacity', '2', '--state-dir', '/tmp/x',
      '--base-domain', 'ws.example.com', '--image', 'vscode-swarm/code-server:4.99.3', '--no-pull', '--idle-timeout-minutes', '0.05',
      '--idle-check-ms', '500', '--controller-url', 'http://127.0.0.1:9/events', '--port-range', '30000-30009',
    ]);
    expect(o).toMatchObject({
      bind: '127.0.0.2', publishHost: '127.0.9.9', apiPort: 0, proxyPort: 7081, capacity: 2, stateDir: '/tmp/x', baseDomain: 'ws.example.com',
      image: 'vscode-swarm/code-server:4.99.3', pullImages: false, idleTimeoutMinutes: 0.05, idleCheckMs: 500,
      controllerUrl: 'http://127.0.0.1:9/events', portRange: { first: 30000, last: 30009 },
    });
  });

  it('falls back to VSCODE_SWARM_AGENT_* variables; a flag wins', () => {
    const env = {
      VSCODE_SWARM_AGENT_HOST_ID: 'i-env', VSCODE_SWARM_AGENT_TOKEN: 'env-token', VSCODE_SWARM_AGENT_GATEWAY_SECRET: SECRET,
      VSCODE_SWARM_AGENT_CAPACITY: '7', VSCODE_SWARM_AGENT_NO_PULL: '1', VSCODE_SWARM_AGENT_PORT_RANGE: '40000-40001',
    };
    expect(options([], env)).toMatchObject({ hostId: 'i-env', token: 'env-token', capacity: 7, pullImages: false, portRange: { first: 40000, last: 40001 } });
    expect(options(['--capacity', '3'], env).capacity).toBe(3);
  });

  it('names the offending flag and its variable', () => {
    expect(() => parseAgentArgs(['--token', 't', '--gateway-secret', SECRET], {})).toThrow(/^--host-id \(or VSCODE_SWARM_AGENT_HOST_ID\): required/);
    expect(() => parseAgentArgs([...required.slice(0, 4), '--gateway-secret', 'short'], {})).toThrow('--gateway-secret (or VSCODE_SWARM_AGENT_GATEWAY_SECRET): expected at least 32 characters');
    expect(() => parseAgentArgs([...required, '--capacity', 'lots'], {})).toThrow(/^--capacity .*expected an integer from 1 to 10000/);
    expect(() => parseAgentArgs([...required, '--port-range', '9-1'], {})).toThrow(/^--port-range: expected a port range/);
    expect(() => parseAgentArgs([...required, '--host-id', 'I_0123'], {})).toThrow(/^--host-id .*expected an EC2 instance id/);
    expect(() => parseAgentArgs([...required, '--bogus'], {})).toThrow(/Unknown option '--bogus'/);
  });

  it('takes the central gateway\'s public key instead of its secret, and needs one of the two', () => {
    const key = 'A'.repeat(42) + 'E';
    const o = options(['--host-id', 'i-0123', '--token', 'tok', '--gateway-public-key', key]);
    expect(o.gatewayPublicKey).toBe(key);
    expect(o.gatewaySecret).toBeUndefined();
    expect(options([], { VSCODE_SWARM_AGENT_HOST_ID: 'i-env', VSCODE_SWARM_AGENT_TOKEN: 't', VSCODE_SWARM_AGENT_GATEWAY_PUBLIC_KEY: key }).gatewayPublicKey).toBe(key);
    expect(() => parseAgentArgs(['--host-id', 'i-0123', '--token', 'tok'], {})).toThrow(/^--gateway-public-key \(or VSCODE_SWARM_AGENT_GATEWAY_PUBLIC_KEY\): required/);
    expect(() => parseAgentArgs(['--host-id', 'i-0123', '--token', 'tok', '--gateway-public-key', 'short'], {})).toThrow(/^--gateway-public-key .*43 base64url characters/);
  });

  it('answers --help', () => {
    expect(parseAgentArgs(['--help'], {})).toEqual({ help: true });
  });
});
