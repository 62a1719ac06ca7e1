/**
 * A request body read whole, but never past a limit: every HTTP door (MCP, the dashboard, the AWS agent's
 * API, agent events) parses small bodies and must not buffer an unbounded one.
 */
import type http from 'node:http';

/** The body, or undefined once it exceeds `limit` bytes (declared or sent); the rest is then left unread. */
export async function readCappedBody(req: http.IncomingMessage, limit: number): Promise<Buffer | undefined> {
  if (Number(req.headers['content-length'] ?? 0) > limit) return undefined;
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > limit) return undefined;
    chunks.push(chunk);
  }
  return Buffer.concat(chunks);
}
