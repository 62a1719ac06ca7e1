/**
 * Forwarded ports: an app listening on a port inside a workspace, reached through the gateway at its own
 * host name, `<port>--<id>.<baseDomain>`, over HTTP and WebSockets, by whoever may open the workspace.
 *
 * The gateway does not publish anything: it goes through code-server's own port proxy on the editor
 * endpoint (`/proxy/<port>/…`, which strips that prefix before the app sees the path), so it works on every
 * provider the editor is reached on (Docker, an AWS host agent's proxy, Fly). code-server prefixes the
 * redirects an app sends with `/proxy/<port>`; that prefix is taken off again here.
 *
 * Host names cannot clash with instances: instance ids never contain `--` (the controller collapses runs
 * of separators), and a host label of the form `<digits>--<id>` is always read as a port.
 *
 * Signing in. A port host is a different host from the instance's, so the instance's session cookie is
 * not sent to it. A browser without a port session is sent to the instance host with a signed, short-lived,
 * one-time hand-over; the instance host, where the user's session is, checks that session and sends the
 * browser back with a one-time code, which the port host exchanges for a host-only session cookie of its
 * own. Someone without a session on the instance is refused there, exactly as when opening the editor:
 * nothing says whether the port exists or anything listens on it.
 *
 * Share links: a token bound to (instance, port, expiry) that signs any browser in to that port host only,
 * until its expiry; it never opens the editor. Bumping the instance's accessEpoch (revokeExisting) revokes
 * shares and port sessions with every other link and session.
 *
 * Every token is an existing gateway token (access-tokens.ts, Ed25519, same keys): hand-overs, codes and
 * shares are link tokens, port sessions are session tokens, each with its purpose and the port host in its
 * signed subject (`port-handover:3000--abc`), which no instance id can equal.
 */
import type http from 'node:http';
import type { VSCodeInstance } from '../../providers/provider.js';
import { INSTANCE_ID_PATTERN } from '../../providers/provider.js';
import type { SwarmController } from '../controller/swarm-controller.js';
import { SwarmError, asSwarmError, invalidInput } from '../errors.js';
import type { Logger } from '../logger.js';
import { forwardedPortsOf } from '../workspace/devcontainer.js';
import { TOKEN_PARAM, type AccessLinks } from './access-links.js';
import type { TokenClaims } from './access-tokens.js';
import { deny, readCookies, sameOrigin, type Admission } from './gateway.js';

/** The editor's own port inside every workspace: never forwarded (it would open the editor). */
export const EDITOR_PORT = 8080;
/** Between the port and the instance id in a port host's first label. */
export const PORT_SEPARATOR = '--';
/** The path on an instance host that turns a hand-over into a code for the port host. */
export const HANDOVER_PATH = '/__swarm/port-handover';
export const HANDOVER_PARAM = 'swarm_handover';
/** Where to go on the port host after signing in (a path there, nothing else). */
export const NEXT_PARAM = 'next';
export const MAX_SHARE_MINUTES = 1_440;
export const DEFAULT_SHARE_MINUTES = 60;
const HANDOVER_TTL_MS = 2 * 60_000;
const CODE_TTL_MS = 60_000;
/** Listing ports reads two small files; this bounds it like any exec. */
const LIST_TIMEOUT_MS = 15_000;
const LIST_MAX_OUTPUT = 1024 * 1024;

export interface PortHost {
  instanceId: string;
  port: number;
}

type Purpose = 'handover' | 'code' | 'session' | 'share';
const PREFIX: Record<Purpose, string> = { handover: 'port-handover:', code: 'port-code:', session: 'port:', share: 'port-share:' };

/** `3000--abc`: a port host's first label. */
export function portHostLabel(target: PortHost): string {
  return `${target.port}${PORT_SEPARATOR}${target.instanceId}`;
}

/** The port and instance a host label names, or undefined when it names no forwarded port. */
export function parsePortLabel(label: string | undefined): PortHost | undefined {
  const match = label ? /^([1-9][0-9]{0,4})--(.+)$/.exec(label) : null;
  if (!match) return undefined;
  const port = Number(match[1]);
  const instanceId = match[2]!;
  if (port > 65_535 || instanceId.includes(PORT_SEPARATOR) || !INSTANCE_ID_PATTERN.test(instanceId)) return undefined;
  return { instanceId, port };
}

