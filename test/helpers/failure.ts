/**
 * The SwarmError a promise rejects with, for tests that then check its code, field and message; anything
 * else (a success, another kind of error) fails the test with what it was.
 */
import { isSwarmError, type SwarmError } from '../../src/errors.js';

export async function failure(promise: Promise<unknown>): Promise<SwarmError> {
  const err = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  if (!isSwarmError(err)) throw new Error(`expected a SwarmError, got ${err === undefined ? 'success' : String(err)}`);
  return err;
}
