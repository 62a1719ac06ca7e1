/**
 * What the host agents report back (`--controller-url`): an idle stop done by the host, a host draining
 * before the group terminates it. The controller records each, so the registry says why an instance
 * stopped and the health monitor leaves it stopped.
 *
 * A host is trusted with its own instances only: it authenticates with its own token (derived from the
 * master token and its id), and an event about an instance on another host or on another provider is
 * refused (403) before anything changes.
 */
import type http from 'node:http';
import type { SwarmController } from '../../src/controller/swarm-controller.js';
import { SwarmError, asSwarmError } from '../../src/errors.js';
import type { Logger } from '../../src/logger.js';
import { AgentEventSchema, type AgentEvent } from './agent/agent-protocol.js';
import type { AwsAsgProvider } from './aws-asg-provider.js';
import { readCappedBody } from '../../src/streams/read-body.js';

export const AGENT_EVENTS_PATH = '/v1/agent-events';
const MAX_EVENT_BYTES = 256 * 1024;

/**
 * Refuses (FORBIDDEN) an event about an instance that is not an aws-asg instance registered on the
 * reporting host: a host speaks for its own instances only. Checked for every instance before any is
 * changed, so a refused event changes nothing.
 */
export function checkEventScope(controller: SwarmController, event: AgentEvent): void {
  const ids = event.type === 'idle-stopped' ? [event.instanceId] : event.type === 'drained' ? event.instances : [];
  for (const id of ids) {
    const record = controller.registry.get(id);
    // An id the controller does not know is skipped by the drained branch and refused by idle-stopped's noteStopped.
    if (!record) continue;
    const on = record.providerType === 'aws-asg' ? record.providerRef?.hostId : undefined;
    if (on !== event.hostId) {
      throw new SwarmError('FORBIDDEN', `host ${event.hostId} reported ${event.type} for instance ${id}, which is ${record.providerType === 'aws-asg' ? `on host ${String(on ?? 'unknown')}` : `a ${record.providerType} instance`}; a host reports only its own instances`, {
        details: { reason: 'NOT_ON_HOST', hostId: event.hostId, instanceId: id },
      });
    }
  }
}

export async function applyAgentEvent(controller: SwarmController, event: AgentEvent): Promise<void> {
  checkEventScope(controller, event);
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

/**
 * An HTTP handler for the route. The event names its host; the bearer token must be that host's own
 * (host-credentials.ts), and the event may speak only of instances registered on that host (403 otherwise).
 */
export function agentEventsHandler(controller: SwarmController, logger: Logger): (req: http.IncomingMessage, res: http.ServerResponse) => Promise<void> {
  return async (req, res) => {
    const reply = (status: number, body?: unknown): void => {
      res.writeHead(status, body === undefined ? {} : { 'Content-Type': 'application/json' });
      res.end(body === undefined ? undefined : JSON.stringify(body));
    };
    if (req.method !== 'POST') return reply(405, { error: 'POST only' });
    const provider = (await controller.connectedProvider('aws-asg').catch(() => undefined)) as AwsAsgProvider | undefined;
    if (!provider || !req.headers.authorization) {
      req.resume();
      return reply(401, { error: 'missing or wrong agent token' });
    }
    const body = await readCappedBody(req, MAX_EVENT_BYTES);
    if (!body) {
      req.resume();
      return reply(413, { error: 'event too large' });
    }
    let raw: unknown;
    try {
      raw = JSON.parse(body.toString('utf8'));
    } catch {
      return reply(400, { error: 'body: expected JSON' });
    }
    // Authenticated before the event is validated further, so an unauthenticated caller learns nothing of the schema.
    const hostId = typeof (raw as { hostId?: unknown } | null)?.hostId === 'string' ? (raw as { hostId: string }).hostId : '';
    if (!provider.isAgentAuthorization(req.headers.authorization, hostId)) return reply(401, { error: 'missing or wrong agent token for the host the event names' });
    const parsed = AgentEventSchema.safeParse(raw);
    if (!parsed.success) {
      const issue = parsed.error.issues[0];
      return reply(400, { error: `event${issue?.path.length ? `.${issue.path.join('.')}` : ''}: ${issue?.message ?? 'invalid'}` });
    }
    try {
      await applyAgentEvent(controller, parsed.data);
      logger.info({ event: parsed.data.type, hostId: parsed.data.hostId }, 'host event recorded');
      reply(204);
    } catch (err) {
      const error = asSwarmError(err);
      if (error.code === 'FORBIDDEN') logger.warn({ event: parsed.data.type, hostId: parsed.data.hostId, err: error.message }, 'refused a host event about an instance not on that host');
      reply(error.code === 'NOT_FOUND' ? 404 : error.code === 'INVALID_INPUT' ? 400 : error.code === 'FORBIDDEN' ? 403 : 500, { error: error.message });
    }
  };
}
