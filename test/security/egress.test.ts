import { createHash } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { names } from '../../machines/names.js';
import { postCommand } from '../../store/mailbox.js';
import { commandsDir } from '../../store/paths.js';
import { type CliResult, ensureBuilt } from '../support/cli.js';
import { json, show, waitFor } from '../support/e2e.js';
import {
  addHostsEntries,
  addressesOf,
  addressOn,
  BOTTLE_NAME,
  blackholeRoute,
  type Connection,
  type ContainerState,
  connectNetwork,
  containerState,
  containerStderr,
  controlRequests,
  decisionKey,
  type EgressAuditEntry,
  egressEntries,
  egressAgentName,
  execAs,
  gatewayOf,
  newEgressBottle,
  selfSignedCert,
  startUpstreams,
  type TamperingDockerHost,
  tamperingDockerHost,
  type UpstreamNet,
} from '../support/egress.js';
import { ensureTestImages } from '../support/images.js';
import {
  type AttachedRun,
  cli,
  finishBottleSuite,
  leftovers,
  PRELUDE,
  results,
  runAttached,
  type SecBottle,
  track,
  waitForLog,
} from '../support/security.js';

/**
 * The egress sidecar in real bottles (issue 4, "How we will know"): adversarial agent scripts
 * ask the proxy for allowed and refused targets, and the verdicts are taken from three
 * places: what the agent got, what every upstream server saw (each logs every TCP connection
 * it accepts), and what `bottle audit --json` holds after teardown.
 *
 * Network rule: every upstream is a container of this file on its own internal network; a
 * bottle's egress sidecar joins that network once the bottle is up. Every name is a `.test`
 * name only these containers answer to. The dangerous names the sidecar is given in its
 * /etc/hosts resolve to 169.254.169.254, 127.0.0.1 and the bottle networks' gateways; blackhole
 * routes in the sidecar's namespace guarantee nothing could leave for any of them even if the
 * proxy were wrong.
 *
 * A sidecar that does not come up healthy is made without touching the product: the CLI's
 * DOCKER_HOST points at a Docker endpoint of the test's own that rewrites the egress
 * sidecar's create request (support/egress.ts, tamperingDockerHost).
 */

const identities = new Set<string>();
let sidecarImage = '';
let up: UpstreamNet;
const cert = selfSignedCert('secure.test');
/** Connections each upstream had accepted before the bottles ran (the control's). */
const baseline: Record<string, number> = {};

const SLOW_CHUNKS = 100;
/** The launches of bottles with a broken egress sidecar, run alongside the others (see the last describe). */
let brokenLaunches: Promise<BrokenOutcome[]> | undefined;

beforeAll(async () => {
  ensureBuilt();
  sidecarImage = (await ensureTestImages()).sidecar;
  brokenLaunches = Promise.all(BROKEN_VARIANTS.map(launchBroken));
  brokenLaunches.catch(() => undefined); // reported by the describe that awaits it
  up = await startUpstreams(sidecarImage, [
    { name: 'allowed', aliases: ['allowed.test'], ports: ['80'] },
    { name: 'secure', aliases: ['secure.test'], ports: ['443/tls'], tls: cert },
    { name: 'denied', aliases: ['denied.test'], ports: ['80', '443'] },
    { name: 'wildsub', aliases: ['a.wild.test'], ports: ['80'] },
    { name: 'wildbare', aliases: ['wild.test'], ports: ['80'] },
    { name: 'ports', aliases: ['ports.test'], ports: ['8080', '9090'] },
    { name: 'slow', aliases: ['slow.test'], ports: ['80'] },
    { name: 'later', aliases: ['later.test'], ports: ['80'] },
  ]);
  // Positive control: a peer on the upstream network reaches every server by its name, so a
  // server that later saw nothing was protected by the proxy, not deaf.
  const targets = [
    'allowed.test:80',
    'secure.test:443/tls',
    'denied.test:80',
    'denied.test:443',
    'a.wild.test:80',
    'wild.test:80',
    'ports.test:8080',
    'ports.test:9090',
    'later.test:80',
  ];
  const control = await controlRequests(sidecarImage, up.network, targets);
  for (const t of targets) expect(control.find((l) => l.startsWith(`${t} `)), control.join('\n')).toMatch(/ 200 hello from /);
  for (const [name, u] of Object.entries(up.upstreams)) baseline[name] = (await u.connections()).length;
  expect(baseline.denied).toBe(2);
  expect(baseline.ports).toBe(2);
});

afterAll(async () => {
  await brokenLaunches?.catch(() => undefined);
  await finishBottleSuite(identities);
});

