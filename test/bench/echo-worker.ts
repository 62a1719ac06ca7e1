/**
 * Hosts the echo upstream (test/helpers/echo-upstream.ts) in a worker thread, so that the "editor" of
 * the gateway figures has an event loop of its own, as a real editor process would. Posts
 * `{ port }` once listening; 'reset' forgets the requests it recorded (the helper keeps every one, which
 * over tens of thousands of requests is garbage the bench should not measure); 'close' closes it and
 * answers 'closed'.
 */
import { parentPort } from 'node:worker_threads';
import { startEchoUpstream } from '../helpers/echo-upstream.js';

const upstream = await startEchoUpstream();
parentPort!.postMessage({ port: upstream.port });
parentPort!.on('message', (message: unknown) => {
  if (message === 'reset') upstream.requests.length = 0;
  if (message !== 'close') return;
  upstream.close().then(
    () => parentPort!.postMessage('closed'),
    () => parentPort!.postMessage('closed'),
  );
});
