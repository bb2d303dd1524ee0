import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync, } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { names } from '../../machines/names.js';
import { readLockOwner } from '../../store/lock.js';
import { eventsFile, lockFile } from '../../store/paths.js';
import { bottle, type CliResult, ensureBuilt, MAIN } from '../support/cli.js';
import { docker, execIn, SUITE_ID } from '../support/docker.js';
import { demux } from '../support/images.js';
import { json, show, waitFor } from '../support/e2e.js';
import { connectNetwork, startUpstreams, type UpstreamNet } from '../support/egress.js';
import { ensureTestImages } from '../support/images.js';
import {
  agentName,
  bottleFolder,
  cli,
  filesContaining,
  finishBottleSuite,
  results,
  runDetached,
  type SecBottle,
  suiteLabels,
  track,
  waitForLog,
} from '../support/security.js';

/**
 * Capability review end to end, against real Docker: an agent in a bottle asks the supervise
 * sidecar for what it lacks, the test decides with the CLI as a human would, and the running
 * bottle changes (or, denied, does not). Upstream: `later.test`, a server of the suite's own
 * on its own internal network, which the bottle's egress sidecar joins (network rule).
 */

const identities = new Set<string>();
let up: UpstreamNet;

/** A bottle with supervise on; the agent runs `script` under bash. */
function supervisedBottle(tag: string, script: string, extra: Record<string, unknown> = {}, hostEnv: Record<string, string> = {}): SecBottle {
  const b = bottleFolder({
    prefix: 'bottle-cap-',
    agent: agentName(`cap-${tag}`),
    bottle: 'cap',
    // The suite's upstreams are containers of ours on a private network: opted in, as a user would.
    config: { runtime: 'runc', egress: { allow: ['first.test'] }, supervise: true, private_networks: [up.subnet], ...extra },
    prompt: 'ask for what you lack',
    script,
    hostEnv,
  });
  track(b.dir);
  return b;
}

/** Shell helpers of the agent scripts: talk to the supervise sidecar with curl, parse with node. */
const PRELUDE = String.raw`set -u
S="$BOTTLE_SUPERVISE_URL"
result() { printf 'RESULT %s=%s\n' "$1" "$2"; }
post() { curl -s -o /tmp/post.out -w '%{http_code}' -H 'content-type: application/json' --data-binary "$1" "$S/proposals"; }
field() { node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{try{const j=JSON.parse(s);console.log(String(j[process.argv[1]]??""))}catch{console.log("unparsable:"+s.slice(0,80))}})' "$1"; }
status_of() { curl -s "$S/proposals/$1" | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{const j=JSON.parse(s);console.log(j.status+"|"+(j.reason||"")+"|"+(j.error||""))})'; }
wait_decided() { for _ in $(seq 1 1200); do st=$(status_of "$1"); case "$st" in pending*) sleep 0.5;; *) echo "$st"; return;; esac; done; echo timeout; }
wait_200() { for _ in $(seq 1 150); do c=$(curl -s -o /dev/null -w '%{http_code}' -m 5 "$1"); [ "$c" = 200 ] && break; sleep 0.2; done; echo "$c"; }
`;

