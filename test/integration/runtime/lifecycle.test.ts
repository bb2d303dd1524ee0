import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { BottleError } from '../../../config/errors.js';
import { LABEL } from '../../../machines/ports.js';
import { assertNothingLabelled, baseImage, docker, execIn, removeAllLabelled, runtime, suiteLabels, uniqueName } from '../../support/docker.js';
import { collector, runLabels, spec } from './fixtures.js';

const rt = runtime();
let dir: string;

beforeAll(async () => {
  await baseImage();
  dir = await mkdtemp(join(tmpdir(), 'bbt-lifecycle-'));
});
afterEach(() => removeAllLabelled());
afterAll(async () => {
  await removeAllLabelled();
  await assertNothingLabelled();
  await rm(dir, { recursive: true, force: true });
});

async function codeOf(promise: Promise<unknown>): Promise<string> {
  const err = await promise.then(
    () => new Error('expected a rejection'),
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(BottleError);
  return (err as BottleError).code;
}

describe('DockerodeRuntime lifecycle', () => {
  it('creates, starts and waits: exit code 3 with stdout and stderr captured', async () => {
    const s = spec({ cmd: ['bash', '-c', 'echo out-line; echo err-line >&2; exit 3'] });
    const logFile = join(dir, 'exit3.log');
    expect(await rt.ensureContainer(s)).toMatchObject({ created: true });
    await rt.startContainer(s.name);
    const stdout = collector();
    const stderr = collector();
    expect(await rt.waitExit(s.name, { io: { stdout, stderr }, logFile })).toEqual({ exitCode: 3 });
    expect(stdout.text()).toBe('out-line\n');
    expect(stderr.text()).toBe('err-line\n');
    expect(await readFile(logFile, 'utf8')).toContain('out-line\n');
    expect((await rt.inspectContainer(s.name))?.state).toBe('exited');
  });

  it('attaches before starting a created container, so a fast command loses no output', async () => {
    const s = spec({ cmd: ['bash', '-c', 'for i in 1 2 3; do echo line-$i; done; exit 5'] });
    await rt.ensureContainer(s);
    const stdout = collector();
    expect(await rt.waitExit(s.name, { io: { stdout, stderr: collector() } })).toEqual({ exitCode: 5 });
    expect(stdout.text()).toBe('line-1\nline-2\nline-3\n');
  });

  it('passes env through the API only: visible inside, absent from Cmd/Args', async () => {
    const envFile = join(dir, 'agent.env');
    await writeFile(envFile, '# literals\nLITERAL=a b "c" $HOME=x\n\n  INDENTED=yes\nSHARED=from-file\n', { mode: 0o600 });
    const secret = `s3cret-${uniqueName('v')}`;
    const s = spec({ env: { FORWARDED: secret, SHARED: 'from-spec' }, envFile });
    await rt.ensureContainer(s);
    await rt.startContainer(s.name);
    const { stdout } = await execIn(s.name, ['env']);
    const env = new Map(stdout.trim().split('\n').map((line) => [line.slice(0, line.indexOf('=')), line.slice(line.indexOf('=') + 1)]));
    expect(env.get('FORWARDED')).toBe(secret);
    expect(env.get('LITERAL')).toBe('a b "c" $HOME=x');
    expect(env.get('INDENTED')).toBe('yes');
    expect(env.get('SHARED')).toBe('from-spec');

    const info = await docker().getContainer(s.name).inspect();
    const argv = JSON.stringify([info.Path, info.Args, info.Config.Cmd, info.Config.Entrypoint]);
    expect(argv).not.toContain(secret);
    expect(argv).not.toContain('a b "c"');
  });

  it('refuses an env-file line without a value instead of reading the host environment', async () => {
    const envFile = join(dir, 'bare.env');
    await writeFile(envFile, 'PATH\n', { mode: 0o600 });
    const s = spec({ envFile });
    expect(await codeOf(rt.ensureContainer(s))).toBe('INTERNAL');
    expect(await rt.existingContainers([s.name])).toEqual([]);
  });

  it('copies files in before start with the given mode and owner', async () => {
    const prompt = join(dir, 'prompt.txt');
    await writeFile(prompt, 'do the thing\n', { mode: 0o600 });
    // Longer than ustar's 100-byte name field: exercises the prefix split.
    const longPath = `/opt/${'deep/'.repeat(25)}file.txt`;
    const s = spec({
      user: 'nobody',
      copyIn: [
        { hostPath: prompt, containerPath: '/run/bottle/prompt', mode: 0o600 },
        { hostPath: prompt, containerPath: '/etc/bottle/config', mode: 0o640, uid: 0, gid: 0 },
        { hostPath: prompt, containerPath: longPath, mode: 0o400, uid: 65534, gid: 65534 },
      ],
    });
    await rt.ensureContainer(s);
    await rt.startContainer(s.name);
    const { stdout } = await execIn(s.name, ['bash', '-c', 'stat -c "%a %U %n" "$@"; cat /run/bottle/prompt', 'stat', '/run/bottle/prompt', '/etc/bottle/config', longPath]);
    expect(stdout).toBe(`600 nobody /run/bottle/prompt\n640 root /etc/bottle/config\n400 nobody ${longPath}\ndo the thing\n`);
  });

  it('ensure* is idempotent: a second call adopts (created: false)', async () => {
    const labels = runLabels();
    const net = uniqueName('net');
    const vol = uniqueName('vol');
    const first = await rt.ensureNetwork({ name: net, internal: true, labels });
    expect(first.created).toBe(true);
    // The gateway comes back too, the same on adoption (sidecars must never dial it).
    expect(first.gateway).toMatch(/^\d+\.\d+\.\d+\.\d+$/);
    expect(await rt.ensureNetwork({ name: net, internal: true, labels })).toEqual({ id: first.id, created: false, gateway: first.gateway });
    expect(await rt.ensureVolume({ name: vol, labels })).toEqual({ created: true });
    expect(await rt.ensureVolume({ name: vol, labels })).toEqual({ created: false });

    const prompt = join(dir, 'idem.txt');
    await writeFile(prompt, 'x');
    const s = spec({
      networks: [{ name: net, aliases: ['agent'] }],
      mounts: [{ type: 'volume', source: vol, target: '/data', readOnly: false }],
      copyIn: [{ hostPath: prompt, containerPath: '/run/x', mode: 0o600 }],
    });
    const created = await rt.ensureContainer(s);
    expect(created.created).toBe(true);
    expect(await rt.ensureContainer(s)).toEqual({ id: created.id, created: false });
    await rt.startContainer(s.name);
    await rt.startContainer(s.name); // 304 already started: success
    expect(await rt.ensureContainer(s)).toEqual({ id: created.id, created: false });

    const listed = await rt.listLabelled(suiteLabels);
    expect(listed.map((o) => `${o.kind}:${o.name}`).sort()).toEqual([`container:${s.name}`, `network:${net}`, `volume:${vol}`].sort());
    expect(await rt.existingContainers([s.name, uniqueName('missing')])).toEqual([s.name]);
    expect(await rt.inspectContainer(uniqueName('missing'))).toBeNull();
    expect(await rt.inspectContainer(s.name)).toMatchObject({ id: created.id, name: s.name, state: 'running', labels: { [LABEL.role]: 'agent' } });
  });

  it('a foreign container with the same name is a NAME_CONFLICT and stays untouched', async () => {
    const name = uniqueName('foreign');
    const foreign = await docker().createContainer({
      name,
      Image: await baseImage(),
      Cmd: ['sleep', 'infinity'],
      Labels: { ...suiteLabels, [LABEL.run]: 'someone-else' },
    });
    await foreign.start();
    const err = await rt.ensureContainer(spec({ name })).then(
      () => null,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(BottleError);
    expect((err as BottleError).code).toBe('NAME_CONFLICT');
    expect((err as BottleError).hint).toContain(`docker rm -f ${name}`);
    const after = await foreign.inspect();
    expect(after.Id).toBe(foreign.id);
    expect(after.State.Running).toBe(true);
    expect(after.Config.Labels[LABEL.run]).toBe('someone-else');
  });

  it('a missing image is IMAGE_MISSING', async () => {
    expect(await codeOf(rt.ensureContainer(spec({ image: 'bot-bottle/does-not-exist:nope' })))).toBe('IMAGE_MISSING');
  });

  it('refuses to mount the Docker socket or a directory holding it', async () => {
    for (const source of ['/var/run/docker.sock', '/var/run', '/run', '/']) {
      const s = spec({ mounts: [{ type: 'bind', source, target: '/mnt', readOnly: true }] });
      expect(await codeOf(rt.ensureContainer(s))).toBe('INTERNAL');
      expect(await rt.existingContainers([s.name])).toEqual([]);
    }
  });

  it('stop and remove are idempotent, and removal of missing objects succeeds', async () => {
    const s = spec();
    await rt.ensureContainer(s);
    await rt.startContainer(s.name);
    await rt.stopContainer(s.name, 1);
    await rt.stopContainer(s.name, 1);
    expect((await rt.inspectContainer(s.name))?.state).toBe('exited');
    await rt.removeContainer(s.name);
    await rt.removeContainer(s.name);
    await rt.stopContainer(s.name, 1);
    await rt.removeNetwork(uniqueName('gone'));
    await rt.removeVolume(uniqueName('gone'));
    expect(await rt.inspectContainer(s.name)).toBeNull();
  });

  it('removes a network that still has containers on it', async () => {
    const net = uniqueName('busy');
    await rt.ensureNetwork({ name: net, internal: true, labels: runLabels() });
    const s = spec({ networks: [{ name: net, aliases: [] }] });
    await rt.ensureContainer(s);
    await rt.startContainer(s.name);
    await rt.removeNetwork(net);
    expect((await rt.listLabelled(suiteLabels)).filter((o) => o.kind === 'network')).toEqual([]);
  });

  it('honours an aborted signal', async () => {
    const controller = new AbortController();
    controller.abort(new Error('stop now'));
    await expect(rt.info(controller.signal)).rejects.toThrow('stop now');
    await expect(rt.ensureContainer(spec(), controller.signal)).rejects.toThrow('stop now');
  });
});