/** Connections an upstream accepted since the control. */
async function since(name: string): Promise<Connection[]> {
  return (await up.upstreams[name]!.connections()).slice(baseline[name]);
}

async function auditOf(b: SecBottle, identity: string): Promise<EgressAuditEntry[]> {
  const r = await cli(b, ['audit', identity, '--json']);
  expect(r.code, show(r)).toBe(0);
  return egressEntries(json<Record<string, unknown>[]>(r));
}

function countKeys(entries: EgressAuditEntry[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const e of entries) out[decisionKey(e)] = (out[decisionKey(e)] ?? 0) + 1;
  return out;
}

const decode = (b64: string | undefined) => Buffer.from(b64 ?? '', 'base64').toString('utf8');

// ---------------------------------------------------------------------------------------

/** Shell helpers of the egress probes (after PRELUDE). */
const EGRESS_HELPERS = String.raw`export RES_OPTIONS='timeout:1 attempts:1'
b64() { base64 -w0 < "$1" 2>/dev/null; }
# proxy_get KEY URL [curl args]: status and body of a request sent the way the proxy variables say
proxy_get() {
  local key=$1 url=$2; shift 2
  rm -f /tmp/body
  result "$key"_code "$(curl -s -m 10 -o /tmp/body -w '%{http_code}' "$@" "$url")"
  result "$key"_body "$(b64 /tmp/body)"
}
# proxy_tls KEY URL [curl args]: the proxy's answer to CONNECT, then the HTTPS status and body
proxy_tls() {
  local key=$1 url=$2; shift 2
  rm -f /tmp/body
  result "$key"_codes "$(curl -s -m 10 -o /tmp/body -w '%{http_connect} %{http_code}' "$@" "$url")"
  result "$key"_body "$(b64 /tmp/body)"
}
# raw_connect KEY HOST:PORT: the proxy's whole answer to a CONNECT, status line and body
raw_connect() {
  result "$1" "$(timeout 5 bash -c 'exec 3<>/dev/tcp/egress/3128 || exit 1; printf "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" "$0" "$0" >&3; cat <&3' "$2" | base64 -w0)"
}
noproxy() { env -u HTTP_PROXY -u HTTPS_PROXY -u http_proxy -u https_proxy -u NO_PROXY -u no_proxy -u ALL_PROXY -u all_proxy "$@"; }
resolve() {
  local out rc
  out=$(noproxy getent hosts "$2")
  rc=$?
  if [ "$rc" = 0 ]; then result "$1" "resolved:$(echo "$out" | awk '{print $1}' | tr '\n' ' ')"; else result "$1" "unresolved:$rc"; fi
}
`;

const PROBE_SCRIPT = `${PRELUDE}${EGRESS_HELPERS}cat > /tmp/secure.pem <<'BOTTLE_CERT_EOF'
${cert.cert}BOTTLE_CERT_EOF
result ready yes
if ! read -r -t 100 ALLOWED_IP OUTSIDE_IP; then result stdin none; exit 3; fi
result stdin received
# 1. allowed over HTTP and over HTTPS through CONNECT (the certificate is the server's own); denied both ways
proxy_get http http://allowed.test/
proxy_tls https https://secure.test/ --cacert /tmp/secure.pem
proxy_get denied_http http://denied.test/
raw_connect denied_connect denied.test:443
# 2. a wildcard allows subdomains, not the bare domain; a port not listed is refused
proxy_get wild_sub http://a.wild.test/
proxy_get wild_bare http://wild.test/
proxy_get port_listed http://ports.test:8080/
proxy_get port_unlisted http://ports.test:9090/
# 3. the Host header does not decide: both mismatches are refused
proxy_get host_header http://denied.test/ -x http://egress:3128 -H 'Host: allowed.test'
proxy_get host_header_rev http://allowed.test/ -x http://egress:3128 -H 'Host: denied.test'
# 4. allowed names that resolve to link-local and loopback addresses
proxy_get meta_http http://meta.test/
proxy_get loop_http http://loop.test/
proxy_tls meta_tls https://meta.test/ -k
proxy_tls loop_tls https://loop.test/ -k
# ... and to the bottle networks' gateways (the host's side of their bridges)
proxy_get gw_http http://gw.test/
proxy_get gwin_http http://gwin.test/
# 5. without the proxy variables: nothing on the egress side by name or address, no outside name
result proxy_env "$(printenv HTTPS_PROXY)"
resolve dns_egress egress
resolve dns_outside outside.test
resolve dns_allowed allowed.test
resolve dns_secure secure.test
tcp_probe tcp_egress egress 3128 3
tcp_probe tcp_outside_ip "$OUTSIDE_IP" 80 3
tcp_probe tcp_allowed_ip "$ALLOWED_IP" 80 3
result direct_name "$(noproxy curl -s -m 5 -o /dev/null -w '%{http_code}' http://outside.test/; echo " rc=$?")"
result direct_ip "$(noproxy curl -s -m 5 -o /dev/null -w '%{http_code}' "http://$OUTSIDE_IP/"; echo " rc=$?")"
result done yes
`;

