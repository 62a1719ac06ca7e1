/**
 * A WebSocket upgrade request as a browser writes it, as raw text for a socket: the tests that check what
 * a proxy does with upgrades (the gateway's, an AWS agent's) send it byte for byte.
 */
export function upgradeRequest(host: string, target: string, cookie?: string, origin?: string): string {
  return [
    `GET ${target} HTTP/1.1`,
    `Host: ${host}`,
    ...(origin ? [`Origin: ${origin}`] : []),
    'Connection: Upgrade',
    'Upgrade: websocket',
    'Sec-WebSocket-Version: 13',
    'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==',
    ...(cookie ? [`Cookie: ${cookie}`] : []),
    '',
    '',
  ].join('\r\n');
}
