import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { BottleError } from '../../../config/errors.js';
import type { Readiness } from '../../../machines/ports.js';
import { assertNothingLabelled, baseImage, removeAllLabelled, runtime } from '../../support/docker.js';
import { serverCmd, spec } from './fixtures.js';

const rt = runtime();
const PORT = 9099;

beforeAll(() => baseImage());
afterEach(() => removeAllLabelled());
afterAll(async () => {
  await removeAllLabelled();
  await assertNothingLabelled();
});

async function started(cmd: string[], hardened = true): Promise<string> {
  const s = spec({ cmd, hardened, role: 'egress' });
  await rt.ensureContainer(s);
  await rt.startContainer(s.name);
  return s.name;
}

async function failure(name: string, readiness: Readiness, deadlineMs: number): Promise<{ err: BottleError; ms: number }> {
  const t0 = Date.now();
  const err = await rt.waitReady(name, readiness, deadlineMs).then(
    () => null,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(BottleError);
  return { err: err as BottleError, ms: Date.now() - t0 };
}

describe('DockerodeRuntime.waitReady', () => {
  it('tcp: waits for a listener that comes up late', async () => {
    const name = await started(serverCmd(PORT, 1));
    const t0 = Date.now();
    await rt.waitReady(name, { kind: 'tcp', port: PORT }, 15_000);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(500);
    // Ready also for the other kinds once the server is up.
    await rt.waitReady(name, { kind: 'http', port: PORT, path: '/health' }, 5_000);
    await rt.waitReady(name, { kind: 'log', pattern: `^listening on ${PORT}$` }, 5_000);
    await rt.waitReady(name, { kind: 'running' }, 5_000);
  });

  it('tcp: past the deadline it is SIDECAR_UNHEALTHY naming the container and the check', async () => {
    const name = await started(['bash', '-c', 'echo "still booting"; exec sleep infinity']);
    const { err, ms } = await failure(name, { kind: 'tcp', port: PORT }, 1_500);
    expect(err.code).toBe('SIDECAR_UNHEALTHY');
    expect(err.message).toContain(name);
    expect(err.message).toContain(`tcp port ${PORT}`);
    expect(err.message).toContain('still booting');
    expect(ms).toBeGreaterThanOrEqual(1_500);
    expect(ms).toBeLessThan(8_000);
  });

  it('a container that exits fails at once, quoting its last log lines', async () => {
    const name = await started(['bash', '-c', 'echo "config: bad allowlist line 3" >&2; sleep 0.5; exit 4']);
    const { err, ms } = await failure(name, { kind: 'tcp', port: PORT }, 30_000);
    expect(err.code).toBe('SIDECAR_UNHEALTHY');
    expect(err.message).toContain(name);
    expect(err.message).toContain('code 4');
    expect(err.message).toContain('config: bad allowlist line 3');
    expect(ms).toBeLessThan(10_000);
  });

  it('http: a listener that does not answer 2xx/3xx is not ready', async () => {
    const perl = [
      '$| = 1; my $s = IO::Socket::INET->new(LocalPort => $ARGV[0], Listen => 8, ReuseAddr => 1) or die;',
      'while (my $c = $s->accept) { while (my $l = <$c>) { last if $l =~ /^\\r?\\n$/ } print $c "HTTP/1.0 503 Busy\\r\\n\\r\\n"; close $c }',
    ].join(' ');
    const name = await started(['perl', '-MIO::Socket::INET', '-e', perl, String(PORT)]);
    await rt.waitReady(name, { kind: 'tcp', port: PORT }, 10_000);
    const { err } = await failure(name, { kind: 'http', port: PORT, path: '/' }, 1_000);
    expect(err.code).toBe('SIDECAR_UNHEALTHY');
    expect(err.message).toContain('http GET /');
  });

  it('log: waits for the line', async () => {
    const name = await started(['bash', '-c', 'sleep 0.5; echo "proxy ready on :3128"; exec sleep infinity']);
    await rt.waitReady(name, { kind: 'log', pattern: 'ready on :3128' }, 10_000);
    const { err } = await failure(name, { kind: 'log', pattern: 'never printed' }, 800);
    expect(err.message).toContain('never printed');
  });

  it('an abort stops the wait with the caller’s reason', async () => {
    const name = await started(['sleep', 'infinity']);
    const controller = new AbortController();
    setTimeout(() => controller.abort(new Error('teardown')), 300);
    await expect(rt.waitReady(name, { kind: 'tcp', port: PORT }, 30_000, controller.signal)).rejects.toThrow('teardown');
  });
});
