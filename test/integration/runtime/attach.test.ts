import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { setTimeout as delay } from 'node:timers/promises';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { assertNothingLabelled, baseImage, removeAllLabelled, runtime } from '../../support/docker.js';
import { collector, spec } from './fixtures.js';

const rt = runtime();
let dir: string;

beforeAll(async () => {
  await baseImage();
  dir = await mkdtemp(join(tmpdir(), 'bbt-attach-'));
});
afterEach(() => removeAllLabelled());
afterAll(async () => {
  await removeAllLabelled();
  await assertNothingLabelled();
  await rm(dir, { recursive: true, force: true });
});

async function until(check: () => boolean, what: string, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await delay(50);
  }
}

describe('DockerodeRuntime.waitExit', () => {
  it('re-attaches after the first attacher died: same container, still running, stdin intact', async () => {
    const s = spec({ openStdin: true, hardened: true, cmd: ['bash', '-c', 'echo ready; read -r line; echo "got:$line"; exit 7'] });
    const logFile = join(dir, 'reattach.log');
    const { id } = await rt.ensureContainer(s);
    await rt.startContainer(s.name);

    const first = collector();
    const controller = new AbortController();
    const aborted = rt.waitExit(s.name, { io: { stdin: new PassThrough(), stdout: first, stderr: collector() }, logFile }, controller.signal);
    await until(() => first.text().includes('ready'), 'the first attach to see output');
    controller.abort(new Error('cli died'));
    await expect(aborted).rejects.toThrow('cli died');

    await delay(300);
    const info = await rt.inspectContainer(s.name);
    expect(info).toMatchObject({ id, state: 'running' });

    const stdin = new PassThrough();
    const second = collector();
    const again = rt.waitExit(s.name, { io: { stdin, stdout: second, stderr: collector() }, logFile });
    stdin.write('hello\n');
    expect(await again).toEqual({ exitCode: 7 });
    expect(second.text()).toBe('got:hello\n');
    expect(await readFile(logFile, 'utf8')).toBe('ready\ngot:hello\n');
    expect((await rt.inspectContainer(s.name))?.id).toBe(id);
  });

  it('returns the code of a container that already exited, without replaying what was recorded', async () => {
    const s = spec({ cmd: ['bash', '-c', 'echo once; exit 2'] });
    const logFile = join(dir, 'exited.log');
    await rt.ensureContainer(s);
    expect(await rt.waitExit(s.name, { logFile })).toEqual({ exitCode: 2 });
    const out = collector();
    expect(await rt.waitExit(s.name, { io: { stdout: out, stderr: collector() }, logFile })).toEqual({ exitCode: 2 });
    expect(out.text()).toBe('');
    expect(await readFile(logFile, 'utf8')).toBe('once\n');
    expect(await rt.waitExit(s.name, {})).toEqual({ exitCode: 2 });
  });

  it('records output of a run nobody attached to yet', async () => {
    const s = spec({ cmd: ['bash', '-c', 'echo early; sleep 0.3; echo late; exit 0'] });
    const logFile = join(dir, 'late.log');
    await writeFile(logFile, '');
    await rt.ensureContainer(s);
    await rt.startContainer(s.name);
    await delay(100);
    expect(await rt.waitExit(s.name, { logFile })).toEqual({ exitCode: 0 });
    expect(await readFile(logFile, 'utf8')).toBe('early\nlate\n');
  });

  it('with a TTY: sizes the terminal and follows resizes', async () => {
    const script = [
      'size() { stty size; }',
      'for i in $(seq 100); do [ "$(size)" != "0 0" ] && break; sleep 0.05; done; echo "size=$(size)"',
      'first=$(size); for i in $(seq 200); do [ "$(size)" != "$first" ] && break; sleep 0.05; done; echo "size=$(size)"',
    ].join('\n');
    const s = spec({ tty: true, openStdin: true, cmd: ['bash', '-c', script] });
    await rt.ensureContainer(s);
    let notify: ((size: { columns: number; rows: number }) => void) | undefined;
    let unsubscribed = false;
    const out = collector();
    const exit = rt.waitExit(s.name, {
      io: {
        stdin: new PassThrough(),
        stdout: out,
        stderr: collector(),
        tty: {
          columns: 100,
          rows: 40,
          onResize: (cb) => {
            notify = cb;
            return () => {
              unsubscribed = true;
            };
          },
        },
      },
    });
    await until(() => out.text().includes('size=40 100'), 'the initial size');
    notify?.({ columns: 132, rows: 50 });
    expect(await exit).toEqual({ exitCode: 0 });
    expect(out.text()).toContain('size=50 132');
    expect(unsubscribed).toBe(true);
  });

  it('without io it just waits for the exit', async () => {
    const s = spec({ cmd: ['bash', '-c', 'sleep 0.5; exit 9'] });
    await rt.ensureContainer(s);
    await rt.startContainer(s.name);
    expect(await rt.waitExit(s.name, {})).toEqual({ exitCode: 9 });
  });
});