const PROBE_ALLOW = ['allowed.test', 'secure.test', '*.wild.test', 'ports.test:8080', 'meta.test', 'loop.test', 'gw.test', 'gwin.test'];

/** What the probe script asks through the proxy, as `METHOD host:port decision status`: each once. */
const PROBE_DECISIONS = [
  'GET allowed.test:80 allow 200',
  'CONNECT secure.test:443 allow 200',
  'GET denied.test:80 deny 403',
  'CONNECT denied.test:443 deny 403',
  'GET a.wild.test:80 allow 200',
  'GET wild.test:80 deny 403',
  'GET ports.test:8080 allow 200',
  'GET ports.test:9090 deny 403',
  'GET denied.test:80 deny 400',
  'GET allowed.test:80 deny 400',
  'GET meta.test:80 deny 403',
  'GET loop.test:80 deny 403',
  'CONNECT meta.test:443 deny 403',
  'CONNECT loop.test:443 deny 403',
  'GET gw.test:80 deny 403',
  'GET gwin.test:80 deny 403',
];

describe('an agent probing the egress proxy', () => {
  let b: SecBottle;
  let identity: string;
  let run: AttachedRun;
  let r: Record<string, string>;
  let sidecarAddresses: string[] = [];
  let outsideIp = '';
  let gateways = { egress: '', internal: '' };
  let audit: EgressAuditEntry[] = [];
  let runId = '';

  beforeAll(async () => {
    b = newEgressBottle({ tag: 'probe', allow: PROBE_ALLOW, script: PROBE_SCRIPT, privateNetworks: [up.subnet] });
    track(b.dir);
    identity = b.agent;
    identities.add(identity);
    const n = names(identity);
    const egress = n.sidecar('egress');
    run = await runAttached(b, async () => {
      // The bottle is up and its agent waits: wire the sidecar to the upstreams, put a server
      // of ours on the bottle's egress network, and give the sidecar its dangerous names.
      await connectNetwork(up.network, egress);
      await connectNetwork(n.egressNetwork, up.upstreams.allowed!.container, ['outside.test']);
      gateways = { egress: await gatewayOf(n.egressNetwork), internal: await gatewayOf(n.internalNetwork) };
      for (const cidr of ['169.254.0.0/16', `${gateways.egress}/32`, `${gateways.internal}/32`]) await blackholeRoute(egress, sidecarImage, cidr);
      await addHostsEntries(egress, {
        'meta.test': '169.254.169.254',
        'loop.test': '127.0.0.1',
        'gw.test': gateways.egress,
        'gwin.test': gateways.internal,
      });
      outsideIp = await addressOn(up.upstreams.allowed!.container, n.egressNetwork);
      sidecarAddresses = await addressesOf(egress);
      return { stdin: `${up.upstreams.allowed!.ip} ${outsideIp}\n` };
    });
    r = results(run.stdout);
    const status = json<{ run: string }>(await cli(b, ['status', identity, '--json']));
    runId = status.run;
    audit = await auditOf(b, identity);
  }, 240_000);

  it('the agent ran every probe and the bottle ended', () => {
    expect(run.code, run.stderr).toBe(0);
    expect(r.stdin).toBe('received');
    expect(r.done, run.stdout).toBe('yes');
    expect(r.proxy_env).toBe('http://egress:3128');
  });

  it('an allowed host answers over HTTP, and over HTTPS through CONNECT with its own certificate', async () => {
    expect(r.http_code).toBe('200');
    expect(decode(r.http_body)).toBe('hello from allowed port 80 host allowed.test\n');
    expect(r.https_codes).toBe('200 200');
    expect(decode(r.https_body)).toBe('hello from secure port 443 host secure.test\n');
    expect(await since('allowed')).toEqual([{ port: 80, remote: expect.any(String) }]);
    expect(await since('secure')).toEqual([{ port: 443, remote: expect.any(String) }]);
  });

  it('a denied host gets 403 naming the host and the manifest key, over HTTP and CONNECT; its server saw nothing', async () => {
    const key = `bottles.${BOTTLE_NAME}.egress.allow`;
    expect(r.denied_http_code).toBe('403');
    const body = decode(r.denied_http_body);
    expect(body).toContain('denied.test:80');
    expect(body).toContain('"denied.test"');
    expect(body).toContain(key);
    const raw = decode(r.denied_connect);
    expect(raw).toMatch(/^HTTP\/1\.1 403 /);
    expect(raw).toContain('CONNECT denied.test:443');
    expect(raw).toContain(key);
    expect(await since('denied')).toEqual([]);
  });

  it('a wildcard allows a subdomain and not the bare domain', async () => {
    expect(r.wild_sub_code).toBe('200');
    expect(decode(r.wild_sub_body)).toBe('hello from wildsub port 80 host a.wild.test\n');
    expect(r.wild_bare_code).toBe('403');
    expect(decode(r.wild_bare_body)).toContain('wild.test:80');
    expect(await since('wildsub')).toHaveLength(1);
    expect(await since('wildbare')).toEqual([]);
  });

  it('a port not listed is refused; the listed one answers', async () => {
    expect(r.port_listed_code).toBe('200');
    expect(decode(r.port_listed_body)).toBe('hello from ports port 8080 host ports.test:8080\n');
    expect(r.port_unlisted_code).toBe('403');
    const body = decode(r.port_unlisted_body);
    expect(body).toContain('port 9090');
    expect(body).toContain('"ports.test:9090"');
    expect((await since('ports')).map((c) => c.port)).toEqual([8080]);
  });

  it('a Host header that disagrees with the target is refused, whichever of the two is allowed; neither server saw it', async () => {
    expect(r.host_header_code).toMatch(/^4\d\d$/);
    expect(decode(r.host_header_body)).toMatch(/Host header/);
    expect(r.host_header_rev_code).toMatch(/^4\d\d$/);
    expect(await since('denied')).toEqual([]);
    // The allowed server's one connection is the plain GET of test 1.
    expect(await since('allowed')).toHaveLength(1);
  });

  it('an allowed name that resolves to a link-local or loopback address is refused', () => {
    expect(r.meta_http_code).toBe('403');
    expect(decode(r.meta_http_body)).toMatch(/169\.254\.169\.254.*link-local/);
    expect(r.loop_http_code).toBe('403');
    expect(decode(r.loop_http_body)).toMatch(/127\.0\.0\.1.*loopback/);
    expect(r.meta_tls_codes?.split(' ')[0]).toBe('403');
    expect(r.loop_tls_codes?.split(' ')[0]).toBe('403');
  });

  it('an allowed name that resolves to a bottle network’s gateway is refused (the deny list)', () => {
    expect(gateways.egress).toMatch(/^\d+\.\d+\.\d+\.\d+$/);
    expect(r.gw_http_code).toBe('403');
    expect(decode(r.gw_http_body)).toContain(`gw.test resolves to ${gateways.egress}`);
    expect(decode(r.gw_http_body)).toMatch(/an address of the Docker host/);
    expect(r.gwin_http_code).toBe('403');
    expect(decode(r.gwin_http_body)).toContain(`gwin.test resolves to ${gateways.internal}`);
  });

  it('without the proxy variables the agent reaches nothing on the egress side and resolves no outside name', async () => {
    // The probes work: the agent's own sidecar resolves and answers.
    expect(r.dns_egress).toMatch(/^resolved:\d+\.\d+\.\d+\.\d+/);
    expect(r.tcp_egress).toMatch(/^rc=0,/);
    // A server of ours on the bottle's egress network, by name and by address, and the upstreams.
    expect(outsideIp).toMatch(/^\d+\.\d+\.\d+\.\d+$/);
    expect(r.dns_outside).toMatch(/^unresolved:/);
    expect(r.dns_allowed).toMatch(/^unresolved:/);
    expect(r.dns_secure).toMatch(/^unresolved:/);
    expect(r.tcp_outside_ip).toMatch(/^rc=[1-9]/);
    expect(r.tcp_allowed_ip).toMatch(/^rc=[1-9]/);
    expect(r.direct_name).toMatch(/^000 rc=[1-9]/);
    expect(r.direct_ip).toMatch(/^000 rc=[1-9]/);
  });

  it('every connection any upstream accepted came from the egress sidecar', async () => {
    expect(sidecarAddresses.length).toBeGreaterThan(0);
    for (const name of Object.keys(up.upstreams)) {
      for (const c of await since(name)) expect(sidecarAddresses, `${name} accepted ${c.remote}`).toContain(c.remote);
    }
  });

  it('every decision appears exactly once in `bottle audit --json`, and nothing else', () => {
    expect(audit.map(decisionKey).sort()).toEqual([...PROBE_DECISIONS].sort());
    expect(Object.values(countKeys(audit)).every((n) => n === 1)).toBe(true);
    for (const e of audit) {
      expect(e.type, decisionKey(e)).toBe(e.decision);
      expect(e.run, decisionKey(e)).toBe(runId);
      expect(e.client, decisionKey(e)).toMatch(/^\d+\.\d+\.\d+\.\d+:\d+$/);
    }
    const find = (key: string) => audit.find((e) => decisionKey(e) === key)!;
    expect(find('GET allowed.test:80 allow 200').rule).toBe('allowed.test');
    expect(find('GET a.wild.test:80 allow 200').rule).toBe('*.wild.test');
    expect(find('GET ports.test:8080 allow 200').rule).toBe('ports.test:8080');
    expect(find('GET allowed.test:80 allow 200').bytes_down).toBe('hello from allowed port 80 host allowed.test\n'.length);
    expect(find('CONNECT secure.test:443 allow 200').bytes_down).toBeGreaterThan(0);
    expect(find('GET denied.test:80 deny 403').reason).toMatch(/not in the allowlist/);
    expect(find('GET ports.test:9090 deny 403').reason).toMatch(/port 9090/);
    expect(find('GET denied.test:80 deny 400').reason).toMatch(/Host header/);
    expect(find('GET meta.test:80 deny 403').reason).toMatch(/link-local/);
    expect(find('CONNECT loop.test:443 deny 403').reason).toMatch(/loopback/);
    // Refused names resolve to a forbidden address: never dialled.
    for (const e of audit.filter((x) => x.decision === 'deny')) expect(e.bytes_down + e.bytes_up, decisionKey(e)).toBe(0);
  });

  it('`bottle status` shows the last denials', async () => {
    const s = await cli(b, ['status', identity, '--json']);
    const denials = json<{ egress_denials: EgressAuditEntry[] }>(s).egress_denials;
    expect(denials.length).toBeGreaterThan(0);
    expect(denials.every((d) => d.decision === 'deny')).toBe(true);
    expect(denials.at(-1)?.host).toBe('gwin.test');
  });

  it('teardown left nothing of the bottle', async () => {
    expect(await leftovers(identity)).toEqual([]);
  });
});

