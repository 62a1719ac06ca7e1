/**
 * The snapshot tools share their schemas, so they live together: create, list, delete, restore, and fork
 * (a new workspace from a snapshot or from a workspace). Every call goes through `ctx.swarm`, which
 * authorizes it and records it; the work is in src/snapshots/.
 */
import type { McpServer } from '@modelcontextprotocol/server';
import { z } from 'zod';
import { InstanceNameSchema, ProviderTypeSchema } from '../../../providers/provider.js';
import { SnapshotSchema, type Snapshot } from '../../snapshots/snapshot-store.js';
import { AccessLinkSchema, InstanceOutputSchema, describeInstance, instanceIdInput, runLongTool, runTool, type ToolContext } from '../tool-support.js';

/**
 * Loose on purpose: a malformed id is refused by the snapshot layer after the instance a call names has
 * been checked, so that a bad snapshot id cannot tell someone else's instance from a missing one.
 */
const snapshotIdInput = z.string().min(1).max(64).describe('The snapshot id (snap-0123456789ab), as returned by create_snapshot or list_snapshots');

export function describeSnapshot(s: Snapshot): string {
  return `${s.id}${s.name ? ` "${s.name}"` : ''} of ${s.instanceName} [${s.instanceId}] on ${s.sourceProvider}: ${s.files} files, ${s.bytes} bytes, ${s.consistency}, taken ${s.createdAt}, expires ${s.expiresAt}, owner ${s.owner}`;
}

export function registerSnapshotTools(server: McpServer, ctx: ToolContext): void {
  server.registerTool(
    'create_snapshot',
    {
      title: 'Snapshot a workspace',
      description:
        "Copies a workspace's files, with a SHA-256 per file, into a snapshot kept on the controller until it expires (snapshots.retentionDays). By default the copy is taken while the workspace runs (files an editor writes meanwhile may be from slightly different moments); stopForSnapshot: true stops it for the copy and starts it again, for a consistent copy. The snapshot belongs to the workspace's owner and counts against their snapshot limits.",
      inputSchema: {
        instanceId: instanceIdInput,
        name: InstanceNameSchema.optional().describe('A label for the snapshot'),
        stopForSnapshot: z.boolean().optional().describe('Stop a running workspace for the copy and start it again after (default false)'),
      },
      outputSchema: { snapshot: SnapshotSchema },
      annotations: { readOnlyHint: false, destructiveHint: false, idempotentHint: false, openWorldHint: false },
    },
    ({ instanceId, name, stopForSnapshot }, extra) =>
      runLongTool(ctx, 'create_snapshot', extra, async ({ onProgress }) => {
        const snapshot = await ctx.swarm.createSnapshot(instanceId, { ...(name ? { name } : {}), ...(stopForSnapshot !== undefined ? { stopForSnapshot } : {}), ...(onProgress ? { onProgress } : {}) });
        return { text: `Snapshot taken: ${describeSnapshot(snapshot)}`, structured: { snapshot } };
      }),
  );

  server.registerTool(
    'list_snapshots',
    {
      title: 'List snapshots',
      description: 'Your snapshots (every owner’s for admins), oldest first, optionally of one workspace. Expired snapshots are deleted first.',
      inputSchema: { instanceId: instanceIdInput.optional().describe('Only snapshots of this workspace') },
      outputSchema: { snapshots: z.array(SnapshotSchema) },
      annotations: { readOnlyHint: true, openWorldHint: false },
    },
    ({ instanceId }) =>
      runTool(ctx, 'list_snapshots', async () => {
        const snapshots = await ctx.swarm.listSnapshots(instanceId ? { instanceId } : {});
        return { text: snapshots.map(describeSnapshot).join('\n') || 'No snapshots.', structured: { snapshots } };
      }),
  );

  server.registerTool(
    'delete_snapshot',
    {
      title: 'Delete a snapshot',
      description: 'Deletes a snapshot and its files on the controller; workspaces made from it are not affected.',
      inputSchema: { snapshotId: snapshotIdInput },
      outputSchema: { snapshot: SnapshotSchema, deleted: z.boolean() },
      annotations: { readOnlyHint: false, destructiveHint: true, idempotentHint: false, openWorldHint: false },
    },
    ({ snapshotId }) =>
      runTool(ctx, 'delete_snapshot', async () => {
        const snapshot = await ctx.swarm.deleteSnapshot(snapshotId);
        return { text: `Deleted snapshot ${snapshot.id}.`, structured: { snapshot, deleted: true } };
      }),
  );

  server.registerTool(
    'restore_snapshot',
    {
      title: 'Restore a snapshot',
      description:
        "Replaces a workspace's files with a snapshot's: the folder is emptied (files not in the snapshot go), the snapshot is copied in, and every file is checked by SHA-256 against the snapshot before this returns. A damaged snapshot is refused before anything changes. A stopped workspace is started for it and stopped again after.",
      inputSchema: { instanceId: instanceIdInput, snapshotId: snapshotIdInput },
      outputSchema: { instanceId: z.string(), snapshotId: z.string(), files: z.number().int(), bytes: z.number().int() },
      annotations: { readOnlyHint: false, destructiveHint: true, idempotentHint: true, openWorldHint: false },
    },
    ({ instanceId, snapshotId }, extra) =>
      runLongTool(ctx, 'restore_snapshot', extra, async ({ onProgress }) => {
        const result = await ctx.swarm.restoreSnapshot(instanceId, snapshotId, onProgress ? { onProgress } : {});
        return { text: `Restored ${result.instanceId} to ${result.snapshotId}: ${result.files} files verified by SHA-256.`, structured: { ...result } };
      }),
  );

  server.registerTool(
    'fork_instance',
    {
      title: 'Fork a workspace',
      description:
        'Creates a new workspace, owned by you, with the files of a snapshot (snapshotId) or of a workspace (instanceId: a snapshot of it is taken first and kept), on the same provider or on providerType. Every file is checked by SHA-256 before this returns; on any failure the new workspace is deleted. Your workspace quota applies.',
      inputSchema: {
        name: InstanceNameSchema.describe('The new workspace’s name (must be new)'),
        snapshotId: snapshotIdInput.optional(),
        instanceId: instanceIdInput.optional().describe('Fork this workspace as it is now (a snapshot of it is taken first)'),
        providerType: ProviderTypeSchema.optional().describe('Where the fork runs (default: where the snapshot was taken)'),
      },
      outputSchema: { instance: InstanceOutputSchema, snapshotId: z.string(), files: z.number().int(), created: z.boolean(), fromWarmPool: z.boolean(), access: AccessLinkSchema.optional() },
      annotations: { readOnlyHint: false, destructiveHint: false, idempotentHint: false, openWorldHint: false },
    },
    ({ name, snapshotId, instanceId, providerType }, extra) =>
      runLongTool(ctx, 'fork_instance', extra, async (options) => {
        const result = await ctx.swarm.forkInstance({ name, ...(snapshotId ? { snapshotId } : {}), ...(instanceId ? { instanceId } : {}), ...(providerType ? { providerType } : {}) }, options);
        const open = result.access ? `\nOpen it: ${result.access.accessUrl} (one-time link, valid until ${result.access.expiresAt})` : '';
        return { text: `Forked from ${result.snapshotId} (${result.files} files verified): ${describeInstance(result.instance)}${open}`, structured: { ...result } };
      }),
  );
}
