/**
 * Probes of an instance's editor at its endpoint, the way the gateway reaches it. Most endpoints are the
 * editor itself (a plain GET); an AWS host's endpoint is its agent's authenticating proxy, which needs
 * the Host header naming the instance and the provider's credential for that host
 * (Provider.editorRequestHeaders). fetch() cannot set Host, so those go through http.request.
 */
import http from 'node:http';
import type { Provider, VSCodeInstance } from '../../providers/provider.js';
import { httpGetJson, httpStatus } from './http-probe.js';

/** The extra headers the endpoint needs, or undefined when it is the editor itself. */
export function editorProbeHeaders(instance: Readonly<VSCodeInstance>, provider?: Pick<Provider, 'editorRequestHeaders'>): Record<string, string> | undefined {
  const hostHeader = instance.endpoint?.hostHeader;
  if (!hostHeader) return undefined;
  return { host: hostHeader, ...provider?.editorRequestHeaders?.(instance as VSCodeInstance) };
}

/** GET `path` from the editor: its status, or 0 when nothing answered in time (or there is no endpoint). */
export async function editorStatus(instance: Readonly<VSCodeInstance>, provider: Pick<Provider, 'editorRequestHeaders'> | undefined, path: string, timeoutMs: number): Promise<number> {
  if (!instance.endpoint) return 0;
  const url = new URL(`${instance.endpoint.url}${path}`);
  const headers = editorProbeHeaders(instance, provider);
  if (!headers) return httpStatus(url.href, timeoutMs);
  return (await getWithHeaders(url, headers, timeoutMs)).status;
}

/** GET `path` from the editor and parse JSON, or undefined when nothing usable answered in time. */
export async function editorJson<T>(instance: Readonly<VSCodeInstance>, provider: Pick<Provider, 'editorRequestHeaders'> | undefined, path: string, timeoutMs: number): Promise<T | undefined> {
  if (!instance.endpoint) return undefined;
  const url = new URL(`${instance.endpoint.url}${path}`);
  const headers = editorProbeHeaders(instance, provider);
  if (!headers) return httpGetJson<T>(url.href, timeoutMs);
  const { status, body } = await getWithHeaders(url, headers, timeoutMs);
  if (status !== 200) return undefined;
  try {
    return JSON.parse(body) as T;
  } catch {
    return undefined;
  }
}

const MAX_BODY = 64 * 1024;

function getWithHeaders(url: URL, headers: Record<string, string>, timeoutMs: number): Promise<{ status: number; body: string }> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => req.destroy(), timeoutMs);
    const done = (status: number, body = ''): void => {
      clearTimeout(timer);
      resolve({ status, body });
    };
    const req = http.request(url, { headers }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => {
        if (body.length < MAX_BODY) body += chunk;
      });
      res.on('end', () => done(res.statusCode ?? 0, body));
      res.on('error', () => done(0));
    });
    req.on('error', () => done(0));
    req.end();
  });
}
