import { BottleError } from '../../config/errors.js';

/**
 * The one place Docker failures become BottleErrors. Adapters pass every error from
 * dockerode through `classifyDockerError` with what they were doing, so a user always
 * reads which operation on which object failed, why, and what to run next.
 */

export interface DockerErrorContext {
  /** What was attempted, as a verb phrase: "create container", "inspect network". */
  op: string;
  /** The object's name or tag, when there is one. */
  object?: string;
}

const UNREACHABLE_CODES = new Set(['ENOENT', 'ECONNREFUSED', 'ECONNRESET', 'EHOSTUNREACH', 'ENETUNREACH', 'ENOTFOUND', 'ETIMEDOUT', 'EPIPE']);
const PERMISSION_CODES = new Set(['EACCES', 'EPERM']);
/** Only while connecting do these mean "no daemon there"; mid-stream they are ordinary failures. */
const CONNECT_SYSCALLS = new Set(['connect', 'getaddrinfo']);

export const HINTS = {
  unreachable: 'Start Docker: as root on Debian run `bash scripts/docker-up.sh`; otherwise start Docker Engine or Docker Desktop, or point DOCKER_HOST at a running engine.',
  permission: 'Add your user to the docker group (`sudo usermod -aG docker "$USER"`, then log in again), or run the command with sudo.',
  imageMissing: 'Run `bottle images build` to build the images, then try again.',
  nameConflict: (name: string | undefined) =>
    `Run \`bottle cleanup\` to remove leftovers of earlier runs, or \`docker rm -f ${name ?? 'NAME'}\` if you know the container is not needed.`,
} as const;

interface ErrnoLike {
  code?: unknown;
  syscall?: unknown;
  address?: unknown;
  statusCode?: unknown;
  json?: unknown;
  message?: unknown;
}

/** The HTTP status dockerode attached to a failed request, if any. */
export function statusOf(err: unknown): number | undefined {
  const status = (err as ErrnoLike | null)?.statusCode;
  return typeof status === 'number' ? status : undefined;
}

export function isNotFound(err: unknown): boolean {
  return statusOf(err) === 404;
}

/**
 * The daemon's own words. dockerode wraps them as "(HTTP code 404) no such container -
 * <daemon message>" and keeps the parsed body in `json`; prefer the body.
 */
export function daemonMessage(err: unknown): string {
  const e = err as ErrnoLike | null;
  const body = e?.json;
  if (body && typeof body === 'object' && !Buffer.isBuffer(body) && typeof (body as { message?: unknown }).message === 'string') {
    return ((body as { message: string }).message).trim();
  }
  if (typeof body === 'string' && body.trim() !== '') return body.trim();
  if (Buffer.isBuffer(body) && body.length > 0) return body.toString('utf8').trim();
  const message = typeof e?.message === 'string' ? e.message : String(err);
  return message.replace(/^\(HTTP code \d+\) [^-]*- /, '').trim();
}

function describe(ctx: DockerErrorContext): string {
  return ctx.object === undefined ? ctx.op : `${ctx.op} ${ctx.object}`;
}

/** Turns any failure of a Docker call into a BottleError with a stable code and a hint. */
export function classifyDockerError(err: unknown, context: DockerErrorContext): BottleError {
  if (err instanceof BottleError) return err;
  const e = (err ?? {}) as ErrnoLike;
  const what = describe(context);
  const code = typeof e.code === 'string' ? e.code : undefined;
  const syscall = typeof e.syscall === 'string' ? e.syscall : undefined;
  const address = typeof e.address === 'string' ? e.address : undefined;
  const status = statusOf(err);

  if (status === undefined && code !== undefined) {
    const where = address === undefined ? '' : ` at ${address}`;
    if (PERMISSION_CODES.has(code) && (syscall === undefined || CONNECT_SYSCALLS.has(syscall))) {
      return new BottleError(
        'DOCKER_PERMISSION',
        `Permission denied talking to the Docker daemon${where} (while trying to ${what}): ${code}`,
        HINTS.permission,
      );
    }
    if (UNREACHABLE_CODES.has(code) && (syscall === undefined || CONNECT_SYSCALLS.has(syscall) || code === 'ECONNREFUSED')) {
      return new BottleError(
        'DOCKER_UNREACHABLE',
        `Docker is not reachable${where} (while trying to ${what}): ${code}. Is the Docker daemon running?`,
        HINTS.unreachable,
      );
    }
  }

  const message = daemonMessage(err);
  if (status === 404 && (/no such image|pull access denied|repository does not exist|manifest unknown|not found: manifest/i.test(message) || /\bimage\b/.test(context.op))) {
    return new BottleError('IMAGE_MISSING', `Docker could not ${what}: image missing (${message})`, HINTS.imageMissing);
  }
  if (status === 409 && /already in use|already exists/i.test(message)) {
    return new BottleError('NAME_CONFLICT', `Docker could not ${what}: the name is already taken (${message})`, HINTS.nameConflict(context.object));
  }
  return new BottleError('DOCKER_ERROR', `Docker could not ${what}: ${message}`);
}

/**
 * Build and pull answer 200 and then report failure inside the JSON progress stream
 * (`{"errorDetail": {...}, "error": "..."}`). Returns the first failing message, if any.
 * Accepts raw chunks (one or more newline-separated JSON lines) or parsed objects.
 */
export function checkStreamLines(lines: Iterable<unknown>): string | undefined {
  for (const item of lines) {
    if (typeof item === 'string' || Buffer.isBuffer(item)) {
      for (const line of item.toString().split('\n')) {
        const found = streamError(parseJsonLine(line));
        if (found !== undefined) return found;
      }
      continue;
    }
    const found = streamError(item);
    if (found !== undefined) return found;
  }
  return undefined;
}

function parseJsonLine(line: string): unknown {
  const trimmed = line.trim();
  if (!trimmed.startsWith('{')) return undefined;
  try {
    return JSON.parse(trimmed);
  } catch (err) {
    // A line cut mid-way is progress noise, not the daemon's verdict; the verdict is a whole line.
    if (err instanceof SyntaxError) return undefined;
    throw err;
  }
}

function streamError(obj: unknown): string | undefined {
  if (!obj || typeof obj !== 'object') return undefined;
  const o = obj as { errorDetail?: { message?: unknown }; error?: unknown };
  if (o.errorDetail && typeof o.errorDetail.message === 'string' && o.errorDetail.message !== '') return o.errorDetail.message;
  if (typeof o.error === 'string' && o.error !== '') return o.error;
  if (o.errorDetail !== undefined) return 'unknown error';
  return undefined;
}