// ---------------------------------------------------------------------------------------

const RELOAD_SCRIPT = `${PRELUDE}trap 'exit 0' TERM
ms() { echo $(( $(date +%s%N) / 1000000 )); }
cat > /tmp/secure.pem <<'BOTTLE_CERT_EOF'
${cert.cert}BOTTLE_CERT_EOF
result ready yes
if ! read -r -t 100 GO; then result stdin none; exit 3; fi
result stdin "$GO"
# Two slow downloads, one plain through the proxy and one through a CONNECT tunnel.
curl -s -m 90 -o /tmp/slow.bin -w '%{http_code} %{size_download}' 'http://slow.test/slow?n=${SLOW_CHUNKS}' > /tmp/slow.out 2>&1 &
slow=$!
curl -s -m 90 --cacert /tmp/secure.pem -o /tmp/slowtls.bin -w '%{http_code} %{size_download}' 'https://secure.test/slow?n=${SLOW_CHUNKS}' > /tmp/slowtls.out 2>&1 &
slowtls=$!
for i in $(seq 200); do [ -s /tmp/slow.bin ] && [ -s /tmp/slowtls.bin ] && break; sleep 0.05; done
result slow_started "$(stat -c %s /tmp/slow.bin 2>/dev/null || echo 0)"
result slowtls_started "$(stat -c %s /tmp/slowtls.bin 2>/dev/null || echo 0)"
start=$(ms)
denied=0
others=
code=
while :; do
  code=$(curl -s -m 5 -o /tmp/later.body -w '%{http_code}' http://later.test/)
  if [ "$code" = 200 ]; then break; fi
  if [ "$code" = 403 ]; then denied=$((denied + 1)); else others="$others,$code"; fi
  if [ $(( $(ms) - start )) -gt 30000 ]; then break; fi
  sleep 0.2
done
result later_code "$code"
result later_after_ms "$(( $(ms) - start ))"
result later_denied "$denied"
result later_other "\${others:-none}"
result later_body "$(base64 -w0 < /tmp/later.body)"
for d in slow slowtls; do
  result "$d"_size_at_later "$(stat -c %s /tmp/$d.bin)"
done
result slow_running_at_later "$(if kill -0 "$slow" 2>/dev/null; then echo yes; else echo no; fi)"
result slowtls_running_at_later "$(if kill -0 "$slowtls" 2>/dev/null; then echo yes; else echo no; fi)"
wait "$slow"
result slow_rc "$?"
wait "$slowtls"
result slowtls_rc "$?"
for d in slow slowtls; do
  result "$d"_out "$(cat /tmp/$d.out)"
  result "$d"_size "$(stat -c %s /tmp/$d.bin)"
  result "$d"_sha "$(sha256sum /tmp/$d.bin | cut -d' ' -f1)"
done
result finished yes
sleep 600 &
wait
`;

