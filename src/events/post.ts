/**
 * One webhook request: a POST to an address that was already checked, with the URL's host name kept for
 * the Host header, SNI and certificate check. Redirects are answers like any other (never followed).
 */
import http from 'node:http';
import https from 'node:https';

export interface PostTarget {
  url: URL;
  /** the checked IP address to connect to */
  address: string;
}

export interface PostAnswer {
  status: number;
  location: string | null;
  /** the start of the response body, for error messages */
  body: string;
}

export class PostError extends Error {
  constructor(
    message: string,
    readonly kind: 'network' | 'timeout',
  ) {
    super(message);
    this.name = 'PostError';
  }
}

/** bytes of a response body kept for the error message; the rest is read and dropped */
const BODY_KEPT = 512;

export function postJson(
  target: PostTarget,
  body: Buffer,
  headers: Record<string, string>,
  opts: { timeoutMs: number; agent?: http.Agent; ca?: string[]; signal?: AbortSignal },
): Promise<PostAnswer> {
  const { url, address } = target;
  const secure = url.protocol === 'https:';
  const hostname = url.hostname.replace(/^\[(.*)\]$/, '$1');
  const timeout = AbortSignal.timeout(opts.timeoutMs);
  const signal = opts.signal ? AbortSignal.any([timeout, opts.signal]) : timeout;
  const options: https.RequestOptions = {
    host: address,
    port: url.port || (secure ? 443 : 80),
    path: `${url.pathname}${url.search}`,
    method: 'POST',
    headers: { host: url.host, 'content-type': 'application/json', 'content-length': String(body.length), ...headers },
    agent: opts.agent,
    signal,
  };
  if (secure) {
    // SNI only for a name (an IP literal is checked against the certificate's IP entries)
    if (hostname !== address) options.servername = hostname;
    options.ca = opts.ca;
    options.rejectUnauthorized = true;
  }
  return new Promise((resolve, reject) => {
    const req = (secure ? https : http).request(options, (res) => {
      const chunks: Buffer[] = [];
      let kept = 0;
      res.on('data', (chunk: Buffer) => {
        if (kept < BODY_KEPT) {
          chunks.push(chunk);
          kept += chunk.length;
        }
      });
      res.on('end', () =>
        resolve({
          status: res.statusCode ?? 0,
          location: typeof res.headers.location === 'string' ? res.headers.location : null,
          body: Buffer.concat(chunks).subarray(0, BODY_KEPT).toString('utf8'),
        }),
      );
      res.on('error', (err) => reject(failure(err, timeout, opts.timeoutMs)));
    });
    req.on('error', (err) => reject(failure(err, timeout, opts.timeoutMs)));
    req.end(body);
  });
}

function failure(err: NodeJS.ErrnoException, timeout: AbortSignal, timeoutMs: number): PostError {
  if (timeout.aborted) return new PostError(`no answer within ${timeoutMs} ms`, 'timeout');
  return new PostError(err.code && !err.message.includes(err.code) ? `${err.code} ${err.message}` : err.message, 'network');
}
