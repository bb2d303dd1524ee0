import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type Docker from 'dockerode';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { names } from '../../machines/names.js';
import { ensureBuilt } from '../support/cli.js';
import { docker, subnetOf } from '../support/docker.js';
import { ensureTestImages } from '../support/images.js';
import {
  type AttachedRun,
  attachServer,
  bottleContainers,
  bottleNetworks,
  cli,
  controlReach,
  createSuiteNetwork,
  dumped,
  filesContaining,
  finishBottleSuite,
  hostArgvContaining,
  identityOf,
  KERNEL_PROBE,
  leftovers,
  listFiles,
  mounts,
  needle,
  networkProbe,
  newBottle,
  newSecret,
  notPrivate,
  POSTURE_PROBE,
  PRELUDE,
  procStatus,
  readyThenRead,
  removeBottleObjects,
  results,
  roleOf,
  routes4,
  routes6,
  routesOut,
  runAttached,
  runDetached,
  type SecBottle,
  secretScan,
  SOCKET_PROBE,
  startServer,
  tempProject,
  type TestServer,
  track,
  unexpectedMounts,
  waitForLog,
} from '../support/security.js';

/**
 * Adversarial agents in real bottles: each bottle runs a bash script as its agent that tries
 * what a hostile agent would (find a route out, a Docker socket, the host, a server on another
 * network, a secret it was not given) and prints what it found as `RESULT key=value` lines.
 * The verdicts are taken here, from the agent's own view and from Docker's.
 *
 * Network rule: the agent only addresses its own sidecars, its own internal network's gateway
 * address, and the suite's forbidden server (a container of ours on a network of ours).
 */

const GATEWAY_PORTS = [22, 53, 80, 443, 2375, 2376, 3128, 8080];
/** Every identity this file launched, for the final sweep and assertion. */
const identities = new Set<string>();
let sidecarImage = '';
/** Never allowlisted: nothing may ever reach it. */
let server: TestServer;
/** Allowlisted on its port: the control that the egress path works. */
let allowedServer: TestServer;
/** The servers' network and its subnet, which the probe bottle opts in (private_networks) to reach the allowed one. */
let serversNetwork = '';
let serversSubnet = '';

beforeAll(async () => {
  ensureBuilt();
  sidecarImage = (await ensureTestImages()).sidecar;
  const network = await createSuiteNetwork();
  serversNetwork = network;
  serversSubnet = await subnetOf(network);
  server = await startServer(sidecarImage, network, 'forbidden');
  allowedServer = await startServer(sidecarImage, network, 'allowed');
  // Positive control: a peer on the server's own network reaches it by alias and by IP.
  const control = await controlReach(server, sidecarImage);
  expect(control).toContain(`${server.alias}:pong`);
  expect(control).toContain(`${server.ip}:pong`);
  expect(await server.connections()).toHaveLength(2);
});

afterAll(() => finishBottleSuite(identities));

interface Observed {
  agent: Docker.ContainerInspectInfo;
  holder: Docker.ContainerInspectInfo | undefined;
  containers: Docker.ContainerInspectInfo[];
  internalNetwork: Docker.NetworkInspectInfo;
  gateway: string;
  egressNetAddress: string;
  /** The egress sidecar's address on the servers' network, where it reaches the allowed server. */
  egressServersAddress: string;
  /** The forbidden server's address on the bottle's egress network, once attached there. */
  forbiddenEgressNetAddress: string;
  homeFiles: string[];
  homeHits: string[];
  homeNotPrivate: string[];
  argvHits: string[];
}

