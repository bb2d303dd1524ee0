import { z } from 'zod';

/** A zod error on one line, for messages that name a file and line. */
export function zodReason(error: z.ZodError): string {
  return z.prettifyError(error).replaceAll('\n', ' ');
}

export type Checked<T> = { ok: true; value: T } | { ok: false; notJson: boolean; reason: string };

/** Parses `text` as JSON and checks it against `schema`; says why when it is neither. */
export function parseChecked<T>(schema: z.ZodType<T>, text: string): Checked<T> {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    return { ok: false, notJson: true, reason: `not JSON (${(err as Error).message})` };
  }
  const result = schema.safeParse(value);
  return result.success ? { ok: true, value: result.data } : { ok: false, notJson: false, reason: zodReason(result.error) };
}
