/**
 * A private, throwaway Postfix instance (optionally with OpenDKIM signing) used
 * as the comparison relay in the benchmark: the same load is relayed by Tern
 * and by Postfix to the same sink.
 *
 * Install (Debian 12; CI needs exactly this, as root):
 *
 *   echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
 *   echo "postfix postfix/mailname string bench.tern.test" | debconf-set-selections
 *   apt-get update
 *   DEBIAN_FRONTEND=noninteractive apt-get install -y postfix opendkim opendkim-tools
 *
 * ("No configuration" leaves /etc/postfix/main.cf absent and starts no
 * system instance; the packages' init scripts are not run in a container.)
 *
 * Must run as root (Postfix's master refuses otherwise). Everything lives in a
 * fresh temp dir (config, queue, data dir, log, DKIM key), so it coexists with
 * a system Postfix: distinct config_directory, queue_directory, data_directory,
 * syslog_name, and it listens only on 127.0.0.1:listenPort. The system's
 * /etc/postfix/main.cf is neither read for settings nor written. (`postfix -c`
 * needs no alternate_config_directories entry when run by root; that is only
 * for the set-gid postdrop/postqueue, which this instance never uses as mail
 * enters via SMTP.)
 *
 * Module:
 *   postfixAvailable(), opendkimAvailable(),
 *   startPostfix({ listenPort, sinkPort, dkim?, dkimDomain? }) → { port, configDir, stop() }
 *   startPostfix({ listenPort, localDomains, transports }) → the bounce scenario (test/postfix-dsn.test.ts):
 *     Postfix takes any recipient of `localDomains` at RCPT (local_recipient_maps is empty), its local(8)
 *     delivery then fails "unknown user" for one that is no system account, and the bounce daemon sends a
 *     real DSN to the envelope sender, routed by `transports` (e.g. the bounce domain →
 *     smtp:[127.0.0.1]:<Tern's inbound port>). Without `sinkPort`, mail for any other domain fails at once
 *     (error transport): this instance never sends anywhere but the loopback next hops it is given.
 *
 * Loopback only, always: inet_interfaces = 127.0.0.1, the relayhost and every transport next hop must be a
 * [127.x.x.x] literal (checked), and no DNS is used (smtp_dns_support_level = disabled).
 *
 * DKIM: OpenDKIM signs every message (whatever its From) with d=dkimDomain,
 * s=bench, RSA-2048, relaxed/relaxed, rsa-sha256; the public key TXT value is
 * returned as `dkimTxt` for a test DNS zone. The milter socket defaults to a
 * unix socket: over loopback TCP ('inet') every message gains ~100 ms of
 * latency in the milter conversation (measured: 10 msg/s on one SMTP
 * connection vs ~110 msg/s over the unix socket), which would make Postfix look
 * far worse than a standard (Debian default: unix socket) setup.
 *
 * CLI:
 *   npx tsx bench/postfix.ts --listen 2526 --sink 2525 [--dkim] [--dkim-domain tern.test]
 *     [--dkim-selector bench] [--milter-socket unix|inet] [--base-dir /tmp] [--keep]
 *   prints one JSON line {"postfix":{port,configDir,dkim,...}} when ready,
 *   then runs until SIGINT/SIGTERM and stops the instance.
 *   npx tsx bench/postfix.ts --check   → prints availability JSON, exits 0.
 */
import { spawn, spawnSync, execFile } from 'node:child_process';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';

const execFileP = promisify(execFile);

const POSTFIX_CANDIDATES = ['/usr/sbin/postfix', '/usr/local/sbin/postfix'];
const OPENDKIM_CANDIDATES = ['/usr/sbin/opendkim', '/usr/local/sbin/opendkim'];
const GENKEY_CANDIDATES = ['/usr/sbin/opendkim-genkey', '/usr/bin/opendkim-genkey', '/usr/local/sbin/opendkim-genkey'];

