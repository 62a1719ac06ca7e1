/**
 * What the dev container tests run on, made locally (no registry is reachable): an image built FROM the
 * editor image with code-server REMOVED and a marker file added, so a workspace whose editor answers in it
 * proves the editor came from the mount and the files from this image; and a minimal `.vsix` extension
 * package (a zip with `[Content_Types].xml`, `extension.vsixmanifest` and `extension/package.json`, which
 * is what code-server's `--install-extension` reads).
 */
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { PassThrough } from 'node:stream';
import zlib from 'node:zlib';
import tar from 'tar-stream';
import { TEST_IMAGE, docker } from './docker.js';

/** The image without an editor; the tag names what it is built from, so it is built once. */
export const NO_EDITOR_IMAGE = 'vscode-swarm/devcontainer-test:no-editor-1';
export const MARKER_PATH = '/etc/vscode-swarm-devcontainer-marker';
export const MARKER_TEXT = 'built for the dev container test, without code-server';

/** Builds NO_EDITOR_IMAGE from the editor image unless the engine has it. */
export async function ensureNoEditorImage(): Promise<string> {
  const present = await docker.getImage(NO_EDITOR_IMAGE).inspect().then(() => true, () => false);
  if (present) return NO_EDITOR_IMAGE;
  const dockerfile = [
    `FROM ${TEST_IMAGE}`,
    'USER root',
    // Upstream's layout and the offline editor image's: no code-server and no node left anywhere.
    'RUN rm -rf /usr/lib/code-server /usr/bin/code-server /opt/code-server /usr/local/bin/node',
    `RUN echo '${MARKER_TEXT}' > ${MARKER_PATH}`,
    'USER coder',
    '',
  ].join('\n');
  const context = tar.pack();
  context.entry({ name: 'Dockerfile' }, dockerfile);
  context.finalize();
  const stream = await docker.buildImage(context.pipe(new PassThrough()), { t: NO_EDITOR_IMAGE });
  await new Promise<void>((resolve, reject) =>
    docker.modem.followProgress(stream, (err, output: { error?: string }[]) => {
      const failed = err ?? output.find((o) => o.error)?.error;
      if (failed) reject(failed instanceof Error ? failed : new Error(`building ${NO_EDITOR_IMAGE}: ${failed}`));
      else resolve();
    }),
  );
  return NO_EDITOR_IMAGE;
}

export interface TestExtension {
  /** `publisher.name`, as devcontainer.json names it. */
  id: string;
  version: string;
  /** The .vsix written, named `<id>.vsix`. */
  file: string;
}

/** Writes a minimal extension package `<dir>/<publisher>.<name>.vsix`. */
export async function writeTestVsix(dir: string, publisher = 'vscode-swarm-test', name = 'hello', version = '0.0.1'): Promise<TestExtension> {
  await mkdir(dir, { recursive: true });
  const id = `${publisher}.${name}`;
  const packageJson = JSON.stringify({ name, displayName: 'Hello (test)', publisher, version, engines: { vscode: '^1.60.0' }, categories: ['Other'], contributes: {} }, null, 2);
  const manifest = `<?xml version="1.0" encoding="utf-8"?>
<PackageManifest Version="2.0.0" xmlns="http://schemas.microsoft.com/developer/vsx-schema/2011">
  <Metadata>
    <Identity Language="en-US" Id="${name}" Version="${version}" Publisher="${publisher}" />
    <DisplayName>Hello (test)</DisplayName>
    <Description xml:space="preserve">A test extension</Description>
    <Categories>Other</Categories>
    <Properties>
      <Property Id="Microsoft.VisualStudio.Code.Engine" Value="^1.60.0" />
    </Properties>
  </Metadata>
  <Installation>
    <InstallationTarget Id="Microsoft.VisualStudio.Code"/>
  </Installation>
  <Dependencies/>
  <Assets>
    <Asset Type="Microsoft.VisualStudio.Code.Manifest" Path="extension/package.json" Addressable="true" />
  </Assets>
</PackageManifest>
`;
  const contentTypes = `<?xml version="1.0" encoding="utf-8"?>
<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types"><Default Extension=".json" ContentType="application/json"/><Default Extension=".vsixmanifest" ContentType="text/xml"/></Types>
`;
  const file = path.join(dir, `${id}.vsix`);
  await writeFile(file, zip({ '[Content_Types].xml': contentTypes, 'extension.vsixmanifest': manifest, 'extension/package.json': packageJson }));
  return { id, version, file };
}

/** A zip archive of the files, stored (no compression): what a .vsix reader needs and no more. */
function zip(files: Record<string, string>): Buffer {
  const locals: Buffer[] = [];
  const centrals: Buffer[] = [];
  let offset = 0;
  for (const [name, text] of Object.entries(files)) {
    const data = Buffer.from(text);
    const nameBytes = Buffer.from(name);
    const crc = zlib.crc32(data);
    const local = Buffer.alloc(30);
    local.writeUInt32LE(0x04034b50, 0);
    local.writeUInt16LE(20, 4); // version needed
    local.writeUInt16LE(0, 6); // flags
    local.writeUInt16LE(0, 8); // stored
    local.writeUInt32LE(0, 10); // time and date
    local.writeUInt32LE(crc, 14);
    local.writeUInt32LE(data.length, 18);
    local.writeUInt32LE(data.length, 22);
    local.writeUInt16LE(nameBytes.length, 26);
    local.writeUInt16LE(0, 28);
    const central = Buffer.alloc(46);
    central.writeUInt32LE(0x02014b50, 0);
    central.writeUInt16LE(20, 4); // made by
    central.writeUInt16LE(20, 6); // needed
    central.writeUInt16LE(0, 8);
    central.writeUInt16LE(0, 10);
    central.writeUInt32LE(0, 12);
    central.writeUInt32LE(crc, 16);
    central.writeUInt32LE(data.length, 20);
    central.writeUInt32LE(data.length, 24);
    central.writeUInt16LE(nameBytes.length, 28);
    central.writeUInt32LE(offset, 42);
    locals.push(local, nameBytes, data);
    centrals.push(central, nameBytes);
    offset += local.length + nameBytes.length + data.length;
  }
  const centralSize = centrals.reduce((n, b) => n + b.length, 0);
  const end = Buffer.alloc(22);
  end.writeUInt32LE(0x06054b50, 0);
  end.writeUInt16LE(Object.keys(files).length, 8);
  end.writeUInt16LE(Object.keys(files).length, 10);
  end.writeUInt32LE(centralSize, 12);
  end.writeUInt32LE(offset, 16);
  return Buffer.concat([...locals, ...centrals, end]);
}
