/**
 * What the host agents report back (`--controller-url`): an idle stop done by the host, a host draining
 * before the group terminates it. The controller records each, so the registry says why an instance
 * stopped and the health monitor leaves it stopped.
 */
import type http from 'node:http';
import type { SwarmController } from '../../src/controller/swarm-controller.js';
import { asSwarmError } from '../../src/errors.js';
import type { Logger } from '../../src/logger.js';
import { AgentEventSchema, type AgentEvent } from './agent/agent-protocol.js';
import type { AwsAsgProvider } from './aws-asg-provider.js';

export const AGENT_EVENTS_PATH = '/v1/agent-events';
const MAX_EVENT_BYTES = 256 * 1024;

export async function applyAgentEvent(controller: SwarmController, event: AgentEvent): Promise<void> {
  if (event.type === 'idle-stopped') {
    const reason = `stopped by host ${event.hostId}: ${event.reason}`;
    await controller.noteStopped(event.instanceId, reason, 'idle');
    await controller.recordSystemEvent('agent', 'instance.idle-stop', { subject: event.instanceId, reason, request: { hostId: event.hostId } });
  } else if (event.type === 'drained') {
    for (const id of event.instances) {
      if (!controller.registry.get(id)) continue;
      const reason = `host ${event.hostId} drained before the group terminated it; the workspace is kept until the host goes`;
      await controller.noteStopped(id, reason, 'provider');
      await controller.recordSystemEvent('agent', 'instance.drain-stop', { subject: id, reason, request: { hostId: event.hostId } });
    }
  } else {
    await controller.recordSystemEvent('agent', 'host.draining', { reason: `host ${event.hostId} is draining`, request: { hostId: event.hostId } });
  }
}

/** An HTTP handler for the route; authenticates the agent's bearer token against the provider's. */
export function agentEventsHandler(controller: SwarmController, logger: Logger): (req: http.IncomingMessage, res: http.ServerResponse) => Promise<void> {
  return async (req, res) => {
    const reply = (status: number, body?: unknown): void => {
      res.writeHead(status, body === undefined ? {} : { 'Content-Type': 'application/json' });
      res.end(body === undefined ? undefined : JSON.stringify(body));
    };
    if (req.method !== 'POST') return reply(405, { error: 'POST only' });
    const provider = (await controller.connectedProvider('aws-asg').catch(() => undefined)) as AwsAsgProvider | undefined;
    if (!provider?.isAgentAuthorization(req.headers.authorization)) return reply(401, { error: 'missing or wrong agent token' });
    const chunks: Buffer[] = [];
    let size = 0;
    for await (const chunk of req as AsyncIterable<Buffer>) {
      size += chunk.length;
      if (size > MAX_EVENT_BYTES) return reply(413, { error: 'event too large' });
      chunks.push(chunk);
    }
    let parsed;
    try {
      parsed = AgentEventSchema.safeParse(JSON.parse(Buffer.concat(chunks).toString('utf8')));
    } catch {
      return reply(400, { error: 'body: expected JSON' });
    }
    if (!parsed.success) return reply(400, { error: `event: ${parsed.error.issues[0]?.message ?? 'invalid'}` });
    try {
      await applyAgentEvent(controller, parsed.data);
      logger.info({ event: parsed.data.type, hostId: parsed.data.hostId }, 'host event recorded');
      reply(204);
    } catch (err) {
      const error = asSwarmError(err);
      reply(error.code === 'NOT_FOUND' ? 404 : error.code === 'INVALID_INPUT' ? 400 : 500, { error: error.message });
    }
  };
}