function slowBody(chunks: number): Buffer {
  return Buffer.concat(Array.from({ length: chunks }, (_, i) => Buffer.alloc(1024, 97 + (i % 26))));
}

describe('live reload: an approved allowlist addition reaches the running sidecar', () => {
  let b: SecBottle;
  let identity: string;
  let run: AttachedRun;
  let r: Record<string, string>;
  let before: ContainerState;
  let after: ContainerState;
  let approve: CliResult;
  let allowlistAfter = '';
  let sidecarLog = '';
  let stop: CliResult;
  let audit: EgressAuditEntry[] = [];
  let laterBefore = 0;
  let liveStatus: { state?: unknown; egress_denials?: EgressAuditEntry[] } = {};
  let liveAudit: EgressAuditEntry[] = [];

  beforeAll(async () => {
    b = newEgressBottle({ tag: 'reload', allow: ['slow.test', 'secure.test'], script: RELOAD_SCRIPT, privateNetworks: [up.subnet] });
    track(b.dir);
    identity = b.agent;
    identities.add(identity);
    const egress = names(identity).sidecar('egress');
    laterBefore = (await since('later')).length;
    const running = runAttached(
      b,
      async () => {
        await connectNetwork(up.network, egress);
        before = await containerState(egress);
        return { stdin: 'go\n' };
      },
      180_000,
    );
    try {
      // The download is under way: propose later.test into the run's mailbox, then approve it.
      await waitForLog(b, identity, /^RESULT slowtls_started=[1-9]/m, 90_000);
      const status = json<{ run: string }>(await cli(b, ['status', identity, '--json']));
      postCommand(commandsDir(b.home, identity, status.run), {
        id: 'propose-p1',
        type: 'propose',
        proposal: { id: 'p1', kind: 'allowlist', reason: 'test', change: { hosts: ['later.test'] } },
      });
      await waitFor('proposal p1 to be pending', async () => {
        const p = await cli(b, ['proposals', identity, '--json']);
        return p.code === 0 && json<{ id: string; status: string }[]>(p).some((x) => x.id === 'p1' && x.status === 'pending');
      });
      approve = await cli(b, ['approve', identity, 'p1']);
      await waitForLog(b, identity, /^RESULT finished=yes$/m, 90_000);
      after = await containerState(egress);
      allowlistAfter = (await execAs(egress, '', ['cat', '/run/bottle/egress/allowlist'])).stdout;
      sidecarLog = await containerStderr(egress);
      // While the bottle still runs, status and audit read the sidecar's lines live.
      liveStatus = json(await cli(b, ['status', identity, '--json']));
      liveAudit = await auditOf(b, identity);
    } finally {
      stop = await cli(b, ['stop', identity]);
      run = await running;
    }
    r = results(run.stdout);
    audit = await auditOf(b, identity);
  }, 300_000);

  it('the proposal was approved with `bottle approve`', () => {
    expect(approve.code, show(approve)).toBe(0);
    expect(approve.stderr).toMatch(/p1: approved/);
  });

  it('the new allowlist reached the running sidecar, which reloaded it without a restart', () => {
    expect(allowlistAfter.split('\n').filter(Boolean).sort()).toEqual(['later.test', 'secure.test', 'slow.test']);
    expect(sidecarLog).toMatch(/allowlist reloaded: 3 entries/);
    expect(after.running).toBe(true);
    expect(after.id).toBe(before.id);
    expect(after.startedAt).toBe(before.startedAt);
    expect(after.restartCount).toBe(0);
  });

  it('the previously denied host then answers', async () => {
    expect(r.later_code, run.stdout).toBe('200');
    expect(decode(r.later_body)).toBe('hello from later port 80 host later.test\n');
    expect(Number(r.later_denied)).toBeGreaterThan(0);
    expect(r.later_other).toBe('none');
    expect(Number(r.later_after_ms)).toBeLessThan(30_000);
    // Its server saw only the one allowed request.
    expect((await since('later')).length - laterBefore).toBe(1);
  });

  it('the downloads under way at the reload (plain and through CONNECT) continued and completed with all their bytes', () => {
    const sha = createHash('sha256').update(slowBody(SLOW_CHUNKS)).digest('hex');
    for (const d of ['slow', 'slowtls']) {
      expect(r[`${d}_running_at_later`], d).toBe('yes');
      expect(Number(r[`${d}_size_at_later`]), d).toBeLessThan(SLOW_CHUNKS * 1024);
      expect(r[`${d}_rc`], d).toBe('0');
      expect(r[`${d}_out`], d).toBe(`200 ${SLOW_CHUNKS * 1024}`);
      expect(Number(r[`${d}_size`]), d).toBe(SLOW_CHUNKS * 1024);
      expect(r[`${d}_sha`], d).toBe(sha);
    }
  });

  it('`bottle stop` tore the bottle down', async () => {
    expect(stop.code, show(stop)).toBe(0);
    const s = json<{ state: string }>(await cli(b, ['status', identity, '--json']));
    expect(s.state).toBe('done');
    expect(await leftovers(identity)).toEqual([]);
  });

  it('while it ran, `bottle status` showed the denials and `bottle audit` the decisions so far', () => {
    expect(liveStatus.state).toBe('running');
    const denials = liveStatus.egress_denials ?? [];
    expect(denials.length).toBe(Math.min(5, Number(r.later_denied)));
    for (const d of denials) expect(decisionKey(d)).toBe('GET later.test:80 deny 403');
    expect(liveAudit.map(decisionKey).sort()).toEqual(audit.map(decisionKey).sort());
  });

  it('every decision appears exactly once in `bottle audit --json`', () => {
    const counts = countKeys(audit);
    expect(counts).toEqual({
      'GET slow.test:80 allow 200': 1,
      'CONNECT secure.test:443 allow 200': 1,
      'GET later.test:80 deny 403': Number(r.later_denied),
      'GET later.test:80 allow 200': 1,
    });
    const slow = audit.find((e) => e.host === 'slow.test')!;
    expect(slow.bytes_down).toBe(SLOW_CHUNKS * 1024);
    expect(slow.error).toBeUndefined();
    const tunnel = audit.find((e) => e.host === 'secure.test')!;
    expect(tunnel.bytes_down).toBeGreaterThan(SLOW_CHUNKS * 1024);
    expect(tunnel.error).toBeUndefined();
    expect(audit.find((e) => e.host === 'later.test' && e.decision === 'allow')?.rule).toBe('later.test');
  });
});