/** A port that can be forwarded at all: 1-65535 and not the editor's own. */
export function checkForwardablePort(port: unknown, field = 'port'): number {
  if (typeof port !== 'number' || !Number.isInteger(port) || port < 1 || port > 65_535 || port === EDITOR_PORT) {
    throw invalidInput(field, `a TCP port from 1 to 65535 other than the editor's own ${EDITOR_PORT}`, port);
  }
  return port;
}

/** The path code-server's port proxy serves a port-host request under. */
export function forwardedPath(port: number, url: string): string {
  return `/proxy/${port}${url.startsWith('/') ? url : `/${url}`}`;
}

/** Takes code-server's `/proxy/<port>` prefix back off an app's redirect, so it stays on the port host. */
export function unprefixLocation(headers: http.IncomingHttpHeaders, port: number): void {
  const location = headers.location;
  if (typeof location !== 'string') return;
  const prefix = `/proxy/${port}`;
  if (location === prefix) headers.location = '/';
  else if (location.startsWith(`${prefix}/`) || location.startsWith(`${prefix}?`)) headers.location = `/${location.slice(prefix.length).replace(/^\/+/, '')}`;
}

/** Whether a request to an instance host is the hand-over step. */
export function isHandover(req: http.IncomingMessage): boolean {
  return new URL(req.url ?? '/', 'http://gateway.invalid').pathname === HANDOVER_PATH;
}

export interface PortShareLink {
  port: number;
  /** The port's address, no credentials: opens it for whoever may open the workspace. */
  url: string;
  /** The address with the share token: signs any browser in to this port (not the editor) until expiresAt. */
  shareUrl: string;
  expiresAt: string;
}

/** A share link for a port of an instance, good until the expiry or until the instance's access is revoked. */
export function issuePortShare(access: AccessLinks, instance: Readonly<VSCodeInstance>, port: number, minutes: number = DEFAULT_SHARE_MINUTES): PortShareLink {
  checkForwardablePort(port);
  if (typeof minutes !== 'number' || !Number.isFinite(minutes) || minutes < 1 || minutes > MAX_SHARE_MINUTES) {
    throw invalidInput('minutes', `a number of minutes from 1 to ${MAX_SHARE_MINUTES}`, minutes);
  }
  if (instance.warmPool) throw new SwarmError('CONFLICT', `instance ${instance.id} is an unassigned warm-buffer member; create a workspace to get one`);
  const label = portHostLabel({ instanceId: instance.id, port });
  const { token, claims } = access.token('link', PREFIX.share + label, instance.accessEpoch ?? 0, minutes * 60_000);
  const url = access.urlFor(label);
  return { port, url, shareUrl: `${url}?${TOKEN_PARAM}=${token}`, expiresAt: new Date(claims.expiresAt).toISOString() };
}

export interface ListeningPort {
  port: number;
  /** The local addresses it listens on, as the kernel reports them ("0.0.0.0", "::", "127.0.0.1"); none when it does not listen. */
  addresses: string[];
  /** Whether code-server's port proxy can reach it: it listens on every address or on 127.0.0.1. */
  reachable: boolean;
  /** Whether anything listens on it now (a declared port may not, yet). */
  listening: boolean;
  /** Whether the workspace's dev container declares it (`forwardPorts`, recorded at create). */
  declared: boolean;
  /** Its forwarded address, where the gateway is on. */
  url?: string;
}

/**
 * The TCP ports listening inside a running workspace, the editor's own left out, and the ports its dev
 * container declares (`forwardPorts`), listening or not: read from /proc/net/tcp and /proc/net/tcp6
 * through the provider's exec (the images have no netstat). The command is fixed, so this does not depend
 * on execute_command being turned on.
 */
export async function listListeningPorts(controller: SwarmController, instanceId: string): Promise<ListeningPort[]> {
  const instance = controller.registry.require(instanceId);
  if (instance.status !== 'running') throw new SwarmError('CONFLICT', `instance ${instanceId} is ${instance.status}; start it to see its ports`);
  const provider = await controller.providerOf(instanceId);
  const result = await provider.executeCommand(instanceId, 'cat /proc/net/tcp /proc/net/tcp6 2>/dev/null; true', { timeoutMs: LIST_TIMEOUT_MS, maxOutputBytes: LIST_MAX_OUTPUT });
  if (result.timedOut || result.exitCode !== 0) {
    throw new SwarmError('PROVIDER_ERROR', `instance ${instanceId}: reading /proc/net/tcp failed (${result.timedOut ? 'timed out' : `exit ${result.exitCode ?? 'unknown'}`})`);
  }
  const ports = withDeclaredPorts(listeningPorts(result.stdout), forwardedPortsOf(instance.config.metadata));
  return ports.map((p) => ({ ...p, ...(controller.access ? { url: controller.access.urlFor(portHostLabel({ instanceId, port: p.port })) } : {}) }));
}

