/**
 * Where the Docker engine is: explicit options first, then DOCKER_HOST, then the local socket.
 */
import type Docker from 'dockerode';
import http from 'node:http';
import https from 'node:https';
import { SwarmError } from '../../src/errors.js';

export interface DockerConnectionOptions {
  socketPath?: string;
  /** `unix:///path` or `tcp://host:port`; overrides DOCKER_HOST. */
  dockerHost?: string;
  env?: NodeJS.ProcessEnv;
}

export interface DockerConnection {
  options: Docker.DockerOptions;
  /** Human form for messages, e.g. unix:///var/run/docker.sock. */
  describe: string;
}

export const DEFAULT_SOCKET = '/var/run/docker.sock';

export function resolveDockerConnection(input: DockerConnectionOptions = {}): DockerConnection {
  if (input.socketPath) return { options: { socketPath: input.socketPath }, describe: `unix://${input.socketPath}` };
  const dockerHost = input.dockerHost ?? (input.env ?? process.env).DOCKER_HOST;
  if (!dockerHost) return { options: { socketPath: DEFAULT_SOCKET }, describe: `unix://${DEFAULT_SOCKET}` };
  if (dockerHost.startsWith('unix://')) {
    const socketPath = dockerHost.slice('unix://'.length) || DEFAULT_SOCKET;
    return { options: { socketPath }, describe: `unix://${socketPath}` };
  }
  const match = /^(tcp|http|https):\/\/([^/:]+|\[[^\]]+\]):(\d+)\/?$/.exec(dockerHost);
  if (!match) {
    throw new SwarmError(
      'INVALID_INPUT',
      `DOCKER_HOST: expected unix:///path/to/docker.sock or tcp://host:port (got ${JSON.stringify(dockerHost)})`,
      { field: 'DOCKER_HOST' },
    );
  }
  const [, scheme, host, port] = match;
  return {
    options: { host: host!, port: Number(port), protocol: scheme === 'https' ? 'https' : 'http' },
    describe: dockerHost,
  };
}

/** The one message for an engine that does not answer: what was tried and what to do. */
export function engineUnreachable(connection: DockerConnection, cause: unknown): SwarmError {
  const reason = cause instanceof Error ? cause.message : String(cause);
  return new SwarmError(
    'PROVIDER_UNAVAILABLE',
    `docker: cannot reach the Docker engine at ${connection.describe} (${reason}). ` +
      'Start the engine (for example `sudo systemctl start docker`, or run `bash scripts/setup.sh` in this repository), ' +
      'or point DOCKER_HOST at a running one.',
    { cause },
  );
}

/**
 * The HTTP agent for engine calls. docker-modem listens for errors on the request only: when the
 * connection to the engine closes in the middle of an answer (after its headers), Node reports it on the
 * response, which docker-modem does not listen to, and the call would never settle. This agent turns an
 * answer cut short into an error on its request, so the call fails instead of hanging.
 */
export function engineAgent(connection: DockerConnection): http.Agent {
  const Base = connection.options.protocol === 'https' ? https.Agent : http.Agent;
  class EngineAgent extends Base {
    // addRequest is how every request reaches an agent (Node's own, undocumented in its types).
    addRequest(req: http.ClientRequest, options: unknown): void {
      req.once('response', (res: http.IncomingMessage) => {
        res.once('close', () => {
          if (res.complete || req.listenerCount('error') === 0) return;
          const err = Object.assign(new Error('the engine\'s answer was cut short'), { code: 'ECONNRESET' });
          req.emit('error', err);
        });
      });
      (Base.prototype as unknown as { addRequest(req: http.ClientRequest, options: unknown): void }).addRequest.call(this, req, options);
    }
  }
  // As Node's global agent (which docker-modem used before): kept-alive sockets, closed after 5 s idle.
  return new EngineAgent({ keepAlive: true, scheduling: 'lifo', timeout: 5_000, noDelay: true });
}