function findBinary(candidates: string[], name: string): string | null {
  for (const c of candidates) {
    try {
      fs.accessSync(c, fs.constants.X_OK);
      return c;
    } catch {
      /* next */
    }
  }
  for (const dir of (process.env.PATH ?? '').split(':').filter(Boolean)) {
    const p = path.join(dir, name);
    try {
      fs.accessSync(p, fs.constants.X_OK);
      return p;
    } catch {
      /* next */
    }
  }
  return null;
}

/** The postfix binary is installed. */
export function postfixAvailable(): boolean {
  return findBinary(POSTFIX_CANDIDATES, 'postfix') !== null;
}

/** The opendkim milter (and opendkim-genkey, from opendkim-tools) are installed. */
export function opendkimAvailable(): boolean {
  return findBinary(OPENDKIM_CANDIDATES, 'opendkim') !== null && findBinary(GENKEY_CANDIDATES, 'opendkim-genkey') !== null;
}

export interface PostfixInstance {
  /** SMTP port Postfix's smtpd listens on (127.0.0.1). */
  port: number;
  /** The private config dir (main.cf, master.cf); the temp dir is its parent. */
  configDir: string;
  /** Temp dir holding everything (config, queue, data, maillog, dkim). */
  baseDir: string;
  /** Postfix log (maillog_file), inside baseDir. */
  logFile: string;
  /** Whether OpenDKIM signing is active. */
  dkim: boolean;
  /** DKIM d= / s= and the public key TXT record value (when dkim). */
  dkimDomain?: string;
  dkimSelector?: string;
  dkimTxt?: string;
  /** Stops Postfix (and OpenDKIM), then removes the temp dir (unless keepDir). */
  stop(): Promise<void>;
}

export interface StartPostfixOptions {
  listenPort: number;
  /** relayhost: [127.0.0.1]:sinkPort. Without it, mail for domains that are neither local nor in `transports` fails. */
  sinkPort?: number;
  /**
   * Domains delivered by local(8) to system accounts (mydestination). Any recipient is accepted at RCPT, so an
   * address that is no account is bounced after acceptance, with a DSN to the envelope sender.
   */
  localDomains?: string[];
  /** transport_maps entries, domain → next hop; only loopback next hops ("smtp:[127.0.0.1]:2525") are allowed */
  transports?: Record<string, string>;
  /** Sign with OpenDKIM (RSA-2048, relaxed/relaxed, rsa-sha256). Default false. */
  dkim?: boolean;
  /** d= for every signed message (all mail is signed, whatever its From). Default 'tern.test'. */
  dkimDomain?: string;
  /** s=, default 'bench'. */
  dkimSelector?: string;
  /**
   * How Postfix talks to OpenDKIM: 'unix' (default; a socket in the temp dir)
   * or 'inet' (loopback TCP on `milterPort`, default a free ephemeral port).
   */
  milterSocket?: 'unix' | 'inet';
  milterPort?: number;
  /** Parent of the temp dir. Default os.tmpdir(). Put it on the same filesystem as Tern's spool for a fair fsync comparison. */
  baseDir?: string;
  /** Keep the temp dir after stop() (for reading maillog). Default false. */
  keepDir?: boolean;
  /** Max time to wait for smtpd/milter readiness. Default 20 s. */
  startTimeoutMs?: number;
  /** Extra main.cf lines (`name = value`), appended last (so they win). */
  extraMainCf?: Record<string, string | number>;
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

async function waitPidGone(pid: number, timeoutMs: number): Promise<boolean> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    if (!pidAlive(pid)) return true;
    await sleep(50);
  }
  return !pidAlive(pid);
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as net.AddressInfo;
      s.close(() => resolve(port));
    });
  });
}

