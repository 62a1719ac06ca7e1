/**
 * One GET to an instance's editor the way the controller reaches it (src/timing/editor-probe.ts): at its
 * endpoint, with the endpoint's Host header and the provider's credential for whatever proxy fronts the
 * editor (an AWS host agent's), with the defaults tests want.
 */
import type { Provider, VSCodeInstance } from '../../providers/provider.js';
import { editorStatus as probe } from '../../src/timing/editor-probe.js';

/** The status the editor answered with, or 0 when nothing answered in time (or there is no instance). */
export function editorStatus(instance: VSCodeInstance | undefined, provider: Pick<Provider, 'editorRequestHeaders'>, target = '/healthz', timeoutMs = 5_000): Promise<number> {
  return instance ? probe(instance, provider, target, timeoutMs) : Promise.resolve(0);
}
