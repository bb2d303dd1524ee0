import { gitGateFileRefs, gitGateFiles } from '../machines/git-gate.js';
import { BottleError, toErrorData } from '../config/errors.js';
import type { CreatedResource, Proposal, ResolveOutput, StepError, StepId } from '../machines/bottle.machine.js';
import type { BottlePlan } from '../machines/plan.js';
import type {
  AgentIO,
  AuditSink,
  BottlePaths,
  BuildProgress,
  CapabilityApplier,
  ContainerRuntime,
  HostEnv,
  HostFiles,
  ImageProvider,
  LabelledObject,
  ProposalBoard,
  RunRegistry,
  SecretReader,
  Stager,
} from '../machines/ports.js';
import { LABEL } from '../machines/ports.js';
import { parseEgressEntry } from '../config/field-rules.js';
import {
  agentSpec,
  allowlistFile,
  credProxyFiles,
  credTokenPath,
  EGRESS_ALLOWLIST_PATH,
  labelsFor,
  netFixerSpec,
  netnsHolderSpec,
  SIDECAR_UID,
  sidecarSpec,
  egressHashesFile,
  secretHash,
  superviseFiles,
} from '../machines/specs.js';
import { applyDockerfile, applyRoute, approvedRoutes, currentView, swapMarker, watchProposals } from './capabilities.js';

/**
 * The effects of the bottle machine, built from the ports they need (Temporal's
 * createActivities(deps) pattern). Each is idempotent or reconciles, because a
 * restored machine runs the invocation of its current state again: names are
 * deterministic, `ensure*` adopts what exists, removal of what is gone succeeds.
 * A step that fails after creating something reports it in `created`, so teardown
 * removes exactly what exists.
 */

export interface StepDeps {
  runtime: ContainerRuntime;
  audit: AuditSink;
  secrets: SecretReader;
  images: ImageProvider;
  stager: Stager;
  files: HostFiles;
  hostEnv: HostEnv;
  runs: RunRegistry;
  paths: BottlePaths;
  capabilities: CapabilityApplier;
  progress: BuildProgress;
  /** Present when a terminal is attached to this run. */
  io?: AgentIO;
  /** Where proposals from the supervise sidecar go, and the machine's view of them comes from. */
  board?: ProposalBoard;
  /** How long sidecars get to become ready. */
  sidecarDeadlineMs?: number;
}

export type StepFn = (input: never, signal: AbortSignal) => Promise<unknown>;

interface PlanStepInput {
  plan: BottlePlan;
  runId: string;
}

function failWith(err: unknown, created: CreatedResource[]): never {
  const data: StepError = { ...toErrorData(err), created };
  throw data;
}

function stagedPaths(deps: StepDeps, plan: BottlePlan, runId: string) {
  const dir = deps.paths.stageDir(plan.identity, runId);
  return { dir, envFile: `${dir}/agent.env`, promptFile: `${dir}/prompt`, allowlistFile: `${dir}/allowlist` };
}

