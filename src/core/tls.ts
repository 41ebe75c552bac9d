/** TLS material for listeners: the configured certificate, or a self-signed one made once in data_dir. */
import fs from 'node:fs';
import path from 'node:path';
import { generate } from 'selfsigned';

export interface TlsMaterial {
  key: string;
  cert: string;
  selfSigned: boolean;
}

export async function tlsMaterial(dataDir: string, hostname: string, configured?: { cert: string; key: string }): Promise<TlsMaterial> {
  if (configured) return { key: fs.readFileSync(configured.key, 'utf8'), cert: fs.readFileSync(configured.cert, 'utf8'), selfSigned: false };
  const dir = path.join(dataDir, 'tls');
  const keyFile = path.join(dir, 'self-signed.key');
  const certFile = path.join(dir, 'self-signed.crt');
  if (fs.existsSync(keyFile) && fs.existsSync(certFile))
    return { key: fs.readFileSync(keyFile, 'utf8'), cert: fs.readFileSync(certFile, 'utf8'), selfSigned: true };
  const notAfter = new Date();
  notAfter.setFullYear(notAfter.getFullYear() + 5);
  const pems = await generate([{ name: 'commonName', value: hostname }], {
    keySize: 2048,
    algorithm: 'sha256',
    notAfterDate: notAfter,
    extensions: [{ name: 'subjectAltName', altNames: [{ type: 2, value: hostname }] }],
  });
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  fs.writeFileSync(keyFile, pems.private, { mode: 0o600 });
  fs.writeFileSync(certFile, pems.cert, { mode: 0o644 });
  return { key: pems.private, cert: pems.cert, selfSigned: true };
}
