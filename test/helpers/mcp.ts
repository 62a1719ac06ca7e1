/**
 * Launches the MCP server the way a client does: from mcp.json, over stdio, with a real SDK Client.
 */
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { TEST_IMAGE } from './docker.js';

const HERE = path.dirname(fileURLToPath(import.meta.url));
/** The repository root, from the sources (vitest) or from dist (npm run bench runs the compiled copy). */
export const REPO_ROOT = path.resolve(HERE, HERE.includes(`${path.sep}dist${path.sep}`) ? '../../..' : '../..');

interface ServerEntry {
  command: string;
  args: string[];
  env?: Record<string, string>;
}

export function mcpServerEntry(name = 'vscode-swarm'): ServerEntry {
  const file = JSON.parse(readFileSync(path.join(REPO_ROOT, 'mcp.json'), 'utf8')) as { mcpServers: Record<string, ServerEntry> };
  const entry = file.mcpServers[name];
  if (!entry) throw new Error(`mcp.json has no server ${name}`);
  return entry;
}

export interface LaunchedServer {
  client: Client;
  transport: StdioClientTransport;
  pid: number;
  stderr: () => string;
  close: () => Promise<void>;
}

/** How a client launches the server from mcp.json (for either SDK's stdio transport), with extra environment. */
export function mcpJsonLaunch(env: Record<string, string>): { command: string; args: string[]; cwd: string; env: Record<string, string> } {
  const entry = mcpServerEntry();
  return {
    command: entry.command === 'node' ? process.execPath : entry.command,
    args: entry.args,
    cwd: REPO_ROOT,
    env: {
      PATH: process.env.PATH ?? '',
      HOME: process.env.HOME ?? '/root',
      ...entry.env,
      VSCODE_SWARM_DOCKER_IMAGE: TEST_IMAGE,
      VSCODE_SWARM_DOCKER_PULL: '0',
      VSCODE_SWARM_GATEWAY_PORT: '0',
      ...env,
    },
  };
}

/** Starts the server from mcp.json with extra environment (state folder, test image, ...). */
export async function launchFromMcpJson(env: Record<string, string>, options: { connectTimeoutMs?: number } = {}): Promise<LaunchedServer> {
  const transport = new StdioClientTransport({ ...mcpJsonLaunch(env), stderr: 'pipe' });
  let stderr = '';
  transport.stderr?.on('data', (chunk: Buffer) => {
    stderr += chunk.toString();
  });
  const client = new Client({ name: 'vscode-swarm-e2e', version: '1.0.0' });
  // The handshake is answered once the controller has initialised (reconcile included): slow on a loaded machine.
  await client.connect(transport, options.connectTimeoutMs ? { timeout: options.connectTimeoutMs } : undefined);
  return {
    client,
    transport,
    pid: transport.pid!,
    stderr: () => stderr,
    close: () => client.close(),
  };
}

export type ToolResult = CallToolResult & { structuredContent?: Record<string, unknown> };

export async function callTool(client: Client, name: string, args: Record<string, unknown> = {}, onprogress?: (p: { progress: number; message?: string }) => void): Promise<ToolResult> {
  return (await client.callTool({ name, arguments: args }, undefined, {
    ...(onprogress ? { onprogress } : {}),
    timeout: 170_000,
  })) as ToolResult;
}

export function errorText(result: ToolResult): string {
  expectError(result);
  return (result.content as { type: string; text: string }[]).map((c) => c.text).join('\n');
}

function expectError(result: ToolResult): void {
  if (!result.isError) throw new Error(`expected an error result, got ${JSON.stringify(result.structuredContent ?? result.content)}`);
}
