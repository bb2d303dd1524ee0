import { describe, expect, it } from 'vitest';
import { dumped, mounts, procStatus, results, routes4, routes6, routesOut, unexpectedMounts } from '../support/security.js';

/**
 * The security tests judge what an agent printed with these analysers; each must catch the
 * thing it looks for, or a passing security test would prove nothing. Fixtures are real
 * /proc output (runc, gVisor) with the bad line added.
 */

const ROUTE_HEADER = 'Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT';
const SUBNET = 'eth0\t00B0A8C0\t00000000\t0001\t0\t0\t0\t00F0FFFF\t0\t0\t0';
const IPV6_REJECT = '00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo';

describe('route analysis', () => {
  it('accepts a namespace with only its own subnet and IPv6 reject routes', () => {
    expect(routesOut(routes4([ROUTE_HEADER, SUBNET]), routes6([IPV6_REJECT]))).toEqual([]);
  });

  it('flags an IPv4 default route, a route through a gateway, and an IPv6 default route', () => {
    const v4 = routes4([ROUTE_HEADER, SUBNET, 'eth0\t00000000\t0100B0A8\t0003\t0\t0\t0\t00000000\t0\t0\t0', 'eth0\t0000000A\t0100B0A8\t0003\t0\t0\t0\t000000FF\t0\t0\t0']);
    const v6 = routes6(['00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003     eth0']);
    const bad = routesOut(v4, v6);
    expect(bad).toHaveLength(3);
    expect(bad[0]).toMatch(/IPv4 default route/);
    expect(bad[1]).toMatch(/via gateway/);
    expect(bad[2]).toMatch(/IPv6 default route/);
  });
});

const RUNC_MOUNTS = [
  '156 106 0:61 / / rw,relatime master:4 - overlay overlay rw,lowerdir=/var/lib/docker/overlay2/l/X',
  '157 156 0:64 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw',
  '158 156 0:65 / /dev rw,nosuid - tmpfs tmpfs rw,size=65536k,mode=755',
  '162 161 0:29 /docker/17f9 /sys/fs/cgroup/cpu ro,nosuid,nodev,noexec,relatime - cgroup cgroup rw,cpu',
  '173 156 254:0 /var/lib/docker/volumes/bottle-x-workspace/_data /workspace rw,relatime master:1 - ext4 /dev/vda rw',
  `174 156 254:0 /var/lib/docker/containers/${'a'.repeat(64)}/resolv.conf /etc/resolv.conf rw,relatime - ext4 /dev/vda rw`,
  `175 156 254:0 /var/lib/docker/containers/${'a'.repeat(64)}/hostname /etc/hostname rw,relatime - ext4 /dev/vda rw`,
  `176 156 254:0 /var/lib/docker/containers/${'a'.repeat(64)}/hosts /etc/hosts rw,relatime - ext4 /dev/vda rw`,
  '112 157 0:65 /null /proc/keys rw,nosuid - tmpfs tmpfs rw,size=65536k,mode=755',
  '107 157 0:64 /bus /proc/bus ro,nosuid,nodev,noexec,relatime - proc proc rw',
  '111 157 0:69 / /proc/acpi ro,relatime - tmpfs tmpfs ro',
  '171 158 0:63 / /dev/mqueue rw,nosuid,nodev,noexec,relatime - mqueue mqueue rw',
  '136 160 0:70 / /sys/firmware ro,relatime - tmpfs tmpfs ro',
];
const GVISOR_MOUNTS = [
  '8 8 0:8 / / rw  - 9p none rw,trans=fd',
  '11 8 0:10 / /proc rw,noexec  - proc none rw',
  '14 8 0:13 / /workspace rw  - 9p none rw,trans=fd',
  '15 8 0:14 / /etc/hosts rw  - 9p none rw,trans=fd',
  '18 8 0:17 / /tmp rw  - tmpfs none rw,mode=01777',
];

describe('mount analysis', () => {
  it('accepts what Docker gives a bottle under runc and under gVisor', () => {
    expect(unexpectedMounts(mounts(RUNC_MOUNTS), 'bottle-x-workspace')).toEqual([]);
    expect(unexpectedMounts(mounts(GVISOR_MOUNTS), 'bottle-x-workspace')).toEqual([]);
  });

  it('flags a bind of the project, of the Docker socket, a foreign /etc/hosts, another volume, and any extra 9p mount', () => {
    const bad = unexpectedMounts(
      mounts([
        ...RUNC_MOUNTS.filter((l) => !l.includes(' /workspace ')),
        '200 156 254:0 /home/me/project /workspace rw,relatime - ext4 /dev/vda rw',
        '201 156 0:24 /docker.sock /var/run/docker.sock rw,nosuid - tmpfs tmpfs rw',
        '202 156 254:0 /home/me/.ssh /home/agent/.ssh rw - ext4 /dev/vda rw',
        '203 156 254:0 /home/me/hosts /etc/hosts rw - ext4 /dev/vda rw',
        '204 156 254:0 /var/lib/docker/volumes/other/_data /workspace rw - ext4 /dev/vda rw',
        '205 8 0:20 / /home/agent/project rw  - 9p none rw,trans=fd',
        '206 156 254:0 /with\\040space /mnt rw - ext4 /dev/vda rw',
      ]),
      'bottle-x-workspace',
    );
    expect(bad).toHaveLength(7);
    expect(bad.join('\n')).toContain('/var/run/docker.sock');
    expect(bad.join('\n')).toContain('/home/me/project');
    expect(bad.join('\n')).toContain('/home/me/.ssh');
    expect(bad.join('\n')).toContain('/home/me/hosts');
    expect(bad.join('\n')).toContain('volumes/other');
    expect(bad.join('\n')).toContain('/home/agent/project');
    expect(bad.join('\n')).toContain('/with space');
  });

  it('flags a bind out of a host tmpfs (the host /run holds docker.sock) and a tmpfs over a home folder', () => {
    const bad = unexpectedMounts(
      mounts(['201 156 0:24 /docker.sock /var/run/docker.sock rw,nosuid - tmpfs tmpfs rw', '202 156 0:25 / /home/agent rw - tmpfs tmpfs rw']),
      'v',
    );
    expect(bad).toHaveLength(2);
    expect(bad[0]).toContain('/var/run/docker.sock');
  });
});

describe('agent output parsing', () => {
  it('reads RESULT and DUMP lines and /proc status fields', () => {
    const out = 'noise\nRESULT a=1\nRESULT socket[/run/x.sock]=error:ENOENT\nRESULT a=2=3\nDUMP status CapEff:\t0000000000000000\nDUMP status NoNewPrivs:\t1\n';
    expect(results(out)).toEqual({ a: '2=3', 'socket[/run/x.sock]': 'error:ENOENT' });
    expect(procStatus(dumped(out, 'status'))).toEqual({ CapEff: '0000000000000000', NoNewPrivs: '1' });
  });
});
