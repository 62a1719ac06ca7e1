/**
 * Reading listening ports from /proc/net/tcp and /proc/net/tcp6, the way list_instance_ports does inside a
 * workspace: here on this machine's own files, with real servers listening on loopback, on every IPv4
 * address and on IPv6 loopback only.
 */
import { readFile } from 'node:fs/promises';
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EDITOR_PORT, listeningPorts, withDeclaredPorts } from '../../src/gateway/ports.js';

async function listen(host: string): Promise<net.Server> {
  const server = net.createServer();
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, host, () => resolve());
  });
  return server;
}

const portOf = (server: net.Server): number => (server.address() as net.AddressInfo).port;

describe('listening ports from /proc/net/tcp{,6}', () => {
  const servers: net.Server[] = [];
  let loopback: net.Server;
  let anyV4: net.Server;
  let loopbackV6: net.Server | undefined;

  beforeAll(async () => {
    loopback = await listen('127.0.0.1');
    anyV4 = await listen('0.0.0.0');
    loopbackV6 = await listen('::1').catch(() => undefined); // a host without IPv6 has no ::1
    servers.push(loopback, anyV4, ...(loopbackV6 ? [loopbackV6] : []));
  });
  afterAll(async () => {
    await Promise.all(servers.map((s) => new Promise((r) => s.close(r))));
  });

  it('finds each listening server with its address, and whether the editor proxy can reach it', async () => {
    const text = [await readFile('/proc/net/tcp', 'utf8'), await readFile('/proc/net/tcp6', 'utf8').catch(() => '')].join('');
    const ports = listeningPorts(text);
    expect(ports.find((p) => p.port === portOf(loopback))).toEqual({ port: portOf(loopback), addresses: ['127.0.0.1'], reachable: true });
    expect(ports.find((p) => p.port === portOf(anyV4))).toEqual({ port: portOf(anyV4), addresses: ['0.0.0.0'], reachable: true });
    if (loopbackV6) expect(ports.find((p) => p.port === portOf(loopbackV6!))).toEqual({ port: portOf(loopbackV6), addresses: ['::1'], reachable: false });
    expect(ports.map((p) => p.port)).toEqual([...ports.map((p) => p.port)].sort((a, b) => a - b));
  });

  it("leaves out connections that are not listening, the editor's own port and lines that are not sockets", () => {
    const text = [
      '  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode',
      '   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 1 1 0000000000000000 100 0 0 10 0', // 0.0.0.0:8080 LISTEN
      '   1: 0100007F:0BB8 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 2 1 0000000000000000 100 0 0 10 0', // 127.0.0.1:3000 LISTEN
      '   2: 0100007F:0BB8 0100007F:D431 01 00000000:00000000 00:00000000 00000000  1000        0 3 1 0000000000000000 20 4 30 10 -1', // ESTABLISHED
      '  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode',
      '   0: 00000000000000000000000000000000:0BB8 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 4 1 0000000000000000 100 0 0 10 0', // [::]:3000
      '   1: 0000000000000000FFFF00000100007F:1389 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 5 1 0000000000000000 100 0 0 10 0', // [::ffff:127.0.0.1]:5001
      'garbage',
    ].join('\n');
    expect(listeningPorts(text)).toEqual([
      { port: 3000, addresses: ['127.0.0.1', '::'], reachable: true },
      { port: 5001, addresses: ['::ffff:7f00:1'], reachable: true },
    ]);
    expect(listeningPorts(text).some((p) => p.port === EDITOR_PORT)).toBe(false);
  });

  it("adds the dev container's declared ports, listening or not, marked declared; never the editor's own", async () => {
    const text = [await readFile('/proc/net/tcp', 'utf8'), await readFile('/proc/net/tcp6', 'utf8').catch(() => '')].join('');
    const listening = listeningPorts(text);
    const idle = await listen('127.0.0.1');
    const idlePort = portOf(idle);
    await new Promise((r) => idle.close(r)); // a port nothing listens on any more
    const ports = withDeclaredPorts(listening, [portOf(loopback), idlePort, EDITOR_PORT]);
    expect(ports.find((p) => p.port === portOf(loopback))).toEqual({ port: portOf(loopback), addresses: ['127.0.0.1'], reachable: true, listening: true, declared: true });
    expect(ports.find((p) => p.port === portOf(anyV4))).toEqual({ port: portOf(anyV4), addresses: ['0.0.0.0'], reachable: true, listening: true, declared: false });
    expect(ports.find((p) => p.port === idlePort)).toEqual({ port: idlePort, addresses: [], reachable: false, listening: false, declared: true });
    expect(ports.some((p) => p.port === EDITOR_PORT)).toBe(false);
    expect(ports.map((p) => p.port)).toEqual([...ports.map((p) => p.port)].sort((a, b) => a - b));
    expect(ports.length).toBe(listening.length + 1);
  });
});
