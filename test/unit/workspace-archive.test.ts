/**
 * The manifest a migration verifies files by: real tar archives (tar-stream) holding files named after
 * Object.prototype's members, which a plain-object manifest drops (`__proto__`) or invents
 * (`constructor`, `toString`, `hasOwnProperty` looked up on any object).
 */
import { createHash } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import tar from 'tar-stream';
import { describe, expect, it } from 'vitest';
import { entryOf, manifestDifferences, manifestOf, openSpooled, spoolArchive, totalBytes } from '../../src/migration/workspace-archive.js';

const TRICKY = ['__proto__', 'constructor', 'hasOwnProperty', 'toString', 'valueOf', 'dir/__proto__'];

async function archive(files: Record<string, string>, extra: (pack: tar.Pack) => void = () => undefined): Promise<Buffer> {
  const pack = tar.pack();
  for (const [name, content] of Object.entries(files)) pack.entry({ name: `./${name}` }, content);
  extra(pack);
  pack.finalize();
  const chunks: Buffer[] = [];
  for await (const chunk of pack) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

/** Files as an object with own keys only (an object literal would turn "__proto__" into the prototype). */
function files(entries: [string, string][]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [name, content] of entries) Object.defineProperty(out, name, { value: content, enumerable: true, writable: true, configurable: true });
  return out;
}

const sha256 = (text: string): string => createHash('sha256').update(text).digest('hex');

describe('workspace manifest', () => {
  const all = files([['plain.txt', 'plain'], ...TRICKY.map((name): [string, string] => [name, `content of ${name}`])]);

  it('lists every regular file, whatever its name, with size and SHA-256', async () => {
    const manifest = await manifestOf(await archive(all, (pack) => pack.entry({ name: './sub', type: 'directory' })));
    expect(Object.keys(manifest).sort()).toEqual(['plain.txt', ...TRICKY].sort());
    for (const name of TRICKY) expect(entryOf(manifest, name), name).toEqual({ size: `content of ${name}`.length, sha256: sha256(`content of ${name}`) });
    expect(Object.getPrototypeOf(manifest)).toBeNull();
    expect(totalBytes(manifest)).toBe(Object.values(all).reduce((n, c) => n + c.length, 0));
  });

  it('has no entry for a name it does not hold, even one every object answers to', async () => {
    const manifest = await manifestOf(await archive({ 'plain.txt': 'plain' }));
    for (const name of TRICKY) expect(entryOf(manifest, name), name).toBeUndefined();
    expect(Object.keys(manifest)).toEqual(['plain.txt']);
  });

  it('reports each tricky file that is missing on the other side', async () => {
    const expected = await manifestOf(await archive(all));
    for (const name of TRICKY) {
      const without = files(Object.entries(all).filter(([n]) => n !== name));
      expect(manifestDifferences(expected, await manifestOf(await archive(without))), name).toEqual([`${name}: missing`]);
    }
  });

  it('reports each tricky file whose content changed', async () => {
    const expected = await manifestOf(await archive(all));
    for (const name of TRICKY) {
      const changed = files(Object.entries(all).map(([n, c]): [string, string] => [n, n === name ? `${c}!` : c]));
      const differences = manifestDifferences(expected, await manifestOf(await archive(changed)));
      expect(differences, name).toEqual([`${name}: content differs (${all[name]!.length} vs ${all[name]!.length + 1} bytes)`]);
    }
  });

  it('finds nothing to report when every file arrived intact', async () => {
    const a = await manifestOf(await archive(all));
    const b = await manifestOf(await archive(all));
    expect(manifestDifferences(a, b)).toEqual([]);
  });

  it('reads a manifest built as a plain object by its own properties only', () => {
    // Callers may build one by hand (tests, a stored manifest): `constructor` must still be missing.
    const expected = files([['constructor', 'x'], ['toString', 'y']]);
    const wanted = Object.fromEntries(Object.entries(expected).map(([n, c]) => [n, { size: c.length, sha256: sha256(c) }]));
    expect(manifestDifferences(wanted, {})).toEqual(['constructor: missing', 'toString: missing']);
  });
});

describe('streamed transfers', () => {
  /** A 6 MB archive delivered in 64 KiB chunks, the way an engine or an agent streams one. */
  const big = async (): Promise<Buffer> => archive({ 'data.bin': 'x'.repeat(6 * 2 ** 20), 'small.txt': 'hello' });
  const chunked = (buffer: Buffer, pause?: () => Promise<void>): Readable =>
    Readable.from((async function* () {
      for (let at = 0; at < buffer.length; at += 65_536) {
        await pause?.();
        yield buffer.subarray(at, at + 65_536);
      }
    })());

  it('spools to a file with the manifest computed on the way, and reads back identical', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'vscode-swarm-spool-'));
    try {
      const source = await big();
      const spooled = await spoolArchive(chunked(source), path.join(dir, 'a.tar'), { maxBytes: 10 * 2 ** 20, what: 'test workspace' });
      expect(spooled.bytes).toBe(source.length);
      expect((await readFile(spooled.file)).equals(source)).toBe(true);
      expect(spooled.manifest).toEqual(await manifestOf(source));
      expect(await manifestOf(openSpooled(spooled))).toEqual(spooled.manifest);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('stops at the size cap, names it, and leaves no partial file', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'vscode-swarm-spool-'));
    try {
      let pulled = 0;
      const source = chunked(await big(), async () => void pulled++);
      await expect(spoolArchive(source, path.join(dir, 'a.tar'), { maxBytes: 2 ** 20, what: 'the workspace of w-1' })).rejects.toMatchObject({
        code: 'CONFLICT',
        message: expect.stringMatching(/^the workspace of w-1 is larger than the 1048576 bytes a transfer may carry/),
      });
      expect(pulled).toBeLessThan(40); // it stopped reading, rather than reading all 96 chunks and refusing at the end
      expect(await readdir(dir)).toEqual([]);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('checks the deadline inside the copy', async () => {
    let clock = 0;
    const source = chunked(await big(), async () => void (clock += 100));
    await expect(manifestOf(source, { maxBytes: 2 ** 30, deadline: 1_000, now: () => clock, what: 'the workspace of w-2' })).rejects.toMatchObject({
      code: 'TIMEOUT',
      message: expect.stringMatching(/^the workspace of w-2: the transfer's time ran out/),
    });
    expect(clock).toBeLessThan(2_000);
  });
});
