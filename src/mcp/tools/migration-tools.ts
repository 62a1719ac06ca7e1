/**
 * The migration tools share their schemas, so they live together: plan, start, cancel, status, list.
 */
import type { McpServer } from '@modelcontextprotocol/server';
import { z } from 'zod';
import { ProviderTypeSchema } from '../../../providers/provider.js';
import { MIGRATION_STATUSES, MIGRATION_STEPS, MIGRATION_STRATEGIES, MigrationSchema } from '../../migration/migration-manager.js';
import { instanceIdInput, requireMigrations, runLongTool, runTool, type ToolContext } from '../tool-support.js';

const strategyInput = z.enum(MIGRATION_STRATEGIES).optional().describe('stop-and-recreate (default: files final before copying) or create-then-stop (shorter downtime)');
const migrationIdInput = z.string().describe('The migration id, as returned by start_migration');

const PlanSchema = z.object({
  instanceId: z.string(),
  instanceName: z.string(),
  source: z.string(),
  target: z.string(),
  strategy: z.enum(MIGRATION_STRATEGIES),
  resources: z.object({ cpu: z.number(), memoryMb: z.number() }),
  image: z.string(),
  steps: z.array(z.object({ name: z.enum(MIGRATION_STEPS), what: z.string() })),
  expectedDowntimeMs: z.number(),
  workspaceBytes: z.number(),
  warnings: z.array(z.string()),
});

export function registerMigrationTools(server: McpServer, ctx: ToolContext): void {
  server.registerTool(
    'create_migration_plan',
    {
      title: 'Plan a migration',
      description: 'Shows what moving a workspace to another provider would do, step by step, with its resources and the expected downtime, without changing anything.',
      inputSchema: { instanceId: instanceIdInput, target: ProviderTypeSchema, strategy: strategyInput },
      outputSchema: PlanSchema.shape,
      annotations: { readOnlyHint: true, openWorldHint: false },
    },
    ({ instanceId, target, strategy }) =>
      runTool(ctx, 'create_migration_plan', async () => {
        const plan = await ctx.swarm.planMigration(instanceId, target, strategy);
        const text = [`Move ${plan.instanceName} from ${plan.source} to ${plan.target} (${plan.strategy}), about ${plan.expectedDowntimeMs} ms of downtime:`, ...plan.steps.map((s, i) => `${i + 1}. ${s.name}: ${s.what}`), ...plan.warnings.map((w) => `Note: ${w}`)].join('\n');
        return { text, structured: { ...plan } };
      }),
  );

  server.registerTool(
    'start_migration',
    {
      title: 'Migrate a workspace',
      description:
        'Moves a workspace with its files to another provider; the workspace keeps its id and URL. Every file is verified by SHA-256 before the source is removed; on any failure the source is left as it was. Waits for the end unless wait is false, reporting progress per step.',
      inputSchema: {
        instanceId: instanceIdInput,
        target: ProviderTypeSchema,
        strategy: strategyInput,
        timeoutMs: z.number().int().min(1_000).max(86_400_000).optional(),
        wait: z.boolean().optional().describe('Wait until it ends (default true)'),
      },
      outputSchema: { migration: MigrationSchema },
      annotations: { readOnlyHint: false, destructiveHint: true, idempotentHint: false, openWorldHint: false },
    },
    ({ instanceId, target, strategy, timeoutMs, wait }, extra) =>
      runLongTool(ctx, 'start_migration', extra, async ({ onProgress: progress }) => {
        const manager = requireMigrations(ctx); // progress polls below read it directly: already authorized, not audited
        const { migration, wait: done } = await ctx.swarm.startMigration(instanceId, target, { ...(strategy ? { strategy } : {}), ...(timeoutMs ? { timeoutMs } : {}) });
        if (wait === false) return { text: `Migration ${migration.id} started.`, structured: { migration } };
        let timer: NodeJS.Timeout | undefined;
        if (progress) {
          timer = setInterval(() => {
            void manager.get(migration.id).then((m) => {
              const done = m.steps.filter((s) => s.status === 'completed').length;
              const current = m.steps.find((s) => s.status === 'in-progress');
              progress({ fraction: done / m.steps.length, message: current ? current.name : m.status });
            }, () => undefined);
          }, 250);
        }
        const final = await done.finally(() => clearInterval(timer));
        return { text: `Migration ${final.id}: ${final.status}${final.reason ? ` (${final.reason})` : ''}`, structured: { migration: final } };
      }),
  );

  server.registerTool(
    'cancel_migration',
    {
      title: 'Cancel a migration',
      description: 'Stops a migration that has not verified its target yet and puts the workspace back as it was. A finished migration cannot be cancelled.',
      inputSchema: { migrationId: migrationIdInput },
      outputSchema: { migration: MigrationSchema },
      annotations: { readOnlyHint: false, destructiveHint: false, idempotentHint: false, openWorldHint: false },
    },
    ({ migrationId }) =>
      runTool(ctx, 'cancel_migration', async () => {
        const migration = await ctx.swarm.cancelMigration(migrationId);
        return { text: `Migration ${migration.id}: ${migration.status} (${migration.reason ?? ''})`, structured: { migration } };
      }),
  );

  server.registerTool(
    'get_migration_status',
    {
      title: 'Migration status',
      description: 'One migration with the outcome of each step.',
      inputSchema: { migrationId: migrationIdInput },
      outputSchema: { migration: MigrationSchema },
      annotations: { readOnlyHint: true, openWorldHint: false },
    },
    ({ migrationId }) =>
      runTool(ctx, 'get_migration_status', async () => {
        const migration = await ctx.swarm.getMigration(migrationId);
        const steps = migration.steps.map((s) => `${s.name}: ${s.status}${s.detail ? ` (${s.detail})` : ''}`).join('\n');
        return { text: `Migration ${migration.id} of ${migration.instanceId}, ${migration.source} → ${migration.target}: ${migration.status}\n${steps}`, structured: { migration } };
      }),
  );

  server.registerTool(
    'list_migrations',
    {
      title: 'List migrations',
      description: 'Migrations, oldest first, optionally for one workspace or in one status.',
      inputSchema: { instanceId: instanceIdInput.optional(), status: z.enum(MIGRATION_STATUSES).optional() },
      outputSchema: { migrations: z.array(MigrationSchema) },
      annotations: { readOnlyHint: true, openWorldHint: false },
    },
    ({ instanceId, status }) =>
      runTool(ctx, 'list_migrations', async () => {
        const migrations = await ctx.swarm.listMigrations({ ...(instanceId ? { instanceId } : {}), ...(status ? { status } : {}) });
        return { text: migrations.map((m) => `${m.id} ${m.instanceId} ${m.source}→${m.target} ${m.status}`).join('\n') || 'No migrations.', structured: { migrations } };
      }),
  );
}
