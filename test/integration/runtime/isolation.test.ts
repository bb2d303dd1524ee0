import { networkInterfaces } from 'node:os';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { BottleError } from '../../../config/errors.js';
import { assertNothingLabelled, baseImage, docker, execIn, removeAllLabelled, runtime, suiteLabels, uniqueName } from '../../support/docker.js';
import { runLabels, serverCmd, spec } from './fixtures.js';

/**
 * Isolation the agent relies on. Every peer reached or refused here is a container this suite
 * started on its own networks; nothing leaves the machine.
 */

const rt = runtime();
const PORT = 8080;

beforeAll(() => baseImage());
afterEach(() => removeAllLabelled());
afterAll(async () => {
  await removeAllLabelled();
  await assertNothingLabelled();
});

/** bash /dev/tcp connect from inside `from`, bounded by `timeout`; exit 0 means connected. */
async function canConnect(from: string, host: string, port: number): Promise<boolean> {
  const { code } = await execIn(from, ['timeout', '2', 'bash', '-c', 'exec 3<>"/dev/tcp/$1/$2"', 'probe', host, String(port)]);
  return code === 0;
}

/** /proc/net/route prints addresses as little-endian hex. */
function hexToIPv4(hex: string): string {
  const bytes = Buffer.from(hex, 'hex');
  return [bytes[3], bytes[2], bytes[1], bytes[0]].join('.');
}