const FLOW_SCRIPT = String.raw`${PRELUDE}
if [ -f /workspace/.dockerfile-proposal ]; then
  # The container recreated from the approved Dockerfile: the same command runs again.
  result second_start yes
  result jq "$(echo '{"a":42}' | jq -r .a 2>&1)"
  result kept "$(cat /workspace/keep.txt 2>&1)"
  result session "$(cat /home/agent/.claude/session.txt 2>&1)"
  result docker_status "$(wait_decided "$(cat /workspace/.dockerfile-proposal)")"
  result finished yes
  sleep 600 & wait
  exit 0
fi
echo kept-before > /workspace/keep.txt
echo session-before > /home/agent/.claude/session.txt
result jq_before "$(command -v jq >/dev/null && echo present || echo missing)"
result later_before "$(curl -s -o /dev/null -w '%{http_code}' -m 5 http://later.test/)"

# 1. An allowlist addition, approved: the same request then succeeds.
result allow_post "$(post '{"kind":"allowlist","reason":"the docs live on later.test","hosts":["later.test"]}')"
allow=$(field id < /tmp/post.out)
result allow_id "$allow"
result allow_status "$(wait_decided "$allow")"
result later_after "$(wait_200 http://later.test/)"

# 2. A proposal that is denied: the agent learns why, nothing changes.
result deny_post "$(post '{"kind":"allowlist","reason":"telemetry","hosts":["never.test"]}')"
deny=$(field id < /tmp/post.out)
result deny_id "$deny"
result deny_status "$(wait_decided "$deny")"

# 3. Malformed, unknown-kind and oversized proposals: 400, never queued.
result bad_json "$(post 'this is not json')"
result bad_kind "$(post '{"kind":"sudo","reason":"root please"}')"
result bad_hosts "$(post '{"kind":"allowlist","reason":"x","hosts":["http://x.test/path"]}')"
node -e 'process.stdout.write(JSON.stringify({kind:"dockerfile",reason:"big",dockerfile:"FROM x\n"+"RUN true\n".repeat(60000)}))' > /tmp/big.json
result bad_big "$(curl -s -o /dev/null -w '%{http_code}' -H 'content-type: application/json' --data-binary @/tmp/big.json "$S/proposals")"
result listed "$(curl -s "$S/proposals" | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{const j=JSON.parse(s);const l=Array.isArray(j)?j:j.proposals;console.log(l.map(p=>p.id).sort().join(","))})')"

# 4. A Dockerfile whose build fails: the proposal fails with the build's error, nothing changes.
curl -s "$S/current" > /tmp/current.json
node -e '
const cur = JSON.parse(require("fs").readFileSync("/tmp/current.json", "utf8"));
process.stdout.write(JSON.stringify({ kind: "dockerfile", reason: "this build fails", dockerfile: cur.dockerfile + "RUN echo about to fail && exit 7\n" }));
' > /tmp/bad.json
curl -s -o /tmp/post.out -H 'content-type: application/json' --data-binary @/tmp/bad.json "$S/proposals"
bad=$(field id < /tmp/post.out)
result bad_docker_id "$bad"
result bad_docker_status "$(wait_decided "$bad")"
result still_here "$(cat /workspace/keep.txt)"

# 5. A Dockerfile that adds jq: the container is recreated from it.
curl -s "$S/current" > /tmp/current.json
node -e '
const cur = JSON.parse(require("fs").readFileSync("/tmp/current.json", "utf8"));
const dockerfile = cur.dockerfile + "USER root\nRUN apt-get update && apt-get install -y --no-install-recommends jq && rm -rf /var/lib/apt/lists/*\nUSER agent\n";
process.stdout.write(JSON.stringify({ kind: "dockerfile", reason: "I need jq to read the API answers", dockerfile }));
' > /tmp/docker.json
result docker_post "$(curl -s -o /tmp/post.out -w '%{http_code}' -H 'content-type: application/json' --data-binary @/tmp/docker.json "$S/proposals")"
docker=$(field id < /tmp/post.out)
echo "$docker" > /workspace/.dockerfile-proposal
result docker_id "$docker"
result docker_status_old "$(wait_decided "$docker")"
sleep 600 & wait
`;

const RESUME_SCRIPT = `${PRELUDE}
result post "$(post '{"kind":"allowlist","reason":"needed after a crash","hosts":["later.test"]}')"
id=$(field id < /tmp/post.out)
result id "$id"
result status "$(wait_decided "$id")"
result later "$(wait_200 http://later.test/)"
result finished yes
sleep 600 & wait
`;

const ROUTE_SCRIPT = `${PRELUDE}
result post "$(post '{"kind":"route","reason":"call the later API","route":{"path":"/later","upstream":"http://api.later.test","inject":{"header":"x-api-key","format":"{token}"}}}')"
id=$(field id < /tmp/post.out)
result id "$id"
result status "$(wait_decided "$id")"
curl -s "$S/current" > /tmp/current.json
result current_routes "$(node -e 'console.log(JSON.parse(require("fs").readFileSync("/tmp/current.json","utf8")).routes.map(r=>r.path+" "+Object.keys(r).sort().join("+")).join(","))')"
for _ in $(seq 1 50); do c=$(curl -s -o /tmp/call.out -w '%{http_code}' http://cred-proxy:9099/later/hello); [ "$c" = 200 ] && break; sleep 0.2; done
result call "$c"
result body "$(cat /tmp/call.out)"
# The test hands the agent the approved secret, as a leak would: the egress canary knows it.
for _ in $(seq 1 300); do [ -s /tmp/leak ] && break; sleep 0.2; done
result leak_plain "$(curl -s -o /dev/null -w '%{http_code}' -m 5 http://later.test/)"
result leak_sent "$(curl -s -o /dev/null -w '%{http_code}' -m 5 -H "x-leak: $(cat /tmp/leak)" http://later.test/)"
result finished yes
sleep 600 & wait
`;