export function createSteps(deps: StepDeps): Record<StepId, StepFn> {
  const { runtime } = deps;

  const resolveWorld = async (input: { identity: string; probeNames: string[] }, signal: AbortSignal): Promise<ResolveOutput> => {
    const [info, existing, perBottle] = await Promise.all([
      runtime.info(signal),
      runtime.existingContainers(input.probeNames, signal),
      deps.files.exists(deps.paths.perBottleDockerfile(input.identity)),
    ]);
    return { existingContainers: existing.sort(), runtimes: [...info.runtimes].sort(), perBottleDockerfile: perBottle };
  };

  /**
   * Objects of this identity from other runs: a dead run's are orphans (the launch stops and
   * names `bottle cleanup`); a live run's, from this store or another BOTTLE_HOME, mean the
   * bottle is busy, and the launch stops without touching them.
   */
  const probeOrphans = async (input: { identity: string; runId: string }, signal: AbortSignal) => {
    const objects = await runtime.listLabelled({ [LABEL.identity]: input.identity }, signal);
    const orphans: LabelledObject[] = [];
    const busy: LabelledObject[] = [];
    for (const o of objects) {
      const run = o.labels[LABEL.run] ?? '';
      if (run === input.runId) continue;
      (await deps.runs.isLive(o.labels[LABEL.home], input.identity, run) ? busy : orphans).push(o);
    }
    const order = (a: LabelledObject, b: LabelledObject) => (a.kind + a.name).localeCompare(b.kind + b.name);
    return { orphans: orphans.sort(order), busy: busy.sort(order) };
  };

  const stageFiles = async (input: PlanStepInput) => {
    const { plan, runId } = input;
    const staged = stagedPaths(deps, plan, runId);
    const prompt = 'text' in plan.prompt ? plan.prompt.text : await readPrompt(plan.prompt.file, plan.agent);
    const envLines = Object.entries(plan.env.literals).map(([k, v]) => {
      // docker's env-file format has no quoting: a newline would smuggle a second variable.
      if (/[\n\r\0]/.test(v)) throw new BottleError('MANIFEST_INVALID', `env ${k}: a literal value may not contain a newline`, 'run `bottle validate`');
      return `${k}=${v}\n`;
    });
    await deps.stager.stage(staged.dir, [
      { name: 'agent.env', content: envLines.join('') },
      { name: 'prompt', content: prompt },
      { name: 'allowlist', content: plan.allowlist.map((h) => `${h}\n`).join('') },
    ]);
    return { created: [{ kind: 'stage', name: staged.dir }] as CreatedResource[] };
  };

  async function readPrompt(file: string, agent: string) {
    try {
      return await deps.files.readText(file);
    } catch (err) {
      throw new BottleError('MANIFEST_INVALID', `agents.${agent}.prompt_file: cannot read ${file}: ${(err as Error).message}`, 'fix the path in the manifest, then `bottle validate`');
    }
  }

  const ensureImages = async (input: { plan: BottlePlan }, signal: AbortSignal) => deps.images.ensureForPlan(input.plan, deps.progress, signal);

  const createNetworks = async (input: PlanStepInput, signal: AbortSignal) => {
    const { plan, runId } = input;
    const created: CreatedResource[] = [];
    const gateways: string[] = [];
    try {
      for (const [name, internal] of [
        [plan.networks.internal, true],
        [plan.networks.egress, false],
      ] as const) {
        const net = await runtime.ensureNetwork({ name, internal, labels: labelsFor(plan, runId, 'network') }, signal);
        created.push({ kind: 'network', name, role: internal ? 'internal' : 'egress' });
        if (net.gateway) gateways.push(net.gateway);
      }
    } catch (err) {
      failWith(err, created);
    }
    return { created, gateways };
  };

  const startSidecars = async (input: PlanStepInput & { gateways: string[] }, signal: AbortSignal) => {
    const { plan, runId } = input;
    const staged = stagedPaths(deps, plan, runId);
    const created: CreatedResource[] = [];
    const deadline = deps.sidecarDeadlineMs ?? 30_000;
    // Sidecars start in parallel, each waited for with its own readiness check; the agent's
    // network namespace (holder, default route removed) is made meanwhile.
    const netns = async () => {
      await runtime.ensureContainer(netnsHolderSpec(plan, runId), signal);
      created.push({ kind: 'container', name: plan.netns.holder, role: 'network' });
      await runtime.startContainer(plan.netns.holder, signal);
      await removeDefaultRoute(plan, runId, signal);
    };
    // Each ref is read once, so the canary's hashes and the cred-proxy's files agree even if
    // a token file is replaced while the launch runs.
    const values = new Map<string, string>();
    const read = (ref: { file: string } | { env: string }) => {
      const key = JSON.stringify(ref);
      const value = values.get(key) ?? deps.secrets.read(ref);
      values.set(key, value);
      return value;
    };
    const secretHashes = plan.routes.map((r) => secretHash(read(r.token)));
    const results = await Promise.allSettled([
      netns(),
      ...plan.sidecars.map(async (s) => {
        const config = s.role === 'egress' ? [{ hostPath: staged.allowlistFile, containerPath: EGRESS_ALLOWLIST_PATH }] : [];
        await runtime.ensureContainer(sidecarSpec(plan, runId, s, config, input.gateways ?? [], s.role === 'egress' ? secretHashes : []), signal);
        created.push({ kind: 'container', name: s.name, role: s.role });
        // The real tokens reach the cred-proxy's container through the Docker API, read from
        // their refs now: never a staged host file, an env var or a log record.
        if (s.role === 'cred-proxy') await runtime.putFiles(s.name, credProxyFiles(plan, read), signal);
        // The git gate's keys, known_hosts, tokens and CAs take the same way, to the gate alone.
        if (s.role === 'git-gate') await runtime.putFiles(s.name, gitGateFiles(plan, read), signal);
        // The supervise sidecar is healthy once it knows what the agent may propose against.
        if (s.role === 'supervise') await runtime.putFiles(s.name, superviseFiles({ current: await currentView(deps, plan, plan.allowlist, []), decisions: [] }), signal);
        await runtime.startContainer(s.name, signal);
        // The egress proxy is healthy only once it has read its allowlist, the cred-proxy once
        // it has read every token: a sidecar without its policy fails the start.
        const readiness = s.role === 'egress' || s.role === 'cred-proxy' || s.role === 'supervise' || s.role === 'git-gate' ? { kind: 'http' as const, port: s.port, path: '/healthz' } : { kind: 'tcp' as const, port: s.port };
        await runtime.waitReady(s.name, readiness, deadline, signal);
      }),
    ]);
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    // `created` is in the order things came to exist (teardown reverses it); the journal
    // records it, so replay and resume see the same order.
    if (failed) failWith(failed.reason, created);
    return { created };
  };

  const createAgent = async (input: PlanStepInput, signal: AbortSignal) => {
    const { plan, runId } = input;
    const staged = stagedPaths(deps, plan, runId);
    const created: CreatedResource[] = [];
    try {
      const forwarded = forwardedEnv(plan);
      await runtime.ensureVolume({ name: plan.volume, labels: labelsFor(plan, runId, 'volume') }, signal);
      created.push({ kind: 'volume', name: plan.volume });
      await runtime.ensureContainer(agentSpec(plan, runId, staged, forwarded), signal);
      created.push({ kind: 'container', name: plan.container, role: 'agent' });
      await runtime.startContainer(plan.container, signal);
    } catch (err) {
      failWith(err, created);
    }
    return { created };
  };

  function forwardedEnv(plan: BottlePlan): Record<string, string> {
    const forwarded: Record<string, string> = {};
    for (const [name, hostName] of Object.entries(plan.env.forwarded)) {
      const value = deps.hostEnv.get(hostName);
      if (value !== undefined) forwarded[name] = value;
    }
    return forwarded;
  }

  async function removeDefaultRoute(plan: BottlePlan, runId: string, signal: AbortSignal) {
    const fixer = plan.netns.fixer;
    // A fixer left by a crash of an earlier attempt has either done its work or not: run it afresh.
    await runtime.removeContainer(fixer, signal);
    await runtime.ensureContainer(netFixerSpec(plan, runId), signal);
    try {
      await runtime.startContainer(fixer, signal);
      const { exitCode } = await runtime.waitExit(fixer, {}, signal);
      if (exitCode !== 0) {
        throw new BottleError('SIDECAR_UNHEALTHY', `could not remove the default route from the agent's network (${fixer} exited ${exitCode})`, 'rebuild the images (bottle images build) so the sidecar image has iproute2, then try again');
      }
    } finally {
      await runtime.removeContainer(fixer, signal);
    }
  }

  /**
   * Waits for the agent to exit. Meanwhile a token file rotated on the host is pushed into the
   * cred-proxy, which re-reads it without a restart.
   */
  const agentExit = async (input: PlanStepInput, signal: AbortSignal) => {
    const { plan, runId } = input;
    const stopWatching = watchRotations(plan, signal);
    const stopProposals = watchProposals(deps, plan, runId, signal);
    const marker = swapMarker(stagedPaths(deps, plan, runId).dir);
    try {
      for (;;) {
        const before = await runtime.inspectContainer(plan.container, signal);
        let result: { exitCode: number } | null = null;
        let failure: unknown = null;
        try {
          result = await runtime.waitExit(plan.container, { ...(deps.io ? { io: deps.io } : {}), logFile: deps.paths.agentLog(plan.identity, runId) }, signal);
        } catch (err) {
          if (signal.aborted) throw err;
          failure = err;
        }
        // An approved Dockerfile replaces the agent's container: its end is not the agent's.
        if (await deps.files.exists(marker)) {
          await waitWhile(() => deps.files.exists(marker), signal);
          continue;
        }
        const now = await runtime.inspectContainer(plan.container, signal);
        if (before && now && now.id !== before.id && now.state === 'running') continue;
        if (failure) throw failure;
        return result!;
      }
    } finally {
      stopWatching();
      stopProposals();
    }
  };

  /**
   * Secret files rotated on the host while the agent runs are pushed into the sidecar that
   * uses them: route tokens into the cred-proxy, the git gate's keys, tokens and CAs into the
   * gate. Both read a secret file when they use it, so no restart is needed.
   */
  /** Hashes of tokens rotated away while this process ran: the canary keeps looking for them. */
  const rotatedHashes = new Set<string>();

  /**
   * The egress canary's extra hashes: the route tokens as they are now, tokens rotated away,
   * and the secrets of routes approved at run time (their hash came with the approval).
   */
  async function pushEgressHashes(plan: BottlePlan, proposals: Proposal[], signal: AbortSignal): Promise<void> {
    const egress = plan.sidecars.find((s) => s.role === 'egress');
    if (!egress) return;
    const hashes = new Set(rotatedHashes);
    for (const r of plan.routes) {
      try {
        hashes.add(secretHash(deps.secrets.read(r.token)));
      } catch {
        // Unreadable now: its launch hash is in the sidecar's environment.
      }
    }
    for (const p of approvedRoutes(proposals)) if (p.decision?.secretHash) hashes.add(p.decision.secretHash);
    await runtime.putFiles(egress.name, [egressHashesFile(hashes)], signal);
  }

  function watchRotations(plan: BottlePlan, signal: AbortSignal): () => void {
    const proxy = plan.sidecars.find((s) => s.role === 'cred-proxy');
    const gate = plan.sidecars.find((s) => s.role === 'git-gate');
    const targets = [
      ...(proxy ? plan.routes.flatMap((r, i) => ('file' in r.token ? [{ file: r.token.file, container: proxy.name, containerPath: credTokenPath(i), newline: false }] : [])) : []),
      ...(gate ? gitGateFileRefs(plan).map((t) => ({ ...t, container: gate.name })) : []),
    ];
    const files = [...new Set(targets.map((t) => t.file))];
    if (files.length === 0) return () => undefined;
    const own = { mode: 0o600, uid: SIDECAR_UID, gid: SIDECAR_UID };
    // Only the changed file is read, so one unreadable ref never holds back another's rotation.
    const rotate = async (file: string) => {
      let content: string;
      try {
        content = deps.secrets.read({ file });
      } catch (err) {
        // Caught mid-write: the next change brings the new secret. Removed on the host: it is
        // revoked in the sidecar too (an empty token file makes its route answer 503).
        if (await deps.files.exists(file)) {
          deps.progress(`could not read the rotated secret ${file} yet: ${(err as Error).message}`);
          return;
        }
        deps.progress(`secret file ${file} was removed on the host: what uses it is revoked until it returns`);
        content = '';
      }
      // The egress canary learns the new token too (and keeps the old one: still a secret).
      if (content !== '' && proxy && plan.routes.some((r) => 'file' in r.token && r.token.file === file)) {
        rotatedHashes.add(secretHash(content));
        await pushEgressHashes(plan, deps.board?.view()?.proposals ?? [], signal);
      }
      const mine = targets.filter((t) => t.file === file);
      for (const container of [...new Set(mine.map((t) => t.container))]) {
        const puts = mine
          .filter((t) => t.container === container)
          .map((t) => ({ containerPath: t.containerPath, content: t.newline && content !== '' && !content.endsWith('\n') ? `${content}\n` : content, ...own }));
        await runtime.putFiles(container, puts, signal);
      }
    };
    // It runs in a file watcher: nothing may be thrown out of it (that would end this process).
    return deps.secrets.watch(files, (file) => {
      rotate(file).catch((err: unknown) => deps.progress(`could not hand the rotated secret ${file} to its sidecar: ${(err as Error).message}`));
    });
  }

  /**
   * An approved allowlist addition goes to the running egress sidecar as a new allowlist
   * file, which the proxy reloads without a restart and without dropping open connections.
   * Other kinds go to the capability applier.
   */
  const applyProposal = async (input: PlanStepInput & { proposal: Proposal; allowlist: string[]; proposals?: Proposal[] }, signal: AbortSignal) => {
    const { plan, proposal } = input;
    if (proposal.kind === 'allowlist') {
      const bad = input.allowlist.map((e) => ({ e, r: parseEgressEntry(e) })).filter((x) => !x.r.ok);
      if (bad.length > 0) {
        throw new BottleError('USAGE', `proposal ${proposal.id}: not an egress entry: ${bad.map((b) => `'${b.e}'`).join(', ')}`, 'deny it and ask for host, host:port or *.domain');
      }
      const egress = plan.sidecars.find((s) => s.role === 'egress');
      if (!egress) throw new BottleError('INTERNAL', `bottle '${plan.identity}' has no egress sidecar`);
      await runtime.putFiles(egress.name, [allowlistFile(input.allowlist)], signal);
      return { applied: true as const, allowlist: input.allowlist };
    }
    if (proposal.kind === 'route') {
      await applyRoute(deps, plan, proposal, input.proposals ?? [proposal], signal);
      await pushEgressHashes(plan, input.proposals ?? [proposal], signal);
      return { applied: true as const };
    }
    const staged = stagedPaths(deps, plan, input.runId);
    const { image } = await applyDockerfile(deps, plan, proposal, staged.dir, (img) => ({ ...agentSpec(plan, input.runId, staged, forwardedEnv(plan)), image: img }), signal);
    return { applied: true as const, image };
  };

  const teardown = async (input: { identity: string; runId: string; resources: CreatedResource[] }, signal: AbortSignal) => {
    const removed: CreatedResource[] = [];
    for (const r of input.resources) {
      await removeResource(r, signal, input.identity);
      removed.push(r);
    }
    // A crash in the middle of a step can leave an object the context never listed; the
    // run label says it is ours and this run's, so sweeping it is still exact.
    const stray = await runtime.listLabelled({ [LABEL.identity]: input.identity, [LABEL.run]: input.runId }, signal);
    const rank = { container: 0, network: 1, volume: 2 } as const;
    for (const o of stray.sort((a, b) => rank[a.kind] - rank[b.kind])) {
      const role = o.labels[LABEL.role];
      const r: CreatedResource = { kind: o.kind, name: o.name, ...(role ? { role } : {}) };
      await removeResource(r, signal, input.identity);
      removed.push(r);
    }
    return { removed };
  };

  async function removeResource(r: CreatedResource, signal: AbortSignal, identity: string) {
    switch (r.kind) {
      case 'container':
        // Sidecars write their audit lines to stdout; they are kept before the container goes.
        if (r.role === 'egress' || r.role === 'cred-proxy' || r.role === 'supervise' || r.role === 'git-gate') await collectAudit(identity, r.name, r.role, signal);
        await runtime.removeContainer(r.name, signal);
        break;
      case 'network':
        await runtime.removeNetwork(r.name, signal);
        break;
      case 'volume':
        await runtime.removeVolume(r.name, signal);
        break;
      case 'stage':
        await deps.stager.removeDir(r.name);
        break;
    }
  }

  async function collectAudit(identity: string, container: string, source: string, signal: AbortSignal) {
    const lines = (await runtime.readStdout(container, signal)).split('\n').filter((l) => l.trim().startsWith('{'));
    if (lines.length > 0) await deps.audit.append(identity, source, lines);
  }

  return {
    resolveWorld,
    probeOrphans,
    stageFiles,
    ensureImages,
    createNetworks,
    startSidecars,
    createAgent,
    agentExit,
    applyProposal,
    teardown,
  } as unknown as Record<StepId, StepFn>;
}

async function waitWhile(check: () => Promise<boolean>, signal: AbortSignal): Promise<void> {
  while (await check()) {
    if (signal.aborted) throw signal.reason;
    await new Promise((r) => setTimeout(r, 200));
  }
}
