/**
 * From a bearer credential to an actor: an API token (or the local admin's credential file) through the
 * principal store, or, when an OAuth issuer is configured, a JWT access token from it. One function for
 * every door that takes a credential: MCP over HTTP, a stdio server launched with VSCODE_SWARM_TOKEN, the
 * gateway's dashboard later.
 */
import { SwarmError } from '../errors.js';
import { effectiveScopes, type Door, type PrincipalActor } from './identity.js';
import type { JwtVerifier } from './oauth.js';
import type { PrincipalDirectory } from './principals.js';

export class Authenticator {
  constructor(
    private readonly principals: PrincipalDirectory,
    private readonly jwt?: JwtVerifier,
  ) {}

  /** The actor behind a credential, or UNAUTHENTICATED with a reason that never repeats the credential. */
  async authenticate(credential: string, door: Door): Promise<PrincipalActor> {
    if (!credential) throw new SwarmError('UNAUTHENTICATED', 'no credential');
    if (this.jwt && credential.split('.').length === 3) {
      const verified = await this.jwt.verify(credential);
      const principal = this.principals.principalForSubject(verified.subject);
      if (!principal) throw new SwarmError('UNAUTHENTICATED', `the token's subject is not a principal here; an admin adds it with: principals add <id> --subject <subject>`);
      if (principal.disabled) throw new SwarmError('UNAUTHENTICATED', `principal ${principal.id} is disabled`);
      return {
        kind: 'principal',
        principalId: principal.id,
        role: principal.role,
        scopes: effectiveScopes(principal.role, verified.scopes),
        credentialId: `jwt:${verified.tokenId ?? 'no-jti'}`,
        door,
      };
    }
    const found = this.principals.authenticate(credential);
    return { kind: 'principal', principalId: found.principal.id, role: found.principal.role, scopes: effectiveScopes(found.principal.role, found.scopes), credentialId: found.credentialId, door };
  }
}

/** `Authorization: Bearer <credential>` → the credential, or '' when absent or of another scheme. */
export function bearerOf(header: string | undefined): string {
  const match = /^Bearer +([^\s]+) *$/i.exec(header ?? '');
  return match ? match[1]! : '';
}
