/**
 * The one user-facing error type. Every failure a user can meet carries a stable
 * code (tests and scripts match on it), a message naming the object, and a hint
 * with the command to run next. Anything else that escapes is a bug.
 *
 * Lives in config/ because every layer may import config/ (see docs/architecture.md).
 */
export const ERROR_CODES = [
  'MANIFEST_INVALID',
  'MANIFEST_NOT_FOUND',
  'SECRET_UNREADABLE',
  'SECRET_INVALID',
  'USAGE',
  'AGENT_UNKNOWN',
  'CONTAINER_EXISTS',
  'NO_FREE_NAME',
  'ORPHAN_SIDECAR',
  'NO_BACKEND',
  'DOCKER_UNREACHABLE',
  'DOCKER_PERMISSION',
  'DOCKER_ERROR',
  'IMAGE_MISSING',
  'NAME_CONFLICT',
  'BUILD_FAILED',
  'SIDECAR_UNHEALTHY',
  'SIDECAR_DIED',
  'DOCKER_RESTARTED',
  'BOTTLE_NOT_FOUND',
  'RUN_LOCKED',
  'RUN_FINISHED',
  'LOG_CORRUPT',
  'REPLAY_MISMATCH',
  'MACHINE_VERSION',
  'PROPOSAL_NOT_FOUND',
  'PROPOSAL_DECIDED',
  'ADDRESS_REFUSED',
  'INTERNAL',
] as const;

export type ErrorCode = (typeof ERROR_CODES)[number];

/** Plain, serializable form: what the event log and `--json` carry (Error objects serialize as {}). */
export interface ErrorData {
  code: ErrorCode | string;
  message: string;
  hint?: string;
}

export class BottleError extends Error {
  readonly code: ErrorCode;
  readonly hint: string | undefined;
  /** Exit status the CLI uses: 2 for usage and manifest problems (a secret of the wrong shape among them), 1 otherwise. */
  readonly exitCode: number;

  constructor(code: ErrorCode, message: string, hint?: string, exitCode?: number) {
    super(message);
    this.name = 'BottleError';
    this.code = code;
    this.hint = hint;
    this.exitCode = exitCode ?? (code === 'MANIFEST_INVALID' || code === 'USAGE' || code === 'SECRET_INVALID' || code === 'MANIFEST_NOT_FOUND' || code === 'AGENT_UNKNOWN' ? 2 : 1);
  }

  toData(): ErrorData {
    return this.hint === undefined
      ? { code: this.code, message: this.message }
      : { code: this.code, message: this.message, hint: this.hint };
  }
}

/** Turns anything thrown into plain data, keeping a BottleError's code and hint. */
export function toErrorData(err: unknown): ErrorData {
  if (err instanceof BottleError) return err.toData();
  if (err && typeof err === 'object' && 'message' in err && typeof (err as { message: unknown }).message === 'string') {
    const e = err as { message: string; code?: unknown; hint?: unknown };
    const data: ErrorData = { code: typeof e.code === 'string' ? e.code : 'INTERNAL', message: e.message };
    if (typeof e.hint === 'string') data.hint = e.hint;
    return data;
  }
  return { code: 'INTERNAL', message: String(err) };
}

/** Rebuilds a BottleError from data read back from the log or a child process. */
export function fromErrorData(data: ErrorData): BottleError {
  const code = (ERROR_CODES as readonly string[]).includes(data.code) ? (data.code as ErrorCode) : 'INTERNAL';
  return new BottleError(code, data.message, data.hint);
}
