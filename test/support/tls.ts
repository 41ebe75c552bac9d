/** A test certificate authority and server certificates it signs (selfsigned), for TLS over loopback. */
import { generate } from 'selfsigned';

export interface TestCa {
  /** the CA certificate (PEM): what a client is told to trust */
  cert: string;
  /** a server certificate (and its key) for `names`, the first one also its common name */
  leaf(names: string[]): Promise<{ cert: string; private: string }>;
}

export async function testCa(): Promise<TestCa> {
  const ca = await generate([{ name: 'commonName', value: 'Tern Test CA' }], {
    // RSA: selfsigned 5.5 fails to sign with EC keys ("Cannot get schema for 'AlgorithmIdentifier'")
    keyType: 'rsa',
    keySize: 2048,
    algorithm: 'sha256',
    extensions: [
      { name: 'basicConstraints', cA: true, critical: true },
      { name: 'keyUsage', keyCertSign: true, cRLSign: true, critical: true },
    ],
  });
  return {
    cert: ca.cert,
    leaf: (names) =>
      generate([{ name: 'commonName', value: names[0]! }], {
        keyType: 'rsa',
        keySize: 2048,
        algorithm: 'sha256',
        ca: { key: ca.private, cert: ca.cert },
        extensions: [
          { name: 'basicConstraints', cA: false },
          { name: 'keyUsage', digitalSignature: true, keyEncipherment: true },
          { name: 'extKeyUsage', serverAuth: true },
          { name: 'subjectAltName', altNames: names.map((value) => ({ type: 2 as const, value })) },
        ],
      }),
  };
}
