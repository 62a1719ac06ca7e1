/**
 * A lightweight stand-in for the editor image, for tests that need many containers (a hundred real
 * code-servers do not fit on a 2-core machine): Debian's static busybox as the whole root filesystem,
 * whose entrypoint ignores its arguments (the editor flags the Docker provider passes) and serves
 * `/healthz` on port 8080 with busybox httpd, answering the way code-server does.
 */
import { execFile } from 'node:child_process';
import { access, mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { docker } from './docker.js';

export const STANDIN_IMAGE = 'vscode-swarm/healthz-standin:1';

const run = promisify(execFile);

const BUSYBOX = '/bin/busybox';

/** The image's whole userland is one binary copied from the host, so it must exist and be statically linked. */
async function assertStaticBusybox(): Promise<void> {
  const hint = 'install it with `bash scripts/setup.sh --for-tests` (Debian package busybox-static)';
  await access(BUSYBOX).catch(() => { throw new Error(`the stand-in image needs a static ${BUSYBOX}, and there is none: ${hint}`); });
  // ldd exits non-zero with "not a dynamic executable" for a static binary.
  const dynamic = await run('ldd', [BUSYBOX]).then(() => true, () => false);
  if (dynamic) throw new Error(`the stand-in image needs a static ${BUSYBOX}, and this one is dynamically linked (Debian's busybox): ${hint}`);
}

const ENTRY = `#!/bin/sh
mkdir -p /www /tmp
printf '{"status":"alive","lastHeartbeat":0}' > /www/healthz
exec /bin/httpd -f -p 8080 -h /www
`;

/** Builds the image once (docker import of a busybox rootfs); a no-op when it exists. */
export async function ensureStandinImage(): Promise<string> {
  const present = await docker.getImage(STANDIN_IMAGE).inspect().then(() => true, () => false);
  if (present) return STANDIN_IMAGE;
  await assertStaticBusybox();
  const root = await mkdtemp(path.join(os.tmpdir(), 'vscode-swarm-standin-'));
  try {
    const script = [
      'set -euo pipefail',
      'mkdir -p "$ROOT/bin" "$ROOT/www" "$ROOT/tmp" "$ROOT/home/coder/project"',
      'cp /bin/busybox "$ROOT/bin/busybox"',
      'for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -sf busybox "$ROOT/bin/$a"; done',
      'printf "%s" "$ENTRY" > "$ROOT/entry.sh"',
      'chmod 755 "$ROOT/entry.sh"',
      `tar -C "$ROOT" -c . | docker import -c 'ENV PATH=/bin' -c 'ENTRYPOINT ["/bin/sh","/entry.sh"]' - ${STANDIN_IMAGE} >/dev/null`,
    ].join('\n');
    await run('bash', ['-c', script], { env: { ...process.env, ROOT: root, ENTRY } });
  } finally {
    await rm(root, { recursive: true, force: true });
  }
  return STANDIN_IMAGE;
}