/** An http API of the suite's own that logs each request's x-api-key as a JSON line. */
const KEY_API_JS = `require('http').createServer((req, res) => {
  process.stdout.write(JSON.stringify({ kind: 'request', url: req.url, key: req.headers['x-api-key'] || null }) + '\\n');
  res.end('later api ok');
}).listen(80, () => process.stdout.write(JSON.stringify({ kind: 'listening' }) + '\\n'));`;

async function startKeyApi(image: string, network: string, alias: string): Promise<{ container: string; lines(): Promise<Record<string, unknown>[]> }> {
  const container = `bbt-${SUITE_ID}-keyapi`;
  const c = await docker().createContainer({
    name: container,
    Image: image,
    Entrypoint: ['node', '-e', KEY_API_JS],
    Labels: { ...suiteLabels },
    HostConfig: { NetworkMode: network, CapDrop: ['ALL'], SecurityOpt: ['no-new-privileges'], Sysctls: { 'net.ipv4.ip_unprivileged_port_start': '0' } },
    NetworkingConfig: { EndpointsConfig: { [network]: { Aliases: [alias] } } },
  });
  await c.start();
  const lines = async () => {
    const buf = (await c.logs({ stdout: true, stderr: false, follow: false })) as unknown as Buffer;
    return demux(buf)
      .stdout.split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as Record<string, unknown>);
  };
  await waitFor('the key API to listen', async () => (await lines()).some((l) => l.kind === 'listening'));
  return { container, lines };
}

function logResults(b: SecBottle, identity: string, pattern: RegExp, timeoutMs = 120_000) {
  return waitForLog(b, identity, pattern, timeoutMs).then(results);
}

/** `bottle resume` runs in the foreground until the run ends: started here, ended at stop. */
function startResume(b: SecBottle, identity: string): { child: ChildProcess; done: Promise<CliResult> } {
  const child = spawn(process.execPath, [MAIN, 'resume', identity], {
    cwd: b.dir,
    env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '/root', ...b.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (d) => (stdout += d));
  child.stderr!.on('data', (d) => (stderr += d));
  const done = new Promise<CliResult>((res) => child.on('close', (code, signal) => res({ code, signal, stdout, stderr })));
  return { child, done };
}

let sidecarImage = '';

beforeAll(async () => {
  ensureBuilt();
  const images = await ensureTestImages();
  sidecarImage = images.sidecar;
  up = await startUpstreams(images.sidecar, [{ name: 'later', aliases: ['later.test'], ports: ['80'] }]);
}, 900_000);

afterAll(() => finishBottleSuite(identities), 120_000);

let otherBottleProposal = '';

describe('the CLI dies while a proposal is pending', () => {
  let b: SecBottle;
  let identity: string;
  let r: Record<string, string> = {};
  let pendingAfterCrash: { status?: string } | undefined;
  let ownerAfterCrash: boolean | undefined;
  let approve: CliResult;
  let events: { kind: string; step?: string; key?: string }[] = [];
  let replay: CliResult;
  let stop: CliResult;

  beforeAll(async () => {
    b = supervisedBottle('resume', RESUME_SCRIPT);
    const started = await runDetached(b);
    identity = started.identity;
    identities.add(identity);
    await connectNetwork(up.network, names(identity).sidecar('egress'));
    const first = await logResults(b, identity, /^RESULT id=p/m);
    otherBottleProposal = first.id!;
    await waitFor('the proposal to be pending', async () => {
      const p = await cli(b, ['proposals', identity, '--json']);
      return p.code === 0 && json<{ id: string; status: string }[]>(p).some((x) => x.id === first.id && x.status === 'pending');
    });
    // SIGKILL the run's owner: nothing is torn down, the agent keeps waiting.
    const owner = readLockOwner(lockFile(b.home, identity, started.run));
    process.kill(owner!.pid, 'SIGKILL');
    await waitFor('the owner to be gone', async () => {
      const s = json<{ owner_alive: boolean }>(await cli(b, ['status', identity, '--json']));
      return s.owner_alive === false;
    });
    const status = json<{ owner_alive: boolean; proposals: { id: string; status: string }[] }>(await cli(b, ['status', identity, '--json']));
    ownerAfterCrash = status.owner_alive;
    pendingAfterCrash = status.proposals.find((p) => p.id === first.id);
    const resumed = startResume(b, identity);
    try {
      await waitFor('the resumed owner', async () => json<{ owner_alive: boolean }>(await cli(b, ['status', identity, '--json'])).owner_alive);
      approve = await cli(b, ['approve', identity, first.id!]);
      r = await logResults(b, identity, /^RESULT finished=yes$/m);
      replay = await cli(b, ['replay', identity]);
    } finally {
      stop = await cli(b, ['stop', identity]);
      await resumed.done;
    }
    events = readFileSync(eventsFile(b.home, identity, started.run), 'utf8')
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l));
  }, 300_000);

  it('after the crash the proposal is still pending and the owner is gone', () => {
    expect(ownerAfterCrash).toBe(false);
    expect(pendingAfterCrash?.status).toBe('pending');
  });

  it('after `bottle resume` an approval applies exactly once, and the agent gets through', () => {
    expect(approve.code, show(approve)).toBe(0);
    expect(r.status).toBe('approved||');
    expect(r.later).toBe('200');
    expect(events.filter((e) => e.kind === 'effect.completed' && e.key?.includes(':applyProposal:'))).toHaveLength(1);
    expect(replay.code, show(replay)).toBe(0);
    expect(stop.code, show(stop)).toBe(0);
  });
});