for (const runtime of ['runc', 'runsc'] as const) {
  describe(`an adversarial agent under ${runtime}`, () => {
    const canary = newSecret('canary');
    const forwarded = newSecret('forwarded');
    const secrets = { canary, forwarded };
    let b: SecBottle;
    let identity: string;
    let run: AttachedRun;
    let r: Record<string, string>;
    let observed: Observed;
    let connectionsBefore = 0;
    let allowedBefore = 0;
    let allowedAfter: string[] = [];

    beforeAll(async () => {
      const script = [
        PRELUDE,
        POSTURE_PROBE,
        KERNEL_PROBE,
        SOCKET_PROBE,
        secretScan({ canary: needle(canary), forwarded: needle(forwarded) }, { BB_FORWARDED: 'forwarded' }),
        readyThenRead(['GW', 'EGRESSNET', 'FEIP']),
        networkProbe({
          server: { ip: server.ip, alias: server.alias, name: server.container, port: server.port },
          allowed: { alias: allowedServer.alias, port: allowedServer.port },
          gatewayVar: '$GW',
          egressNetVar: '$EGRESSNET',
          forbiddenEgressNetVar: '$FEIP',
          gatewayPorts: GATEWAY_PORTS,
        }),
        'result done yes\n',
      ].join('');
      b = newBottle({
        tag: `probe-${runtime}`,
        runtime,
        script,
        allow: ['allowed.test', `${allowedServer.alias}:${allowedServer.port}`],
        privateNetworks: [serversSubnet],
        manifestEnv: { BB_FORWARDED: { from_host: 'BB_SEC_FORWARD_SOURCE' }, BB_LITERAL: { value: 'not-a-secret' } },
        hostEnv: { SECRET_CANARY: canary, BB_SEC_FORWARD_SOURCE: forwarded },
      });
      track(b.dir);
      identity = b.agent;
      identities.add(identity);
      connectionsBefore = (await server.connections()).length;
      allowedBefore = (await allowedServer.connections()).length;

      run = await runAttached(b, async () => {
        // The bottle is up and the agent waits on stdin: look at it from the host.
        const containers = await bottleContainers(identity);
        const agent = containers.find((c) => roleOf(c) === 'agent');
        if (!agent) throw new Error(`no agent container for ${identity}`);
        const holderRef = agent.HostConfig.NetworkMode?.replace(/^container:/, '') ?? '';
        const holder = containers.find((c) => c.Id === holderRef || c.Id.startsWith(holderRef) || c.Name === `/${holderRef}`);
        const nets = await bottleNetworks(identity);
        const internalNetwork = nets.find((n) => n.Internal);
        const egressNet = nets.find((n) => !n.Internal);
        const egress = containers.find((c) => roleOf(c) === 'egress');
        const gateway = internalNetwork?.IPAM?.Config?.[0]?.Gateway;
        const egressNetAddress = egressNet && egress?.NetworkSettings.Networks[egressNet.Name]?.IPAddress;
        if (!internalNetwork || !egressNet || !gateway || !egressNetAddress) throw new Error(`cannot find the bottle's networks: ${JSON.stringify(nets.map((n) => n.Name))}`);
        // The forbidden server joins the egress network and the egress sidecar joins the servers'
        // network (opted in): the sidecar could reach either server, so only its allowlist keeps
        // the forbidden one out.
        const forbiddenEgressNetAddress = await attachServer(server, egressNet.Name);
        await docker().getNetwork(serversNetwork).connect({ Container: egress!.Id });
        const egressServersAddress = (await docker().getContainer(egress!.Id).inspect()).NetworkSettings.Networks[serversNetwork]?.IPAddress ?? '';
        const obs: Observed = {
          agent,
          holder,
          containers,
          internalNetwork,
          gateway,
          egressNetAddress,
          egressServersAddress,
          forbiddenEgressNetAddress,
          homeFiles: listFiles(b.home),
          homeHits: filesContaining(b.home, secrets),
          homeNotPrivate: notPrivate(b.home),
          argvHits: hostArgvContaining(secrets),
        };
        return { stdin: `${gateway} ${egressNetAddress} ${forbiddenEgressNetAddress}\n`, observed: obs };
      });
      observed = run.observed as Observed;
      r = results(run.stdout);
      allowedAfter = await allowedServer.connections();
    }, 180_000);

    afterAll(async () => {
      await removeBottleObjects(identity);
    });

    it('the agent ran to its end, and `bottle logs` holds what it printed', async () => {
      expect(run.code, run.stderr).toBe(0);
      expect(r.ready).toBe('yes');
      expect(r.stdin).toBe('received');
      expect(r.done).toBe('yes');
      const logs = await cli(b, ['logs', identity]);
      expect(logs.code, logs.stderr).toBe(0);
      expect(results(logs.stdout)).toEqual(r);
    });

    it('runs as uid 1000 with an empty capability set and no-new-privileges', () => {
      expect(r.uid).toBe('1000');
      expect(r.gid).toBe('1000');
      expect(r.groups).toBe('1000');
      const status = procStatus(dumped(run.stdout, 'status'));
      expect(status.Uid?.split(/\s+/)).toEqual(['1000', '1000', '1000', '1000']);
      for (const set of ['CapInh', 'CapPrm', 'CapEff', 'CapBnd']) expect(status[set], set).toBe('0000000000000000');
      if (status.CapAmb !== undefined) expect(status.CapAmb).toBe('0000000000000000');
      // gVisor's status has no NoNewPrivs line; prctl(PR_GET_NO_NEW_PRIVS) answers everywhere.
      if (status.NoNewPrivs !== undefined) expect(status.NoNewPrivs).toBe('1');
      expect(r.nnp_prctl).toBe('1');
      // What the missing capabilities forbid, tried.
      expect(r.raw_socket).toBe('refused');
      expect(r.mount_tmpfs).toBe('refused');
      // Docker's seccomp profile refuses user namespaces to an unprivileged process under runc;
      // gVisor implements them inside its own kernel (see the report), so only runc is held to it.
      if (runtime === 'runc') expect(r.userns).toBe('refused');
      // The host side agrees.
      const hc = observed.agent.HostConfig;
      expect(hc.Privileged).toBe(false);
      expect(hc.CapDrop).toContain('ALL');
      expect(hc.CapAdd ?? []).toEqual([]);
      expect(hc.SecurityOpt).toContain('no-new-privileges');
      expect(hc.PidsLimit).toBeGreaterThan(0);
      expect(hc.Memory).toBeGreaterThan(0);
    });

    it('cannot redirect names through the files Docker binds in, and sees only its own processes', () => {
      expect(r.write_etc_hosts).toBe('refused');
      expect(r.write_resolv_conf).toBe('refused');
      // bash, the probe's subshells and commands: a handful, not the host's hundreds.
      expect(Number(r.procs_visible)).toBeGreaterThan(0);
      expect(Number(r.procs_visible)).toBeLessThan(20);
      const seen = (r.proc_names ?? '').split(',').filter(Boolean);
      expect(seen).toContain('bash');
      expect(seen.filter((n) => !['bash', 'tr', 'head', 'sed', 'sort', 'ls', 'wc', 'cat'].includes(n))).toEqual([]);
    });

    it('every container of the bottle (sidecars, namespace holder) is hardened and mounts nothing of the host', () => {
      expect(observed.containers.map(roleOf).sort()).toEqual(['agent', 'egress', 'network']);
      for (const c of observed.containers) {
        const hc = c.HostConfig;
        expect(hc.Privileged, c.Name).toBe(false);
        expect(hc.CapDrop, c.Name).toContain('ALL');
        expect(hc.CapAdd ?? [], c.Name).toEqual([]);
        expect(hc.SecurityOpt, c.Name).toContain('no-new-privileges');
        expect(hc.Binds ?? [], c.Name).toEqual([]);
        expect(c.Mounts.filter((m) => m.Type === 'bind'), c.Name).toEqual([]);
        expect(hc.NetworkMode, c.Name).not.toMatch(/^(host|bridge|default)$/);
        expect(hc.PidMode ?? '', c.Name).toBe('');
      }
    });

    it('has no route out: no default route and no route through a gateway', () => {
      const v4 = routes4(dumped(run.stdout, 'route4'));
      const v6 = routes6(dumped(run.stdout, 'route6'));
      // Not vacuous: the internal network's own subnet is there.
      expect(v4.length, 'IPv4 routes').toBeGreaterThan(0);
      expect(routesOut(v4, v6)).toEqual([]);
      expect(v4.some((x) => x.destination === '00000000')).toBe(false);
    });

    it('finds no Docker socket and no unix socket that answers HTTP', () => {
      expect(r.docker_sock_var).toBe('absent');
      expect(r.docker_sock_run).toBe('absent');
      expect(Number(r.socket_walk_visited), 'the socket walk saw files').toBeGreaterThan(100);
      // The control socket the probe itself served is found and answers: the probe works.
      expect(r['socket[/tmp/bottle-control.sock]']).toBe('http');
      const probes = Object.entries(r).filter(([k]) => k.startsWith('socket[') && k !== 'socket[/tmp/bottle-control.sock]');
      expect(probes.length).toBeGreaterThanOrEqual(9);
      for (const [key, outcome] of probes) {
        expect(outcome, key).toMatch(/^error:/);
      }
      expect(r['socket[/var/run/docker.sock]']).toMatch(/^error:(ENOENT|EINVAL)$/);
      expect(r['socket[/run/docker.sock]']).toMatch(/^error:(ENOENT|EINVAL)$/);
      expect(r.sockets_found).toBe('/tmp/bottle-control.sock');
      // Nothing in its network namespace is a listening unix socket with a path either.
      const unix = dumped(run.stdout, 'unix').slice(1);
      expect(unix.filter((l) => /\s\/\S+$/.test(l))).toEqual([]);
    });

    it('sees none of the host files: only the image, Docker’s own hosts/hostname/resolv.conf and the workspace volume', () => {
      const list = mounts(dumped(run.stdout, 'mountinfo'));
      expect(list.some((m) => m.mountPoint === '/')).toBe(true);
      expect(unexpectedMounts(list, names(identity).workspaceVolume)).toEqual([]);
      // Docker's view: no bind mount at all, only the workspace volume.
      expect(observed.agent.HostConfig.Binds ?? []).toEqual([]);
      expect(observed.agent.Mounts.map((m) => `${m.Type} ${m.Destination}`)).toEqual(['volume /workspace']);
    });

    it('is on the internal network only, through a namespace holder that has no other network', () => {
      expect(observed.agent.HostConfig.NetworkMode).toMatch(/^container:/);
      expect(observed.holder, 'the namespace holder').toBeDefined();
      expect(Object.keys(observed.holder?.NetworkSettings.Networks ?? {})).toEqual([observed.internalNetwork.Name]);
      expect(observed.internalNetwork.Internal).toBe(true);
    });

    it('reaches its egress sidecar (the probes work)', () => {
      expect(r.egress_sidecar).toMatch(/^rc=0,/);
      expect(r.dns_egress).toMatch(/^resolved:\d+\.\d+\.\d+\.\d+/);
      expect(r.proxy_env).toBe('http://egress:3128');
    });

    it('cannot reach a server on another network, by IP or by name, directly or through egress; the server saw nothing', async () => {
      for (const key of ['forbidden_ip', 'forbidden_alias', 'forbidden_name', 'forbidden_egress_net_ip']) expect(r[key], key).toMatch(/^rc=[1-9]/);
      // Through the proxy: by its IP on its own network, by its alias and container name and by
      // its IP on the egress network (where the egress sidecar could reach it), GET and CONNECT.
      // The egress proxy refuses each with 403 (a GET's status, a CONNECT's tunnel status).
      for (const key of ['proxy_get_ip', 'proxy_get_alias', 'proxy_get_name', 'proxy_get_egress_net_ip']) expect(r[key], key).toMatch(/^code=403,/);
      for (const key of ['proxy_connect_ip', 'proxy_connect_alias', 'proxy_connect_egress_net_ip']) expect(r[key], key).toMatch(/,connect=403$/);
      expect(await server.connections()).toHaveLength(connectionsBefore);
    });

    it('every attempt through egress is in `bottle audit`: each refusal with its reason, the allowlisted one allowed', async () => {
      const audit = await cli(b, ['audit', identity, '--json']);
      expect(audit.code, audit.stderr).toBe(0);
      const egress = (JSON.parse(audit.stdout) as { source: string; method?: string; host?: string; port?: number; decision?: string; reason?: string }[]).filter((e) => e.source === 'egress');
      const seen = (decision: string) =>
        egress
          .filter((e) => e.decision === decision)
          .map((e) => `${e.method} ${e.host}:${e.port}`)
          .sort();
      const denied = [
        `GET ${server.ip}:${server.port}`,
        `GET ${server.alias}:${server.port}`,
        `GET ${server.container}:${server.port}`,
        `GET ${observed.forbiddenEgressNetAddress}:${server.port}`,
        `CONNECT ${server.ip}:${server.port}`,
        `CONNECT ${server.alias}:${server.port}`,
        `CONNECT ${observed.forbiddenEgressNetAddress}:${server.port}`,
      ].sort();
      expect(seen('deny')).toEqual(denied);
      expect(seen('allow')).toEqual([`GET ${allowedServer.alias}:${allowedServer.port}`]);
      for (const e of egress.filter((x) => x.decision === 'deny')) expect(e.reason, `${e.method} ${e.host}`).toMatch(/allowlist/);
    });

    it('the control: the allowlisted server on the same network is reached through egress, from the egress sidecar', () => {
      const fresh = allowedAfter.slice(allowedBefore);
      expect(fresh.length, `proxy_get_allowed=${r.proxy_get_allowed}`).toBeGreaterThan(0);
      expect(observed.egressServersAddress).toMatch(/^\d+\.\d+\.\d+\.\d+$/);
      for (const line of fresh) expect(line).toMatch(new RegExp(`${observed.egressServersAddress.replace(/\./g, '\\.')}$`));
    });

    it('cannot open a TCP connection to its internal network’s gateway address, on any port', () => {
      expect(observed.gateway).toMatch(/^\d+\.\d+\.\d+\.\d+$/);
      for (const port of GATEWAY_PORTS) {
        const v = r[`gateway_${port}`];
        expect(v, `gateway ${observed.gateway}:${port}`).toMatch(/^rc=[1-9]/);
        // Fails within the probe's 5 s, not after a long hang.
        expect(Number(/ms=(\d+)/.exec(v ?? '')?.[1]), `gateway ${port}`).toBeLessThan(5_500);
      }
    });

    it('cannot reach the egress network (the egress sidecar’s address there)', () => {
      expect(r.egress_net_sidecar, observed.egressNetAddress).toMatch(/^rc=[1-9]/);
    });

    it('resolves the sidecar names but not names that exist only on another network', () => {
      expect(r.dns_alias).toMatch(/^unresolved:/);
      expect(r.dns_name).toMatch(/^unresolved:/);
      expect(r.dns_egress).toMatch(/^resolved:/);
    });

    it(runtime === 'runsc' ? 'runs under gVisor' : 'does not run under gVisor', () => {
      expect(observed.agent.HostConfig.Runtime).toBe(runtime);
      if (runtime === 'runsc') {
        expect(r.kernel).toBe('4.4.0');
        expect(r.dmesg).toMatch(/gVisor/);
      } else {
        expect(r.kernel).not.toBe('4.4.0');
        expect(r.dmesg).not.toMatch(/gVisor/);
      }
    });

    it('holds no host variable it was not given; the forwarded one arrives by value, never on argv or in a file', () => {
      expect(r['found[canary]']).toBe('none');
      expect(r['env_value[BB_FORWARDED]']).toBe('matches');
      // Not vacuous: the scan read environments, command lines and files.
      expect(Number(r.scan_environ_read)).toBeGreaterThan(0);
      expect(Number(r.scan_cmdline_read)).toBeGreaterThan(0);
      expect(Number(r.scan_files_read)).toBeGreaterThan(50);
      const places = (r['found[forwarded]'] ?? '').split(',');
      expect(places).toContain('env:BB_FORWARDED');
      expect(places.filter((p) => !p.startsWith('env:BB_FORWARDED') && !p.startsWith('environ:'))).toEqual([]);

      // Host side, while the bottle ran: the value is in the agent's Config.Env (expected) and
      // nowhere else Docker knows about; the canary nowhere at all.
      const agentEnv = observed.agent.Config.Env ?? [];
      expect(agentEnv).toContain(`BB_FORWARDED=${forwarded}`);
      expect(agentEnv.some((e) => e.includes(canary) || e.startsWith('SECRET_CANARY='))).toBe(false);
      for (const c of observed.containers) {
        const copy = structuredClone(c);
        if (c.Id === observed.agent.Id) copy.Config.Env = [];
        const text = JSON.stringify(copy);
        expect(text.includes(forwarded), `forwarded value in inspect of ${c.Name}`).toBe(false);
        expect(text.includes(canary), `canary in inspect of ${c.Name}`).toBe(false);
      }
      // Not on any host process's argv, and in no file of the bottle's home (its staged run
      // folder included), while it ran and after.
      expect(observed.argvHits).toEqual([]);
      expect(observed.homeFiles.some((f) => f.endsWith(join('stage', 'agent.env'))), observed.homeFiles.join('\n')).toBe(true);
      expect(observed.homeHits).toEqual([]);
      // What is staged there (the env-file, the prompt) is the user's alone.
      expect(observed.homeNotPrivate).toEqual([]);
      expect(filesContaining(b.home, secrets)).toEqual([]);
    });

    it('teardown leaves no container, network or volume of the bottle', async () => {
      expect(await leftovers(identity)).toEqual([]);
    });
  });
}

