import { createHash, randomBytes } from 'node:crypto';
import { existsSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { BottleError } from '../../config/errors.js';
import type { BottlePlan } from '../../machines/plan.js';
import type { BuildProgress, CapabilityApplier, ImageProvider } from '../../machines/ports.js';

/**
 * TEST HOOK. Fakes of the remaining ports for tests and the fake backend. Like FakeRuntime they
 * keep what they did in a JSON file, so a test can count it across a killed process.
 */

function bump(file: string, key: string): number {
  const data: Record<string, number> = existsSync(file) ? JSON.parse(readFileSync(file, 'utf8')) : {};
  data[key] = (data[key] ?? 0) + 1;
  const tmp = `${file}.${randomBytes(4).toString('hex')}.tmp`;
  writeFileSync(tmp, JSON.stringify(data));
  renameSync(tmp, file);
  return data[key];
}

export function readCounts(file: string): Record<string, number> {
  return existsSync(file) ? JSON.parse(readFileSync(file, 'utf8')) : {};
}

export class FakeImages implements ImageProvider {
  constructor(
    private readonly countsFile: string,
    private readonly fail = false,
  ) {}
  async ensureForPlan(plan: BottlePlan, progress: BuildProgress): Promise<{ built: string[] }> {
    if (this.fail) throw new BottleError('BUILD_FAILED', `fake failure injected into building ${plan.images.runtime}`);
    bump(this.countsFile, `images:${plan.images.runtime}`);
    progress(`fake: ${plan.images.runtime} is present`);
    return { built: [] };
  }
}

export class FakeCapabilities implements CapabilityApplier {
  constructor(
    private readonly countsFile: string,
    private readonly failKinds: string[] = [],
  ) {}
  async buildBottleImage(plan: BottlePlan, dockerfile: string, progress: BuildProgress): Promise<{ image: string }> {
    if (this.failKinds.includes('dockerfile')) throw new BottleError('BUILD_FAILED', `fake failure building the per-bottle image of ${plan.identity}`);
    const tag = `bot-bottle/bottle:fake-${createHash('sha256').update(dockerfile).digest('hex').slice(0, 12)}`;
    bump(this.countsFile, `build:${tag}`);
    progress(`fake: built ${tag}`);
    return { image: tag };
  }
}