describe('an agent asks, a human decides, the running bottle changes', () => {
  let b: SecBottle;
  let identity: string;
  let r: Record<string, string> = {};
  let r2: Record<string, string> = {};
  const decided: Record<string, CliResult> = {};
  let proposalsJson: { id: string; kind: string; status: string; change: { diff?: string; hosts?: string[] } }[] = [];
  let proposalsText = '';
  let agentIdBefore = '';
  let agentIdAfter = '';
  let agentIdAfterFailure = '';
  const hardening: { runtime: string; capDrop: string[]; securityOpt: string[]; user: string }[] = [];
  let daemonRuntimes: string[] = [];
  let audit: { source: string; type: string; by?: string; change_sha256?: string; proposal?: string }[] = [];
  let replay: CliResult;
  let stop: CliResult;

  beforeAll(async () => {
    // runtime auto, as users get it: gVisor wherever the daemon has it.
    b = supervisedBottle('flow', FLOW_SCRIPT, { runtime: 'auto' });
    daemonRuntimes = Object.keys(((await docker().info()) as { Runtimes?: Record<string, unknown> }).Runtimes ?? {});
    const started = await runDetached(b);
    identity = started.identity;
    identities.add(identity);
    await connectNetwork(up.network, names(identity).sidecar('egress'));
    try {
      const a = await logResults(b, identity, /^RESULT allow_id=p/m);
      proposalsText = (await cli(b, ['proposals', identity])).stderr;
      decided.allow = await cli(b, ['approve', identity, a.allow_id!]);
      const d = await logResults(b, identity, /^RESULT deny_id=p/m);
      decided.deny = await cli(b, ['deny', identity, d.deny_id!, '--reason', 'not needed for this task']);
      decided.twice = await cli(b, ['deny', identity, d.deny_id!, '--reason', 'again']);
      decided.approveDenied = await cli(b, ['approve', identity, d.deny_id!]);
      decided.foreign = await cli(b, ['approve', identity, otherBottleProposal || 'pnotmine000']);
      const bad = await logResults(b, identity, /^RESULT bad_docker_id=p/m);
      agentIdBefore = (await inspectId(identity)) ?? '';
      decided.badDocker = await cli(b, ['approve', identity, bad.bad_docker_id!]);
      r = await logResults(b, identity, /^RESULT docker_id=p/m);
      agentIdAfterFailure = (await inspectId(identity)) ?? '';
      proposalsJson = json(await cli(b, ['proposals', identity, '--json']));
      decided.docker = await cli(b, ['approve', identity, r.docker_id!]);
      r2 = await logResults(b, identity, /^RESULT finished=yes$/m, 300_000);
      agentIdAfter = (await inspectId(identity)) ?? '';
      audit = json(await cli(b, ['audit', identity, '--json']));
      replay = await cli(b, ['replay', identity]);
    } finally {
      stop = await cli(b, ['stop', identity]);
    }
  }, 900_000);

  async function inspectId(id: string) {
    const info = await docker().getContainer(`bottle-${id}`).inspect().catch(() => null);
    if (info) hardening.push({ runtime: info.HostConfig.Runtime ?? '', capDrop: info.HostConfig.CapDrop ?? [], securityOpt: info.HostConfig.SecurityOpt ?? [], user: info.Config.User });
    return info?.Id;
  }

  it('a denied host, proposed and approved, then answers without the bottle restarting', () => {
    expect(r.later_before).toBe('403');
    expect(r.allow_post).toBe('201');
    expect(decided.allow!.code, show(decided.allow!)).toBe(0);
    expect(r.allow_status).toBe('approved||');
    expect(r.later_after).toBe('200');
    expect(proposalsText).toContain('later.test');
  });

  it('a denied proposal returns denied with the reason, and nothing changes', () => {
    expect(decided.deny!.code, show(decided.deny!)).toBe(0);
    expect(r.deny_status).toBe('denied|not needed for this task|');
  });

  it('deciding twice, or an id of another bottle, fails clearly', () => {
    expect(decided.twice!.code).not.toBe(0);
    expect(decided.twice!.stderr).toMatch(/PROPOSAL_DECIDED.*already denied/);
    expect(decided.approveDenied!.code).not.toBe(0);
    expect(decided.foreign!.code).not.toBe(0);
    expect(decided.foreign!.stderr).toMatch(/PROPOSAL_NOT_FOUND/);
    expect(decided.foreign!.stderr).toContain(`bottle proposals ${identity}`);
  });

  it('malformed, unknown-kind and oversized proposals get 400 and are not queued', () => {
    expect(r.bad_json).toBe('400');
    expect(r.bad_kind).toBe('400');
    expect(r.bad_hosts).toBe('400');
    expect(r.bad_big).toBe('400');
    expect(r.listed!.split(',').sort()).toEqual([r.allow_id, r.deny_id].sort());
    expect(proposalsJson.map((p) => p.id).sort()).toEqual([r.allow_id, r.deny_id, r.bad_docker_id, r.docker_id].sort());
  });

  it('a Dockerfile whose build fails leaves the bottle running as it was, the proposal failed with the build error', () => {
    expect(decided.badDocker!.code).toBe(1);
    expect(decided.badDocker!.stderr).toMatch(/failed/);
    expect(r.bad_docker_status).toMatch(/^failed\|\|.*(exit|7)/);
    expect(r.still_here).toBe('kept-before');
    expect(agentIdAfterFailure).toBe(agentIdBefore);
  });

  it('a Dockerfile proposal is shown as a diff, and once approved the agent runs in a new container with jq, its workspace and its session', () => {
    const docker = proposalsJson.find((p) => p.id === r.docker_id)!;
    expect(docker.change.diff).toMatch(/^\+RUN apt-get update && apt-get install -y --no-install-recommends jq/m);
    expect(r.jq_before).toBe('missing');
    expect(decided.docker!.code, show(decided.docker!)).toBe(0);
    expect(r2.second_start).toBe('yes');
    expect(r2.jq).toBe('42');
    expect(r2.kept).toBe('kept-before');
    expect(r2.session).toBe('session-before');
    expect(r2.docker_status).toBe('approved||');
    expect(agentIdAfter).not.toBe('');
    expect(agentIdAfter).not.toBe(agentIdBefore);
    // The recreated agent is hardened exactly as the first (and under gVisor when there is one).
    expect(hardening).toHaveLength(3);
    expect(hardening[2]).toEqual(hardening[0]);
    expect(hardening[0]!.runtime).toBe(daemonRuntimes.includes('runsc') ? 'runsc' : 'runc');
    expect(hardening[0]!.capDrop).toContain('ALL');
    expect(readFileSync(join(b.home, 'bottles', identity, 'Dockerfile'), 'utf8')).toContain('install -y --no-install-recommends jq');
  });

  it('the audit shows who decided what and when, with the change hash, and replay accounts for every decision', () => {
    const decisions = audit.filter((e) => e.source === 'engine' && (e.type === 'proposal.approve' || e.type === 'proposal.deny'));
    expect(decisions.map((e) => [e.type, e.proposal])).toEqual([
      ['proposal.approve', r.allow_id],
      ['proposal.deny', r.deny_id],
      ['proposal.approve', r.bad_docker_id],
      ['proposal.approve', r.docker_id],
    ]);
    for (const e of decisions) expect(e.change_sha256).toMatch(/^[0-9a-f]{64}$/);
    expect(audit.filter((e) => e.source === 'supervise' && e.type === 'proposal')).toHaveLength(4);
    expect(replay.code, show(replay)).toBe(0);
    expect(stop.code, show(stop)).toBe(0);
  });
});