/** Resolves once something accepts TCP on host:port (and, if `banner`, sends a line starting with it). */
async function waitForListen(port: number, timeoutMs: number, banner?: string): Promise<void> {
  const end = Date.now() + timeoutMs;
  let lastErr: unknown;
  while (Date.now() < end) {
    try {
      await new Promise<void>((resolve, reject) => {
        const s = net.connect(port, '127.0.0.1');
        const t = setTimeout(() => {
          s.destroy();
          reject(new Error('timeout'));
        }, 2000);
        s.on('error', (e) => {
          clearTimeout(t);
          reject(e);
        });
        if (!banner) {
          s.on('connect', () => {
            clearTimeout(t);
            s.destroy();
            resolve();
          });
        } else {
          let buf = '';
          s.on('data', (d) => {
            buf += d.toString('latin1');
            if (buf.includes('\n')) {
              clearTimeout(t);
              s.end('QUIT\r\n');
              if (buf.startsWith(banner)) resolve();
              else reject(new Error(`unexpected banner: ${buf.trim()}`));
            }
          });
        }
      });
      return;
    } catch (e) {
      lastErr = e;
      await sleep(100);
    }
  }
  throw new Error(`nothing ready on 127.0.0.1:${port} after ${timeoutMs} ms: ${String(lastErr)}`);
}

async function waitForUnixSocket(p: string, timeoutMs: number): Promise<void> {
  const end = Date.now() + timeoutMs;
  let lastErr: unknown;
  while (Date.now() < end) {
    try {
      await new Promise<void>((resolve, reject) => {
        const s = net.connect(p);
        s.on('connect', () => {
          s.destroy();
          resolve();
        });
        s.on('error', reject);
      });
      return;
    } catch (e) {
      lastErr = e;
      await sleep(100);
    }
  }
  throw new Error(`nothing listening on ${p} after ${timeoutMs} ms: ${String(lastErr)}`);
}

function mainCf(o: {
  baseDir: string;
  configDir: string;
  queueDir: string;
  dataDir: string;
  logFile: string;
  sinkPort: number | null;
  localDomains: string[];
  /** the transport_maps file, or null */
  transportFile: string | null;
  /** Postfix milter address ('inet:127.0.0.1:PORT' / 'unix:/path'), null = no milter. */
  milter: string | null;
  extra?: Record<string, string | number>;
}): string {
  const lines: string[] = [
    '# Generated by bench/postfix.ts: a private benchmark instance, not the system Postfix.',
    'compatibility_level = 3.6',
    `config_directory = ${o.configDir}`,
    `queue_directory = ${o.queueDir}`,
    `data_directory = ${o.dataDir}`,
    'syslog_name = postfix-tern-bench',
    // No syslogd in containers: log to a file via postlogd (Postfix >= 3.4).
    `maillog_file = ${o.logFile}`,
    `maillog_file_prefixes = ${o.baseDir}`,
    'myhostname = bench.tern.test',
    'mydomain = tern.test',
    'myorigin = $myhostname',
    // Nothing is delivered locally (everything goes to the sink), except to the bounce scenario's local
    // domains: there local(8) bounces every address that is no system account (none is accepted at RCPT
    // time: local_recipient_maps is empty).
    `mydestination = ${o.localDomains.join(', ')}`,
    'local_recipient_maps =',
    o.localDomains.length ? 'local_transport = local:$myhostname' : 'local_transport = error:local delivery is disabled',
    'alias_maps =',
    'alias_database =',
    'relay_domains =',
    'inet_interfaces = 127.0.0.1',
    'inet_protocols = ipv4',
    'mynetworks = 127.0.0.0/8',
    'mynetworks_style = host',
    'smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination',
    'smtpd_recipient_restrictions =',
    ...(o.sinkPort !== null ? [`relayhost = [127.0.0.1]:${o.sinkPort}`] : ['relayhost =', 'default_transport = error:this test instance delivers to loopback next hops only']),
    ...(o.transportFile ? [`transport_maps = texthash:${o.transportFile}`] : []),
    // TLS off on both sides (the sink and the load generator use plain SMTP).
    'smtp_tls_security_level = none',
    'smtpd_tls_security_level = none',
    // Concurrency: 20 parallel deliveries to the (single) next hop, with
    // connection caching so deliveries reuse SMTP sessions to the sink.
    'default_destination_concurrency_limit = 20',
    'smtp_destination_concurrency_limit = 20',
    'initial_destination_concurrency = 5', // the default; slow start grows it to the limit
    'default_destination_rate_delay = 0',
    'smtp_connection_cache_on_demand = yes',
    // On-demand caching only kicks in when a backlog builds for the next hop;
    // also cache for the relayhost always, as a pooled sender (Tern) does.
    'smtp_connection_cache_destinations = $relayhost',
    'smtp_connection_cache_time_limit = 2s',
    'default_process_limit = 100',
    // Things disabled because they only add latency here and are not part of
    // what is compared (all loopback, no DNS in play):
    //  - smtpd reverse lookup of the client (127.0.0.1) — no DNS on loopback;
    'smtpd_peername_lookup = no',
    //  - DNS for the relayhost is already avoided by the [IP] literal; make it explicit;
    'smtp_dns_support_level = disabled',
    'smtp_host_lookup = native',
    //  - no bounces/notices to postmaster, no biff (local delivery is off anyway);
    'notify_classes =',
    'biff = no',
    //  - no ETRN/flush bookkeeping for relay domains.
    'fast_flush_domains =',
    // Kept at their defaults on purpose (they are what a standard Postfix does):
    //  - fsync of every queue file before 250 (durability), the queue on disk;
    //  - in_flow_delay = 1s (smtpd is throttled when the queue manager lags);
    //  - smtpd anvil/limits, header/body cleanup, Message-ID/Date insertion.
    'smtputf8_enable = yes',
  ];
  if (o.milter !== null) {
    lines.push(
      // OpenDKIM as a milter; on milter failure tempfail (so an unsigned
      // message never counts as signed throughput).
      `smtpd_milters = ${o.milter}`,
      'non_smtpd_milters = $smtpd_milters',
      'milter_default_action = tempfail',
      'milter_protocol = 6',
    );
  }
  for (const [k, v] of Object.entries(o.extra ?? {})) lines.push(`${k} = ${v}`);
  return lines.join('\n') + '\n';
}

