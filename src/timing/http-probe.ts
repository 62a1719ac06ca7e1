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

/** GET and parse JSON, or undefined when nothing usable answered in time. */
export async function httpGetJson<T>(url: string, timeoutMs = 500): Promise<T | undefined> {
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), timeoutMs);
  try {
    const res = await fetch(url, { signal: abort.signal, redirect: 'manual' });
    if (res.status !== 200) {
      await res.body?.cancel();
      return undefined;
    }
    return (await res.json()) as T;
  } catch {
    return undefined;
  } finally {
    clearTimeout(timer);
  }
}
