/**
 * Each host of the AWS provider has its own credential, derived from the controller's master agent token
 * and the host's EC2 instance id: HMAC-SHA256(master, hostId), base64url. The controller presents it when
 * it calls that host's agent and expects it on that host's events; the host holds only its own, never the
 * master, so a credential stolen from one host opens that host's agent and speaks for that host alone.
 */
import { createHmac, timingSafeEqual } from 'node:crypto';
import { invalidInput } from '../../src/errors.js';
import { HOST_ID_PATTERN } from './agent/agent-protocol.js';

/** The agent token of one host (43 base64url characters). */
export function deriveHostToken(masterToken: string, hostId: string): string {
  if (!masterToken) throw invalidInput('masterToken', 'the non-empty master agent token');
  if (!HOST_ID_PATTERN.test(hostId)) throw invalidInput('hostId', 'an EC2 instance id such as i-0123abcd (a-z, 0-9, "-")', hostId);
  return createHmac('sha256', masterToken).update(hostId, 'utf8').digest('base64url');
}

/** True when `header` is `Bearer <the token of hostId>`; constant time in the header's content. */
export function isHostAuthorization(masterToken: string, hostId: string, header: string | undefined): boolean {
  if (!masterToken || !header || !HOST_ID_PATTERN.test(hostId)) return false;
  const given = Buffer.from(header);
  const expected = Buffer.from(`Bearer ${deriveHostToken(masterToken, hostId)}`);
  return given.length === expected.length && timingSafeEqual(given, expected);
}