// ---------------------------------------------------------------------------------------

const OPEN_AT_STOP_SCRIPT = `${PRELUDE}trap 'exit 0' TERM
cat > /tmp/secure.pem <<'BOTTLE_CERT_EOF'
${cert.cert}BOTTLE_CERT_EOF
result ready yes
if ! read -r -t 100 GO; then result stdin none; exit 3; fi
# Two long downloads (a minute each) that are still under way when the bottle is stopped.
curl -s -o /tmp/slow.bin 'http://slow.test/slow?n=600' &
curl -s --cacert /tmp/secure.pem -o /tmp/slowtls.bin 'https://secure.test/slow?n=600' &
for i in $(seq 200); do [ -s /tmp/slow.bin ] && [ -s /tmp/slowtls.bin ] && break; sleep 0.05; done
result downloading "$(stat -c %s /tmp/slow.bin) $(stat -c %s /tmp/slowtls.bin)"
sleep 600 &
wait
`;

describe('connections still open when the bottle is stopped', () => {
  let b: SecBottle;
  let identity: string;
  let stop: CliResult;
  let audit: EgressAuditEntry[] = [];

  beforeAll(async () => {
    b = newEgressBottle({ tag: 'open', allow: ['slow.test', 'secure.test'], script: OPEN_AT_STOP_SCRIPT, privateNetworks: [up.subnet] });
    track(b.dir);
    identity = b.agent;
    identities.add(identity);
    const egress = names(identity).sidecar('egress');
    const running = runAttached(b, async () => {
      await connectNetwork(up.network, egress);
      return { stdin: 'go\n' };
    });
    try {
      await waitForLog(b, identity, /^RESULT downloading=[1-9]\d* [1-9]/m, 90_000);
    } finally {
      stop = await cli(b, ['stop', identity]);
      await running;
    }
    audit = await auditOf(b, identity);
  }, 240_000);

  it('`bottle stop` ended the run', () => {
    expect(stop.code, show(stop)).toBe(0);
  });

  it('their decisions are in `bottle audit --json` all the same, once each', () => {
    expect(countKeys(audit)).toEqual({ 'GET slow.test:80 allow 200': 1, 'CONNECT secure.test:443 allow 200': 1 });
    for (const e of audit) expect(e.bytes_down, decisionKey(e)).toBeGreaterThan(0);
  });
});