describe('an agent that runs many processes at once', () => {
  const launched: string[] = [];
  afterAll(async () => {
    for (const identity of launched) await removeBottleObjects(identity);
  });

  // Under gVisor the container's pids limit counts the sandbox's host threads (about ten per
  // process of the agent, 44 at rest), not the agent's processes: 512 leaves room for some
  // 45 processes, and one more kills the whole sandbox (exit 2, no message), where under runc
  // it would only make fork() fail. 64 processes is a modest `make -j` or test runner.
  for (const runtime of ['runc', 'runsc'] as const) {
    it(`under ${runtime}: 64 processes at once do not kill the bottle`, async () => {
      const script = `${PRELUDE}for i in $(seq 64); do sleep 2 & done\nwait\nresult done yes\n`;
      const b = newBottle({ tag: `procs-${runtime}`, runtime, script });
      track(b.dir);
      identities.add(b.agent);
      launched.push(b.agent);
      const run = await runAttached(b);
      expect(results(run.stdout).done, `agent exit code ${run.code}; stderr:\n${run.stderr}`).toBe('yes');
      expect(run.code).toBe(0);
      expect(await leftovers(b.agent)).toEqual([]);
    });
  }
});

describe('runtime auto with runsc registered', () => {
  let b: SecBottle;
  let identity = '';

  afterAll(async () => {
    if (identity) {
      await cli(b, ['stop', identity]);
      await removeBottleObjects(identity);
    }
  });

  it('plans runsc, runs the agent under gVisor while it runs, and `bottle stop` tears it down', async () => {
    const script = `${PRELUDE}${KERNEL_PROBE}result ready yes\ntrap 'exit 0' TERM\nsleep 600 &\nwait\n`;
    b = newBottle({ tag: 'auto', runtime: 'auto', script });
    track(b.dir);
    const plan = await cli(b, ['plan', b.agent, '-f', b.manifest, '--json']);
    expect(plan.code, plan.stderr).toBe(0);
    expect(JSON.parse(plan.stdout).runtime).toBe('runsc');

    const started = await runDetached(b);
    identity = started.identity;
    identities.add(identity);
    expect(identity).toBe(b.agent);

    const [agent] = (await bottleContainers(identity)).filter((c) => roleOf(c) === 'agent');
    expect(agent?.State.Running).toBe(true);
    expect(agent?.HostConfig.Runtime).toBe('runsc');

    const r = results(await waitForLog(b, identity, /^RESULT ready=yes$/m));
    expect(r.kernel).toBe('4.4.0');
    expect(r.dmesg).toMatch(/gVisor/);
    expect(r.proc_version).toMatch(/^Linux version 4\.4\.0/);

    const stop = await cli(b, ['stop', identity]);
    expect(stop.code, stop.stderr).toBe(0);
    const status = await cli(b, ['status', identity, '--json']);
    expect(JSON.parse(status.stdout).state).toBe('done');
    expect(await leftovers(identity)).toEqual([]);
  });
});

