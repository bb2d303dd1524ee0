/**
 * The one shape rule for a secret the cred-proxy injects: checked by the host wherever such a
 * secret enters (the manifest at load, a token file rotated while the bottle runs, the secret
 * named on `bottle approve --token-env/--token-file`), by the cred-proxy when it loads a token
 * file, and relied on by the egress canary (sidecars/egress/secrets.ts), which imports the
 * same bytes and lengths from here.
 *
 * Why the rule is what it is: the canary knows a real token only as `<length>:<sha256>` and
 * finds it by hashing every window of that length inside each maximal run of token bytes of a
 * request. A token with a byte outside the class (a space, a tab, a line break, a control or
 * non-ASCII character) is split across runs and never hashed whole, so it would be injected
 * upstream yet invisible to the canary. A token shorter than the minimum would make the
 * cred-proxy's redaction cut ordinary text; one longer than the maximum is not accepted in the
 * canary's hash list (the proxy holds back at most that many bytes of a body).
 *
 * Node built-ins only, no zod: the sidecars bundle this file (Debian's Node 18).
 * Messages describe the shape, never the value.
 */

export const TOKEN_MIN_LENGTH = 8;
export const TOKEN_MAX_LENGTH = 8192;

/** A byte (or UTF-16 unit) a token may contain: printable ASCII other than space, 0x21..0x7e. */
export function isTokenByte(code: number): boolean {
  return code > 0x20 && code < 0x7f;
}

/** Why `token` breaks the rule, in words that never quote it; undefined when it is fine. */
export function tokenProblem(token: string): string | undefined {
  if (token.length === 0) return 'is empty';
  for (let i = 0; i < token.length; i++) {
    const c = token.charCodeAt(i);
    if (isTokenByte(c)) continue;
    if (c === 0x20 || c === 0x09 || c === 0x0a || c === 0x0d || c === 0x0b || c === 0x0c) {
      return 'contains whitespace (a space, tab or line break); a token must be printable ASCII without spaces';
    }
    if (c < 0x20 || c === 0x7f) return 'contains a control character; a token must be printable ASCII without spaces';
    return 'contains a non-ASCII character; a token must be printable ASCII without spaces';
  }
  if (token.length < TOKEN_MIN_LENGTH) return `is shorter than ${TOKEN_MIN_LENGTH} characters`;
  if (token.length > TOKEN_MAX_LENGTH) return `is longer than ${TOKEN_MAX_LENGTH} characters`;
  return undefined;
}