// ---------------------------------------------------------------------------------------

/** A stand-in sidecar that runs and listens but is never healthy: 503 to everything, /healthz too. */
const UNHEALTHY_JS = `require('http').createServer((q, r) => { r.writeHead(503); r.end('no policy\\n'); }).listen(Number(process.env.BOTTLE_SIDECAR_PORT || 3128));`;

type CreateBody = { Env?: string[]; Cmd?: string[] };

/**
 * Two ways for the egress sidecar not to come up healthy, made through a Docker endpoint of
 * the test's own (DOCKER_HOST) that rewrites the sidecar's create request: the product is
 * launched unchanged.
 */
const BROKEN_VARIANTS = [
  {
    tag: 'nopolicy',
    what: 'the real sidecar without a readable allowlist (it refuses to start)',
    rewrite: (body: CreateBody) => ({
      ...body,
      Env: [...(body.Env ?? []).filter((e) => !e.startsWith('BOTTLE_EGRESS_ALLOWLIST=')), 'BOTTLE_EGRESS_ALLOWLIST=/run/bottle/egress/missing'],
    }),
    message: /exited with code 1 before it was ready/,
  },
  {
    tag: 'unhealthy',
    what: 'a sidecar that runs but answers /healthz with 503',
    rewrite: (body: CreateBody) => ({ ...body, Cmd: ['-e', UNHEALTHY_JS] }),
    message: /was not ready within/,
  },
];

