import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

export interface TestCerts {
  dir: string;
  /** PEM paths. */
  caCert: string;
  caKey: string;
  serverCert: string;
  serverKey: string;
  /** A CA that did NOT sign serverCert, for "wrong CA" tests. */
  wrongCaCert: string;
}

// Own config files so the result does not depend on the distro's openssl.cnf
// (which may or may not add CA extensions to `req -x509`).
const caConfig = (cn: string): string => `[req]
prompt = no
distinguished_name = dn
x509_extensions = v3_ca
[dn]
CN = ${cn}
[v3_ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
`;

const serverReqConfig = `[req]
prompt = no
distinguished_name = dn
[dn]
CN = localhost
`;

const serverExt = `basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth,clientAuth
subjectAltName = DNS:localhost,IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
`;

// EC P-256 keeps generation near-instant compared with RSA.
const newKey = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
const DAYS = '2';

async function openssl(args: string[], cwd: string): Promise<void> {
  try {
    await run('openssl', args, { cwd });
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new Error(`openssl ${args[0] ?? ''} failed: ${e.stderr?.trim() || e.message}`);
  }
}

async function makeCa(dir: string, name: string, cn: string): Promise<{ cert: string; key: string }> {
  const cnf = join(dir, `${name}.cnf`);
  const cert = join(dir, `${name}.crt`);
  const key = join(dir, `${name}.key`);
  await writeFile(cnf, caConfig(cn));
  await openssl(['req', '-x509', ...newKey, '-sha256', '-days', DAYS, '-config', cnf, '-keyout', key, '-out', cert], dir);
  return { cert, key };
}

/**
 * A throwaway PKI for TLS tests: a CA, a server certificate for
 * localhost/127.0.0.1 signed by it, and an unrelated second CA.
 */
export async function makeTestCerts(dir?: string): Promise<TestCerts> {
  let outDir: string;
  if (dir === undefined) {
    outDir = await mkdtemp(join(tmpdir(), 'agentd-certs-'));
  } else {
    await mkdir(dir, { recursive: true });
    outDir = dir;
  }

  const [ca, wrongCa] = await Promise.all([
    makeCa(outDir, 'ca', 'agentd test CA'),
    makeCa(outDir, 'wrong-ca', 'agentd unrelated CA'),
  ]);

  const reqCnf = join(outDir, 'server.cnf');
  const extFile = join(outDir, 'server.ext');
  const csr = join(outDir, 'server.csr');
  const serverKey = join(outDir, 'server.key');
  const serverCert = join(outDir, 'server.crt');
  await Promise.all([writeFile(reqCnf, serverReqConfig), writeFile(extFile, serverExt)]);
  await openssl(['req', '-new', ...newKey, '-config', reqCnf, '-keyout', serverKey, '-out', csr], outDir);
  await openssl(
    [
      'x509', '-req', '-in', csr, '-CA', ca.cert, '-CAkey', ca.key,
      // Explicit serial avoids the ca.srl side file that -CAcreateserial leaves.
      '-set_serial', `0x${randomBytes(8).toString('hex')}`,
      '-sha256', '-days', DAYS, '-extfile', extFile, '-out', serverCert,
    ],
    outDir,
  );

  return { dir: outDir, caCert: ca.cert, caKey: ca.key, serverCert, serverKey, wrongCaCert: wrongCa.cert };
}