/**
 * The listening ports with the declared ones merged in, by port: a declared port that listens is marked
 * declared; one that does not is added as not listening (and not reachable). The editor's own is never shown.
 */
export function withDeclaredPorts(listening: Omit<ListeningPort, 'url' | 'listening' | 'declared'>[], declared: readonly number[]): Omit<ListeningPort, 'url'>[] {
  const wanted = new Set(declared.filter((p) => p !== EDITOR_PORT));
  const found = listening.map((p) => ({ ...p, listening: true, declared: wanted.has(p.port) }));
  const absent = [...wanted].filter((port) => !found.some((p) => p.port === port)).map((port) => ({ port, addresses: [], reachable: false, listening: false, declared: true }));
  return [...found, ...absent].sort((a, b) => a.port - b.port);
}

/** The LISTEN sockets in /proc/net/tcp{,6} text, by port, the editor's own left out. */
export function listeningPorts(procText: string): Omit<ListeningPort, 'url' | 'listening' | 'declared'>[] {
  const byPort = new Map<number, Set<string>>();
  for (const line of procText.split('\n')) {
    const fields = line.trim().split(/\s+/);
    // sl local_address rem_address st ...; st 0A is LISTEN
    if (fields.length < 4 || fields[3] !== '0A') continue;
    const [hexAddress, hexPort] = fields[1]!.split(':');
    const port = parseInt(hexPort ?? '', 16);
    const address = decodeAddress(hexAddress ?? '');
    if (!Number.isInteger(port) || port < 1 || port > 65_535 || port === EDITOR_PORT || address === undefined) continue;
    const addresses = byPort.get(port) ?? new Set<string>();
    addresses.add(address);
    byPort.set(port, addresses);
  }
  return [...byPort]
    .sort(([a], [b]) => a - b)
    .map(([port, set]) => {
      const addresses = [...set].sort();
      return { port, addresses, reachable: addresses.some((a) => a === '0.0.0.0' || a === '::' || a === '127.0.0.1' || a === '::ffff:7f00:1') };
    });
}

