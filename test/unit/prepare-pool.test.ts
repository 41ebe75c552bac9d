import { expect, it } from 'vitest';
import { createPreparer } from '../../src/mta/prepare-pool.js';

const input = () => ({ raw: Buffer.from('From: a@example.com\r\n\r\nhello\r\n'), hostname: 'node.test', id: 'x', utf8: false, tenant: 't', feedbackSenderId: 'tern' });

it('replaces a preparation thread that dies, so acceptance does not hang', async () => {
  const preparer = createPreparer([], 1);
  try {
    expect((await preparer.prepare(input())).ok).toBe(true);
    const [dead] = preparer.threads();
    await dead!.terminate(); // as if it had crashed
    const until = Date.now() + 10_000;
    while (preparer.threads()[0] === dead) {
      if (Date.now() > until) throw new Error('the thread was not replaced');
      await new Promise((r) => setTimeout(r, 20));
    }
    const result = await preparer.prepare(input());
    expect(result.ok && Buffer.from(result.message).toString()).toContain('Message-ID: <x@node.test>');
  } finally {
    await preparer.close();
  }
});
