import { BottleError, toErrorData } from '../config/errors.js';

/**
 * One place for what the user sees: human text on stderr, one JSON document on stdout
 * under --json, errors as `error CODE: message` plus a `Try:` line (or {error:{...}}).
 */

export interface OutputOpts {
  json?: boolean;
}

export function info(line: string): void {
  // In raw mode (an attached TTY session) a bare newline does not return the carriage.
  const raw = process.stdin.isTTY && process.stdin.isRaw;
  process.stderr.write(raw ? `${line.replace(/\n/g, '\r\n')}\r\n` : `${line}\n`);
}

export function printJson(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
}

/** Prints an error the way every command does and returns the exit code to use. */
export function reportError(err: unknown, opts: OutputOpts): number {
  const data = toErrorData(err);
  // Hints are written both with and without a leading "Try:"; print exactly one.
  if (data.hint) data.hint = data.hint.replace(/^Try:\s*/, '');
  const issues = (err as { issues?: unknown }).issues;
  if (opts.json) {
    printJson({ error: { code: data.code, message: data.message, hint: data.hint ?? null, ...(Array.isArray(issues) ? { issues } : {}) } });
  } else {
    info(`error ${data.code}: ${data.message}`);
    if (data.hint) info(`Try: ${data.hint}`);
    if (!(err instanceof BottleError) && err instanceof Error && err.stack && process.env.BOTTLE_DEBUG) info(err.stack);
  }
  if (err instanceof BottleError) return err.exitCode;
  return 1;
}

/** Width-aligned table for human output. */
export function table(rows: string[][]): string {
  const widths: number[] = [];
  for (const row of rows) {
    row.forEach((cell, i) => {
      widths[i] = Math.max(widths[i] ?? 0, cell.length);
    });
  }
  return rows.map((row) => row.map((cell, i) => (i === row.length - 1 ? cell : cell.padEnd(widths[i]!))).join('  ')).join('\n');
}
