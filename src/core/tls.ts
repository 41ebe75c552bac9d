/**
 * TLS material for listeners (the configured certificate, or a self-signed one made once in data_dir), and
 * the CAs trusted for outbound connections.
 */
import fs from 'node:fs';
import path from 'node:path';
import tls from 'node:tls';
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

/**
 * The CAs trusted for outbound TLS (SMTP and MTA-STS policy fetches): Node's default list plus the
 * operator's file, or undefined (Node's default) when there is no file. Node ≥ 22.15 includes
 * NODE_EXTRA_CA_CERTS and, with --use-system-ca, the system store in its default list; Node 20 has only its
 * bundled Mozilla list to add to.
 */
export function outboundCas(extraFile: string | null): string[] | undefined {
  if (!extraFile) return undefined;
  const extra = fs.readFileSync(extraFile, 'utf8').match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
  const getCACertificates = (tls as unknown as { getCACertificates?: (type: string) => string[] }).getCACertificates;
  const base = getCACertificates ? getCACertificates('default') : tls.rootCertificates;
  return [...base, ...extra];
}
