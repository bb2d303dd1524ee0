/**
 * What every sidecar program does the same way as a container's PID 1: fail with a message and
 * a meaningful exit code, read its port from BOTTLE_SIDECAR_PORT, and stop cleanly on SIGTERM
 * or SIGINT (PID 1 gets no default signal handling: without a handler `docker stop` waits out
 * its timeout). Bundled into each program by scripts/build.mjs; Node 18 APIs only.
 */

/** Writes `<name>: message` to stderr and exits (1: a file or resource; 2: invalid configuration). */
export function dieAs(name: string): (message: string, code?: number) => never {
  return (message, code = 1) => {
    process.stderr.write(`${name}: ${message}\n`);
    process.exit(code);
  };
}

/** A TCP port number 1..65535 written in decimal, or undefined. */
export function parsePortText(text: string): number | undefined {
  if (!/^\d{1,5}$/.test(text)) return undefined;
  const port = Number(text);
  return port >= 1 && port <= 65535 ? port : undefined;
}

/** BOTTLE_SIDECAR_PORT, or `fallback` when unset; exits 2 naming the variable when it is not a port. */
export function sidecarPort(env: NodeJS.ProcessEnv, fallback: string, die: (message: string, code?: number) => never): number {
  const text = env.BOTTLE_SIDECAR_PORT ?? fallback;
  return parsePortText(text) ?? die(`BOTTLE_SIDECAR_PORT must be a port number, got '${text}'`, 2);
}

/**
 * On SIGTERM or SIGINT: `stop(done)` closes what the program holds and calls `done` when it
 * has; the process exits 0 then, or after `graceMs` whatever is still open.
 */
export function exitOnStopSignals(stop: (done: () => void) => void, graceMs = 1000): void {
  for (const signal of ['SIGTERM', 'SIGINT'] as const) {
    process.on(signal, () => {
      stop(() => process.exit(0));
      setTimeout(() => process.exit(0), graceMs).unref();
    });
  }
}
