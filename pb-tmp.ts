import crypto from 'node:crypto';
import { prepareMessage } from '/work/main/src/mta/prepare.js';
import { loadSigningKey } from '/work/main/src/mta/dkim.js';
const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
const key = loadSigningKey('bench.tern.test', 's1', privateKey.export({ type: 'pkcs8', format: 'pem' }) as string);
const body = ('lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore ').repeat(60).match(/.{1,76}/g).join('\r\n') + '\r\n';
const raw = Buffer.from(`From: Sender <sender@bench.tern.test>\r\nTo: rcpt@sink.tern.test\r\nSubject: bench message 1\r\nMessage-ID: <x1@bench.tern.test>\r\nDate: Sat, 21 Nov 2026 12:00:00 +0000\r\nMIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\n${body}`);
for (const keys of [[], [key], [key]]) {
  const n = 3000; const t0 = performance.now();
  for (let i = 0; i < n; i++) prepareMessage({ raw, hostname: 'h', id: 'abc' + i, utf8: false, tenant: 'default', feedbackSenderId: 'x' }, () => keys);
  console.log(keys.length ? 'with RSA' : 'no signing', ((performance.now() - t0) / n * 1000).toFixed(1), 'µs/msg', raw.length, 'bytes');
}
