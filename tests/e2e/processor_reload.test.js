'use strict';
// Workspace reloads while the processor has transformer requests in flight
// or waiting to be retried: the batch keeps the snapshot it was routed with
// (reference-counted), so a reload never frees what a chunk still uses.
// Meant to run under ASan too: PINTLE_BUILD=build-asan.
const { describe, it, after } = require('node:test');
const assert = require('node:assert/strict');
const { withLogs, sleep, waitFor, webhookWorkspace } = require('./lib/stack');
const { procStack, closeStack, sendBatch, track } = require('./lib/processor');

describe('processor and workspace reloads', () => {
  let st;
  const S = () => st;
  after(() => closeStack(st));

  it('reloads every 200 ms while events flow and the transformer stops and restarts: no crash, every event delivered once', withLogs(S, async () => {
    st = await procStack({ processorEnv: { PINTLE_WORKSPACE_POLL_INTERVAL_MS: '50', PINTLE_PROCESSOR_TRANSFORM_CHUNK: '10' } });
    let rev = 0;
    let reloading = true;
    const reloads = (async () => {
      while (reloading) {
        const ws = webhookWorkspace(st.sink.url);
        ws.rev = rev++; // a new file each time: the watcher swaps the snapshot
        ws.sources[0].destinations[0].name = `hook-${rev}`;
        st.writeWorkspace(ws);
        await sleep(200);
      }
    })();
    // events flow for as long as the transformer rounds last (at least 600)
    let N = 0;
    let flowing = true;
    const sending = (async () => {
      while (flowing || N < 600) {
        await sendBatch(st.gw.url, Array.from({ length: 20 }, (_, k) => track(`W${(N + k) % 12}`, N + k)));
        N += 20;
        await sleep(100);
      }
    })();
    try {
      const tf = st.procs.find((p) => p.name === 'transformer');
      for (let round = 0; round < 3; round++) {
        await sleep(700);
        await tf.stop();
        // chunks wait for their retry while the snapshot they were routed with is replaced
        const from = st.processor.log.length; // this round's retries, not earlier ones
        await waitFor(() => /event=transformer_retry/.test(st.processor.log.slice(from)), { what: 'transformer retries' });
        await sleep(900);
        await tf.start();
      }
      flowing = false;
      await sending;
      await waitFor(() => st.sink.ok().length >= N, { timeoutMs: 30000, what: `${N} deliveries` });
    } finally {
      flowing = false;
      reloading = false;
      await reloads;
      await sending.catch(() => {});
    }
    await sleep(300);
    assert.ok(rev > 20, `workspace rewritten ${rev} times`);
    assert.ok((st.processor.log.match(/event=workspace_reloaded/g) || []).length > 20, 'processor reloaded many times');
    assert.equal(st.processor.exit, null, 'processor still running');
    const ids = st.sink.ok().map((r) => r.body.messageId);
    assert.equal(ids.length, N);
    assert.equal(new Set(ids).size, N, 'no event delivered twice');
    const code = await st.processor.stop();
    assert.equal(code.code, 0, 'processor exit code');
    assert.doesNotMatch(st.processor.log, /AddressSanitizer|runtime error|LeakSanitizer/);
    assert.deepEqual(st.processor.errors(), []);
  }));
});
