import { writeInitManifest } from '../../config/init-template.js';
import type { EngineContext } from '../../engine/context.js';
import { planAgent, readManifest } from '../../engine/plan.js';
import { info, printJson, table } from '../output.js';

export interface ManifestOpts {
  file?: string;
  json?: boolean;
}

export async function cmdInit(ctx: EngineContext, opts: ManifestOpts) {
  const file = await writeInitManifest(ctx.cwd);
  if (opts.json) printJson({ file });
  else info(`wrote ${file}\nnext: bottle validate && bottle plan demo`);
}

export async function cmdValidate(ctx: EngineContext, opts: ManifestOpts) {
  const loaded = await readManifest(ctx, opts.file);
  const m = loaded.manifest;
  if (opts.json) printJson({ ok: true, file: loaded.file, bottles: Object.keys(m.bottles), agents: Object.keys(m.agents) });
  else info(`${loaded.file}: valid (${Object.keys(m.bottles).length} bottle(s), ${Object.keys(m.agents).length} agent(s))`);
}

export async function cmdPlan(ctx: EngineContext, agent: string, opts: ManifestOpts & { cwd?: string }) {
  const loaded = await readManifest(ctx, opts.file);
  const { plan, summary, note, limits } = await planAgent(ctx, loaded, agent, opts.cwd);
  if (opts.json) {
    printJson(summary);
    return;
  }
  info(
    table([
      ['identity', plan.identity],
      ['container', plan.container],
      ['networks', `${plan.networks.internal} (internal), ${plan.networks.egress} (egress)`],
      ['image', plan.images.runtime],
      ['runtime', plan.runtime],
      ['sidecars', plan.sidecars.map((s) => `${s.role} (${s.name})`).join(', ')],
      ['allowlist', plan.allowlist.join(', ') || '(nothing: every host is refused)'],
      ['private networks', (plan.privateNetworks ?? []).join(', ') || '(none: private addresses are refused)'],
      ['env', summary.env.join(', ')],
    ]),
  );
  for (const line of limits) info(line);
  if (note) info(`note: ${note}`);
}
