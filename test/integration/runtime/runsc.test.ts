import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { assertNothingLabelled, baseImage, docker, execIn, removeAllLabelled, runtime, uniqueName } from '../../support/docker.js';
import { collector, runLabels, serverCmd, spec } from './fixtures.js';

const rt = runtime();

beforeAll(async () => {
  await baseImage();
  const { runtimes } = await rt.info();
  if (!runtimes.includes('runsc')) {
    throw new Error(
      'the Docker daemon has no runsc runtime. Try: bash scripts/docker-up.sh (as root on Debian), or register ' +
        '{"runtimes":{"runsc":{"path":"/usr/bin/runsc","runtimeArgs":["--network=host"]}}} in /etc/docker/daemon.json and `kill -HUP $(pidof dockerd)`',
    );
  }
});
afterEach(() => removeAllLabelled());
afterAll(async () => {
  await removeAllLabelled();
  await assertNothingLabelled();
});

async function kernelView(runtimeName: 'runsc' | 'runc'): Promise<{ text: string; runtime: string | undefined }> {
  const s = spec({ runtime: runtimeName, hardened: true, cmd: ['bash', '-c', 'dmesg 2>&1 | head -5; cat /proc/version'] });
  await rt.ensureContainer(s);
  const out = collector();
  expect(await rt.waitExit(s.name, { io: { stdout: out, stderr: out } })).toEqual({ exitCode: 0 });
  return { text: out.text(), runtime: (await rt.inspectContainer(s.name))?.runtime };
}

describe('DockerodeRuntime with gVisor', () => {
  it("runtime 'runsc' runs the container under gVisor; 'runc' does not", async () => {
    const gvisor = await kernelView('runsc');
    expect(gvisor.runtime).toBe('runsc');
    expect(gvisor.text).toContain('Starting gVisor');
    const native = await kernelView('runc');
    expect(native.runtime).toBe('runc');
    expect(native.text).not.toContain('gVisor');
  });

  it('a hardened runsc agent on an internal network reaches its sidecar by alias and nothing beyond', async () => {
    const net = uniqueName('gvisor-net');
    const outside = uniqueName('outside');
    await rt.ensureNetwork({ name: net, internal: true, labels: runLabels() });
    await rt.ensureNetwork({ name: outside, internal: false, labels: runLabels() });
    const sidecar = spec({ name: uniqueName('egress'), role: 'egress', networks: [{ name: net, aliases: ['egress'] }], cmd: serverCmd(3128) });
    const beyond = spec({ name: uniqueName('beyond'), networks: [{ name: outside, aliases: [] }], cmd: serverCmd(3128) });
    const agent = spec({ name: uniqueName('agent'), runtime: 'runsc', hardened: true, user: 'nobody', networks: [{ name: net, aliases: ['agent'] }] });
    for (const s of [sidecar, beyond, agent]) {
      await rt.ensureContainer(s);
      await rt.startContainer(s.name);
    }
    await rt.waitReady(sidecar.name, { kind: 'tcp', port: 3128 }, 10_000);
    await rt.waitReady(beyond.name, { kind: 'tcp', port: 3128 }, 10_000);
    const beyondIp = (await docker().getContainer(beyond.name).inspect()).NetworkSettings.Networks[outside]?.IPAddress;
    expect(beyondIp).toMatch(/^\d+\.\d+\.\d+\.\d+$/);
    expect((await execIn(agent.name, ['timeout', '2', 'bash', '-c', 'exec 3<>"/dev/tcp/$1/3128"', 'probe', beyondIp!])).code).not.toBe(0);
    await rt.waitReady(agent.name, { kind: 'running' }, 10_000);
    const probe = await execIn(agent.name, ['timeout', '5', 'bash', '-c', 'exec 3<>/dev/tcp/egress/3128; printf "GET / HTTP/1.0\\r\\n\\r\\n" >&3; head -1 <&3']);
    expect(probe.stdout).toContain('200 OK');
    expect((await execIn(agent.name, ['grep', '^CapEff:', '/proc/self/status'])).stdout).toMatch(/0000000000000000/);
  });
});