interface BrokenOutcome {
  b: SecBottle;
  identity: string;
  launch: CliResult;
  endpoint: TamperingDockerHost;
  status: Record<string, unknown>;
}

/** Launches a bottle whose egress sidecar is broken as `v` says, and waits until its owner is gone. */
async function launchBroken(v: (typeof BROKEN_VARIANTS)[number]): Promise<BrokenOutcome> {
  const agent = egressAgentName(v.tag);
  const endpoint = await tamperingDockerHost(names(agent).sidecar('egress'), v.rewrite);
  try {
    const b = newEgressBottle({ tag: v.tag, allow: ['allowed.test'], script: 'echo the agent ran; sleep 600', hostEnv: { DOCKER_HOST: endpoint.dockerHost } });
    track(b.dir);
    identities.add(b.agent);
    const launch = await cli(b, ['run', b.agent, '-f', b.manifest, '--detach', '--json']);
    // The background owner tears down after the failure; the endpoint stays until it is gone.
    const status = await waitFor(
      `the owner of ${b.agent} to finish`,
      async () => {
        const s = await cli(b, ['status', b.agent, '--json']);
        const doc = s.code === 0 ? json(s) : undefined;
        return doc && doc.owner_alive === false ? doc : undefined;
      },
      90_000,
      250,
    );
    return { b, identity: b.agent, launch, endpoint, status };
  } finally {
    await endpoint.close();
  }
}

describe('an egress sidecar that does not come up healthy stops the launch', () => {
  const outcomes = new Map<string, BrokenOutcome>();

  beforeAll(async () => {
    // Started with the file (the unhealthy one waits out the launch's 30 s readiness deadline).
    if (!brokenLaunches) throw new Error("the broken launches did not start (the file's beforeAll failed)");
    const list = await brokenLaunches;
    for (const o of list) outcomes.set(o.identity, o);
  }, 240_000);

  for (const v of BROKEN_VARIANTS) {
    it(`${v.what}: the launch fails with SIDECAR_UNHEALTHY and no agent is ever created`, async () => {
      const o = outcomes.get(egressAgentName(v.tag))!;
      expect(o.launch.code, show(o.launch)).toBe(1);
      const err = json<{ error: { code: string; message: string } }>(o.launch).error;
      expect(err.code).toBe('SIDECAR_UNHEALTHY');
      expect(err.message).toMatch(v.message);
      expect(err.message).toContain(names(o.identity).sidecar('egress'));
      expect(o.status.state).toBe('failed');
      // The endpoint saw every request of the CLI and its owner: the egress sidecar was made
      // and started, the agent container never (its namespace holder is prepared meanwhile, by design).
      const created = o.endpoint.requests
        .filter((q) => /^POST \S*\/containers\/create\?/.test(q))
        .map((q) => new URLSearchParams(q.slice(q.indexOf('?') + 1)).get('name'));
      const egress = names(o.identity).sidecar('egress');
      const agent = `bottle-${o.identity}`;
      expect(created).toContain(egress);
      expect(created, o.endpoint.requests.join('\n')).not.toContain(agent);
      // (A GET of its name is the launch's probe for a free container name.)
      expect(o.endpoint.requests.filter((q) => !q.startsWith('GET ') && q.includes(`/containers/${agent}/`))).toEqual([]);
      const logs = await cli(o.b, ['logs', o.identity]);
      expect(logs.stdout).not.toContain('the agent ran');
      expect(await leftovers(o.identity)).toEqual([]);
    });
  }
});