describe('a route approved with a secret the human names reaches the running cred-proxy', () => {
  const firstToken = `first-${randomBytes(12).toString('hex')}`;
  const laterToken = `later-${randomBytes(12).toString('hex')}`;
  let b: SecBottle;
  let identity: string;
  let r: Record<string, string> = {};
  let approveWithout: CliResult;
  let approve: CliResult;
  let seen: Record<string, unknown>[] = [];
  let stop: CliResult;
  let homeFiles: string[] = [];
  let egressAudit: { source: string; alarm?: string; host?: string }[] = [];

  beforeAll(async () => {
    const api = await startKeyApi(sidecarImage, up.network, 'api.later.test');
    b = supervisedBottle(
      'route',
      ROUTE_SCRIPT,
      { egress: { allow: ['later.test'] }, cred_proxy: { routes: [{ path: '/first', upstream: 'http://first.test', token: { env: 'FIRST_TOKEN' }, inject: { header: 'x-api-key', format: '{token}' } }] } },
      { FIRST_TOKEN: firstToken },
    );
    const started = await runDetached(b);
    identity = started.identity;
    identities.add(identity);
    await connectNetwork(up.network, names(identity).sidecar('cred-proxy'));
    await connectNetwork(up.network, names(identity).sidecar('egress'));
    try {
      const first = await logResults(b, identity, /^RESULT id=p/m);
      await waitFor('the route proposal to be pending', async () => {
        const p = await cli(b, ['proposals', identity, '--json']);
        return p.code === 0 && json<{ id: string; status: string }[]>(p).some((x) => x.id === first.id && x.status === 'pending');
      });
      approveWithout = await cli(b, ['approve', identity, first.id!]);
      // The secret is in the approving CLI's environment only, not the run owner's.
      approve = await bottle(['approve', identity, first.id!, '--token-env', 'LATER_TOKEN'], { cwd: b.dir, env: { ...b.env, LATER_TOKEN: laterToken } });
      await logResults(b, identity, /^RESULT body=/m);
      await execIn(`bottle-${identity}`, ['sh', '-c', 'umask 077; printf %s "$1" > /tmp/leak', 'sh', laterToken], { user: '1000' });
      r = await logResults(b, identity, /^RESULT finished=yes$/m);
      seen = (await api.lines()).filter((l) => l.kind === 'request');
      egressAudit = json<{ source: string; alarm?: string; host?: string }[]>(await cli(b, ['audit', identity, '--json'])).filter((e) => e.source === 'egress');
    } finally {
      stop = await cli(b, ['stop', identity]);
    }
    homeFiles = filesContaining(b.home, { later: laterToken });
  }, 300_000);

  it('a route needs its secret on approval', () => {
    expect(approveWithout.code).not.toBe(0);
    expect(approveWithout.stderr).toMatch(/--token-env NAME/);
  });

  it('approved, the route works live with the token injected, and the agent never sees the secret', () => {
    expect(approve.code, show(approve)).toBe(0);
    expect(r.status).toBe('approved||');
    expect(r.current_routes).toBe('/first inject+path+roles+upstream,/later inject+path+roles+upstream');
    expect(r.call).toBe('200');
    expect(r.body).toBe('later api ok');
    expect(seen.map((x) => [x.url, x.key])).toEqual([['/hello', laterToken]]);
    expect(homeFiles).toEqual([]);
    expect(stop.code, show(stop)).toBe(0);
  });

  it('the egress canary knows the approved secret: sent to an allowed host, it is refused and raises the alarm', () => {
    expect(r.leak_plain).toBe('200');
    expect(r.leak_sent).toBe('403');
    expect(egressAudit.filter((e) => e.alarm === 'token').map((e) => e.host)).toEqual(['later.test']);
  });
});