describe('the project folder (--cwd)', () => {
  let b: SecBottle;
  let identity = '';

  afterAll(async () => {
    if (!identity) return;
    await removeBottleObjects(identity);
    // The --cwd image holds this test's files: remove it by id, which drops both its tags
    // (the content tag and the per-identity alias).
    const image = await docker()
      .getImage(names(identity).derivedImage)
      .inspect()
      .catch(() => null);
    if (image) await docker().getImage(image.Id).remove({ force: true });
  });

  it('is copied in, not mounted: what the agent changes in /workspace never reaches the host folder', async () => {
    const content = `project file ${newSecret('project')}\n`;
    const project = tempProject({ 'canary.txt': content });
    const script = `${PRELUDE}result workspace_sha "$(sha256sum /workspace/canary.txt | cut -d' ' -f1)"
dump mountinfo /proc/self/mountinfo
echo tampered > /workspace/canary.txt && result overwrite done
echo planted > /workspace/planted.txt && result plant done
result done yes
`;
    b = newBottle({ tag: 'cwd', runtime: 'runc', script, cwd: project });
    track(b.dir);
    identity = await identityOf(b);
    identities.add(identity);
    expect(identity).toMatch(new RegExp(`^${b.agent}-[0-9a-f]{12}$`));

    const run = await runAttached(b);
    expect(run.code, run.stderr).toBe(0);
    const r = results(run.stdout);
    expect(r.workspace_sha).toBe(needle(content).sha);
    expect(r.done, `stdout:\n${run.stdout}\nstderr:\n${run.stderr}`).toBe('yes');
    expect(r.overwrite).toBe('done');
    expect(r.plant).toBe('done');

    // The host folder is untouched.
    expect(readFileSync(join(project, 'canary.txt'), 'utf8')).toBe(content);
    expect(existsSync(join(project, 'planted.txt'))).toBe(false);
    // And no mount of the agent comes from it.
    const list = mounts(dumped(run.stdout, 'mountinfo'));
    expect(list.filter((m) => m.root.includes(project) || m.source.includes(project))).toEqual([]);
    expect(unexpectedMounts(list, names(identity).workspaceVolume)).toEqual([]);
    expect(await leftovers(identity)).toEqual([]);
  });
});
