import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);

function readVersion(): string {
  for (const candidate of ['../package.json', '../../package.json']) {
    try {
      const pkg = require(candidate) as { name?: string; version?: string };
      if (pkg.name === 'vscode-swarm' && pkg.version) return pkg.version;
    } catch {
      // try the next location: src/ and dist/src/ sit at different depths
    }
  }
  return '0.0.0';
}

export const PACKAGE_VERSION = readVersion();
