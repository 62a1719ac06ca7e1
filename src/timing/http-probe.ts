/**
 * One HTTP GET that answers with the status code, or 0 when nothing answered in time. The timer is a
 * normal (ref'd) one: AbortSignal.timeout() is unref'd, and a probe hanging on a half-open connection
 * would otherwise let a short-lived process exit mid-wait.
 */
export async function httpStatus(url: string, timeoutMs = 500): Promise<number> {
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), timeoutMs);
  try {
    const res = await fetch(url, { signal: abort.signal, redirect: 'manual' });
    await res.body?.cancel();
    return res.status;
  } catch {
    return 0;
  } finally {
    clearTimeout(timer);
  }
}
