import type { McpServer } from '@modelcontextprotocol/server';
import { z } from 'zod';
import { instanceIdInput, runTool, type ToolContext } from '../tool-support.js';

export function registerExecuteCommandTool(server: McpServer, ctx: ToolContext, enabled: boolean): void {
  server.registerTool(
    'execute_command',
    {
      title: 'Run a command in a workspace',
      description: `Runs a shell command (sh -c) in a running workspace, in its project folder, bounded in time and output. ${
        enabled ? 'Enabled by the configuration.' : 'Turned OFF by the configuration: calls are refused until exec.enabled is set.'
      }`,
      inputSchema: {
        instanceId: instanceIdInput,
        command: z.string().min(1).max(65_536).describe('Shell command'),
        timeoutMs: z.number().int().min(100).optional().describe('Time limit in ms (at most the configured limit)'),
      },
      outputSchema: {
        exitCode: z.number().int().nullable(),
        stdout: z.string(),
        stderr: z.string(),
        timedOut: z.boolean(),
        truncated: z.boolean(),
        durationMs: z.number(),
      },
      annotations: { readOnlyHint: false, destructiveHint: true, idempotentHint: false, openWorldHint: true },
    },
    ({ instanceId, command, timeoutMs }) =>
      runTool(ctx, 'execute_command', async () => {
        const result = await ctx.swarm.executeCommand(instanceId, command, timeoutMs ? { timeoutMs } : {});
        const text = [`exit ${result.exitCode ?? 'unknown'}${result.timedOut ? ' (timed out)' : ''}${result.truncated ? ' (output truncated)' : ''}`, result.stdout, result.stderr]
          .filter(Boolean)
          .join('\n');
        return { text, structured: { ...result } };
      }),
  );
}
