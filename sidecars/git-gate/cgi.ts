import { spawn } from 'node:child_process';
import type { IncomingMessage, ServerResponse } from 'node:http';

/**
 * `git http-backend` as a CGI program behind Node's HTTP server: the request body goes to its
 * stdin, its CGI headers (`Status:`, `Content-Type:`, ...) become the response head and the
 * rest of its stdout is streamed as the body.
 */

export interface CgiRequest {
  projectRoot: string;
  /** `/NAME.git/info/refs`, `/NAME.git/git-upload-pack`, ... */
  pathInfo: string;
  query: string;
  /** Added to the program's environment (the hook reads its own settings from here). */
  env: Record<string, string | undefined>;
}

/** Resolves with http-backend's exit code once the response has ended. */
export function serveCgi(req: IncomingMessage, res: ServerResponse, cgi: CgiRequest): Promise<number> {
  return new Promise((resolve) => {
    const header = (name: string) => {
      const v = req.headers[name];
      return Array.isArray(v) ? v.join(', ') : v;
    };
    const env: Record<string, string | undefined> = {
      ...cgi.env,
      GIT_PROJECT_ROOT: cgi.projectRoot,
      GIT_HTTP_EXPORT_ALL: '1',
      GATEWAY_INTERFACE: 'CGI/1.1',
      SERVER_PROTOCOL: 'HTTP/1.1',
      REQUEST_METHOD: req.method ?? 'GET',
      PATH_INFO: cgi.pathInfo,
      QUERY_STRING: cgi.query,
      REMOTE_ADDR: req.socket.remoteAddress ?? '',
      CONTENT_TYPE: header('content-type') ?? '',
      ...(header('content-length') !== undefined ? { CONTENT_LENGTH: header('content-length') } : {}),
      ...(header('content-encoding') !== undefined ? { HTTP_CONTENT_ENCODING: header('content-encoding') } : {}),
      ...(header('git-protocol') !== undefined ? { HTTP_GIT_PROTOCOL: header('git-protocol') } : {}),
    };
    const child = spawn('git', ['http-backend'], { env, stdio: ['pipe', 'pipe', 'pipe'] });
    let head = Buffer.alloc(0);
    let headDone = false;
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => {
      stderr += d.toString('utf8');
    });
    child.stdout.on('data', (d: Buffer) => {
      if (headDone) {
        res.write(d);
        return;
      }
      head = Buffer.concat([head, d]);
      const crlf = head.indexOf('\r\n\r\n');
      const lf = head.indexOf('\n\n');
      const end = crlf !== -1 && (lf === -1 || crlf < lf) ? crlf : lf;
      if (end === -1) return;
      const sep = end === crlf ? 4 : 2;
      const lines = head.subarray(0, end).toString('latin1').split(/\r?\n/);
      let status = 200;
      const headers: Record<string, string> = {};
      for (const line of lines) {
        const i = line.indexOf(':');
        if (i <= 0) continue;
        const name = line.slice(0, i).trim();
        const value = line.slice(i + 1).trim();
        if (name.toLowerCase() === 'status') status = Number.parseInt(value, 10) || 500;
        else headers[name] = value;
      }
      headDone = true;
      res.writeHead(status, headers);
      const rest = head.subarray(end + sep);
      if (rest.length > 0) res.write(rest);
    });
    req.pipe(child.stdin);
    child.stdin.on('error', () => undefined);
    req.on('aborted', () => child.kill('SIGTERM'));
    child.on('error', (err) => {
      if (!res.headersSent) res.writeHead(500, { 'content-type': 'text/plain' });
      res.end(`git-gate: cannot run git http-backend: ${err.message}\n`);
      resolve(127);
    });
    child.on('close', (code) => {
      if (!headDone) {
        if (!res.headersSent) res.writeHead(500, { 'content-type': 'text/plain' });
        res.end(`git-gate: git http-backend failed${stderr ? `: ${stderr.trim()}` : ''}\n`);
      } else {
        res.end();
      }
      if (stderr.trim()) process.stderr.write(`git-gate: http-backend ${cgi.pathInfo}: ${stderr.trim()}\n`);
      resolve(code ?? 1);
    });
  });
}

/** A pkt-line (git's framing): four hex digits of length, then the payload. */
export function pktLine(payload: string): string {
  return `${(Buffer.byteLength(payload) + 4).toString(16).padStart(4, '0')}${payload}`;
}

/**
 * A smart-HTTP ref advertisement that carries only an error: the agent's git prints
 * `fatal: remote error: <message>` (where a plain 4xx/5xx would show only the status).
 */
export function errorAdvertisement(res: ServerResponse, service: string, message: string): void {
  const body = `${pktLine(`# service=${service}\n`)}0000${pktLine(`ERR ${message.replace(/\s*\n\s*/g, ' | ').slice(0, 60000)}`)}`;
  res.writeHead(200, { 'content-type': `application/x-${service}-advertisement`, 'cache-control': 'no-cache' });
  res.end(body);
}
