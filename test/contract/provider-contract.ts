/**
 * The lifecycle every provider must honour, run against each real provider (Docker, and the AWS and Fly
 * providers on their emulators). What a provider's capabilities say it lacks is a skipped test (reported
 * as skipped, never as passed); a test that mixes checks is split so that what applies is still asserted.
 */
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { InstanceConfig, Provider, VSCodeInstance } from '../../providers/provider.js';
import { editorStatus } from '../helpers/editor-probe.js';

export interface ProviderContractOptions {
  /** Builds a fresh, uninitialised provider. */
  makeProvider: () => Provider | Promise<Provider>;
  image: string;
  /** Workspace-name prefix for everything this suite makes, so clean-up finds it. */
  namePrefix: string;
  /** Removes whatever the suite left behind, even after a failure. */
  cleanUp: () => Promise<void>;
  /** GET this on an endpoint to see the editor answer (200); default /healthz. */
  readinessPath?: string;
}

export function describeProviderContract(label: string, options: ProviderContractOptions): void {
  describe(`provider contract: ${label}`, () => {
    let provider: Provider;
    const id = `${options.namePrefix}-${randomBytes(3).toString('hex')}`;
    const config: InstanceConfig & { image: string } = {
      name: id,
      image: options.image,
      resources: { cpu: 1, memoryMb: 1024 },
      env: { WORKSPACE_OWNER: 'contract' },
      metadata: { suite: 'contract' },
    };
    /** The editor answers at the endpoint; no endpoint at all is not an answer. */
    const answers = async (instance: VSCodeInstance): Promise<boolean> => (await editorStatus(instance, provider, options.readinessPath ?? '/healthz', 5_000)) === 200;
    /** Set once the stop/start test wrote a file into the workspace (only where the provider can exec). */
    let wroteWorkspaceFile = false;

    beforeAll(async () => {
      await options.cleanUp();
      provider = await options.makeProvider();
      await provider.initialize();
    });
    afterAll(async () => {
      await provider?.close?.();
      await options.cleanUp();
    });

    it('declares sane capabilities', () => {
      const caps = provider.getCapabilities();
      expect(caps.resourceLimits.minCpu).toBeGreaterThan(0);
      expect(caps.resourceLimits.maxCpu).toBeGreaterThanOrEqual(caps.resourceLimits.minCpu);
      expect(caps.resourceLimits.maxMemoryMb).toBeGreaterThan(caps.resourceLimits.minMemoryMb);
    });

    it('creates a running instance whose editor answers, labelled so it is found again', async () => {
      const events: number[] = [];
      const created = await provider.createInstance(config, { instanceId: id, onProgress: (e) => events.push(e.fraction) });
      expect(created).toMatchObject({ id, name: id, providerType: provider.type, status: 'running' });
      expect(created.config.resources).toEqual(config.resources);
      expect(created.config.env).toEqual(config.env);
      expect(created.endpoint?.url).toMatch(/^http:\/\//);
      expect(await answers(created)).toBe(true);
      expect(events.length).toBeGreaterThan(0);
      expect(events.at(-1)).toBe(1);

      expect((await provider.getInstance(id))?.status).toBe('running');
      expect((await provider.listInstances()).map((i) => i.id)).toContain(id);
      expect((await provider.listInstances({ status: 'stopped' })).map((i) => i.id)).not.toContain(id);
    });

    it('is idempotent: creating the same id again returns it instead of a twin', async () => {
      const again = await provider.createInstance(config, { instanceId: id });
      expect(again.id).toBe(id);
      expect((await provider.listInstances({ name: id })).length).toBe(1);
    });

    it('stops and starts', async () => {
      if (provider.getCapabilities().exec) {
        // For the persistence checks below; where the provider cannot exec they are skipped.
        const wrote = await provider.executeCommand(id, 'echo kept-across-restarts > contract.txt && echo ok');
        expect(wrote).toMatchObject({ exitCode: 0, stdout: 'ok\n' });
        wroteWorkspaceFile = true;
      }
      const stopped = await provider.stopInstance(id);
      expect(stopped.status).toBe('stopped');
      expect(stopped.endpoint).toBeUndefined();
      expect((await provider.stopInstance(id)).status).toBe('stopped'); // stopping twice is fine

      const started = await provider.startInstance(id);
      expect(started.status).toBe('running');
      expect(await answers(started)).toBe(true);
    });

    it('keeps the workspace files across a stop and start', async (ctx) => {
      const caps = provider.getCapabilities();
      if (!caps.exec || !caps.persistentWorkspace) return ctx.skip('needs exec and a persistent workspace');
      expect(wroteWorkspaceFile).toBe(true);
      expect(await provider.executeCommand(id, 'cat contract.txt')).toMatchObject({ exitCode: 0, stdout: 'kept-across-restarts\n' });
    });

    it('resizes, live where it says it can', async () => {
      const caps = provider.getCapabilities();
      const updated = await provider.updateInstance(id, { resources: { cpu: 0.5, memoryMb: 1536 } });
      expect(updated.config.resources).toEqual({ cpu: 0.5, memoryMb: 1536 });
      expect(updated.updateMode).toBe(caps.liveResize ? 'live' : 'recreate');
      expect((await provider.getInstance(id))?.config.resources).toEqual({ cpu: 0.5, memoryMb: 1536 });
    });

    it('re-creates around the same workspace for a change it cannot make live', async () => {
      const before = await provider.getInstance(id);
      const updated = await provider.updateInstance(id, { env: { WORKSPACE_OWNER: 'changed' } });
      expect(updated.updateMode).toBe('recreate');
      expect(updated.status).toBe('running');
      expect(updated.config.env).toEqual({ WORKSPACE_OWNER: 'changed' });
      expect(updated.providerRef).not.toEqual(before?.providerRef);
      expect(await answers(updated)).toBe(true);
    });

    it('runs the re-created instance with the new environment', async (ctx) => {
      if (!provider.getCapabilities().exec) return ctx.skip('needs exec');
      expect(await provider.executeCommand(id, 'echo "$WORKSPACE_OWNER"')).toMatchObject({ exitCode: 0, stdout: 'changed\n' });
    });

    it('keeps the workspace files through the re-creation', async (ctx) => {
      const caps = provider.getCapabilities();
      if (!caps.exec || !caps.persistentWorkspace) return ctx.skip('needs exec and a persistent workspace');
      expect(wroteWorkspaceFile).toBe(true);
      expect(await provider.executeCommand(id, 'cat contract.txt')).toMatchObject({ exitCode: 0, stdout: 'kept-across-restarts\n' });
    });

    it('returns logs', async (ctx) => {
      if (!provider.getCapabilities().logs) return ctx.skip('the provider declares no logs');
      const logs = await provider.getInstanceLogs(id, { tail: 5 });
      expect(logs.instanceId).toBe(id);
      expect(logs.lines.length).toBeGreaterThan(0);
      expect(logs.lines.length).toBeLessThanOrEqual(5);
    });

    it('refuses logs clearly when it declares none', async (ctx) => {
      if (provider.getCapabilities().logs) return ctx.skip('the provider declares logs');
      await expect(provider.getInstanceLogs(id, { tail: 5 })).rejects.toMatchObject({ code: 'PROVIDER_ERROR', message: expect.stringMatching(/not supported/) });
    });

    it('runs commands with exit codes, stderr, a timeout and an output cap', async (ctx) => {
      if (!provider.getCapabilities().exec) return ctx.skip('the provider declares no exec');
      expect(await provider.executeCommand(id, 'echo out; echo err >&2; exit 3')).toMatchObject({ exitCode: 3, stdout: 'out\n', stderr: 'err\n', timedOut: false });
      const slow = await provider.executeCommand(id, 'sleep 30', { timeoutMs: 1_000 });
      expect(slow.timedOut).toBe(true);
      expect(slow.durationMs).toBeLessThan(10_000);
      const big = await provider.executeCommand(id, 'head -c 100000 /dev/zero | tr "\\0" x', { maxOutputBytes: 1_000 });
      expect(big.stdout.length).toBe(1_000);
      expect(big.truncated).toBe(true);
    });

    it('refuses operations on an instance it does not have', async () => {
      await expect(provider.startInstance(`${options.namePrefix}-missing`)).rejects.toMatchObject({ code: 'NOT_FOUND' });
      await expect(provider.stopInstance(`${options.namePrefix}-missing`)).rejects.toMatchObject({ code: 'NOT_FOUND' });
      expect(await provider.getInstance(`${options.namePrefix}-missing`)).toBeNull();
      expect(await provider.deleteInstance(`${options.namePrefix}-missing`)).toBe(false);
    });

    let keptAndRecreated = false;
    it('keeps the workspace on delete when asked, and a re-create finds it', async (ctx) => {
      if (!provider.getCapabilities().persistentWorkspace) return ctx.skip('the provider declares no persistent workspace');
      expect(await provider.deleteInstance(id, { keepWorkspace: true })).toBe(true);
      expect(await provider.getInstance(id)).toBeNull();
      expect((await provider.listInstances()).map((i) => i.id)).not.toContain(id);
      const again = await provider.createInstance(config, { instanceId: id });
      expect(again.status).toBe('running');
      expect(await answers(again)).toBe(true);
      keptAndRecreated = true;
    });

    it('finds the kept files in the re-created instance', async (ctx) => {
      const caps = provider.getCapabilities();
      if (!caps.exec || !caps.persistentWorkspace) return ctx.skip('needs exec and a persistent workspace');
      expect(keptAndRecreated).toBe(true);
      expect(wroteWorkspaceFile).toBe(true);
      expect(await provider.executeCommand(id, 'cat contract.txt')).toMatchObject({ exitCode: 0, stdout: 'kept-across-restarts\n' });
    });

    it('deletes completely', async () => {
      expect(await provider.deleteInstance(id)).toBe(true);
      expect(await provider.getInstance(id)).toBeNull();
      expect((await provider.listInstances()).map((i) => i.id)).not.toContain(id);
      expect(await provider.deleteInstance(id)).toBe(false);
    });
  });
}