/** /proc's address: 32-bit words in host (little-endian) order, 1 word for IPv4 and 4 for IPv6. */
function decodeAddress(hex: string): string | undefined {
  if (!/^([0-9A-Fa-f]{8}){1}$|^([0-9A-Fa-f]{32})$/.test(hex)) return undefined;
  const bytes: number[] = [];
  for (let word = 0; word < hex.length; word += 8) {
    for (let b = 3; b >= 0; b--) bytes.push(parseInt(hex.slice(word + b * 2, word + b * 2 + 2), 16));
  }
  if (bytes.length === 4) return bytes.join('.');
  const groups: string[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(((bytes[i]! << 8) | bytes[i + 1]!).toString(16));
  return new URL(`http://[${groups.join(':')}]/`).hostname.slice(1, -1); // the canonical (compressed) form
}

export interface ForwardedPortsDeps {
  controller: SwarmController;
  access: AccessLinks;
  logger: Logger;
  now?: () => number;
}

/** The gateway's side of forwarded ports: who may reach a port host, and the hand-over on the instance host. */
export class ForwardedPorts {
  constructor(private readonly deps: ForwardedPortsDeps) {}

  /**
   * Admission to a port host, in the gateway's order: credentials before anything about the instance. A
   * browser without a port session that asks for a page is sent to sign in on the instance host.
   * `wait` is the seconds a client past its failure limit must wait (then only a valid session admits).
   */
  async admit(req: http.IncomingMessage, target: PortHost, allowLink: boolean, wait: number | undefined): Promise<Admission> {
    if (target.port === EDITOR_PORT) return deny(404, 'Not forwarded', "The editor's own port is not forwarded; open the workspace's own address.", false);
    const session = this.checkSession(target, readCookies(req.headers.cookie, this.deps.access.cookieName));
    if (wait && !session.ok) {
      return { ok: false, denial: { status: 429, title: 'Too many attempts', message: `Too many failed sign-ins from this address. Try again in ${wait} s.`, counts: false, retryAfter: wait } };
    }
    const url = new URL(req.url ?? '/', 'http://gateway.invalid');
    const links = url.searchParams.getAll(TOKEN_PARAM);
    if (links.length > 1) return deny(400, 'Bad request', 'More than one access token was given.', true);
    if (links.length === 1 && !allowLink) return deny(401, 'Sign-in required', 'Access links are not accepted on WebSocket connections.', true);
    if (!sameOrigin(req, !allowLink)) return deny(403, 'Cross-origin request', 'Requests from another origin are not accepted.', true);
    if (links.length === 0) {
      if (session.ok || !allowLink || !['GET', 'HEAD'].includes(req.method ?? 'GET')) return session;
      return this.toSignIn(target, `${url.pathname}${url.search}`);
    }
    url.searchParams.delete(TOKEN_PARAM);
    const cleanPath = `/${url.pathname.replace(/^\/+/, '')}${url.search}`;
    if (wait && session.ok) return { ...session, redirectTo: cleanPath };
    const exchanged = await this.exchange(links[0]!, target);
    if (!exchanged.ok) return session.ok ? { ...session, redirectTo: cleanPath } : exchanged;
    return { ...exchanged, redirectTo: cleanPath };
  }

  /**
   * The hand-over on the instance host, for a browser the gateway already admitted there with its session:
   * one use, for a port of this very instance; answers with a redirect to the port host carrying a code.
   */
  async handover(req: http.IncomingMessage, instance: Readonly<VSCodeInstance>): Promise<Admission> {
    const url = new URL(req.url ?? '/', 'http://gateway.invalid');
    const given = url.searchParams.getAll(HANDOVER_PARAM);
    if (given.length !== 1 || !['GET', 'HEAD'].includes(req.method ?? 'GET')) return deny(400, 'Bad request', 'A port sign-in needs exactly one hand-over.', true);
    const verified = this.deps.access.verify(given[0], 'link');
    if (!verified.ok) return deny(401, 'Port sign-in not valid', 'This port sign-in has expired or is not valid. Open the port’s address again.', true);
    const target = this.subjectOf(verified.claims, 'handover');
    if (!target || target.instanceId !== instance.id) return deny(403, 'Wrong workspace', 'This port sign-in is for another workspace.', true);
    if (verified.claims.epoch !== (instance.accessEpoch ?? 0)) return deny(401, 'Port sign-in revoked', 'Access to this workspace was revoked. Open the port’s address again.', true);
    const spent = await this.spend(verified.claims);
    if (spent !== true) return spent;
    const label = portHostLabel(target);
    const { token } = this.deps.access.token('link', PREFIX.code + label, instance.accessEpoch ?? 0, CODE_TTL_MS);
    const base = new URL(this.deps.access.urlFor(label));
    // Only a path on the port host: never a protocol-relative "//host" or anything else.
    const back = new URL(`/${(url.searchParams.get(NEXT_PARAM) ?? '/').replace(/^[/\\]+/, '')}`, base);
    if (back.host !== base.host) return deny(400, 'Bad request', 'The page to return to must be a path.', true);
    back.searchParams.append(TOKEN_PARAM, token);
    this.deps.logger.info({ instanceId: instance.id, port: target.port }, 'port sign-in handed over to the port host');
    return { ok: true, instance, redirectTo: back.toString() };
  }

  /** Where a browser without a port session goes: the instance host's hand-over, for this port and path. */
  private toSignIn(target: PortHost, path: string): Admission {
    const epoch = this.deps.controller.registry.get(target.instanceId)?.accessEpoch ?? 0;
    const { token } = this.deps.access.token('link', PREFIX.handover + portHostLabel(target), epoch, HANDOVER_TTL_MS);
    const to = new URL(HANDOVER_PATH, this.deps.access.urlFor(target.instanceId));
    to.searchParams.set(HANDOVER_PARAM, token);
    to.searchParams.set(NEXT_PARAM, path);
    return { ok: false, denial: { status: 302, title: 'Sign-in required', message: 'Signing in through the workspace.', counts: false, location: to.toString() } };
  }

  /** A code from the hand-over (once) or a share link: a host-only cookie for this port host. */
  private async exchange(token: string, target: PortHost): Promise<Admission> {
    const { access } = this.deps;
    const verified = access.verify(token, 'link');
    if (!verified.ok) {
      const message = verified.reason === 'expired' ? 'This link has expired. Ask for a new one.' : 'This link is not valid. Ask for a new one.';
      return deny(401, 'Link not valid', message, true);
    }
    const { claims } = verified;
    const code = this.subjectOf(claims, 'code');
    const share = code ? undefined : this.subjectOf(claims, 'share');
    const bound = code ?? share;
    if (!bound || bound.instanceId !== target.instanceId || bound.port !== target.port) return deny(403, 'Wrong address', 'This link is for another address.', true);
    const instance = this.deps.controller.registry.get(target.instanceId);
    if (!instance || instance.warmPool) return deny(404, 'No such workspace', 'This workspace no longer exists.', false);
    if (claims.epoch !== (instance.accessEpoch ?? 0)) return deny(401, 'Link revoked', 'Access to this workspace was revoked. Ask for a new link.', true);
    if (share) {
      // The share token itself is the session: it lapses with the share, whoever holds it.
      const maxAge = Math.max(1, Math.floor((claims.expiresAt - (this.deps.now ?? Date.now)()) / 1000));
      this.deps.logger.info({ instanceId: instance.id, port: target.port }, 'port share link used');
      return { ok: true, instance, port: target.port, setCookie: this.cookie(token, maxAge) };
    }
    const spent = await this.spend(claims);
    if (spent !== true) return spent;
    const session = access.session(PREFIX.session + portHostLabel(target), claims.epoch);
    return { ok: true, instance, port: target.port, setCookie: this.cookie(session.token, session.maxAgeSeconds) };
  }

  /** A port session or a share for this very port host, of the instance's current epoch; any one valid cookie admits. */
  private checkSession(target: PortHost, tokens: string[]): Admission {
    if (tokens.length === 0) return deny(401, 'Sign-in required', "Open this address from a browser signed in to the workspace, or with a share link.", true);
    let first: Admission | undefined;
    for (const token of tokens) {
      const admission = this.checkOneSession(target, token);
      if (admission.ok) return admission;
      first ??= admission;
    }
    return first!;
  }

  private checkOneSession(target: PortHost, token: string): Admission {
    const { access } = this.deps;
    const asSession = access.verify(token, 'session');
    const verified = asSession.ok ? asSession : access.verify(token, 'link');
    if (!verified.ok) return deny(401, 'Session not valid', 'Your session has expired or is not valid. Open the address again or ask for a new link.', true);
    const bound = this.subjectOf(verified.claims, verified.claims.kind === 'session' ? 'session' : 'share');
    if (!bound || bound.instanceId !== target.instanceId || bound.port !== target.port) return deny(403, 'Wrong address', 'This session is for another address.', true);
    const instance = this.deps.controller.registry.get(target.instanceId);
    if (!instance || instance.warmPool) return deny(404, 'No such workspace', 'This workspace no longer exists.', false);
    if (verified.claims.epoch !== (instance.accessEpoch ?? 0)) return deny(401, 'Session revoked', 'Access to this workspace was revoked. Ask for a new link.', true);
    return { ok: true, instance, port: target.port };
  }

  /** The port host a token's signed subject names for this purpose, or undefined. */
  private subjectOf(claims: TokenClaims, purpose: Purpose): PortHost | undefined {
    const prefix = PREFIX[purpose];
    return claims.instanceId.startsWith(prefix) ? parsePortLabel(claims.instanceId.slice(prefix.length)) : undefined;
  }

  /** Marks a one-time token used: true when it was fresh, else the denial. */
  private async spend(claims: TokenClaims): Promise<true | Admission> {
    let fresh: boolean;
    try {
      fresh = await this.deps.access.spend(claims);
    } catch (err) {
      this.deps.logger.error({ err: asSwarmError(err).message }, 'port sign-in refused: the record of used links is unusable');
      return deny(503, 'Sign-in unavailable', 'The gateway cannot read or update its record of used sign-in links. Try again later.', false);
    }
    return fresh ? true : deny(401, 'Link already used', 'This sign-in link has already been used. Open the address again.', true);
  }

  private cookie(token: string, maxAgeSeconds: number): string {
    const { access } = this.deps;
    return `${access.cookieName}=${token}; Path=/; HttpOnly; SameSite=Lax; Max-Age=${maxAgeSeconds}${access.secureCookies ? '; Secure' : ''}`;
  }
}