describe('DockerodeRuntime isolation', () => {
  it('hardened: no capabilities, no-new-privileges, limits, no Docker socket', async () => {
    const s = spec({ hardened: true, user: 'nobody' });
    await rt.ensureContainer(s);
    await rt.startContainer(s.name);
    const { stdout } = await execIn(s.name, ['bash', '-c', 'grep -E "^(CapEff|CapPrm|NoNewPrivs):" /proc/self/status; test -e /var/run/docker.sock && echo SOCKET || echo no-socket; test -e /run/docker.sock && echo SOCKET || echo no-socket']);
    expect(stdout).toMatch(/^CapPrm:\s+0000000000000000$/m);
    expect(stdout).toMatch(/^CapEff:\s+0000000000000000$/m);
    expect(stdout).toMatch(/^NoNewPrivs:\s+1$/m);
    expect(stdout).not.toContain('SOCKET');

    // Even root inside a hardened container has no effective capabilities.
    const root = spec({ hardened: true });
    await rt.ensureContainer(root);
    await rt.startContainer(root.name);
    expect((await execIn(root.name, ['grep', '^CapEff:', '/proc/self/status'])).stdout).toMatch(/0000000000000000/);

    const host = (await docker().getContainer(s.name).inspect()).HostConfig;
    expect(host.CapDrop).toEqual(['ALL']);
    expect(host.SecurityOpt).toEqual(['no-new-privileges']);
    expect(host.PidsLimit).toBe(512);
    expect(host.Memory).toBe(2 * 1024 ** 3);
    expect(host.Privileged).toBe(false);
    expect(host.NetworkMode).toBe('none');
  });

  it('internal network: no default route and no way to a container on another network', async () => {
    const labels = runLabels();
    const internal = uniqueName('internal');
    const other = uniqueName('other');
    await rt.ensureNetwork({ name: internal, internal: true, labels });
    await rt.ensureNetwork({ name: other, internal: false, labels });
    expect((await docker().getNetwork(internal).inspect()).Internal).toBe(true);

    const server = spec({ name: uniqueName('server'), networks: [{ name: other, aliases: ['target.test'] }], cmd: serverCmd(PORT) });
    const neighbour = spec({ name: uniqueName('neighbour'), networks: [{ name: other, aliases: [] }] });
    const agent = spec({ name: uniqueName('agent'), hardened: true, networks: [{ name: internal, aliases: ['agent'] }] });
    for (const s of [server, neighbour, agent]) {
      await rt.ensureContainer(s);
      await rt.startContainer(s.name);
    }
    await rt.waitReady(server.name, { kind: 'tcp', port: PORT }, 10_000);

    const routes = (await execIn(agent.name, ['cat', '/proc/net/route'])).stdout
      .trim()
      .split('\n')
      .slice(1)
      .map((line) => line.split(/\s+/));
    expect(routes.length).toBeGreaterThan(0);
    const defaults = routes.filter((fields) => fields[1] === '00000000');
    const major = Number((await rt.info()).serverVersion.split('.')[0]);
    if (major >= 25) {
      expect(defaults).toEqual([]);
    } else {
      // Docker < 25 always installs a default route on internal networks (moby#46603 removed
      // it). The adapter makes its gateway an address that nothing on the host holds.
      const hostAddresses = Object.values(networkInterfaces()).flatMap((list) => (list ?? []).map((a) => a.address));
      for (const fields of defaults) expect(hostAddresses).not.toContain(hexToIPv4(fields[2] ?? ''));
      const gateway = (await docker().getNetwork(internal).inspect()).IPAM?.Config?.[0]?.Gateway;
      expect(gateway).toBeTruthy();
      expect(hostAddresses).not.toContain(gateway);
    }

    const serverIp = (await docker().getContainer(server.name).inspect()).NetworkSettings.Networks[other]?.IPAddress;
    expect(serverIp).toMatch(/^\d+\.\d+\.\d+\.\d+$/);
    // Control: the server answers a neighbour on its own network, by address and by alias.
    expect(await canConnect(neighbour.name, serverIp!, PORT)).toBe(true);
    expect(await canConnect(neighbour.name, 'target.test', PORT)).toBe(true);
    // The agent on the internal network cannot reach it. (No lookup of a name the agent's
    // network does not know: Docker's resolver would try to forward it upstream.)
    expect(await canConnect(agent.name, serverIp!, PORT)).toBe(false);
  });

  it('aliases resolve between containers on the same network, on every network joined', async () => {
    const labels = runLabels();
    const a = uniqueName('neta');
    const b = uniqueName('netb');
    await rt.ensureNetwork({ name: a, internal: true, labels });
    await rt.ensureNetwork({ name: b, internal: true, labels });
    const sidecar = spec({
      name: uniqueName('sidecar'),
      role: 'egress',
      networks: [
        { name: a, aliases: ['egress'] },
        { name: b, aliases: ['egress-out', 'upstream.test'] },
      ],
      cmd: serverCmd(PORT),
    });
    const onA = spec({ name: uniqueName('on-a'), networks: [{ name: a, aliases: [] }] });
    const onB = spec({ name: uniqueName('on-b'), networks: [{ name: b, aliases: [] }] });
    for (const s of [sidecar, onA, onB]) {
      await rt.ensureContainer(s);
      await rt.startContainer(s.name);
    }
    await rt.waitReady(sidecar.name, { kind: 'tcp', port: PORT }, 10_000);
    expect((await execIn(onA.name, ['getent', 'hosts', 'egress'])).code).toBe(0);
    expect(await canConnect(onA.name, 'egress', PORT)).toBe(true);
    expect(await canConnect(onB.name, 'upstream.test', PORT)).toBe(true);
    expect(await canConnect(onB.name, 'egress-out', PORT)).toBe(true);
  });

  it('never adopts a route-out network under the name of an internal one', async () => {
    const name = uniqueName('squat');
    await docker().createNetwork({ Name: name, Internal: false, Labels: runLabels(), CheckDuplicate: true });
    const err = await rt.ensureNetwork({ name, internal: true, labels: runLabels() }).then(
      () => null,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(BottleError);
    expect((err as BottleError).code).toBe('NAME_CONFLICT');
    expect((await docker().getNetwork(name).inspect()).Internal).toBe(false);

    // Internal, but with a host address on the bridge (what `docker network create --internal` makes).
    const plain = uniqueName('plain');
    await docker().createNetwork({ Name: plain, Internal: true, Labels: runLabels(), CheckDuplicate: true });
    const err2 = await rt.ensureNetwork({ name: plain, internal: true, labels: runLabels() }).then(
      () => null,
      (e: unknown) => e,
    );
    expect((err2 as BottleError).code).toBe('NAME_CONFLICT');
  });

  it('hostAddresses: every Docker network’s gateway and the host’s own interface addresses', async () => {
    const name = uniqueName('hostaddr');
    await docker().createNetwork({ Name: name, Internal: true, Labels: runLabels(), CheckDuplicate: true });
    const gateway = ((await docker().getNetwork(name).inspect()) as { IPAM?: { Config?: { Gateway?: string }[] } }).IPAM?.Config?.find((c) => c.Gateway)?.Gateway;
    expect(gateway).toMatch(/^\d+\.\d+\.\d+\.\d+$/);
    const bridge = ((await docker().getNetwork('bridge').inspect()) as { IPAM?: { Config?: { Gateway?: string }[] } }).IPAM?.Config?.find((c) => c.Gateway)?.Gateway;
    const found = await rt.hostAddresses();
    expect(found).toContain(gateway);
    if (bridge) expect(found).toContain(bridge);
    for (const list of Object.values(networkInterfaces())) for (const a of list ?? []) expect(found).toContain(a.address.replace(/%.*$/, ''));
  });

  it('never adopts a network of the same name that is not ours', async () => {
    const name = uniqueName('stranger');
    await docker().createNetwork({ Name: name, Internal: true, Labels: { ...suiteLabels, 'bot-bottle.identity': 'someone-else' }, CheckDuplicate: true });
    const err = await rt.ensureNetwork({ name, internal: true, labels: runLabels() }).then(
      () => null,
      (e: unknown) => e,
    );
    expect((err as BottleError).code).toBe('NAME_CONFLICT');
  });
});
