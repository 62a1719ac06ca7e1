/**
 * Forwarded ports as tools: which ports listen inside a workspace and where the gateway serves them
 * (`<port>--<id>.<baseDomain>`, for whoever may open the workspace), and a share link that opens one
 * port, not the editor, to anyone holding it until it expires. See src/gateway/ports.ts.
 */
import type { McpServer } from '@modelcontextprotocol/server';
import { z } from 'zod';
import { DEFAULT_SHARE_MINUTES, EDITOR_PORT, MAX_SHARE_MINUTES } from '../../gateway/ports.js';
import { instanceIdInput, runTool, type ToolContext } from '../tool-support.js';

const ListeningPortSchema = z.object({
  port: z.number().int(),
  addresses: z.array(z.string()).describe('Local addresses it listens on, as the kernel reports them'),
  reachable: z.boolean().describe("Whether the gateway can reach it: it listens on every address or on 127.0.0.1 (not only on ::1)"),
  listening: z.boolean().describe('Whether anything listens on it now'),
  declared: z.boolean().describe("Whether the workspace's devcontainer.json declares it in forwardPorts (shown even while nothing listens)"),
  url: z.string().optional().describe('Its forwarded address; opens for a browser signed in to the workspace'),
});

export function registerPortTools(server: McpServer, ctx: ToolContext): void {
  server.registerTool(
    'list_instance_ports',
    {
      title: 'Ports listening in a workspace',
      description: `Lists the TCP ports listening inside a running workspace (the editor's own ${EDITOR_PORT} left out), and those its devcontainer.json declares in forwardPorts (listening or not, marked declared), with the address each is forwarded at through the gateway, <port>--<id>.<baseDomain>, where a browser signed in to the workspace opens it (HTTP and WebSockets). Does not need execute_command to be enabled.`,
      inputSchema: { instanceId: instanceIdInput },
      outputSchema: { instanceId: z.string(), ports: z.array(ListeningPortSchema) },
      annotations: { readOnlyHint: true, destructiveHint: false, idempotentHint: true, openWorldHint: false },
    },
    ({ instanceId }) =>
      runTool(ctx, 'list_instance_ports', async () => {
        const ports = await ctx.swarm.listPorts(instanceId);
        const lines = ports.map((p) => {
          const where = p.listening ? `on ${p.addresses.join(', ')}` : 'not listening';
          const note = !p.listening ? '' : p.reachable ? '' : ' (not reachable: listens on no address the gateway reaches)';
          return `${p.port} ${where}${p.declared ? ' (declared in devcontainer.json)' : ''}${p.url ? `: ${p.url}` : ''}${note}`;
        });
        return { text: ports.length ? lines.join('\n') : `No ports listening in ${instanceId} besides the editor's.`, structured: { instanceId, ports } };
      }),
  );

  server.registerTool(
    'share_instance_port',
    {
      title: 'Share a forwarded port',
      description:
        "Issues a link that opens one forwarded port of a workspace (never its editor) in any browser, without signing in, until it expires. get_instance_access_link with revokeExisting revokes every share link too.",
      inputSchema: {
        instanceId: instanceIdInput,
        port: z.number().int().min(1).max(65_535).describe(`The TCP port inside the workspace (not the editor's ${EDITOR_PORT})`),
        minutes: z.number().min(1).max(MAX_SHARE_MINUTES).optional().describe(`How long the link works (default ${DEFAULT_SHARE_MINUTES})`),
      },
      outputSchema: {
        port: z.number().int(),
        url: z.string().describe("The port's address, for those who may open the workspace"),
        shareUrl: z.string().describe('Opens the port for anyone holding it, until expiresAt'),
        expiresAt: z.string(),
      },
      annotations: { readOnlyHint: false, destructiveHint: false, idempotentHint: false, openWorldHint: false },
    },
    ({ instanceId, port, minutes }) =>
      runTool(ctx, 'share_instance_port', async () => {
        const link = await ctx.swarm.sharePort(instanceId, port, minutes);
        return { text: `Share: ${link.shareUrl}\n(opens port ${link.port} only, not the editor; valid until ${link.expiresAt})`, structured: { ...link } };
      }),
  );
}