function masterCf(listenPort: number, local: boolean): string {
  // No chroot (services read paths outside any chroot jail), no pickup/sendmail
  // path needed but kept for completeness, no local/virtual/lmtp/pipe services.
  return `# Generated by bench/postfix.ts
# service type  private unpriv  chroot  wakeup  maxproc command + args
127.0.0.1:${listenPort} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
${local ? 'local     unix  -       n       n       -       -       local\n' : ''}`;
}

interface DkimHandle {
  proc: ReturnType<typeof spawn>;
  /** Postfix's name for the milter socket. */
  postfixAddr: string;
  txt: string;
  selector: string;
  domain: string;
  stderr: () => string;
}

async function startOpendkim(o: {
  dir: string;
  domain: string;
  selector: string;
  /** { kind: 'inet', port } or { kind: 'unix', path } */
  socket: { kind: 'inet'; port: number } | { kind: 'unix'; path: string };
  timeoutMs: number;
}): Promise<DkimHandle> {
  const opendkim = findBinary(OPENDKIM_CANDIDATES, 'opendkim');
  const genkey = findBinary(GENKEY_CANDIDATES, 'opendkim-genkey');
  if (!opendkim || !genkey) throw new Error('opendkim / opendkim-genkey not installed (apt-get install -y opendkim opendkim-tools)');
  await fsp.mkdir(o.dir, { recursive: true, mode: 0o750 });
  await execFileP(genkey, ['-b', '2048', '-h', 'rsa-sha256', '-r', '-s', o.selector, '-d', o.domain, '-D', o.dir]);
  const keyFile = path.join(o.dir, `${o.selector}.private`);
  const txtFile = path.join(o.dir, `${o.selector}.txt`);
  // The public key record as a single TXT value (the .txt file is in zone-file syntax).
  const rawTxt = await fsp.readFile(txtFile, 'utf8');
  const txt = [...rawTxt.matchAll(/"([^"]*)"/g)].map((m) => m[1]).join('');
  const keyTable = path.join(o.dir, 'KeyTable');
  const signingTable = path.join(o.dir, 'SigningTable');
  await fsp.writeFile(keyTable, `bench ${o.domain}:${o.selector}:${keyFile}\n`);
  // Sign every message (whatever the From domain) with d=domain, so that all
  // of the benchmark's mail pays the signing cost.
  await fsp.writeFile(signingTable, `* bench\n`);
  const conf = path.join(o.dir, 'opendkim.conf');
  await fsp.writeFile(
    conf,
    [
      'Syslog no',
      'LogWhy no',
      'Mode s',
      'Canonicalization relaxed/relaxed',
      'SignatureAlgorithm rsa-sha256',
      `KeyTable file:${keyTable}`,
      `SigningTable refile:${signingTable}`,
      'InternalHosts 127.0.0.0/8',
      'OversignHeaders From',
      o.socket.kind === 'inet' ? `Socket inet:${o.socket.port}@127.0.0.1` : `Socket local:${o.socket.path}`,
      'UserID opendkim',
      // the unix socket lives in a dir only opendkim and group postfix can enter
      'UMask 000',
      'Background no',
      // The key is opendkim:opendkim 0600, but its path runs through the
      // world-writable /tmp, which opendkim's "safe keys" check rejects (every
      // message then gets a tempfail at end-of-headers). Throwaway key: skip it.
      'RequireSafeKeys no',
      '',
    ].join('\n'),
  );
  // opendkim drops to the opendkim user: it must be able to reach and read its files.
  spawnSync('chown', ['-R', 'opendkim:opendkim', o.dir]);
  await fsp.chmod(keyFile, 0o600);

  // Self-check: sign a sample message in opendkim's test mode, so that a
  // config/key problem fails here instead of tempfailing every message.
  const sample = path.join(o.dir, 'selftest.eml');
  await fsp.writeFile(sample, `From: <bench@${o.domain}>\r\nTo: <x@sink.tern.test>\r\nSubject: self-test\r\n\r\nhello\r\n`);
  const check = spawnSync(opendkim, ['-x', conf, '-t', sample, '-vv'], { encoding: 'utf8' });
  if (!/DKIM-Signature/i.test(`${check.stdout}${check.stderr}`)) {
    throw new Error(`opendkim self-test did not sign: ${`${check.stdout}\n${check.stderr}`.trim().slice(-1500)}`);
  }

  const proc = spawn(opendkim, ['-f', '-x', conf], { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  proc.stderr?.on('data', (d: Buffer) => {
    err = (err + d.toString()).slice(-4000);
  });
  const exited = new Promise<never>((_, reject) =>
    proc.once('exit', (code, sig) => reject(new Error(`opendkim exited (${code ?? sig}): ${err.trim()}`))),
  );
  try {
    const sock = o.socket;
    const ready = sock.kind === 'inet' ? waitForListen(sock.port, o.timeoutMs) : waitForUnixSocket(sock.path, o.timeoutMs);
    await Promise.race([ready, exited]);
  } catch (e) {
    proc.kill('SIGKILL');
    throw e;
  }
  exited.catch(() => {});
  const postfixAddr = o.socket.kind === 'inet' ? `inet:127.0.0.1:${o.socket.port}` : `unix:${o.socket.path}`;
  return { proc, postfixAddr, txt, selector: o.selector, domain: o.domain, stderr: () => err };
}

async function stopChild(proc: ReturnType<typeof spawn>): Promise<void> {
  if (proc.exitCode !== null || proc.signalCode !== null || proc.pid === undefined) return;
  const gone = new Promise<void>((r) => proc.once('exit', () => r()));
  proc.kill('SIGTERM');
  // libmilter only notices the stop request on its next 5 s listener poll;
  // nothing of value is lost by killing it sooner.
  const t = setTimeout(() => proc.kill('SIGKILL'), 1000);
  await gone;
  clearTimeout(t);
}

/** A transport_maps next hop on loopback: "smtp:[127.0.0.1]:2525", "relay:[127.0.0.2]". */
const LOOPBACK_NEXTHOP = /^(?:smtp|relay|lmtp):\[127(?:\.\d{1,3}){3}\](?::\d{1,5})?$/;

export async function startPostfix(opts: StartPostfixOptions): Promise<PostfixInstance> {
  for (const [domain, nexthop] of Object.entries(opts.transports ?? {}))
    if (!LOOPBACK_NEXTHOP.test(nexthop)) throw new Error(`startPostfix: transports["${domain}"] = "${nexthop}" is not a loopback next hop like "smtp:[127.0.0.1]:2525"`);
  if (opts.sinkPort === undefined && opts.dkim) throw new Error('startPostfix: dkim needs a sinkPort to relay to');
  const postfix = findBinary(POSTFIX_CANDIDATES, 'postfix');
  if (!postfix) throw new Error('postfix is not installed (see the apt-get commands at the top of bench/postfix.ts)');
  if (typeof process.getuid === 'function' && process.getuid() !== 0) {
    throw new Error('startPostfix must run as root (the Postfix master daemon requires it)');
  }
  const timeoutMs = opts.startTimeoutMs ?? 20_000;
  const wantDkim = opts.dkim ?? false;
  if (wantDkim && !opendkimAvailable()) {
    throw new Error('dkim requested but opendkim is not installed (apt-get install -y opendkim opendkim-tools)');
  }

  const baseDir = await fsp.mkdtemp(path.join(opts.baseDir ?? os.tmpdir(), 'tern-postfix-'));
  // Postfix daemons (user postfix) and opendkim (user opendkim) traverse it.
  await fsp.chmod(baseDir, 0o755);
  const configDir = path.join(baseDir, 'etc');
  const queueDir = path.join(baseDir, 'queue');
  const dataDir = path.join(baseDir, 'data');
  const logFile = path.join(baseDir, 'maillog');
  await fsp.mkdir(configDir, { mode: 0o755 });
  await fsp.mkdir(queueDir, { mode: 0o755 }); // root-owned; postfix creates its subdirs
  await fsp.mkdir(dataDir, { mode: 0o700 });
  spawnSync('chown', ['postfix', dataDir]);

  let dkim: DkimHandle | null = null;
  let started = false;
  const pf = (...args: string[]) =>
    execFileP(postfix, ['-c', configDir, ...args], { env: { ...process.env, MAIL_CONFIG: configDir } });

  const stop = async (): Promise<void> => {
    // 1. Postfix: graceful stop, then abort, then SIGKILL the master if needed.
    if (started) {
      started = false;
      const pidFile = path.join(queueDir, 'pid', 'master.pid');
      let masterPid: number | null = null;
      try {
        masterPid = Number((await fsp.readFile(pidFile, 'utf8')).trim()) || null;
      } catch {
        /* not running */
      }
      await pf('stop').catch(() => {});
      if (masterPid !== null && !(await waitPidGone(masterPid, 10_000))) {
        await pf('abort').catch(() => {});
        if (!(await waitPidGone(masterPid, 5000))) {
          try {
            process.kill(masterPid, 'SIGKILL');
          } catch {
            /* gone */
          }
        }
      }
      // Children of a killed master exit on their own once the master's
      // status pipe closes; give them a moment so the dir can be removed.
      await sleep(100);
    }
    // 2. OpenDKIM.
    if (dkim) {
      const d = dkim;
      dkim = null;
      await stopChild(d.proc);
    }
    // 3. The temp dir.
    if (!opts.keepDir) await fsp.rm(baseDir, { recursive: true, force: true });
  };

  try {
    let milter: string | null = null;
    if (wantDkim) {
      let socket: { kind: 'inet'; port: number } | { kind: 'unix'; path: string };
      if (opts.milterSocket === 'inet') {
        socket = { kind: 'inet', port: opts.milterPort ?? (await freePort()) };
      } else {
        // opendkim creates the socket; postfix (smtpd/cleanup) must reach it.
        const sockDir = path.join(baseDir, 'milter');
        await fsp.mkdir(sockDir, { mode: 0o750 });
        spawnSync('chown', ['opendkim:postfix', sockDir]);
        await fsp.chmod(sockDir, 0o750);
        socket = { kind: 'unix', path: path.join(sockDir, 'opendkim.sock') };
      }
      dkim = await startOpendkim({
        dir: path.join(baseDir, 'dkim'),
        domain: (opts.dkimDomain ?? 'tern.test').toLowerCase(),
        selector: opts.dkimSelector ?? 'bench',
        socket,
        timeoutMs,
      });
      milter = dkim.postfixAddr;
    }
    let transportFile: string | null = null;
    if (opts.transports && Object.keys(opts.transports).length) {
      transportFile = path.join(configDir, 'transport');
      await fsp.writeFile(transportFile, Object.entries(opts.transports).map(([d, n]) => `${d} ${n}`).join('\n') + '\n');
    }
    const localDomains = opts.localDomains ?? [];
    await fsp.writeFile(
      path.join(configDir, 'main.cf'),
      mainCf({ baseDir, configDir, queueDir, dataDir, logFile, sinkPort: opts.sinkPort ?? null, localDomains, transportFile, milter, extra: opts.extraMainCf }),
    );
    await fsp.writeFile(path.join(configDir, 'master.cf'), masterCf(opts.listenPort, localDomains.length > 0));
    try {
      await pf('start');
    } catch (e) {
      const err = e as { stderr?: string; message: string };
      throw new Error(`postfix -c ${configDir} start failed: ${err.stderr?.trim() || err.message}`);
    }
    started = true;
    await waitForListen(opts.listenPort, timeoutMs, '220');
  } catch (e) {
    const log = await fsp.readFile(logFile, 'utf8').catch(() => '');
    await stop().catch(() => {});
    if (log) (e as Error).message += `\n--- maillog (tail) ---\n${log.split('\n').slice(-20).join('\n')}`;
    throw e;
  }

  const d = dkim as DkimHandle | null;
  return {
    port: opts.listenPort,
    configDir,
    baseDir,
    logFile,
    dkim: d !== null,
    dkimDomain: d?.domain,
    dkimSelector: d?.selector,
    dkimTxt: d?.txt,
    stop,
  };
}

// ---------------------------------------------------------------------------
// CLI

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      listen: { type: 'string' },
      sink: { type: 'string' },
      dkim: { type: 'boolean', default: false },
      'dkim-domain': { type: 'string' },
      'dkim-selector': { type: 'string' },
      'base-dir': { type: 'string' },
      'milter-socket': { type: 'string' },
      keep: { type: 'boolean', default: false },
      check: { type: 'boolean', default: false },
    },
  });
  if (values.check) {
    console.log(JSON.stringify({ postfix: postfixAvailable(), opendkim: opendkimAvailable() }));
    return;
  }
  if (!values.listen || !values.sink) {
    console.error('usage: tsx bench/postfix.ts --listen PORT --sink PORT [--dkim] [--dkim-domain D] [--dkim-selector S] [--milter-socket unix|inet] [--base-dir DIR] [--keep] | --check');
    process.exit(2);
  }
  const inst = await startPostfix({
    listenPort: Number(values.listen),
    sinkPort: Number(values.sink),
    dkim: values.dkim,
    dkimDomain: values['dkim-domain'],
    dkimSelector: values['dkim-selector'],
    baseDir: values['base-dir'],
    keepDir: values.keep,
    milterSocket: values['milter-socket'] === 'inet' ? 'inet' : 'unix',
  });
  console.log(
    JSON.stringify({
      postfix: {
        port: inst.port,
        configDir: inst.configDir,
        logFile: inst.logFile,
        dkim: inst.dkim,
        dkimDomain: inst.dkimDomain,
        dkimSelector: inst.dkimSelector,
        dkimTxt: inst.dkimTxt,
      },
    }),
  );
  let stopping = false;
  const onSignal = () => {
    if (stopping) return;
    stopping = true;
    inst.stop().then(
      () => process.exit(0),
      (e) => {
        console.error(e);
        process.exit(1);
      },
    );
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  // keep the process alive until a signal arrives
  setInterval(() => {}, 1 << 30);
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().catch((e) => {
    console.error(e instanceof Error ? e.message : e);
    process.exit(1);
  });
}
